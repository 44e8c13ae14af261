"""The codec: speech <-> one stream of tokens (FocalCodec-Stream layout), offline and streaming.

    encode:      sig (B, N) 16 kHz -> WavLM feats (B, T, D) -> compressor lats (B, T, bits) -> toks (B, T)
    dequantize:  toks (B, T) -> codes (B, T, bits) -> decompressor -> qfeats (B, T, D)   (the LM's input)
    synthesize:  qfeats (B, T, D) -> decoder -> sig (B, T * hop) at 24 kHz
    decode:      synthesize(dequantize(toks))

`codec.streaming(batch_size)` gives a session that does the same 80 ms at a time, carrying every
module's state; its results equal the offline ones.
"""

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from . import hub
from .config import buildable, from_dict
from .errors import InputError
from .modules.bsq import BinarySphericalQuantizer
from .modules.focal import FocalCompressor, FocalDecompressor
from .modules.harmonic import HarmonicNoise, HarmonicNoiseConfig
from .modules.state import clone_state, map_state, stack_states
from .modules.vocos import Vocos, VocosConfig
from .modules.wavenext import WaveNeXt, WaveNeXtConfig
from .wavlm import WavLM, WavLMConfig

# Long inputs to a causal codec go through it in pieces of this many chunks (30 s at 80 ms a chunk).
PIECE_CHUNKS = 375


