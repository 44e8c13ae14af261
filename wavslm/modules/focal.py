"""FocalCodec's compressor and decompressor: stacks of focal-modulation blocks (FocalNet) over frames.

    compressor:    feats (B, T, D) -> [DownScale -> FocalBlock] x L -> Linear -> L2 normalize -> lats (B, T', bits)
    decompressor:  codes (B, T, bits) -> Linear -> [FocalBlock -> UpScale] x L -> refiner -> qfeats (B, T * prod(f), D)

A focal block mixes time only through depthwise convolutions (`FocalModulation`). Non-causal blocks use
centred ("same", zero-padded) convolutions plus a global average over the whole sequence and LayerNorm;
causal blocks use left-only convolutions, replace the global average by a depthwise convolution over the
last `window_size` frames, and use DynamicTanh. Causal stacks stream: each convolution keeps its last
`kernel_size - 1` inputs; at the start of a stream the missing past is filled with copies of the first
frame (the released models were trained that way, so a fresh stream equals the one-pass result).

The causal decompressor ends with a refiner that mixes each group of `1 + lookahead_size` (4) frames, the
only place where a frame sees the future. Groups start at the first frame *of each call*, and a trailing
incomplete group is zero-padded, exactly as the released FocalCodec does. So streaming equals the one-pass
output when every call but the last brings a multiple of 4 frames. A call after one that ended inside a
group starts a new group there (as the released `generate` does after a prompt of odd length); the state
remembers that the previous call ended mid-group and a warning is logged.

Parameter names follow the released checkpoints (`layers.0.focal_block.modulation.layers.1.0.weight`, ...).
"""

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import from_dict, to_dict
from ..errors import InputError
from .attention import FeedForward
from .conv import StreamingConv1d
from .focal_layers import ChunkRefiner, DownScale, DynamicTanh, UpScale
from .linear import Linear, PointwiseConv1d

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FocalCompressorConfig:
    """Released `compressor_config` of a `FocalEncoder` (defaults are the released ones)."""

    input_dim: int = 1024
    output_dim: int = 12
    hidden_dims: tuple[int, ...] = (1024, 1024, 1024)
    downscale_factors: tuple[int, ...] = (1, 1, 1)
    focal_window: int = 14
    focal_level: int = 2
    focal_factor: int = 4
    dropout: float = 0.0
    use_post_norm: bool = False
    use_layerscale: bool = False
    layerscale_init: float = 1e-4
    tanhscale_init: float = 0.5
    normalize_modulator: bool = False
    causal: bool = False
    window_size: int = 512

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "FocalCompressorConfig":
        return _config_from_dict(cls, config, "compressor_config", "downscale_factors")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True)
class FocalDecompressorConfig:
    """Released `decompressor_config` of a `FocalDecoder` (defaults are the released ones)."""

    input_dim: int = 12
    output_dim: int = 1024
    hidden_dims: tuple[int, ...] = (1024, 1024, 1024)
    upscale_factors: tuple[int, ...] = (1, 1, 1)
    focal_window: int = 14
    focal_level: int = 2
    focal_factor: int = 4
    dropout: float = 0.0
    use_post_norm: bool = False
    use_layerscale: bool = False
    layerscale_init: float = 1e-4
    tanhscale_init: float = 0.5
    normalize_modulator: bool = False
    causal: bool = False
    window_size: int = 512
    last_window_size: int = 512
    lookahead_size: int = 3

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "FocalDecompressorConfig":
        return _config_from_dict(cls, config, "decompressor_config", "upscale_factors")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _config_from_dict(cls, config: Mapping[str, Any], what: str, factors_key: str):
    cfg = from_dict(cls, dict(config), what)
    if len(cfg.hidden_dims) != len(getattr(cfg, factors_key)) or not cfg.hidden_dims:
        raise InputError(f"{what}: hidden_dims and {factors_key} must be non-empty and of equal length")
    return cfg


