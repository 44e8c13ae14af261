"""Prompts: audio or tokens in, token rows out; and the prompt read that readies a continuation.

A prompt is a tensor `(B, N)` / `(B, T)` or a list of rows of different lengths. Reading a prompt runs its
tokens through the codec's decompressor, carries the waveform decoder's stream over them (without
rendering their audio: only its state matters) and lets the LM read them; a continuation then needs
one step per chunk.
"""

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..audio import resample
from ..codec import Codec, CodecStream
from ..errors import InputError
from ..modules.transformer import TransformerState

if TYPE_CHECKING:
    from ..lm import WavSLM

Prompt = Tensor | list[Tensor]

# The longest prompt read, audio or tokens (checked before any work). Memory grows linearly with the
# prompt (it is read in windows): 30 minutes peaked at 1.7 GB with the bundled model, 10 minutes at 1.0 GB.
MAX_PROMPT_SECONDS = 1800.0


def prompt_tokens(lm: "WavSLM", bos_sig: Prompt | None, sample_rate: int | None, bos_toks: Prompt | None) -> list[Tensor]:
    """The prompts as token rows `(T_b,)`, each left-trimmed to whole chunks of `toks_per_step`.

    Training sees chunks aligned to the start of a sequence; dropping the first `T % 4` tokens (under
    80 ms) keeps each prompt's chunks where training put them, so its last 4 logits predict one whole
    chunk. Spoken prompts of the same length are encoded in one batch.
    """
    if (bos_sig is None) == (bos_toks is None):
        raise InputError("give exactly one prompt: bos_sig (audio) or bos_toks (tokens)")
    codec = lm.require_codec()
    if bos_sig is not None:
        if sample_rate is None:
            raise InputError("sample_rate is required with bos_sig")
        sigs = _rows(bos_sig, "bos_sig")
        check_prompt_seconds(max(s.shape[-1] for s in sigs) / sample_rate)
        rows = encode_rows(codec, [resample(sig.reshape(1, -1), sample_rate, codec.sample_rate_input) for sig in sigs])
    else:
        rows = []
        for toks in _rows(bos_toks, "bos_toks"):
            if toks.dtype not in (torch.int32, torch.int64) or toks.numel() == 0:
                raise InputError("bos_toks must be non-empty integer tokens (B, T) or a list of (T,)")
            if int(toks.min()) < 0 or int(toks.max()) >= lm.config.vocab_size:
                raise InputError(f"bos_toks must lie in [0, {lm.config.vocab_size})")
            rows.append(toks.reshape(-1).long())
        check_prompt_seconds(max(len(r) for r in rows) / codec.frame_rate)
    C = lm.toks_per_step
    shortest = min(len(r) for r in rows)
    if shortest < C:
        raise InputError(f"the prompt is shorter than one chunk ({C} tokens = {1000 * C / codec.frame_rate:.0f} ms)")
    return [r[len(r) % C :] for r in rows]


def encode_rows(codec: Codec, sigs: list[Tensor]) -> list[Tensor]:
    """Token rows `(T_b,)` of signals `(1, N_b)` at the codec's input rate; equal lengths share one batch."""
    rows: list[Tensor | None] = [None] * len(sigs)
    for index in by_length(sigs):
        for i, toks in zip(index, codec.encode(torch.cat([sigs[i] for i in index])), strict=True):
            rows[i] = toks
    return rows


def by_length(rows: list[Tensor]) -> list[list[int]]:
    """Indices of `rows` grouped by length, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.shape[-1], []).append(i)
    return list(groups.values())


def check_prompt_seconds(seconds: float) -> None:
    """Refuse a prompt longer than `MAX_PROMPT_SECONDS`, in one sentence."""
    if seconds > MAX_PROMPT_SECONDS:
        raise InputError(f"the prompt lasts {seconds:.0f} s; at most {MAX_PROMPT_SECONDS:.0f} s "
                         f"({MAX_PROMPT_SECONDS / 60:.0f} min) are read: cut it to its last part")


def _rows(prompt: Prompt, name: str) -> list[Tensor]:
    """The rows of a prompt `(B, N)`, `(N,)` or a list of `(N_b,)` or `(1, N_b)`, each as `(N,)`; one sentence
    otherwise."""
    shape = f"{name} must be a tensor (B, N) or (N,), or a list of (N,) or (1, N) tensors"
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise InputError(f"{name} is an empty list")
        if not all(isinstance(row, Tensor) and (row.ndim == 1 or (row.ndim == 2 and len(row) == 1)) for row in prompt):
            kinds = sorted({type(row).__name__ if not isinstance(row, Tensor) else f"{tuple(row.shape)} tensor"
                            for row in prompt})
            raise InputError(f"{shape}; got a list of {', '.join(kinds)}")
        return [row.reshape(-1) for row in prompt]
    if not isinstance(prompt, Tensor) or prompt.ndim not in (1, 2):
        got = f"a {prompt.ndim}-D tensor" if isinstance(prompt, Tensor) else f"a {type(prompt).__name__}"
        raise InputError(f"{shape}; got {got}")
    if prompt.ndim == 2 and prompt.shape[0] == 0:
        raise InputError(f"{name} holds no rows (shape {tuple(prompt.shape)})")
    return list(prompt) if prompt.ndim == 2 else [prompt]


def read_tokens(lm: "WavSLM", stream: CodecStream, toks: Tensor, state: TransformerState | None = None):
    """Tokens `(B, T)` through `stream` (decompressed; the decoder's state carried, its audio not rendered)
    and read by the LM after `state`; returns the LM's `(feats, state)`."""
    qfeats = stream.dequantize(toks)
    stream.advance(qfeats)
    return lm.encoder(qfeats, state)


def read_prompts(lm: "WavSLM", rows: list[Tensor], device: torch.device):
    """Read token prompts (rows from `prompt_tokens`) as one batch: returns `(stream, feats, state)`.

    Prompts of different lengths go through the codec one by one (each as if alone), then left-padded
    into the LM, whose padded keys are masked: every row continues exactly as it would by itself.
    """
    codec = lm.require_codec()
    if len({len(r) for r in rows}) == 1:
        stream = codec.streaming(batch_size=len(rows))
        feats, state = read_tokens(lm, stream, torch.stack(rows).to(device))
        return stream, feats, state
    streams, padded = [], []
    longest = max(len(r) for r in rows)
    for row in rows:
        one = codec.streaming(batch_size=1)
        qfeats = one.dequantize(row[None].to(device))
        one.advance(qfeats)
        streams.append(one)
        padded.append(torch.nn.functional.pad(qfeats, (0, 0, longest - len(row), 0)))
    valid_from = torch.tensor([longest - len(r) for r in rows], device=device)
    feats, state = lm.encoder(torch.cat(padded), valid_from=valid_from)
    return CodecStream.stack(streams), feats, state