def exact_float32(fn: Callable) -> Callable:
    """`fn` under `torch.no_grad()` with cuDNN's TF32 convolutions off. cuDNN rounds float32 convolution
    inputs to TF32 by default; on an H200 that flipped 1% of a paper-size codec's tokens against the CPU
    (audio off by 7e-4) and with it off all tokens agree (audio within 4e-6; `bench/gpu_check.py`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            if not torch.backends.cudnn.is_available():
                return fn(*args, **kwargs)
            cudnn = torch.backends.cudnn
            with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                             allow_tf32=False):
                return fn(*args, **kwargs)

    return wrapper

_PARTS: dict[str, dict[str, Callable[[dict], nn.Module]]] = {
    "encoder": {"WavLM": lambda c: WavLM(from_dict(WavLMConfig, c, "encoder_config"))},
    "compressor": {"FocalEncoder": FocalCompressor.from_config},
    "quantizer": {"BinarySphericalQuantizer": BinarySphericalQuantizer.from_config},
    "decompressor": {"FocalDecoder": FocalDecompressor.from_config},
    "decoder": {
        "WaveNeXt": lambda c: WaveNeXt(WaveNeXtConfig.from_dict(c)),
        "Vocos": lambda c: Vocos(VocosConfig.from_dict(c)),
        "HarmonicNoise": lambda c: HarmonicNoise(HarmonicNoiseConfig.from_dict(c)),
    },
}


@dataclass
class CodecConfig:
    """The released FocalCodec `config.json`: a module name and its config for each of the five parts."""

    encoder_name: str = "WavLM"
    encoder_config: dict[str, Any] = field(default_factory=dict)
    compressor_name: str = "FocalEncoder"
    compressor_config: dict[str, Any] = field(default_factory=dict)
    quantizer_name: str = "BinarySphericalQuantizer"
    quantizer_config: dict[str, Any] = field(default_factory=dict)
    decompressor_name: str = "FocalDecoder"
    decompressor_config: dict[str, Any] = field(default_factory=dict)
    decoder_name: str = "WaveNeXt"
    decoder_config: dict[str, Any] = field(default_factory=dict)


class Codec(nn.Module):
    """WavLM encoder -> focal compressor -> binary spherical quantizer -> focal decompressor -> decoder."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        for part, builders in _PARTS.items():
            name = getattr(config, f"{part}_name")
            if name not in builders:
                raise InputError(f"unknown {part}_name {name!r}; expected one of {sorted(builders)}")
            with buildable(f"codec {part}"):
                self.add_module(part, builders[name](getattr(config, f"{part}_config")))
        if self.compressor.config.output_dim != self.quantizer.bits:
            raise InputError(
                f"the compressor emits {self.compressor.config.output_dim} dims but the quantizer needs "
                f"{self.quantizer.bits} (codebook_size {self.quantizer.codebook_size})"
            )
        declared = getattr(self.decoder, "sample_rate", None)  # a decoder that synthesises at a set rate
        if declared is not None and declared != self.sample_rate_output:
            raise InputError(f"the decoder synthesises at {declared} Hz but the codec's frames give "
                             f"{self.sample_rate_output} Hz (frame rate x hop_length); make them agree")

    # ---- rates and sizes --------------------------------------------------------------------------

    sample_rate_input = 16000

    @property
    def samples_per_token(self) -> int:
        """Input samples per token (320 at 50 tokens/s)."""
        return self.encoder.config.hop_length * self.compressor.downsample_factor

    @property
    def frame_rate(self) -> float:
        """Tokens per second."""
        return self.sample_rate_input / self.samples_per_token

    @property
    def sample_rate_output(self) -> int:
        frames_per_token = self.decompressor.upsample_factor
        return round(self.frame_rate * frames_per_token * self.decoder.hop_length)

    @property
    def chunk_size(self) -> int:
        """Input samples per streaming step (1280 = 80 ms = 4 tokens for the released models)."""
        return self.encoder.config.hop_length * (1 + self.encoder.config.lookahead_size)

    @property
    def vocab_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def feature_dim(self) -> int:
        """Width of `qfeats`, the LM's input."""
        return self.decompressor.config.output_dim

    @property
    def causal(self) -> bool:
        return all(m.causal for m in (self.encoder.config, self.compressor, self.decompressor, self.decoder))

    @property
    def latency(self) -> float | None:
        """Algorithmic latency in milliseconds of a streaming codec (None if not causal)."""
        return 1000.0 * self.chunk_size / self.sample_rate_input if self.causal else None

    # ---- offline ----------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @exact_float32
    def encode(self, sig: Tensor) -> Tensor:
        """`sig (B, N)` (or `(N,)`) float at `sample_rate_input` -> `toks (B, T)` int64.

        A causal codec encodes a long input in pieces of `PIECE_CHUNKS` chunks, carrying its modules'
        state (the last piece holds what remains): the one-pass result, with memory linear in the length.
        """
        sig = self._check_sig(sig, self.chunk_size).to(self._device())
        step = self.chunk_size * PIECE_CHUNKS
        if not self.causal or sig.shape[1] <= step:
            feats, _ = self.encoder(sig)
            lats, _ = self.compressor(feats)
            return self.quantizer.lats_to_toks(lats)
        toks, encoder, compressor = [], None, None
        for start in range(0, sig.shape[1], step):
            feats, encoder = self.encoder(sig[:, start : start + step], encoder)
            lats, compressor = self.compressor(feats, compressor)
            toks.append(self.quantizer.lats_to_toks(lats))
        return torch.cat(toks, dim=1)

    @exact_float32
    def dequantize(self, toks: Tensor) -> Tensor:
        """`toks (B, T) -> qfeats (B, T * upsample, D)`, the features the language model reads."""
        qfeats, _ = self.decompressor(self.quantizer.toks_to_codes(self._check_toks(toks)))
        return qfeats

    @exact_float32
    def synthesize(self, qfeats: Tensor, matching_set: Tensor | None = None, topk: int = 4) -> Tensor:
        """`qfeats (B, T, D) -> sig (B, T * hop)` at `sample_rate_output`.

        With a `matching_set (M, D)` (see `matching_set`), each frame is first replaced by the mean of its
        `topk` nearest target frames (kNN voice conversion): the words stay, the voice becomes the target's.
        """
        if matching_set is not None:
            qfeats = knn_average(qfeats, matching_set.to(qfeats), topk)
        sig, _ = self.decoder(qfeats)
        return sig

    def decode(self, toks: Tensor, matching_set: Tensor | None = None, topk: int = 4) -> Tensor:
        """`toks (B, T) -> sig (B, N')` at `sample_rate_output` (optionally in a target voice, see `synthesize`).

        A causal codec decodes a long token sequence through its stream in pieces of `PIECE_CHUNKS` chunks,
        so memory stays linear in the length.
        """
        C = self.chunk_size // self.encoder.config.hop_length
        step = C * PIECE_CHUNKS
        toks = self._check_toks(toks)
        if not self.causal or toks.shape[1] <= step:
            return self.synthesize(self.dequantize(toks), matching_set, topk)
        with self.streaming(toks.shape[0], matching_set, topk) as stream:
            return torch.cat([stream.decode(toks[:, start : start + step]) for start in range(0, toks.shape[1], step)],
                             dim=1)

    @exact_float32
    def matching_set(self, sigs: list[Tensor]) -> Tensor:
        """Encoder features `(M, D)` of a target speaker's utterances (each `(N,)` or `(1, N)` at 16 kHz)."""
        if not sigs:
            raise InputError("the matching set needs at least one utterance of the target speaker")
        feats = [self.encoder(self._check_sig(sig.reshape(1, -1), self.chunk_size).to(self._device()))[0][0] for sig in sigs]
        return torch.cat(feats)

    def streaming(self, batch_size: int = 1, matching_set: Tensor | None = None, topk: int = 4) -> "CodecStream":
        """A session that encodes and decodes 80 ms at a time: `with codec.streaming(B) as s: ...`."""
        if not self.causal:
            raise InputError("this codec is not causal, so it cannot stream; use encode/decode on whole signals")
        return CodecStream(self, batch_size, matching_set=matching_set, topk=topk)

    # ---- input checks -----------------------------------------------------------------------------

    def _check_sig(self, sig: Tensor, minimum: int) -> Tensor:
        if not isinstance(sig, Tensor) or not sig.is_floating_point():
            raise InputError("the codec expects a float waveform tensor (B, N) at 16 kHz")
        if sig.ndim == 1:
            sig = sig[None]
        if sig.ndim != 2:
            raise InputError(f"the codec expects a waveform (B, N) or (N,), got shape {tuple(sig.shape)}")
        if sig.shape[1] < minimum:
            raise InputError(
                f"the waveform has {sig.shape[1]} samples, shorter than one chunk ({minimum} samples = "
                f"{1000 * minimum / self.sample_rate_input:.0f} ms)"
            )
        if not torch.isfinite(sig).all():
            raise InputError("the waveform contains NaN or infinite samples")
        return sig.float()

    def _check_toks(self, toks: Tensor) -> Tensor:
        if not isinstance(toks, Tensor) or toks.is_floating_point() or toks.ndim != 2:
            raise InputError("tokens must be an integer tensor (B, T)")
        if toks.numel() and (int(toks.min()) < 0 or int(toks.max()) >= self.vocab_size):
            raise InputError(f"tokens must lie in [0, {self.vocab_size})")
        return toks.to(self._device())

    # ---- loading and saving -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, ref: str | os.PathLike) -> "Codec":
        """Load a released FocalCodec folder, `.json` or Hub id (older q/k/v-split checkpoints included)."""
        resolved = hub.resolve(ref)
        config = from_dict(CodecConfig, hub.read_json(resolved.config), f"codec config '{resolved.config}'")
        if resolved.weights is None:
            raise InputError(f"codec '{ref}' has no weights (model.safetensors) beside {resolved.config.name}")
        codec = cls(config)
        state = _remap_released(hub.load_weights(resolved.weights), list(codec.state_dict()))
        hub.load_state(codec, state, resolved.weights)
        return codec.eval()

    def save_pretrained(self, folder: str | os.PathLike):
        """Write the released layout: `config.json` + `model.safetensors`."""
        return hub.save_folder(folder, vars(self.config).copy(), self.state_dict())


