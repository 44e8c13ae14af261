"""WaveNeXt waveform decoder: a ConvNeXt backbone and a linear head that emits `hop_length` samples per frame.

qfeats `(B, T, input_dim)` -> sig `(B, T * hop_length)` in [-1, 1].

The ConvNeXt backbone (embedding conv -> LayerNorm -> residual blocks -> LayerNorm) is shared with Vocos,
which only swaps the head. Causal variants pad every convolution on the left and stream with the last
`kernel_size - 1` inputs of each convolution as state: frame t yields its samples as soon as it arrives
(no lookahead). Non-causal variants use symmetric "same" padding and see `(kernel_size - 1) // 2` frames
ahead per convolution.

Parameter names are those of the released FocalCodec checkpoints (`backbone.embedding`,
`backbone.layers.N.{dwconv,norm,pwconv1,pwconv2,gamma}`, `backbone.{input,output}_norm`, `head.proj`).
"""

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavslm.config import from_dict, to_dict
from wavslm.modules.conv import PadMode, StreamingConv1d
from wavslm.modules.linear import Linear


class ConvNeXtState(NamedTuple):
    """Stream state of a causal ConvNeXt backbone: the left context of every convolution.

    `embedding`: `(B, input_dim, kernel_size - 1)`; `layers`: one `(B, dim, kernel_size - 1)` per block.
    """

    embedding: Tensor
    layers: tuple[Tensor, ...]


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> MLP (GELU) -> per-channel scale, added to the input.

    x `(B, T, dim)` -> `(B, T, dim)`; state: the depthwise conv's left context `(B, dim, kernel_size - 1)`.
    """

    def __init__(
        self, dim: int, ffn_dim: int, kernel_size: int, layerscale: float, causal: bool, pad_mode: PadMode
    ) -> None:
        super().__init__()
        self.dwconv = StreamingConv1d(dim, dim, kernel_size, groups=dim, causal=causal, pad_mode=pad_mode)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = Linear(dim, ffn_dim)
        self.pwconv2 = Linear(ffn_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layerscale)))

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        h, state = self.dwconv(x.transpose(1, 2), state)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h.transpose(1, 2)))))
        return x + self.gamma * h, state


class ConvNeXtBackbone(nn.Module):
    """Embedding conv -> LayerNorm -> `num_layers` ConvNeXt blocks -> LayerNorm.

    x `(B, T, input_dim)` -> h `(B, T, dim)`. State: `ConvNeXtState` (causal) or None (non-causal).
    `pad_mode` is what a causal stream assumes before its first frame: zeros (WaveNeXt) or copies of
    the first frame (Vocos), as in the released models.
    """

    def __init__(
        self,
        input_dim: int,
        num_layers: int,
        dim: int,
        ffn_dim: int,
        kernel_size: int,
        layerscale_init: float | None,
        causal: bool,
        pad_mode: PadMode,
    ) -> None:
        super().__init__()
        self.causal = causal
        # The released models default the layer scale to 1 / num_layers; an explicit 0.0 is kept.
        layerscale = 1.0 / num_layers if layerscale_init is None else layerscale_init
        self.embedding = StreamingConv1d(input_dim, dim, kernel_size, causal=causal, pad_mode=pad_mode)
        self.input_norm = nn.LayerNorm(dim, eps=1e-6)
        self.layers = nn.ModuleList(
            ConvNeXtBlock(dim, ffn_dim, kernel_size, layerscale, causal, pad_mode) for _ in range(num_layers)
        )
        self.output_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, state: ConvNeXtState | None = None) -> tuple[Tensor, ConvNeXtState | None]:
        if state is not None and not self.causal:
            raise ValueError("a non-causal decoder cannot stream; call it with state=None")
        if x.shape[1] == 0:  # nothing new: keep the state (a fresh "replicate" stream needs a first frame)
            return x.new_zeros(x.shape[0], 0, self.output_norm.normalized_shape[0]), state
        h, emb_state = self.embedding(x.transpose(1, 2), None if state is None else state.embedding)
        h = self.input_norm(h.transpose(1, 2))
        layer_states = []
        for i, layer in enumerate(self.layers):
            h, layer_state = layer(h, None if state is None else state.layers[i])
            layer_states.append(layer_state)
        h = self.output_norm(h)
        if not self.causal:
            return h, None
        return h, ConvNeXtState(emb_state, tuple(layer_states))


@dataclass(frozen=True)
class WaveNeXtConfig:
    """The released `decoder_config` of a `"WaveNeXt"` decoder (same keys, same defaults)."""

    input_dim: int = 1024
    num_layers: int = 8
    dim: int = 1024
    ffn_dim: int = 2048
    kernel_size: int = 7
    layerscale_init: float | None = None
    hop_length: int = 480
    causal: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "WaveNeXtConfig":
        return from_dict(cls, values, "decoder_config (WaveNeXt)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


WaveNeXtState = ConvNeXtState


class WaveNeXtHead(nn.Module):
    """h `(B, T, dim)` -> sig `(B, T * hop_length)`: each frame is projected straight to its samples."""

    def __init__(self, dim: int, hop_length: int) -> None:
        super().__init__()
        self.proj = Linear(dim, hop_length)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h).flatten(1).clamp(-1.0, 1.0)


class WaveNeXt(nn.Module):
    """WaveNeXt decoder: qfeats `(B, T, input_dim)` -> sig `(B, T * hop_length)`.

    `forward(qfeats, state=None) -> (sig, state)`; state is a `WaveNeXtState` when causal, else None.
    """

    def __init__(self, config: WaveNeXtConfig) -> None:
        super().__init__()
        self.config = config
        self.causal = config.causal
        self.hop_length = config.hop_length
        self.backbone = ConvNeXtBackbone(
            config.input_dim,
            config.num_layers,
            config.dim,
            config.ffn_dim,
            config.kernel_size,
            config.layerscale_init,
            config.causal,
            pad_mode="zeros",
        )
        self.head = WaveNeXtHead(config.dim, config.hop_length)

    def forward(
        self, qfeats: Tensor, state: WaveNeXtState | None = None
    ) -> tuple[Tensor, WaveNeXtState | None]:
        h, state = self.backbone(qfeats, state)
        return self.head(h), state
