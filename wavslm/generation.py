"""Sampling (pure functions on logits) and the generation loops: whole continuations and audio streams.

One step feeds 4 new tokens' features to the LM with its key/value cache, takes the logits of the
last 4 positions (each predicts the token 4 ahead) and samples the next 4 tokens independently.
The codec's streaming session turns tokens into features for the LM and into audio, carrying state,
so every step's audio is final as soon as it is decoded.
"""

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .audio import resample
from .errors import InputError

if TYPE_CHECKING:
    from .lm import WavSLM


def check_sampling(top_p: float | None, top_k: int | None, temp: float) -> None:
    """Reject contradictory or out-of-range sampling settings with one sentence."""
    if top_p is not None and top_k is not None:
        raise InputError("give top_p or top_k, not both")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise InputError(f"top_p must be in [0, 1], got {top_p}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be a positive integer, got {top_k}")
    if not temp > 0.0:
        raise InputError(f"temperature must be positive, got {temp}")


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
        probs, index = probs.sort(dim=-1, descending=True)
        # Keep a token while the mass before it is still within p (the most likely one is always kept).
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > top_p, 0.0)
    else:
        index = None
    choice = torch.multinomial(probs, 1, generator=generator)
    return (choice if index is None else index.gather(-1, choice)).squeeze(-1)


def prompt_tokens(
    lm: "WavSLM", bos_sig: Tensor | None, sample_rate: int | None, bos_toks: Tensor | None
) -> Tensor:
    """The prompt as tokens `(B, T)`, left-trimmed to whole chunks of `toks_per_step`.

    Training sees chunks aligned to the start of a sequence; dropping the first `T % 4` tokens (under
    80 ms) keeps the prompt's chunks where training put them, so the last 4 logits predict one whole chunk.
    """
    if (bos_sig is None) == (bos_toks is None):
        raise InputError("give exactly one prompt: bos_sig (audio) or bos_toks (tokens)")
    codec = lm._require_codec()
    if bos_sig is not None:
        if sample_rate is None:
            raise InputError("sample_rate is required with bos_sig")
        sig = bos_sig if bos_sig.ndim == 2 else bos_sig.reshape(1, -1)
        toks = codec.encode(resample(sig, sample_rate, codec.sample_rate_input))
    else:
        toks = bos_toks if bos_toks.ndim == 2 else bos_toks.reshape(1, -1)
        if toks.dtype not in (torch.int32, torch.int64) or toks.numel() == 0:
            raise InputError("bos_toks must be a non-empty integer tensor (B, T)")
        if int(toks.min()) < 0 or int(toks.max()) >= lm.config.vocab_size:
            raise InputError(f"bos_toks must lie in [0, {lm.config.vocab_size})")
    C = lm.toks_per_step
    usable = toks.shape[1] - toks.shape[1] % C
    if usable == 0:
        raise InputError(f"the prompt is shorter than one chunk ({C} tokens = {1000 * C / codec.frame_rate:.0f} ms)")
    return toks[:, toks.shape[1] - usable :].long()


def _num_steps(lm: "WavSLM", prompt_len: int, max_gen_secs: float | None, max_gen_toks: int | None) -> int:
    if max_gen_secs is not None and max_gen_toks is not None:
        raise InputError("give max_gen_secs or max_gen_toks, not both")
    if max_gen_secs is not None:
        max_gen_toks = int(max_gen_secs * lm.codec.frame_rate)
    elif max_gen_toks is None:
        max_gen_toks = prompt_len  # as long as the prompt, like the released default
    steps = max_gen_toks // lm.toks_per_step
    if steps < 1:
        raise InputError(f"the continuation must be at least one step ({lm.toks_per_step} tokens)")
    return steps


@torch.inference_mode()
def generate_steps(
    lm: "WavSLM",
    toks: Tensor,
    steps: int,
    top_p: float | None = 0.3,
    top_k: int | None = None,
    temp: float = 0.8,
    seed: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Continue the prompt `toks (B, T)` for `steps` steps; yield `(toks (B, C), audio (B, C * hop))` per step."""
    check_sampling(top_p, top_k, temp)
    codec = lm._require_codec()
    device = next(lm.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    B, C = toks.shape[0], lm.toks_per_step
    with codec.streaming(batch_size=B) as session:
        qfeats = session.dequantize(toks.to(device))
        session.synthesize(qfeats)  # warm the waveform decoder's state on the prompt
        feats, state = lm.encoder(qfeats)
        for step in range(steps):
            logits = lm.head(feats[:, -C:])
            new = sample_next_token(logits.reshape(B * C, -1), temp, top_p, top_k, generator).view(B, C)
            qfeats = session.dequantize(new)
            yield new, session.synthesize(qfeats)
            if step + 1 < steps:
                feats, state = lm.encoder(qfeats, state)


def generate(
    lm: "WavSLM",
    bos_sig: Tensor | None = None,
    sample_rate: int | None = None,
    bos_toks: Tensor | None = None,
    max_gen_secs: float | None = None,
    max_gen_toks: int | None = None,
    top_p: float | None = 0.3,
    top_k: int | None = None,
    temp: float = 0.8,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Continue a spoken prompt (`bos_sig` at `sample_rate`) or a token prompt (`bos_toks`).

    Returns `(gen_sig (B, N), gen_toks (B, T))`: the continuation only, at `sample_rate` when given,
    else at the codec's output rate. Defaults to a continuation as long as the prompt.
    """
    toks = prompt_tokens(lm, bos_sig, sample_rate, bos_toks)
    steps = _num_steps(lm, toks.shape[1], max_gen_secs, max_gen_toks)
    parts = list(generate_steps(lm, toks, steps, top_p, top_k, temp, seed))
    gen_toks = torch.cat([t for t, _ in parts], dim=1)
    gen_sig = torch.cat([a for _, a in parts], dim=1)
    if sample_rate is not None:
        gen_sig = resample(gen_sig, lm.codec.sample_rate_output, sample_rate)
    return gen_sig, gen_toks


def stream(
    lm: "WavSLM",
    bos_sig: Tensor | None = None,
    sample_rate: int | None = None,
    bos_toks: Tensor | None = None,
    max_gen_secs: float | None = None,
    max_gen_toks: int | None = None,
    top_p: float | None = 0.3,
    top_k: int | None = None,
    temp: float = 0.8,
    seed: int | None = None,
) -> Iterator[Tensor]:
    """Yield the continuation's audio `(B, C * hop)` at the codec's output rate, one step (80 ms) at a time."""
    toks = prompt_tokens(lm, bos_sig, sample_rate, bos_toks)
    steps = _num_steps(lm, toks.shape[1], max_gen_secs, max_gen_toks)
    for _, audio in generate_steps(lm, toks, steps, top_p, top_k, temp, seed):
        yield audio