def knn_average(feats: Tensor, matching_set: Tensor, k: int = 4, block: int = 8192) -> Tensor:
    """Replace each frame of `feats (B, T, D)` by the mean of its `k` most cosine-similar rows of `matching_set (M, D)`.

    The matching set is scanned in blocks of `block` rows, keeping a running top-k, so memory stays
    `B * T * (block + k)` however long the target recordings are.
    """
    if matching_set.ndim != 2 or matching_set.shape[1] != feats.shape[-1] or not len(matching_set):
        raise InputError(f"the matching set must be (M, {feats.shape[-1]}) features, got {tuple(matching_set.shape)}")
    query = torch.nn.functional.normalize(feats.flatten(0, 1), dim=-1)
    keys = torch.nn.functional.normalize(matching_set, dim=-1)
    k = min(k, len(keys))
    best_sim = query.new_full((len(query), 0), float("-inf"))
    best_idx = torch.zeros(len(query), 0, dtype=torch.long, device=query.device)
    for start in range(0, len(keys), block):
        sim = query @ keys[start : start + block].t()
        idx = torch.arange(start, start + sim.shape[1], device=query.device).expand_as(sim)
        best_sim, pick = torch.cat([best_sim, sim], 1).topk(k, dim=1)
        best_idx = torch.cat([best_idx, idx], 1).gather(1, pick)
    return matching_set[best_idx].mean(dim=1).view_as(feats)


