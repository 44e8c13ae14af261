"""Fundamental frequency and voicing with pYIN (librosa), and the errors between two pitch tracks.

`track` is what both the codec metrics (`eval.metrics.pitch`) and the F0 targets of a harmonic decoder's
training use. Its defaults are the evaluation settings, `PYIN_SETTINGS`: 60-400 Hz at 16 kHz, 1024-sample
frames every 160 samples (10 ms), pYIN's default 0.1-semitone resolution. Training asks for one frame per
codec frame (hop 320) at a coarser resolution, which is ~8x faster and changes the voicing decision on
~6% of frames of real speech.

Errors over frames of two tracks of equal length (`errors`):

    vde             voicing decision error: share of frames voiced in one track and not in the other
    gpe             gross pitch error: share of the frames voiced in both where F0 differs by more than 20%
    f0_rmse_cents   RMS of 1200 * log2(f0_deg / f0_ref) over the frames voiced in both
    voiced_ref, voiced_deg   share of voiced frames in each track
"""

from __future__ import annotations

import numpy as np

PYIN_SETTINGS = {"sample_rate": 16000, "fmin": 60.0, "fmax": 400.0, "frame_length": 1024, "hop_length": 160,
                 "resolution": 0.1}
GROSS_ERROR = 0.2  # relative F0 deviation that counts as a gross error


def track(sig: np.ndarray, sample_rate: int = 16000, fmin: float = 60.0, fmax: float = 400.0,
          frame_length: int = 1024, hop_length: int = 160, resolution: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """`sig (..., N)` float at `sample_rate` -> `f0 (..., T)` in Hz (NaN where unvoiced) and `voiced (..., T)`
    bool; frame t is centred on sample `t * hop_length`."""
    import librosa

    f0, voiced, _ = librosa.pyin(np.asarray(sig, dtype=np.float32), fmin=fmin, fmax=fmax, sr=sample_rate,
                                 frame_length=frame_length, hop_length=hop_length, resolution=resolution)
    return f0, voiced.astype(bool)


def errors(f0_ref: np.ndarray, voiced_ref: np.ndarray, f0_deg: np.ndarray, voiced_deg: np.ndarray) -> dict[str, float | None]:
    """VDE, GPE and F0 RMSE in cents between a reference and a degraded track of equal length (module notes);
    None where no frame qualifies (GPE and RMSE need frames voiced in both)."""
    if not len(f0_ref) == len(voiced_ref) == len(f0_deg) == len(voiced_deg):
        raise ValueError("pitch tracks of different lengths")
    both = voiced_ref & voiced_deg
    ratio = f0_deg[both] / f0_ref[both]
    frames = len(voiced_ref)
    return {
        "vde": float(np.mean(voiced_ref != voiced_deg)) if frames else None,
        "gpe": float(np.mean(np.abs(ratio - 1) > GROSS_ERROR)) if both.any() else None,
        "f0_rmse_cents": float(np.sqrt(np.mean((1200 * np.log2(ratio)) ** 2))) if both.any() else None,
        "voiced_ref": float(np.mean(voiced_ref)) if frames else None,
        "voiced_deg": float(np.mean(voiced_deg)) if frames else None,
    }