_FocalConfig = FocalCompressorConfig | FocalDecompressorConfig


class FocalModulation(nn.Module):
    """Focal modulation: `out_proj(query * context_proj(sum_l gate_l * context_l))`, `(B, T, D) -> (B, T, D)`.

    `context_l` is the output of the l-th depthwise conv + GELU applied to `context_{l-1}` (kernels
    `focal_window + l * focal_factor`), a hierarchy of growing receptive fields. The last level is a
    GELU of the global mean (non-causal) or a depthwise conv over `window_size` frames (causal).
    State (causal): one tensor `(B, D, K_l - 1)` per conv, the last inputs it saw.
    """

    def __init__(self, dim: int, window_size: int, cfg: _FocalConfig) -> None:
        super().__init__()
        self.dim, self.focal_level, self.causal = dim, cfg.focal_level, cfg.causal
        self.normalize_modulator = cfg.normalize_modulator
        self.in_proj = Linear(dim, 2 * dim + cfg.focal_level + 1)  # query, context, one gate per level
        kernels = [cfg.focal_window + level * cfg.focal_factor for level in range(cfg.focal_level)]
        if cfg.causal:
            kernels.append(window_size)
        self.layers = nn.ModuleList(
            nn.Sequential(
                StreamingConv1d(dim, dim, k, groups=dim, causal=cfg.causal, pad_mode="replicate"), nn.GELU()
            )
            for k in kernels
        )
        self.context_proj = PointwiseConv1d(dim, dim)
        self.out_proj = Linear(dim, dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = _norm(dim, cfg) if cfg.use_post_norm else nn.Identity()

    def forward(
        self, x: Tensor, state: tuple[Tensor, ...] | None = None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        query, context, gates = (
            self.in_proj(x).transpose(1, 2).split([self.dim, self.dim, self.focal_level + 1], 1)
        )
        mixed: Tensor | float = 0.0
        new_state = []
        for level, (conv, act) in enumerate(self.layers):
            context, level_state = conv(context, None if state is None else state[level])
            context = act(context)
            new_state.append(level_state)
            mixed = mixed + context * gates[:, level : level + 1]
        if not self.causal:
            glob = F.gelu(context.mean(dim=-1, keepdim=True))
            mixed = mixed + glob * gates[:, self.focal_level :]
        if self.normalize_modulator:
            mixed = mixed / (self.focal_level + 1)
        context = self.context_proj(mixed.transpose(1, 2))
        y = query.transpose(1, 2) * context
        return self.dropout(self.out_proj(self.norm(y))), tuple(new_state)


def _norm(dim: int, cfg: _FocalConfig) -> nn.Module:
    """DynamicTanh in causal stacks (no statistics over features), LayerNorm otherwise (the released choice)."""
    return DynamicTanh(dim, cfg.tanhscale_init) if cfg.causal else nn.LayerNorm(dim)


class FocalBlock(nn.Module):
    """Residual focal modulation then residual MLP (4x), pre-norm (or post-norm), optional layer scale.

    `(B, T, D) -> (B, T, D)`; the state is the modulation's.
    """

    def __init__(self, dim: int, window_size: int, cfg: _FocalConfig) -> None:
        super().__init__()
        self.post_norm = cfg.use_post_norm
        self.modulation_norm = _norm(dim, cfg)
        self.modulation = FocalModulation(dim, window_size, cfg)
        self.feed_forward_norm = _norm(dim, cfg)
        self.feed_forward = FeedForward(dim, 4 * dim, cfg.dropout)
        if cfg.use_layerscale:
            self.modulation_gamma = nn.Parameter(torch.full((dim,), cfg.layerscale_init))
            self.feed_forward_gamma = nn.Parameter(torch.full((dim,), cfg.layerscale_init))
        else:
            self.modulation_gamma = self.feed_forward_gamma = None

    def forward(
        self, x: Tensor, state: tuple[Tensor, ...] | None = None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        if x.shape[1] == 0:  # a stream step that did not complete a downscale window
            return x, state
        if self.post_norm:
            h, state = self.modulation(x, state)
            h = self.modulation_norm(h)
        else:
            h, state = self.modulation(self.modulation_norm(x), state)
        x = x + (h if self.modulation_gamma is None else h * self.modulation_gamma)
        if self.post_norm:
            h = self.feed_forward_norm(self.feed_forward(x))
        else:
            h = self.feed_forward(self.feed_forward_norm(x))
        return x + (h if self.feed_forward_gamma is None else h * self.feed_forward_gamma), state


class FocalCompressorState(NamedTuple):
    """Streaming state of a causal `FocalCompressor`, per layer.

    pending:  `(B, C_in_i, P_i)` inputs of layer i still short of a whole downscale window (P_i < factor_i).
    contexts: per layer, one `(B, D_i, K - 1)` tensor per depthwise conv: the last inputs it saw.
    """

    pending: tuple[Tensor, ...]
    contexts: tuple[tuple[Tensor, ...], ...]


class FocalDownLayer(nn.Module):
    """`DownScale` then `FocalBlock` (released name `FocalDownScale`)."""

    def __init__(self, in_dim: int, out_dim: int, factor: int, cfg: FocalCompressorConfig) -> None:
        super().__init__()
        self.downscale = DownScale(in_dim, out_dim, factor, cfg.causal)
        self.focal_block = FocalBlock(out_dim, cfg.window_size, cfg)


class FocalCompressor(nn.Module):
    """feats `(B, T, D)` -> lats `(B, ceil(T / downsample_factor), bits)` (released name `FocalEncoder`).

    The lats have unit L2 norm per frame (the released `FocalCodec.feats_to_lats` normalizes the
    `FocalEncoder` output; it is folded in here so `lats` means the same everywhere).

    `forward(feats, state=None) -> (lats, state)`. Causal: the state is a `FocalCompressorState`; None
    starts a stream; pieces of any size, carried state, equal the one-pass output. Non-causal: state None.
    """

    def __init__(self, config: FocalCompressorConfig | Mapping[str, Any]) -> None:
        super().__init__()
        cfg = config if isinstance(config, FocalCompressorConfig) else FocalCompressorConfig.from_dict(config)
        self.config, self.causal = cfg, cfg.causal
        dims = (cfg.input_dim, *cfg.hidden_dims)
        self.layers = nn.ModuleList(
            FocalDownLayer(dims[i], dims[i + 1], f, cfg) for i, f in enumerate(cfg.downscale_factors)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_proj = Linear(dims[-1], cfg.output_dim)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "FocalCompressor":
        return cls(FocalCompressorConfig.from_dict(config))

    @property
    def downsample_factor(self) -> int:
        return math.prod(self.config.downscale_factors)

    def forward(
        self, feats: Tensor, state: FocalCompressorState | None = None
    ) -> tuple[Tensor, FocalCompressorState | None]:
        _check_stream(self.causal, state)
        if feats.shape[1] == 0:  # nothing new: no output, the stream is unchanged
            return feats.new_zeros(feats.shape[0], 0, self.config.output_dim), state
        x, pending, contexts = feats, [], []
        for i, layer in enumerate(self.layers):
            y, p = layer.downscale(x.transpose(1, 2), None if state is None else state.pending[i])
            x, c = layer.focal_block(y.transpose(1, 2), None if state is None else state.contexts[i])
            pending.append(p)
            contexts.append(c)
        # Unit length, as the released codec's `feats_to_lats` does: BSQ quantizes points on the sphere.
        lats = F.normalize(self.out_proj(self.dropout(x)), dim=-1)
        return lats, FocalCompressorState(tuple(pending), tuple(contexts)) if self.causal else None


class FocalDecompressorState(NamedTuple):
    """Streaming state of a causal `FocalDecompressor`.

    contexts: per layer, one `(B, D_i, K - 1)` tensor per depthwise conv: the last inputs it saw.
    partial:  how many frames of an incomplete refiner group ended the previous call (0: it ended aligned).
    """

    contexts: tuple[tuple[Tensor, ...], ...]
    partial: int = 0


class FocalUpLayer(nn.Module):
    """`FocalBlock` then `UpScale` (released name `FocalUpScale`)."""

    def __init__(
        self, in_dim: int, out_dim: int, factor: int, window_size: int, cfg: FocalDecompressorConfig
    ) -> None:
        super().__init__()
        self.focal_block = FocalBlock(in_dim, window_size, cfg)
        self.upscale = UpScale(in_dim, out_dim, factor)


class FocalDecompressor(nn.Module):
    """codes `(B, T, bits)` -> qfeats `(B, T * upsample_factor, D)` (released name `FocalDecoder`).

    `forward(codes, state=None) -> (qfeats, state)`. Causal: the state is a `FocalDecompressorState`;
    None starts a stream. Every call returns all its frames; the refiner groups (`group_size` frames,
    4 in the released models) start at each call's first frame, so streaming equals the one-pass output
    when each call but the last brings a multiple of `group_size` output frames (see the module notes).
    """

    def __init__(self, config: FocalDecompressorConfig | Mapping[str, Any]) -> None:
        super().__init__()
        cfg = (
            config
            if isinstance(config, FocalDecompressorConfig)
            else FocalDecompressorConfig.from_dict(config)
        )
        self.config, self.causal = cfg, cfg.causal
        dims = (*cfg.hidden_dims, cfg.output_dim)
        n = len(cfg.upscale_factors)
        self.in_proj = Linear(cfg.input_dim, dims[0])
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            FocalUpLayer(dims[i], dims[i + 1], f, cfg.window_size if i < n - 1 else cfg.last_window_size, cfg)
            for i, f in enumerate(cfg.upscale_factors)
        )
        self.refiner = (
            ChunkRefiner(1 + cfg.lookahead_size, cfg.output_dim, cfg.dropout)
            if cfg.causal and cfg.lookahead_size > 0
            else None
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "FocalDecompressor":
        return cls(FocalDecompressorConfig.from_dict(config))

    @property
    def upsample_factor(self) -> int:
        return math.prod(self.config.upscale_factors)

    @property
    def group_size(self) -> int:
        """Output frames the refiner mixes together (1 when there is no refiner)."""
        return 1 if self.refiner is None else self.refiner.group

    def forward(
        self, codes: Tensor, state: FocalDecompressorState | None = None
    ) -> tuple[Tensor, FocalDecompressorState | None]:
        _check_stream(self.causal, state)
        if codes.shape[1] == 0:  # nothing new: no output, the stream is unchanged
            return codes.new_zeros(codes.shape[0], 0, self.config.output_dim), state
        x = self.dropout(self.in_proj(codes))
        contexts = []
        for i, layer in enumerate(self.layers):
            x, c = layer.focal_block(x, None if state is None else state.contexts[i])
            x = layer.upscale(x.transpose(1, 2)).transpose(1, 2).contiguous()
            contexts.append(c)
        if self.refiner is not None:
            if state is not None and state.partial:
                log.warning(
                    "decompressor stream continues after a call that ended inside a group of %d frames "
                    "(%d frames in it); groups restart at this call, so the output differs from a one-pass run",
                    self.group_size,
                    state.partial,
                )
            x = self.refiner(x)
        if not self.causal:
            return x, None
        return x, FocalDecompressorState(tuple(contexts), x.shape[1] % self.group_size)


def _check_stream(causal: bool, state: object) -> None:
    if state is not None and not causal:
        raise ValueError("a non-causal focal stack cannot stream; call it with state=None")
