"""One generation step for many independent conversations at once: a server's sessions share a batch.

Each `LiveSession` (one row) keeps its own state: its codec stream and its LM key/value caches at its own
position. `step_together` advances all of them by one step (4 tokens) with one batched pass through the
codec's decompressor and waveform decoder and one through the LM, then hands every session its own state
back, so sessions can join or leave between any two steps.

The LM pass lines the sessions up by their most recent key: each row's cached keys are copied,
right-aligned, into one batch of caches and the slots before a short row's first key are masked
(`valid_from`). Every session's 4 new frames start a chunk (its positions are multiples of 4), so with
the keys right-aligned the distances between queries and keys, and hence the relative position bias
and the chunk mask, are the ones each row sees alone: the batch computes each session's own step
(equal up to float32 rounding). The copies cost `O(window)` per row and layer, small beside the
weights a step reads.
"""

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .codec import CodecStream
from .generation import _next_tokens
from .modules.attention import KVCache
from .modules.transformer import TransformerState

if TYPE_CHECKING:
    from .generation import LiveSession
    from .lm import WavSLM


def read_together(lm: "WavSLM", qfeats: Tensor, states: list[TransformerState]) -> tuple[Tensor, list[TransformerState]]:
    """The LM reads one chunk `qfeats (N, C, D)` for N single-row streams, each at its own position.

    Returns the features `(N, C, D)` and each row's continued state (its own caches, appended in place).
    """
    C, W = lm.config.toks_per_step, lm.encoder.window_size
    if qfeats.shape[1] != C or any(s.pos % C or s.valid_from is not None or s.conv is not None for s in states):
        raise ValueError("read_together takes one whole chunk per row, for unpadded streams at chunk boundaries")
    keep = [max(0, s.pos + C - W) for s in states]  # each row's earliest key still needed
    firsts = [s.caches[0].first_kept(k) for s, k in zip(states, keep, strict=True)]
    counts = [s.pos - first for s, first in zip(states, firsts, strict=True)]  # cached keys each row attends
    past = -(-max(counts) // C) * C  # the virtual positions keep the chunk grid
    batch = []
    for layer in range(len(lm.encoder.layers)):
        cache = KVCache.empty(len(states), lm.encoder.num_heads, lm.encoder.head_dim, past + C, qfeats)
        for row, (s, first, n) in enumerate(zip(states, firsts, counts, strict=True)):
            own = s.caches[layer]
            cache.k[row, :, past - n : past] = own.k[0, :, first - own.start : own.length]
            cache.v[row, :, past - n : past] = own.v[0, :, first - own.start : own.length]
        cache.length = past
        batch.append(cache)
    valid_from = torch.tensor([past - n for n in counts], device=qfeats.device)
    feats, _ = lm.encoder(qfeats, TransformerState(past, batch, None, valid_from))
    out = []
    for row, (s, k) in enumerate(zip(states, keep, strict=True)):
        for own, shared in zip(s.caches, batch, strict=True):
            own.append(shared.k[row : row + 1, :, past : past + C], shared.v[row : row + 1, :, past : past + C], k)
        out.append(TransformerState(s.pos + C, s.caches, None, None))
    return feats, out


@torch.inference_mode()
def step_together(lives: "list[LiveSession]") -> list[tuple[Tensor, Tensor]]:
    """Advance each single-row live session (all of one model, each fed at least one chunk) by one step.

    Returns, per session, its `(toks (1, C), audio (1, C * hop))`, as its own `generate` would.
    """
    if not lives:
        return []
    lm = lives[0].lm
    if any(live.lm is not lm or live.session.batch_size != 1 or live.feats is None or live.interrupted for live in lives):
        raise ValueError("step_together takes fed, single-row live sessions of one model")
    if len(lives) == 1:  # nothing to line up
        return [*lives[0].generate(1)]
    toks = torch.cat([_next_tokens(live.lm, live.feats, live.sampling, live.generators) for live in lives])
    stream = CodecStream.stack([live.session for live in lives])
    qfeats = stream.dequantize(toks)
    audio = stream.synthesize(qfeats)
    feats, states = read_together(lm, qfeats, [live.state for live in lives])
    for row, (live, session, state) in enumerate(zip(lives, stream.split(), states, strict=True)):
        live.session, live.state, live.feats = session, state, feats[row : row + 1]
    return [(toks[row : row + 1], audio[row : row + 1]) for row in range(len(lives))]
