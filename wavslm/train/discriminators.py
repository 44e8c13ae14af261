"""Waveform discriminators for codec decoder training: `forward(sig) -> (logits, feats)`.

`sig` is `(B, N)` or `(B, 1, N)`. `logits` is a list with one `(B, L_k)` tensor per sub-discriminator;
`feats` a list (same order) of lists of that sub-discriminator's feature maps, the final logits map last,
as `wavslm.train.losses.feature_matching_loss` expects.

The FocalCodec recipes train their decoders against HiFi-GAN's pair: a multi-period discriminator
(periods 2, 3, 5, 7, 11) plus a multi-scale discriminator (3 scales), with hinge losses
(`hifigan_discriminator()` builds it at recipe size: 5 x 6 + 3 x 8 = 54 feature maps).
`MultiResolutionDiscriminator` (spectrogram based, as in UnivNet / Vocos) is an alternative.
Every size is configurable so that tests can use tiny ones.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations

LRELU_SLOPE = 0.1

Output = tuple[list[Tensor], list[list[Tensor]]]


def _normed(module: nn.Module, norm: str | None) -> nn.Module:
    if norm == "weight":
        return parametrizations.weight_norm(module)
    if norm == "spectral":
        return parametrizations.spectral_norm(module)
    if norm is None:
        return module
    raise ValueError(f"norm must be 'weight', 'spectral' or None, got {norm!r}")


def _as_b1n(sig: Tensor) -> Tensor:
    if sig.dim() == 2:
        return sig[:, None]
    if sig.dim() == 3 and sig.shape[1] == 1:
        return sig
    raise ValueError(f"expected a waveform (B, N) or (B, 1, N), got shape {tuple(sig.shape)}")


class PeriodDiscriminator(nn.Module):
    """Folds `sig (B, 1, N)` into `(B, 1, N / period, period)` and convolves along time only.

    Every conv but the last strides by `stride`; the final 1-channel conv gives the logits map.
    The signal is reflect-padded on the right to a multiple of `period`.
    """

    def __init__(
        self,
        period: int,
        channels: Sequence[int] = (32, 128, 512, 1024, 1024),
        kernel_size: int = 5,
        stride: int = 3,
        norm: str | None = "weight",
    ) -> None:
        super().__init__()
        self.period = period
        pad = ((kernel_size - 1) // 2, 0)
        layers, c_in = [], 1
        for i, c_out in enumerate(channels):
            s = stride if i < len(channels) - 1 else 1
            layers.append(_normed(nn.Conv2d(c_in, c_out, (kernel_size, 1), (s, 1), pad), norm))
            c_in = c_out
        self.convs = nn.ModuleList(layers)
        self.post = _normed(nn.Conv2d(c_in, 1, (3, 1), 1, (1, 0)), norm)

    def forward(self, sig: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = _as_b1n(sig)
        rem = x.shape[-1] % self.period
        if rem:
            x = F.pad(x, (0, self.period - rem), mode="reflect")
        x = x.reshape(x.shape[0], 1, -1, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            feats.append(x)
        x = self.post(x)
        feats.append(x)
        return x.flatten(1), feats


class MultiPeriodDiscriminator(nn.Module):
    """One `PeriodDiscriminator` per period (HiFi-GAN: 2, 3, 5, 7, 11 -- primes, so the folds overlap little)."""

    def __init__(
        self,
        periods: Sequence[int] = (2, 3, 5, 7, 11),
        channels: Sequence[int] = (32, 128, 512, 1024, 1024),
        kernel_size: int = 5,
        stride: int = 3,
        norm: str | None = "weight",
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(p, channels, kernel_size, stride, norm) for p in periods
        )

    def forward(self, sig: Tensor) -> Output:
        outs = [d(sig) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class ScaleDiscriminator(nn.Module):
    """Strided, grouped 1-D convs over the raw waveform `(B, 1, N)` (HiFi-GAN / MelGAN scale discriminator).

    `channels`, `kernel_sizes`, `strides`, `groups` describe the conv stack (same length); a group count
    that does not divide both channel counts is reduced to their greatest common divisor.
    """

    def __init__(
        self,
        channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024),
        kernel_sizes: Sequence[int] = (15, 41, 41, 41, 41, 41, 5),
        strides: Sequence[int] = (1, 2, 2, 4, 4, 1, 1),
        groups: Sequence[int] = (1, 4, 16, 16, 16, 16, 1),
        norm: str | None = "weight",
    ) -> None:
        super().__init__()
        if not len(channels) == len(kernel_sizes) == len(strides) == len(groups):
            raise ValueError("channels, kernel_sizes, strides and groups must have the same length")
        layers, c_in = [], 1
        for c_out, k, s, g in zip(channels, kernel_sizes, strides, groups, strict=True):
            g = math.gcd(g, math.gcd(c_in, c_out))
            layers.append(_normed(nn.Conv1d(c_in, c_out, k, s, padding=(k - 1) // 2, groups=g), norm))
            c_in = c_out
        self.convs = nn.ModuleList(layers)
        self.post = _normed(nn.Conv1d(c_in, 1, 3, 1, padding=1), norm)

    def forward(self, sig: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = _as_b1n(sig)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            feats.append(x)
        x = self.post(x)
        feats.append(x)
        return x.flatten(1), feats


class MultiScaleDiscriminator(nn.Module):
    """`num_scales` scale discriminators on the waveform average-pooled by 2 between scales.

    The first uses spectral norm, the others `norm` (as in HiFi-GAN). Keywords go to `ScaleDiscriminator`.
    """

    def __init__(self, num_scales: int = 3, norm: str | None = "weight", **scale_kwargs) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(norm="spectral" if i == 0 and norm is not None else norm, **scale_kwargs)
            for i in range(num_scales)
        )
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, sig: Tensor) -> Output:
        x = _as_b1n(sig)
        logits, feats = [], []
        for i, d in enumerate(self.discriminators):
            if i > 0:
                x = self.pool(x)
            lg, ft = d(x)
            logits.append(lg)
            feats.append(ft)
        return logits, feats


class ResolutionDiscriminator(nn.Module):
    """2-D convs over a linear magnitude spectrogram `(B, 1, frames, n_fft // 2 + 1)`.

    Strides halve the frequency axis and keep the time axis (UnivNet / Vocos style).
    """

    def __init__(
        self,
        n_fft: int,
        hop: int,
        win_length: int,
        channels: int = 32,
        num_layers: int = 5,
        norm: str | None = "weight",
    ) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win_length = n_fft, hop, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        layers = [_normed(nn.Conv2d(1, channels, (3, 9), padding=(1, 4)), norm)]
        layers += [
            _normed(nn.Conv2d(channels, channels, (3, 9), (1, 2), (1, 4)), norm)
            for _ in range(num_layers - 2)
        ]
        layers.append(_normed(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)), norm))
        self.convs = nn.ModuleList(layers)
        self.post = _normed(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)), norm)

    def forward(self, sig: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = _as_b1n(sig)[:, 0].float()  # cuFFT takes no bf16
        spec = torch.stft(
            x,
            self.n_fft,
            self.hop,
            self.win_length,
            window=self.window.to(x.dtype),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        x = (spec.real.square() + spec.imag.square()).clamp(min=1e-12).sqrt()
        x = x.transpose(1, 2)[:, None]  # (B, 1, frames, freqs)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            feats.append(x)
        x = self.post(x)
        feats.append(x)
        return x.flatten(1), feats


class MultiResolutionDiscriminator(nn.Module):
    """One `ResolutionDiscriminator` per `(n_fft, hop, win_length)`."""

    def __init__(
        self,
        resolutions: Sequence[tuple[int, int, int]] = ((1024, 256, 1024), (2048, 512, 2048), (512, 128, 512)),
        channels: int = 32,
        num_layers: int = 5,
        norm: str | None = "weight",
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            ResolutionDiscriminator(n, h, w, channels, num_layers, norm) for n, h, w in resolutions
        )

    def forward(self, sig: Tensor) -> Output:
        outs = [d(sig) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class CombinedDiscriminator(nn.Module):
    """Runs several multi-discriminators and concatenates their logits and feature lists."""

    def __init__(self, discriminators: Sequence[nn.Module]) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(discriminators)

    def forward(self, sig: Tensor) -> Output:
        logits, feats = [], []
        for d in self.discriminators:
            lg, ft = d(sig)
            logits.extend(lg)
            feats.extend(ft)
        return logits, feats


def hifigan_discriminator(mpd: dict | None = None, msd: dict | None = None) -> CombinedDiscriminator:
    """The recipes' discriminator: multi-period + multi-scale; `mpd` / `msd` override their keywords."""
    return CombinedDiscriminator(
        [MultiPeriodDiscriminator(**(mpd or {})), MultiScaleDiscriminator(**(msd or {}))]
    )
