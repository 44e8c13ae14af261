"""Many live sessions stepped together: a server's conversations share one batch.

A `LiveBatch` holds the generation state of single-row `LiveSession`s of one model: their decompressor
and decoder streams stacked, and their LM caches lined up on one grid (`TransformerState.align`: each
row's keys right-aligned, the slots before them masked). `join` copies a session's state in once,
`step` advances every member by one chunk with one batched pass through the LM, the decompressor and
the decoder, appending each row's new keys in place (no copies), and `leave` hands a session its own
state back. Members stand at different positions and may sample differently; each computes what it
would alone, up to float rounding.

`open_sessions` reads many prompts at once: prompts of one length go through the codec and the LM in
one batch.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..codec import CodecStream
from ..errors import InputError
from ..modules.transformer import TransformerState
from .live import LiveSession
from .loops import next_chunk
from .prompts import by_length, read_tokens
from .sampling import Sampling

if TYPE_CHECKING:
    from ..lm import WavSLM


class LiveBatch:
    """Single-row live sessions of one model, stepped together (see the module notes)."""

    def __init__(self, lm: "WavSLM"):
        self.lm = lm
        self.members: list[LiveSession] = []
        self.stream: CodecStream | None = None  # the members' decompressor and decoder streams, stacked
        self.state: TransformerState | None = None  # the LM's caches, lined up
        self.feats: Tensor | None = None  # the LM's last chunk of features per member (C positions)
        self._unread: Tensor | None = None  # the last step's features, not yet read by the LM

    def __len__(self) -> int:
        return len(self.members)

    @property
    def _sizes(self) -> tuple[int, int]:
        return self.lm.toks_per_step, self.lm.encoder.window_size

    @torch.inference_mode()
    def join(self, lives: Sequence[LiveSession]) -> None:
        """Take fed, single-row sessions of this batch's model in (their state is copied in once)."""
        for live in lives:  # everything is checked before any session is taken in
            live.check_usable()
            if live.lm is not self.lm or live.batch_size != 1 or live.feats is None:
                raise InputError("a LiveBatch takes fed single-row sessions of its own model")
        if len({id(live) for live in lives}) < len(lives):
            raise InputError("a session can join a LiveBatch once")
        if not lives:
            return
        self._read()
        C, W = self._sizes
        handed = [live.hand_over(self) for live in lives]
        ours = [(self.stream, self.state, self.feats)] if self.members else []
        self.stream = CodecStream.stack([stream for stream, _, _ in ours + handed], CodecStream.SYNTHESIS)
        self.state = TransformerState.align([state for _, state, _ in ours + handed], C, W)
        self.feats = torch.cat([feats[:, -C:] for _, _, feats in ours + handed])
        self.members += lives

    @torch.inference_mode()
    def leave(self, lives: Sequence[LiveSession], keep_state: bool = True) -> None:
        """Take members out; with `keep_state` each gets its own state back and can `feed` or `generate`
        alone (or join again); without, it is left to be closed. The rows that stay are copied once."""
        if any(live not in self.members for live in lives):
            raise InputError("leave takes members of this batch")
        rows = [self.members.index(live) for live in lives]
        if keep_state or len(rows) < len(self.members):  # the LM state goes on: bring it up to date first
            self._read()
        C, W = self._sizes
        for live, row in zip(lives, rows, strict=True):
            if keep_state:
                live.resume(self.stream.rows([row], CodecStream.SYNTHESIS), self.state.row(row, C, W),
                            self.feats[row : row + 1].clone())
            else:
                live.drop_state()
        stay = [r for r in range(len(self.members)) if r not in rows]
        self.members = [self.members[r] for r in stay]
        if not stay:
            self.stream = self.state = self.feats = self._unread = None
            return
        self.stream = self.stream.rows(stay, CodecStream.SYNTHESIS)
        self.state, self.feats = self.state.rows(stay), self.feats[stay]

    @torch.inference_mode()
    def step(self) -> list[tuple[Tensor, Tensor]]:
        """Advance every member by one step: per member (in `members` order) its `(toks (1, C), audio
        (1, C * hop))`, as its own `generate` would give. The LM reads the step's tokens at the start
        of the next call (or at a join or leave), so the audio comes out first."""
        if not self.members:
            return []
        self._read()
        toks, qfeats = next_chunk(self.lm, self.stream, self.feats, [m.sampling for m in self.members],
                                  [m.generators[0] for m in self.members])
        audio = self.stream.synthesize(qfeats)
        self._unread = qfeats
        return [(toks[r : r + 1], audio[r : r + 1]) for r in range(len(self.members))]

    def _read(self) -> None:
        if self._unread is not None:
            unread, self._unread = self._unread, None  # a read that fails is not tried again
            self.feats, self.state = self.lm.encoder(unread, self.state)


@torch.inference_mode()
def open_sessions(lm: "WavSLM", rows: list[Tensor], samplings: list[Sampling],
                  seeds: list[int | None]) -> list[LiveSession]:
    """Single-row live sessions that have read the token prompts `rows` (from `prompt_tokens`), the
    prompts of one length read in one batch; session b samples with `samplings[b]` seeded `seeds[b]`."""
    sessions = [LiveSession(lm, 1, top_p=s.top_p, top_k=s.top_k, temp=s.temp, seed=seed)
                for s, seed in zip(samplings, seeds, strict=True)]
    device = next(lm.parameters()).device
    C, W = lm.toks_per_step, lm.encoder.window_size
    for index in by_length(rows):
        if any(len(rows[i]) % C for i in index):
            raise InputError(f"prompts must be whole chunks of {C} tokens (rows from prompt_tokens)")
        stream = lm.require_codec().streaming(batch_size=len(index))
        feats, state = read_tokens(lm, stream, torch.stack([rows[i] for i in index]).to(device))
        for row, i in enumerate(index):
            if len(index) == 1:
                sessions[i].resume(stream, state, feats)
            else:
                sessions[i].resume(stream.rows([row], CodecStream.SYNTHESIS), state.row(row, C, W),
                                   feats[row : row + 1, -C:].clone())
    return sessions
