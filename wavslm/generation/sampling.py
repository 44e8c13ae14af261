"""Sampling: pure functions on logits, and the per-row random generators that make a seed reproducible."""

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError

DEFAULT_TOP_P = 0.3  # the nucleus when neither top_p nor top_k is given


@dataclass(frozen=True)
class Sampling:
    """How a row's next tokens are drawn: temperature, then nucleus (`top_p`) or `top_k`. Neither given
    means the nucleus `DEFAULT_TOP_P`; `top_p=1` samples from the whole distribution."""

    temp: float = 0.8
    top_p: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        check_sampling(self.top_p, self.top_k, self.temp)
        if self.top_p is None and self.top_k is None:
            object.__setattr__(self, "top_p", DEFAULT_TOP_P)


def check_sampling(top_p: float | None, top_k: int | None, temp: float) -> None:
    """Reject contradictory or out-of-range sampling settings with one sentence."""
    if top_p is not None and top_k is not None:
        raise InputError("give top_p or top_k, not both")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise InputError(f"top_p must be in [0, 1], got {top_p}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be a positive integer, got {top_k}")
    if not (isinstance(temp, (int, float)) and 0.0 < temp < float("inf")):
        raise InputError(f"temperature must be a positive number, got {temp}")


def sample_next_token(
    logits: Tensor,
    temp: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample one token per row of `logits (N, V) -> (N,)`.

    Temperature first, then nucleus (`top_p`: the smallest set of tokens whose probability reaches p)
    or `top_k`; neither means plain sampling. `top_p == 0` or `top_k == 1` is greedy (argmax).
    """
    if top_p == 0.0 or top_k == 1:
        return logits.argmax(dim=-1)
    probs = (logits.float() / temp).softmax(dim=-1)
    if top_k is not None:
        probs, index = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    elif top_p is not None and top_p < 1.0:
        probs, index = _most_likely(probs, top_p)
        # Keep a token while the mass before it is still within p (the most likely one is always kept).
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > top_p, 0.0)
    else:
        index = None
    choice = torch.multinomial(probs, 1, generator=generator)
    return (choice if index is None else index.gather(-1, choice)).squeeze(-1)


def _most_likely(probs: Tensor, mass: float, first: int = 64) -> tuple[Tensor, Tensor]:
    """The most likely tokens of each row of `probs (N, V)`, in descending order, until their total
    exceeds `mass` in every row: a top-k shortlist, doubled while short, in place of sorting all V
    (the nucleus it gives is the one a full sort gives)."""
    k = min(first, probs.shape[-1])
    while True:
        head, index = probs.topk(k, dim=-1)
        if k == probs.shape[-1] or bool((head.sum(dim=-1) > mass).all()):
            return head, index
        k = min(2 * k, probs.shape[-1])


def row_generators(rows: int, seed: int | None, device: torch.device) -> list[torch.Generator | None]:
    """One generator per row, seeded `seed + row`: a row's continuation does not depend on its batch."""
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2**63 - rows):
        raise InputError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return [None] * rows if seed is None else [torch.Generator(device=device).manual_seed(seed + b) for b in range(rows)]


def sample_rows(logits: Tensor, samplings: list[Sampling], generators: list[torch.Generator | None]) -> Tensor:
    """The next tokens `(B, C)` from the last positions' logits `(B, C, V)`, row b drawn by `samplings[b]`
    with `generators[b]`."""
    return torch.stack([sample_next_token(logits[b], s.temp, s.top_p, s.top_k, g)
                        for b, (s, g) in enumerate(zip(samplings, generators, strict=True))])
