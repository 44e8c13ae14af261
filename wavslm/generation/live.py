"""Live sessions: continue speech while it is still arriving."""

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..codec import CodecStream
from ..errors import InputError
from ..modules.transformer import TransformerState
from .loops import decode_then_read, next_chunk
from .prompts import read_tokens
from .sampling import Sampling, row_generators

if TYPE_CHECKING:
    from ..lm import WavSLM
    from .batch import LiveBatch


class LiveSession:
    """Continue speech while it is still arriving: `feed` prompt audio as it comes (any lengths), then
    `generate`. Every complete 80 ms chunk is encoded, decompressed, carried through the waveform
    decoder's stream and read by the LM as soon as it arrives, so when the prompt ends only one step
    stands between it and the first audio of the continuation.

    Feeding a prompt of whole chunks equals `generate_steps` on its tokens (the same continuation for the
    same seed); samples of a last incomplete chunk are never heard by the LM. Use as a context manager
    or call `close()`; one session serves one conversation (`batch_size` rows fed together). A
    single-row session can also be stepped with others in a `LiveBatch`.
    """

    def __init__(self, lm: "WavSLM", batch_size: int = 1, top_p: float | None = None, top_k: int | None = None,
                 temp: float = 0.8, seed: int | None = None):
        self.sampling = Sampling(temp, top_p, top_k)
        self.lm, self.codec = lm, lm.require_codec()
        self.generators = row_generators(batch_size, seed, next(lm.parameters()).device)
        self.stream = self.codec.streaming(batch_size=batch_size)
        self.feats: Tensor | None = None
        self.state = None
        self.interrupted = False
        self.batch: LiveBatch | None = None  # the batch stepping this session, while it is in one

    @property
    def batch_size(self) -> int:
        return self.stream.batch_size

    def __enter__(self) -> "LiveSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the session's state (taking it out of its batch first, if it is in one); safe to call twice."""
        if self.batch is not None:
            self.batch.leave([self], keep_state=False)
        self.stream.reset()
        self.feats = self.state = None

    def check_usable(self) -> None:
        """Raise, in one sentence, if the session cannot be fed or continued now."""
        if self.batch is not None:
            raise InputError("this live session is stepping in a LiveBatch; take it out with leave() first")
        if self.interrupted:
            raise InputError("this live session's state is gone (its last generate was stopped mid-step, or its batch "
                             "let it go without it); open a new session")

    def resume(self, synthesis: "CodecStream", state: TransformerState, feats: Tensor) -> None:
        """Take up generation state that was carried elsewhere (a `LiveBatch` row, a batched prompt read):
        the decompressor and decoder streams of `synthesis`, the LM's `state` and its last features."""
        self.stream.adopt(synthesis)
        self.state, self.feats, self.batch = state, feats, None

    def drop_state(self) -> None:
        """Forget the generation state (its batch let it go without it): the session can only be closed."""
        self.state, self.feats, self.batch = None, None, None
        self.interrupted = True

    def hand_over(self, batch: "LiveBatch") -> tuple[CodecStream, TransformerState, Tensor]:
        """Give this session's generation state to `batch`, which steps it from now on: returns the stream,
        the LM's state and its last features (the session keeps its own encoder stream)."""
        self.check_usable()
        if self.feats is None or self.batch_size != 1:
            raise InputError("a LiveBatch takes fed single-row sessions of its own model")
        handed = (self.stream, self.state, self.feats)
        self.batch, self.state, self.feats = batch, None, None
        return handed

    @torch.inference_mode()
    def feed(self, sig: Tensor) -> Tensor:
        """Append prompt audio `sig (B, n)` at the codec's input rate; returns the tokens of the chunks it
        completed `(B, 4k)`, which the LM has already read. (Feeding after `generate` continues the
        conversation: the LM hears the new audio after its own continuation.)"""
        self.check_usable()
        toks = self.stream.encode(sig)
        if toks.shape[1]:
            self.feats, self.state = read_tokens(self.lm, self.stream, toks, self.state)
        return toks

    @torch.inference_mode()
    def feed_tokens(self, toks: Tensor) -> None:
        """Append prompt tokens `(B, 4k)` (whole chunks, e.g. from `prompt_tokens`): decompressed, carried
        through the decoder's stream and read by the LM, as `feed` does with the tokens it encodes."""
        if toks.shape[-1] % self.lm.toks_per_step:
            raise InputError(f"feed whole chunks of {self.lm.toks_per_step} tokens, got {toks.shape[-1]}")
        self.check_usable()
        self.feats, self.state = read_tokens(self.lm, self.stream, toks, self.state)

    @torch.inference_mode()
    def generate(self, steps: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Continue what was fed for `steps` steps of 4 tokens: yields `(toks (B, 4), audio (B, 4 * hop))`.
        Calling it again continues the continuation."""
        self.check_usable()
        if self.feats is None:
            raise InputError(f"feed at least one whole chunk of prompt audio ({self.codec.chunk_size} samples at "
                             f"{self.codec.sample_rate_input} Hz) before generating")
        if steps < 1:
            raise InputError("steps must be at least 1")
        samplings = [self.sampling] * self.batch_size
        self.interrupted = True  # until every step below has been read by the LM
        for _ in range(steps):  # the LM reads every step's tokens, so a further call continues from them
            toks, qfeats = next_chunk(self.lm, self.stream, self.feats, samplings, self.generators)
            self.feats, self.state = yield from decode_then_read(self.lm, self.stream, toks, qfeats, self.state)
        self.interrupted = False
