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
from .codec import CodecStream
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


Prompt = Tensor | list[Tensor]


def prompt_tokens(lm: "WavSLM", bos_sig: Prompt | None, sample_rate: int | None, bos_toks: Prompt | None) -> list[Tensor]:
    """The prompts as token rows `(T_b,)`, each left-trimmed to whole chunks of `toks_per_step`.

    A prompt is a tensor `(B, N)`/`(B, T)` or a list of rows of different lengths. Training sees chunks
    aligned to the start of a sequence; dropping the first `T % 4` tokens (under 80 ms) keeps each
    prompt's chunks where training put them, so its last 4 logits predict one whole chunk.
    """
    if (bos_sig is None) == (bos_toks is None):
        raise InputError("give exactly one prompt: bos_sig (audio) or bos_toks (tokens)")
    codec = lm._require_codec()
    if bos_sig is not None:
        if sample_rate is None:
            raise InputError("sample_rate is required with bos_sig")
        rows = [codec.encode(resample(sig.reshape(1, -1), sample_rate, codec.sample_rate_input))[0] for sig in _rows(bos_sig)]
    else:
        rows = []
        for toks in _rows(bos_toks):
            if toks.dtype not in (torch.int32, torch.int64) or toks.numel() == 0:
                raise InputError("bos_toks must be non-empty integer tokens (B, T) or a list of (T,)")
            if int(toks.min()) < 0 or int(toks.max()) >= lm.config.vocab_size:
                raise InputError(f"bos_toks must lie in [0, {lm.config.vocab_size})")
            rows.append(toks.reshape(-1).long())
    C = lm.toks_per_step
    shortest = min(len(r) for r in rows)
    if shortest < C:
        raise InputError(f"the prompt is shorter than one chunk ({C} tokens = {1000 * C / codec.frame_rate:.0f} ms)")
    return [r[len(r) % C :] for r in rows]


def _rows(prompt: Prompt) -> list[Tensor]:
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise InputError("the prompt list is empty")
        return list(prompt)
    return list(prompt) if prompt.ndim == 2 else [prompt]


def _read(lm: "WavSLM", session: CodecStream, toks: Tensor, state=None):
    """Prompt tokens through the stream: decompressed, through the waveform decoder (only to carry its
    state; the prompt's audio is not kept) and read by the LM; returns the LM's `(feats, state)`."""
    qfeats = session.dequantize(toks)
    session.synthesize(qfeats)
    return lm.encoder(qfeats, state)


def _start(lm: "WavSLM", rows: list[Tensor], device: torch.device):
    """Run the prompts through the codec's stream and the LM; return the session, features and LM state.

    Prompts of different lengths are decompressed one by one (each as if alone), then left-padded for the
    LM, whose padded keys are masked: every row continues exactly as it would by itself.
    """
    codec = lm.codec
    if len({len(r) for r in rows}) == 1:
        session = codec.streaming(batch_size=len(rows))
        feats, state = _read(lm, session, torch.stack(rows).to(device))
        return session, feats, state
    sessions, padded = [], []
    longest = max(len(r) for r in rows)
    for row in rows:
        one = codec.streaming(batch_size=1)
        q = one.dequantize(row[None].to(device))
        one.synthesize(q)
        sessions.append(one)
        padded.append(torch.nn.functional.pad(q, (0, 0, longest - len(row), 0)))
    valid_from = torch.tensor([longest - len(r) for r in rows], device=device)
    feats, state = lm.encoder(torch.cat(padded), valid_from=valid_from)
    return CodecStream.stack(sessions), feats, state


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


def _generators(B: int, seed: int | None, device: torch.device) -> list[torch.Generator | None]:
    # One generator per row, seeded `seed + row`: a row's continuation does not depend on its batch.
    return [None] * B if seed is None else [torch.Generator(device=device).manual_seed(seed + b) for b in range(B)]


