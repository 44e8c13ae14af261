"""Vocos waveform decoder: the ConvNeXt backbone of WaveNeXt and an inverse-STFT head.

qfeats `(B, T, input_dim)` -> sig `(B, T * hop_length)` (non-causal: `+ 1` sample when
`n_fft - hop_length` is odd).

The head predicts, per frame, a log-magnitude and a phase for the `n_fft // 2 + 1` bins. How they become
samples depends on the variant, as in the released FocalCodec models:
- non-causal: a Hann-windowed inverse STFT with overlap-add and window-envelope normalisation, trimmed by
  `(n_fft - hop_length) // 2` on each side ("same" padding), so frame t is centred on its samples;
- causal: no window and no overlap-add; frame t emits the last `hop_length` samples of its own inverse
  FFT. Frames are therefore independent, the head carries no stream state (no overlap tail) and the
  decoder's state is only the backbone's conv contexts.
A causal stream assumes copies of its first frame before the start (replicate padding), unlike WaveNeXt.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavslm.config import from_dict, to_dict
from wavslm.errors import InputError
from wavslm.modules.linear import Linear
from wavslm.modules.wavenext import ConvNeXtBackbone, ConvNeXtState

# Keys that older released configs carry: `input_channels` is the old name of `input_dim` and wins over
# it, `padding` is ignored (it follows `causal`).
_LEGACY_KEYS = ("input_channels", "padding")


@dataclass(frozen=True)
class VocosConfig:
    """The released `decoder_config` of a `"Vocos"` decoder (same keys, same defaults)."""

    input_dim: int = 1024
    num_layers: int = 8
    dim: int = 512
    ffn_dim: int = 1536
    kernel_size: int = 7
    layerscale_init: float | None = None
    n_fft: int = 1024
    hop_length: int = 320
    causal: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "VocosConfig":
        values = dict(values)
        legacy = {key: values.pop(key) for key in _LEGACY_KEYS if key in values}
        if legacy.get("input_channels") is not None:
            values["input_dim"] = legacy["input_channels"]
        return from_dict(cls, values, "decoder_config (Vocos)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


VocosState = ConvNeXtState


def istft_causal(spec: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """spec `(B, T, n_fft // 2 + 1)` complex -> sig `(B, T * hop_length)`: each frame's last hop samples."""
    frames = torch.fft.irfft(spec, n_fft, dim=-1)  # (B, T, n_fft)
    return frames[..., n_fft - hop_length :].flatten(1)


def istft_same(spec: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """spec `(B, T, n_fft // 2 + 1)` complex -> sig `(B, T * hop_length + (n_fft - hop_length) % 2)`.

    Hann-windowed overlap-add divided by the summed squared window, with `(n_fft - hop_length) // 2`
    samples trimmed from each end so the output is frame-aligned.
    """
    batch, num_frames = spec.shape[:2]
    trim = (n_fft - hop_length) // 2
    if num_frames == 0:
        return spec.real.new_zeros(batch, 0)
    window = torch.hann_window(n_fft, dtype=spec.real.dtype, device=spec.device)
    frames = torch.fft.irfft(spec, n_fft, dim=-1) * window  # (B, T, n_fft)
    length = (num_frames - 1) * hop_length + n_fft

    def overlap_add(cols: Tensor) -> Tensor:  # (N, n_fft, T) -> (N, length)
        return F.fold(cols, (1, length), kernel_size=(1, n_fft), stride=(1, hop_length))[:, 0, 0]

    sig = overlap_add(frames.transpose(1, 2))
    envelope = overlap_add((window**2)[None, :, None].expand(1, n_fft, num_frames))
    return (sig / envelope)[:, trim : length - trim]


class ISTFTHead(nn.Module):
    """h `(B, T, dim)` -> sig: log-magnitude and phase per bin, then the variant's inverse STFT."""

    def __init__(self, dim: int, n_fft: int, hop_length: int, causal: bool) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.causal = causal
        self.proj = Linear(dim, n_fft + 2)

    def forward(self, h: Tensor) -> Tensor:
        log_mag, phase = self.proj(h).float().chunk(2, dim=-1)  # complex and FFT kernels take no bf16
        mag = log_mag.exp().clamp(max=1e2)  # cap runaway magnitudes (exp overflow -> inf)
        spec = torch.complex(mag * phase.cos(), mag * phase.sin())
        istft = istft_causal if self.causal else istft_same
        return istft(spec, self.n_fft, self.hop_length)


class Vocos(nn.Module):
    """Vocos decoder: qfeats `(B, T, input_dim)` -> sig `(B, T * hop_length)`.

    `forward(qfeats, state=None) -> (sig, state)`; state is a `VocosState` when causal, else None.
    """

    def __init__(self, config: VocosConfig) -> None:
        super().__init__()
        # Causal frames emit their last hop samples, so hop <= n_fft; overlap-add needs real overlap, or
        # the summed window vanishes at frame starts (the released code returns an empty signal there).
        if config.n_fft < config.hop_length or (not config.causal and config.n_fft == config.hop_length):
            relation = ">=" if config.causal else ">"
            raise InputError(
                f"a {'causal' if config.causal else 'non-causal'} Vocos decoder needs n_fft {relation} "
                f"hop_length, got n_fft={config.n_fft}, hop_length={config.hop_length}"
            )
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
            pad_mode="replicate",
        )
        self.head = ISTFTHead(config.dim, config.n_fft, config.hop_length, config.causal)

    def forward(self, qfeats: Tensor, state: VocosState | None = None) -> tuple[Tensor, VocosState | None]:
        h, state = self.backbone(qfeats, state)
        return self.head(h), state
