"""Mel filterbanks on the two mel scales the training code uses, each named after its scale.

- `mel_filterbank_htk`: the HTK / Kaldi scale, `mel = 1127 ln(1 + hz / 700)`, peak-1 triangles. It makes
  the MFCC and log-mel targets of HuBERT-style pre-training (`features.log_mel`, `features.mfcc`).
- `mel_filterbank_slaney`: Slaney's scale (linear up to 1 kHz, logarithmic above), triangles of unit
  area in Hz by default. It makes the codec decoder's mel loss (`losses.mel_spectrogram`), as the
  FocalCodec recipe does; the same definition as librosa's and torchaudio's `norm="slaney",
  mel_scale="slaney"` banks.

They are different features, not two versions of one: the scale, the normalisation and the precision
of the band edges differ, and each computes exactly what its users were trained on.

One shape convention: a bank is `(n_mels, n_fft // 2 + 1)` float64, one row per filter, over the bins of
`torch.fft.rfft` (`k * sample_rate / n_fft` Hz); apply it to a spectrum `(..., n_fft // 2 + 1, frames)`
as `bank @ spec`, or to `(..., frames, n_fft // 2 + 1)` as `spec @ bank.T`. `n_mels + 2` band edges
are equally spaced on the scale between `fmin` and `fmax` (default Nyquist); filter `m` rises from edge
`m` to 1 at edge `m + 1` and falls to 0 at edge `m + 2`. Banks are cached: callers get a copy.

Neither torch nor the core dependencies offer a mel bank (torchaudio and librosa do, but core training
code must not need them), hence these few lines.
"""

import math
from functools import lru_cache

import torch
from torch import Tensor

# Slaney's scale: 200/3 Hz per mel up to 1 kHz (15 mel), then 27 mels per factor 6.4 in frequency.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # = 15
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel_htk(hz: Tensor) -> Tensor:
    """HTK mel of frequencies `hz (...)`, in the input's dtype (1 kHz -> 1000 mel)."""
    return 1127.0 * torch.log1p(hz / 700.0)


def hz_to_mel_slaney(hz: Tensor) -> Tensor:
    """Slaney mel of frequencies `hz (...)`, float64 (1 kHz -> 15 mel)."""
    hz = torch.as_tensor(hz, dtype=torch.float64)
    log_part = _MIN_LOG_MEL + torch.log(hz.clamp(min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(hz < _MIN_LOG_HZ, hz / _F_SP, log_part)


def mel_to_hz_slaney(mel: Tensor) -> Tensor:
    """Inverse of `hz_to_mel_slaney`, float64."""
    mel = torch.as_tensor(mel, dtype=torch.float64)
    log_part = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mel.clamp(min=_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(mel < _MIN_LOG_MEL, mel * _F_SP, log_part)


def _check(sample_rate: int, fmin: float, fmax: float) -> None:
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}")


def _triangles(freqs: Tensor, edges: Tensor) -> Tensor:
    """Peak-1 triangles `(n_mels, len(freqs))` between consecutive triples of `edges (n_mels + 2,)` (Hz)."""
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return torch.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)).clamp(min=0.0)


@lru_cache(maxsize=16)
def _htk(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> Tensor:
    # The end points in float32, the edges and bins in float64: how the targets have always been computed.
    mel_lo = hz_to_mel_htk(torch.tensor(fmin, dtype=torch.float32))
    mel_hi = hz_to_mel_htk(torch.tensor(fmax, dtype=torch.float32))
    edges = torch.linspace(0, 1, n_mels + 2, dtype=torch.float64) * (mel_hi - mel_lo) + mel_lo
    bins = hz_to_mel_htk(torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft)
    return _triangles(bins, edges)  # triangles on the mel axis itself


def mel_filterbank_htk(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> Tensor:
    """Triangular filters equally spaced on the HTK mel scale, peaks at 1: `(n_mels, n_fft // 2 + 1)` float64.

    The triangles are linear in mel (HTK's and Kaldi's definition), not in Hz.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    _check(sample_rate, fmin, fmax)
    return _htk(int(sample_rate), int(n_fft), int(n_mels), float(fmin), float(fmax)).clone()


@lru_cache(maxsize=16)
def _slaney(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, norm: str | None) -> Tensor:
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    mel_lo, mel_hi = float(hz_to_mel_slaney(fmin)), float(hz_to_mel_slaney(fmax))
    edges = mel_to_hz_slaney(torch.linspace(mel_lo, mel_hi, n_mels + 2, dtype=torch.float64))
    fb = _triangles(freqs, edges)  # triangles in Hz
    if norm == "slaney":
        fb = fb * (2.0 / (edges[2:, None] - edges[:-2, None]))  # every triangle then has unit area in Hz
    return fb


def mel_filterbank_slaney(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
    norm: str | None = "slaney",
) -> Tensor:
    """Triangular filters equally spaced on Slaney's mel scale: `(n_mels, n_fft // 2 + 1)` float64.

    The triangles are linear in Hz. `norm="slaney"` scales filter `m` by `2 / (edge[m+2] - edge[m])`
    (unit area in Hz); `norm=None` leaves peaks at 1, so the filters sum to 1 at every frequency between
    the first and last centres.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    _check(sample_rate, fmin, fmax)
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    return _slaney(int(sample_rate), int(n_fft), int(n_mels), float(fmin), float(fmax), norm).clone()