def _next_tokens(lm: "WavSLM", feats: Tensor, sampling: tuple, generators: list) -> Tensor:
    """The next 4 tokens `(B, 4)` from the last 4 positions' logits, row b sampled with `generators[b]`."""
    temp, top_p, top_k = sampling
    logits = lm.logits(feats[:, -lm.toks_per_step :])
    return torch.stack([sample_next_token(logits[b], temp, top_p, top_k, gen) for b, gen in enumerate(generators)])


def _sample(lm: "WavSLM", session: CodecStream, feats: Tensor, sampling: tuple, generators: list):
    """The next 4 tokens `(B, 4)` and their decompressed features."""
    new = _next_tokens(lm, feats, sampling, generators)
    return new, session.dequantize(new)


def _decode_and_read(lm: "WavSLM", session: CodecStream, new: Tensor, qfeats: Tensor, state):
    """Yield the step's `(toks, audio)` as soon as the audio is decoded, then return the LM's
    `(feats, state)` after reading `qfeats` (computed only when the consumer asks for the next step)."""
    yield new, session.synthesize(qfeats)
    return lm.encoder(qfeats, state)


@torch.inference_mode()
def generate_steps(
    lm: "WavSLM",
    prompts: list[Tensor],
    steps: int,
    top_p: float | None = 0.3,
    top_k: int | None = None,
    temp: float = 0.8,
    seed: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Continue token prompts (rows from `prompt_tokens`) for `steps` steps.

    Yields `(toks (B, C), audio (B, C * hop))` per step, as soon as the step's audio is decoded.
    Row b samples with its own generator seeded `seed + b`.
    """
    check_sampling(top_p, top_k, temp)
    lm._require_codec()
    device = next(lm.parameters()).device
    generators = _generators(len(prompts), seed, device)
    session, feats, state = _start(lm, prompts, device)
    with session:
        for step in range(steps):
            new, qfeats = _sample(lm, session, feats, (temp, top_p, top_k), generators)
            if step + 1 == steps:  # nothing reads the last step's features
                yield new, session.synthesize(qfeats)
            else:
                feats, state = yield from _decode_and_read(lm, session, new, qfeats, state)


class LiveSession:
    """Continue speech while it is still arriving: `feed` prompt audio as it comes (any lengths), then
    `generate`. Every complete 80 ms chunk is encoded, decompressed, run through the waveform decoder
    (to carry its state) and through the LM as soon as it arrives, so when the prompt ends only one step
    stands between it and the first audio of the continuation.

    Feeding a prompt of whole chunks equals `generate_steps` on its tokens (the same continuation for the
    same seed); samples of a last incomplete chunk are never heard by the LM. Use as a context manager
    or call `close()`; one session serves one conversation (`batch_size` rows fed together).
    """

    def __init__(self, lm: "WavSLM", batch_size: int = 1, top_p: float | None = 0.3, top_k: int | None = None,
                 temp: float = 0.8, seed: int | None = None):
        check_sampling(top_p, top_k, temp)
        self.lm, self.codec = lm, lm._require_codec()
        self.sampling = (temp, top_p, top_k)
        device = next(lm.parameters()).device
        self.generators = _generators(batch_size, seed, device)
        self.session = self.codec.streaming(batch_size=batch_size)
        self.feats: Tensor | None = None
        self.state = None
        self.interrupted = False

    def __enter__(self) -> "LiveSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.reset()
        self.feats = self.state = None

    def _check_usable(self) -> None:
        if self.interrupted:
            raise InputError("this live session's last generate was stopped mid-step; open a new session")

    @torch.inference_mode()
    def feed(self, sig: Tensor) -> Tensor:
        """Append prompt audio `sig (B, n)` at the codec's input rate; returns the tokens of the chunks it
        completed `(B, 4k)`, which the LM has already read. (Feeding after `generate` continues the
        conversation: the LM hears the new audio after its own continuation.)"""
        self._check_usable()
        toks = self.session.encode(sig)
        if toks.shape[1]:
            self.feats, self.state = _read(self.lm, self.session, toks, self.state)
        return toks

    @torch.inference_mode()
    def feed_tokens(self, toks: Tensor) -> None:
        """Append prompt tokens `(B, 4k)` (whole chunks, e.g. from `prompt_tokens`): decompressed, through the
        waveform decoder (for its state) and read by the LM, as `feed` does with the tokens it encodes."""
        if toks.shape[-1] % self.lm.toks_per_step:
            raise InputError(f"feed whole chunks of {self.lm.toks_per_step} tokens, got {toks.shape[-1]}")
        self._check_usable()
        self.feats, self.state = _read(self.lm, self.session, toks, self.state)

    @torch.inference_mode()
    def generate(self, steps: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Continue what was fed for `steps` steps of 4 tokens: yields `(toks (B, 4), audio (B, 4 * hop))`.
        Calling it again continues the continuation."""
        if self.feats is None:
            raise InputError(f"feed at least one whole chunk of prompt audio ({self.codec.chunk_size} samples at "
                             f"{self.codec.sample_rate_input} Hz) before generating")
        if steps < 1:
            raise InputError("steps must be at least 1")
        self._check_usable()
        self.interrupted = True  # until every step below has been read by the LM
        for _ in range(steps):  # the LM reads every step's tokens, so a further call continues from them
            new, qfeats = _sample(self.lm, self.session, self.feats, self.sampling, self.generators)
            self.feats, self.state = yield from _decode_and_read(self.lm, self.session, new, qfeats, self.state)
        self.interrupted = False


def _continue(lm, bos_sig, sample_rate, bos_toks, max_gen_secs, max_gen_toks, top_p, top_k, temp, seed):
    """The prompts as tokens, the number of steps, then `generate_steps`: shared by `generate` and `stream`."""
    rows = prompt_tokens(lm, bos_sig, sample_rate, bos_toks)
    steps = _num_steps(lm, max(len(r) for r in rows), max_gen_secs, max_gen_toks)
    return generate_steps(lm, rows, steps, top_p, top_k, temp, seed)


def generate(
    lm: "WavSLM",
    bos_sig: Prompt | None = None,
    sample_rate: int | None = None,
    bos_toks: Prompt | None = None,
    max_gen_secs: float | None = None,
    max_gen_toks: int | None = None,
    top_p: float | None = 0.3,
    top_k: int | None = None,
    temp: float = 0.8,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Continue spoken prompts (`bos_sig` at `sample_rate`) or token prompts (`bos_toks`).

    Either is a batch tensor or a list of rows of different lengths (each row continues as if alone).
    Returns `(gen_sig (B, N), gen_toks (B, T))`: the continuation only, at `sample_rate` when given,
    else at the codec's output rate. Defaults to a continuation as long as the prompt.
    """
    parts = list(_continue(lm, bos_sig, sample_rate, bos_toks, max_gen_secs, max_gen_toks, top_p, top_k, temp, seed))
    gen_toks = torch.cat([t for t, _ in parts], dim=1)
    gen_sig = torch.cat([a for _, a in parts], dim=1)
    if sample_rate is not None:
        gen_sig = resample(gen_sig, lm.codec.sample_rate_output, sample_rate)
    return gen_sig, gen_toks


def stream(
    lm: "WavSLM",
    bos_sig: Prompt | None = None,
    sample_rate: int | None = None,
    bos_toks: Prompt | None = None,
    max_gen_secs: float | None = None,
    max_gen_toks: int | None = None,
    top_p: float | None = 0.3,
    top_k: int | None = None,
    temp: float = 0.8,
    seed: int | None = None,
) -> Iterator[Tensor]:
    """Yield the continuation's audio `(B, C * hop)` at the codec's output rate, one step (80 ms) at a time."""
    for _, audio in _continue(lm, bos_sig, sample_rate, bos_toks, max_gen_secs, max_gen_toks, top_p, top_k, temp, seed):
        yield audio