def first_release(keys) -> bool:
    """Whether checkpoint `keys` are the first FocalCodec release's (separate q/k/v: `_remap_released`)."""
    return any(k.endswith(("q_proj.weight", "q_proj.bias")) for k in keys)


def _remap_released(state: dict[str, Tensor], own_keys: list[str]) -> dict[str, Tensor]:
    """Bring the first FocalCodec release (separate q/k/v, other focal module names) to today's keys.

    That release named the focal layers differently but in the same order, so they map by sorted key.
    """
    if not first_release(state):
        return state
    out: dict[str, Tensor] = {}
    for key in own_keys:
        if key.startswith("encoder.") and ".qkv_proj." in key:
            head, kind = key.rsplit(".qkv_proj.", 1)
            out[key] = torch.cat([state[f"{head}.{p}_proj.{kind}"] for p in "qkv"], dim=0)
        elif key.startswith(("encoder.", "decoder.")) and key in state:
            out[key] = state[key]
    for part in ("compressor.", "decompressor."):
        mine = sorted(k for k in own_keys if k.startswith(part))
        theirs = sorted(k for k in state if k.startswith(part))
        out.update({m: state[t] for m, t in zip(mine, theirs, strict=False)})
    return out


@dataclass
class CodecStream:
    """Streaming session: each verb carries its own modules' state between calls.

    `encode` buffers samples and returns the tokens of every complete chunk (4 tokens per 1280 samples);
    `dequantize` and `synthesize` (and `decode`, both at once) accept any number of tokens/frames, and
    equal the offline results when calls bring whole chunks.
    """

    codec: Codec
    batch_size: int
    _pending: Tensor | None = None
    matching_set: Tensor | None = None
    topk: int = 4
    _encoder: Any = None
    _compressor: Any = None
    _decompressor: Any = None
    _decoder: Any = None

    def __enter__(self) -> "CodecStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def reset(self) -> None:
        self._pending = self._encoder = self._compressor = self._decompressor = self._decoder = None

    def _check_batch(self, x: Tensor) -> Tensor:
        if x.ndim == 1 and self.batch_size == 1:
            x = x[None]
        if x.shape[0] != self.batch_size:
            raise InputError(f"this stream was opened for batch size {self.batch_size}, got {x.shape[0]}")
        return x

    @exact_float32
    def encode(self, sig: Tensor) -> Tensor:
        """Append `sig (B, n)` samples; return the tokens `(B, 4k)` of the k chunks now complete."""
        codec = self.codec
        sig = self._check_batch(codec._check_sig(sig, 0) if sig.ndim == 2 else codec._check_sig(sig, 0)[0])
        sig = sig.to(codec._device())
        buf = sig if self._pending is None else torch.cat([self._pending, sig], dim=1)
        usable = buf.shape[1] - buf.shape[1] % codec.chunk_size
        self._pending = buf[:, usable:]
        if usable == 0:
            return torch.zeros(self.batch_size, 0, dtype=torch.long, device=buf.device)
        feats, self._encoder = codec.encoder(buf[:, :usable], self._encoder)
        lats, self._compressor = codec.compressor(feats, self._compressor)
        return codec.quantizer.lats_to_toks(lats)

    @exact_float32
    def dequantize(self, toks: Tensor) -> Tensor:
        """`toks (B, T) -> qfeats (B, T, D)`, continuing the decompressor's stream."""
        codes = self.codec.quantizer.toks_to_codes(self.codec._check_toks(self._check_batch(toks)))
        qfeats, self._decompressor = self.codec.decompressor(codes, self._decompressor)
        return qfeats

    @exact_float32
    def synthesize(self, qfeats: Tensor) -> Tensor:
        """`qfeats (B, T, D) -> sig (B, T * hop)`, continuing the decoder's stream."""
        qfeats = self._check_batch(qfeats)
        if self.matching_set is not None:
            qfeats = knn_average(qfeats, self.matching_set.to(qfeats), self.topk)
        sig, self._decoder = self.codec.decoder(qfeats, self._decoder)
        return sig

    @exact_float32
    def advance(self, qfeats: Tensor) -> None:
        """Carry the decoder's stream over `qfeats (B, T, D)` without keeping its audio (a prompt read
        before a continuation). Decoders with an `advance(qfeats, state)` skip rendering the samples."""
        qfeats = self._check_batch(qfeats)
        if self.matching_set is not None:
            qfeats = knn_average(qfeats, self.matching_set.to(qfeats), self.topk)
        decoder = self.codec.decoder
        if hasattr(decoder, "advance"):
            self._decoder = decoder.advance(qfeats, self._decoder)
        else:
            _, self._decoder = decoder(qfeats, self._decoder)

    def decode(self, toks: Tensor) -> Tensor:
        """`toks (B, T) -> sig (B, T * hop)`: `synthesize(dequantize(toks))`."""
        return self.synthesize(self.dequantize(toks))

    PARTS = ("_encoder", "_compressor", "_decompressor", "_decoder")
    SYNTHESIS = ("_decompressor", "_decoder")  # the parts a generation step advances

    @classmethod
    def stack(cls, streams: "list[CodecStream]", parts: tuple[str, ...] = PARTS) -> "CodecStream":
        """One batched session continuing each of `streams` (rows in order) in the verbs whose `parts` it
        takes (default: all; `SYNTHESIS` for `dequantize` and `synthesize` only, whatever the encoders hold)."""
        if "_encoder" in parts and any(s._pending is not None and s._pending.shape[1] for s in streams):
            raise InputError("cannot stack streams that hold part of a chunk; stack them on chunk boundaries")
        taken = {name: None if getattr(streams[0], name) is None else stack_states([getattr(s, name) for s in streams])
                 for name in parts}
        first = streams[0]
        return cls(first.codec, sum(s.batch_size for s in streams), None, first.matching_set, first.topk, **taken)

    def rows(self, index: list[int], parts: tuple[str, ...] = PARTS) -> "CodecStream":
        """A session continuing the rows `index` of this one in the verbs whose `parts` it takes (a copy)."""
        if "_encoder" in parts and self._pending is not None and self._pending.shape[1]:
            raise InputError("cannot split a stream that holds part of a chunk; split it on chunk boundaries")
        taken = {name: map_state(lambda t: t[index], getattr(self, name)) for name in parts}
        return replace(self, batch_size=len(index), _pending=None, **{**dict.fromkeys(self.PARTS), **taken})

    def adopt(self, other: "CodecStream", parts: tuple[str, ...] = SYNTHESIS) -> None:
        """Continue `other`'s state (same batch size) in the verbs whose `parts` it takes; the others keep
        their own."""
        if other.batch_size != self.batch_size:
            raise InputError(f"cannot adopt a stream of batch size {other.batch_size} into one of {self.batch_size}")
        for name in parts:
            setattr(self, name, getattr(other, name))

    def split(self) -> "list[CodecStream]":
        """One session per row, each continuing its row of this one (the inverse of `stack`)."""
        return [self.rows([b]) for b in range(self.batch_size)]

    def snapshot(self) -> "CodecStream":
        """An independent copy of this session (advance either without touching the other)."""
        return replace(self, **{k: clone_state(v) for k, v in vars(self).items() if k.startswith("_")})
