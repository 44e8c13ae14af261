"""pYIN tracks and the pitch errors between two tracks, on signals whose pitch is known and on real speech."""

import numpy as np
import pytest
import soundfile as sf

from wavslm import pitch
from wavslm.eval import metrics

RATE = 16000


def glide(f_start: float, f_end: float, seconds: float = 1.0, sr: int = RATE) -> np.ndarray:
    """Five harmonics of an F0 gliding geometrically from f_start to f_end."""
    n = np.arange(int(seconds * sr))
    f0 = f_start * (f_end / f_start) ** (n / len(n))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    return (0.3 * sum(np.sin(k * phase) / k for k in range(1, 6))).astype(np.float32)


def test_track_follows_a_known_f0():
    f0, voiced = pitch.track(glide(120.0, 240.0))
    inner = slice(10, -10)  # the edges' frames see zero padding
    assert voiced[inner].all()
    expected = 120.0 * 2 ** (np.arange(len(f0)) * 160 / RATE)
    cents = 1200 * np.abs(np.log2(f0[inner] / expected[inner]))
    assert np.median(cents) < 15 and cents.max() < 60


def test_errors_of_identical_octave_and_unvoiced_tracks():
    voiced_sig, noise = glide(150.0, 200.0), np.random.default_rng(0).normal(0, 0.1, RATE).astype(np.float32)
    same = metrics.pitch(voiced_sig, voiced_sig, RATE)
    assert same["vde"] == 0.0 and same["gpe"] == 0.0 and same["f0_rmse_cents"] == 0.0
    octave = metrics.pitch(voiced_sig, glide(300.0, 400.0), RATE)
    assert octave["gpe"] > 0.95 and 1100 < octave["f0_rmse_cents"] < 1300 and octave["vde"] < 0.05
    whisper = metrics.pitch(voiced_sig, noise, RATE)
    assert whisper["voiced_deg"] < 0.05 and whisper["vde"] == pytest.approx(whisper["voiced_ref"] - whisper["voiced_deg"])
    assert whisper["gpe"] is None or whisper["gpe"] >= 0  # few frames voiced in both: may be undefined


def test_errors_count_frames_as_documented():
    f0_ref = np.array([100.0, 100.0, 100.0, np.nan, 100.0])
    v_ref = np.array([True, True, True, False, True])
    f0_deg = np.array([110.0, 130.0, np.nan, 100.0, 200.0])
    v_deg = np.array([True, True, False, True, True])
    e = pitch.errors(f0_ref, v_ref, f0_deg, v_deg)
    assert e["vde"] == pytest.approx(2 / 5)  # frames 2 and 3 disagree
    assert e["gpe"] == pytest.approx(2 / 3)  # of frames 0, 1, 4 (voiced in both): 130 and 200 are > 20% off
    cents = 1200 * np.log2(np.array([1.1, 1.3, 2.0]))
    assert e["f0_rmse_cents"] == pytest.approx(np.sqrt(np.mean(cents**2)))
    assert e["voiced_ref"] == pytest.approx(0.8) and e["voiced_deg"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="different lengths"):
        pitch.errors(f0_ref, v_ref, f0_deg[:4], v_deg[:4])


def test_real_speech_is_mostly_voiced_and_in_a_speaking_range(speech):
    sig, sr = sf.read(speech / "librispeech-dev-clean/84/84-121123-0001.wav", dtype="float32")
    f0, voiced = pitch.track(sig, sr)
    assert 0.4 < voiced.mean() < 0.9  # speech with pauses and consonants
    assert 120 < np.median(f0[voiced]) < 260  # speaker 84 is a woman
