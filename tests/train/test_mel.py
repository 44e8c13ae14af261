"""Mel filterbanks on the HTK and Slaney scales: the scales, the shape convention, the filters' shapes."""

import pytest
import torch

from wavslm.train.mel import (
    hz_to_mel_htk,
    hz_to_mel_slaney,
    mel_filterbank_htk,
    mel_filterbank_slaney,
    mel_to_hz_slaney,
)

SR = 16000


def test_slaney_mel_scale():
    assert float(hz_to_mel_slaney(torch.tensor(1000.0))) == pytest.approx(15.0)
    assert float(hz_to_mel_slaney(torch.tensor(200.0 / 3))) == pytest.approx(1.0)
    assert float(mel_to_hz_slaney(torch.tensor(15.0 + 27.0))) == pytest.approx(6400.0)
    hz = torch.tensor([0.0, 300.0, 999.0, 1000.0, 4321.0, 8000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz_slaney(hz_to_mel_slaney(hz)), hz)


def test_slaney_filterbank_properties():
    n_fft, n_mels = 512, 40
    fb = mel_filterbank_slaney(SR, n_fft, n_mels, 0.0, 8000.0)
    assert fb.shape == (n_mels, n_fft // 2 + 1) and (fb >= 0).all()
    peaks = fb.argmax(dim=1)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > peaks[0]  # centre frequencies increase
    # Slaney norm: each triangle has unit area in Hz (checked where the filters are wide enough)
    area = fb.sum(dim=1) * SR / n_fft
    torch.testing.assert_close(
        area[n_mels // 2 :], torch.ones(n_mels - n_mels // 2, dtype=fb.dtype), atol=0.03, rtol=0
    )
    # Unnormalised: the filters form a partition of unity between the first and last centres.
    raw = mel_filterbank_slaney(SR, n_fft, n_mels, 0.0, 8000.0, norm=None)
    assert raw.max() <= 1.0 + 1e-12
    edges = mel_to_hz_slaney(
        torch.linspace(0.0, float(hz_to_mel_slaney(torch.tensor(8000.0))), n_mels + 2, dtype=torch.float64)
    )
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * SR / n_fft
    inner = raw.sum(dim=0)[(freqs >= edges[1]) & (freqs <= edges[-2])]
    torch.testing.assert_close(inner, torch.ones_like(inner))
    # Nothing above fmax
    low = mel_filterbank_slaney(SR, n_fft, n_mels, 0.0, 4000.0)
    assert low[:, n_fft // 4 + 1 :].abs().sum() == 0
    with pytest.raises(ValueError):
        mel_filterbank_slaney(SR, n_fft, n_mels, 0.0, 9000.0)



def test_htk_filterbank_properties():
    n_fft, n_mels = 512, 23
    fb = mel_filterbank_htk(SR, n_fft, n_mels, 20.0, 8000.0)
    assert fb.shape == (n_mels, n_fft // 2 + 1) and fb.dtype == torch.float64 and (fb >= 0).all()
    assert float(hz_to_mel_htk(torch.tensor(1000.0, dtype=torch.float64))) == pytest.approx(1000.0, abs=0.1)
    peaks = fb.argmax(dim=1)
    assert (peaks[1:] >= peaks[:-1]).all() and fb.max() <= 1.0
    # Nothing below fmin or above fmax; triangles linear in mel meet so that the sum is 1 inside.
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * SR / n_fft
    assert fb[:, freqs < 20.0].abs().sum() == 0
    mels = hz_to_mel_htk(freqs)
    lo, hi = hz_to_mel_htk(torch.tensor(20.0)), hz_to_mel_htk(torch.tensor(8000.0))
    step = (hi - lo) / (n_mels + 1)
    inner = fb.sum(dim=0)[(mels >= lo + step) & (mels <= hi - step)]
    torch.testing.assert_close(inner, torch.ones_like(inner))
    with pytest.raises(ValueError):
        mel_filterbank_htk(SR, n_fft, n_mels, 20.0, 9000.0)


def test_banks_are_cached_but_handed_out_as_copies():
    a = mel_filterbank_slaney(SR, 512, 40)
    a.zero_()
    assert mel_filterbank_slaney(SR, 512, 40).abs().sum() > 0
    b = mel_filterbank_htk(SR, 512, 23, 20.0, 8000.0)
    b.zero_()
    assert mel_filterbank_htk(SR, 512, 23, 20.0, 8000.0).abs().sum() > 0
