"""The generation loops: whole continuations (`generate`) and audio streams (`stream`, `generate_steps`).

One step feeds 4 new tokens' features to the LM with its key/value cache, takes the logits of the last
4 positions (each predicts the token 4 ahead) and samples the next 4 tokens independently. The codec's
streaming session turns tokens into features for the LM and into audio, carrying state, so every step's
audio is final as soon as it is decoded.
"""

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..audio import resample
from ..codec import CodecStream
from ..errors import InputError
from .prompts import Prompt, prompt_tokens, read_prompts
from .sampling import Sampling, row_generators, sample_rows

if TYPE_CHECKING:
    from ..lm import WavSLM


def next_chunk(lm: "WavSLM", stream: CodecStream, feats: Tensor, samplings: list[Sampling],
               generators: list[torch.Generator | None]) -> tuple[Tensor, Tensor]:
    """The next tokens `(B, C)` sampled from the last C positions of `feats`, and their decompressed
    features `(B, C, D)` (the stream's decompressor advanced)."""
    toks = sample_rows(lm.logits(feats[:, -lm.toks_per_step :]), samplings, generators)
    return toks, stream.dequantize(toks)


def decode_then_read(lm: "WavSLM", stream: CodecStream, toks: Tensor, qfeats: Tensor, state):
    """Yield the step's `(toks, audio)` as soon as the audio is decoded, then return the LM's `(feats,
    state)` after reading `qfeats` (computed only when the consumer asks for the next step)."""
    yield toks, stream.synthesize(qfeats)
    return lm.encoder(qfeats, state)


def num_steps(lm: "WavSLM", prompt_len: int, max_gen_secs: float | None, max_gen_toks: int | None) -> int:
    if max_gen_secs is not None and max_gen_toks is not None:
        raise InputError("give max_gen_secs or max_gen_toks, not both")
    if max_gen_secs is not None and not (isinstance(max_gen_secs, (int, float)) and math.isfinite(max_gen_secs)):
        raise InputError(f"max_gen_secs must be a finite number of seconds, got {max_gen_secs!r}")
    if max_gen_toks is not None and (not isinstance(max_gen_toks, int) or isinstance(max_gen_toks, bool)):
        raise InputError(f"max_gen_toks must be an integer, got {max_gen_toks!r}")
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
    prompts: list[Tensor],
    steps: int,
    top_p: float | None = None,
    top_k: int | None = None,
    temp: float = 0.8,
    seed: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Continue token prompts (rows from `prompt_tokens`) for `steps` steps.

    Yields `(toks (B, C), audio (B, C * hop))` per step, as soon as the step's audio is decoded.
    Row b samples with its own generator seeded `seed + b`.
    """
    samplings = [Sampling(temp, top_p, top_k)] * len(prompts)
    lm.require_codec()
    device = next(lm.parameters()).device
    generators = row_generators(len(prompts), seed, device)
    stream, feats, state = read_prompts(lm, prompts, device)
    with stream:
        for step in range(steps):
            toks, qfeats = next_chunk(lm, stream, feats, samplings, generators)
            if step + 1 == steps:  # nothing reads the last step's features
                yield toks, stream.synthesize(qfeats)
            else:
                feats, state = yield from decode_then_read(lm, stream, toks, qfeats, state)


def _continue(lm, bos_sig, sample_rate, bos_toks, max_gen_secs, max_gen_toks, top_p, top_k, temp, seed):
    """The prompts as tokens, the number of steps, then `generate_steps`: shared by `generate` and `stream`."""
    rows = prompt_tokens(lm, bos_sig, sample_rate, bos_toks)
    steps = num_steps(lm, max(len(r) for r in rows), max_gen_secs, max_gen_toks)
    return generate_steps(lm, rows, steps, top_p, top_k, temp, seed)


def generate(
    lm: "WavSLM",
    bos_sig: Prompt | None = None,
    sample_rate: int | None = None,
    bos_toks: Prompt | None = None,
    max_gen_secs: float | None = None,
    max_gen_toks: int | None = None,
    top_p: float | None = None,
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
    top_p: float | None = None,
    top_k: int | None = None,
    temp: float = 0.8,
    seed: int | None = None,
) -> Iterator[Tensor]:
    """Yield the continuation's audio `(B, C * hop)` at the codec's output rate, one step (80 ms) at a time."""
    for _, audio in _continue(lm, bos_sig, sample_rate, bos_toks, max_gen_secs, max_gen_toks, top_p, top_k, temp, seed):
        yield audio
