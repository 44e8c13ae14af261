"""Reading, writing, resampling and validating audio.

Everything that touches audio files goes through here, so bad input fails in one place with one clear
`InputError`. Signals are float32 tensors shaped `(channels, samples)` (or `(..., samples)` for
`resample`), with samples nominally in [-1, 1].

- `load_audio`: any format libsndfile reads (WAV in 8/16/24/32-bit integer or 32/64-bit float, FLAC,
  OGG/Vorbis, ...), optionally mixed down to mono and resampled.
- `save_audio`: WAV/FLAC/OGG chosen by the suffix, written to a temporary file and renamed.
- `resample`: soxr (high quality) on CPU.
- `check_signal`: the NaN/Inf/empty check shared by the two above.
"""

from __future__ import annotations

import errno
import os
from contextlib import suppress
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from .errors import InputError
from .io import temporary_path, write_failure, write_file

# A 2-D signal with more "channels" than this was almost surely passed as (samples, channels).
_MAX_CHANNELS = 64

# suffix -> (libsndfile major format, default subtype, max sample rate, max channels). 16-bit PCM is the
# most widely readable WAV/FLAC. The limits are checked up front because libsndfile reports FLAC's as
# "Format not recognised" and its Vorbis encoder *segfaults* above 200 kHz instead of returning an error.
_WRITE_FORMATS = {
    ".wav": ("WAV", "PCM_16", 2**31 - 1, _MAX_CHANNELS),
    ".flac": ("FLAC", "PCM_16", 655_350, 8),
    ".ogg": ("OGG", "VORBIS", 200_000, _MAX_CHANNELS),
}


def check_signal(sig: torch.Tensor | np.ndarray, name: str) -> None:
    """Raise `InputError` if `sig` (..., samples) has no samples or holds NaN/Inf values.

    `name` describes the signal in the message, e.g. "audio file 'x.wav'".
    """
    if isinstance(sig, np.ndarray):
        size, finite = sig.size, bool(np.isfinite(sig).all())
    else:
        size, finite = sig.numel(), bool(torch.isfinite(sig).all())
    if size == 0:
        raise InputError(f"{name} is empty (0 samples)")
    if not finite:
        raise InputError(f"{name} contains NaN or infinite samples")


def _check_rate(sample_rate, what: str) -> None:
    # bool is an int subclass, but True as a sample rate is always a bug.
    number = isinstance(sample_rate, (int, float, np.integer, np.floating)) and not isinstance(sample_rate, bool)
    if not number or not np.isfinite(sample_rate) or sample_rate <= 0:
        raise InputError(f"{what} must be a positive number, got {sample_rate!r}")


def load_audio(
    path: str | os.PathLike, sample_rate: int | None = None, mono: bool = False, max_seconds: float | None = None
) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32.

    Args:
        path: a file libsndfile reads (WAV, FLAC, OGG/Vorbis, ...).
        sample_rate: resample to this rate (soxr, high quality) when given and different from the file's.
        mono: average the channels into one.
        max_seconds: refuse a longer file from its header, before reading any sample.

    Returns:
        `(sig, sr)`: `sig` is float32 `(channels, samples)` (`(1, samples)` when `mono`), `sr` its rate.

    Raises:
        InputError: missing path, directory, empty or corrupt file, NaN/Inf samples, bad `sample_rate`, a
            file longer than `max_seconds`.
    """
    if sample_rate is not None:
        _check_rate(sample_rate, f"target sample rate for '{path}'")
    file = Path(path)
    if not file.exists():
        raise InputError(f"audio file '{path}' does not exist")
    if file.is_dir():
        raise InputError(f"cannot read audio from '{path}': it is a directory, not a file")
    if not os.access(file, os.R_OK):
        raise InputError(f"cannot read audio from '{path}': permission denied")
    if file.stat().st_size == 0:
        raise InputError(f"audio file '{path}' is empty (0 bytes)")
    try:
        if max_seconds is not None and (seconds := sf.info(file).duration) > max_seconds:
            raise InputError(f"audio file '{path}' lasts {seconds:.0f} s; at most {max_seconds:.0f} s "
                             f"({max_seconds / 60:.0f} min) are read: cut it to its last part")
        # always_2d gives (frames, channels) even for mono; libsndfile scales integer PCM to [-1, 1).
        data, sr = sf.read(file, dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        reason = err.error_string.rstrip(".")
        raise InputError(
            f"cannot read audio from '{path}': not a readable WAV/FLAC/OGG file ({reason})"
        ) from err
    except (OSError, RuntimeError) as err:
        raise InputError(f"cannot read audio from '{path}': {err}") from err

    # Checked before resampling: soxr would smear a single NaN over its whole filter length.
    check_signal(data.T, f"audio file '{path}'")
    if mono and data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True, dtype=np.float32)
    if sample_rate is not None and sample_rate != sr:
        # soxr wants (frames, channels), which is how soundfile already hands it over.
        data = soxr.resample(data, sr, sample_rate, quality="HQ")
        sr = int(sample_rate)
    sig = torch.from_numpy(np.ascontiguousarray(data.T))
    return sig, int(sr)


def _to_numpy(sig: torch.Tensor | np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Turn a `(samples,)` or `(channels, samples)` signal into float32 `(samples, channels)` for soundfile."""
    if isinstance(sig, torch.Tensor):
        if not sig.is_floating_point():
            raise InputError(
                f"cannot save audio to '{path}': expected floating-point samples, got {sig.dtype}"
            )
        # To float32 before numpy, which has no bfloat16.
        arr = sig.detach().to("cpu", torch.float32).numpy()
    else:
        arr = np.asarray(sig)
        if not np.issubdtype(arr.dtype, np.floating):
            # Integer arrays have no agreed scale (int16 full scale? 24-bit in int32?), so refuse to guess.
            raise InputError(
                f"cannot save audio to '{path}': expected floating-point samples, got {arr.dtype}"
            )
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InputError(
            f"cannot save audio to '{path}': expected shape (samples,) or (channels, samples), got {tuple(arr.shape)}"
        )
    if arr.shape[0] > _MAX_CHANNELS:
        raise InputError(
            f"cannot save audio to '{path}': {arr.shape[0]} channels; pass (channels, samples), not (samples, channels)"
        )
    check_signal(arr, f"signal to save to '{path}'")
    return np.ascontiguousarray(np.clip(arr, -1.0, 1.0).T)


def save_audio(
    path: str | os.PathLike,
    sig: torch.Tensor | np.ndarray,
    sample_rate: int,
    subtype: str | None = None,
) -> None:
    """Write `sig` to `path` atomically: WAV, FLAC or OGG/Vorbis chosen by the suffix.

    Args:
        path: destination ending in .wav, .flac or .ogg; missing parent folders are created.
        sig: float `(samples,)` or `(channels, samples)`, tensor or numpy array; clipped to [-1, 1].
        sample_rate: in Hz.
        subtype: libsndfile subtype such as "PCM_24" or "FLOAT"; default 16-bit PCM (Vorbis for .ogg).

    The data go to a hidden temporary file in the destination folder that is renamed over `path` only
    once complete, so a crash or an error never leaves a truncated file (the temporary one is removed).

    Raises:
        InputError: unsupported suffix or subtype, bad shape or dtype, empty or NaN/Inf signal, bad rate.
    """
    dest = Path(path)
    fmt = _WRITE_FORMATS.get(dest.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot save audio to '{path}': unsupported format '{dest.suffix}' (use .wav, .flac or .ogg)"
        )
    major, default_subtype, max_rate, max_channels = fmt
    subtype = default_subtype if subtype is None else subtype.upper()
    if not sf.check_format(major, subtype):
        raise InputError(f"cannot save audio to '{path}': subtype {subtype} is not valid for {major}")
    _check_rate(sample_rate, f"sample rate for '{path}'")
    if int(sample_rate) != sample_rate:
        raise InputError(
            f"cannot save audio to '{path}': sample rate {sample_rate!r} is not a whole number of Hz"
        )
    if sample_rate > max_rate:
        raise InputError(f"cannot save audio to '{path}': {major} supports sample rates up to {max_rate} Hz")
    data = _to_numpy(sig, path)
    if data.shape[1] > max_channels:
        raise InputError(f"cannot save audio to '{path}': {major} holds at most {max_channels} channels")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot save audio to '{path}': cannot create its folder ({err})") from err
    try:
        # No fsync: corpora are written a file at a time, and a killed run leaves no half-written file anyway.
        write_file(dest, lambda tmp: sf.write(tmp, data, int(sample_rate), format=major, subtype=subtype), sync=False)
    except sf.LibsndfileError as err:
        # error_string, not str(err): the latter names the temporary file, not the user's.
        raise InputError(f"cannot save audio to '{path}': {err.error_string}") from err
    except sf.SoundFileError as err:
        raise InputError(f"cannot save audio to '{path}': {err}") from err
    # An OSError (a full disk, a read-only folder) goes on as it is, naming `path`: it is not bad input.


def resample(sig: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample `sig` (..., samples) from `orig_sr` to `new_sr` Hz with soxr (high quality).

    Returns a tensor shaped `(..., round(samples * new_sr / orig_sr))` with the input's dtype and device;
    the input itself when the rates are equal. Runs on CPU through numpy, so it is not differentiable.
    float32 and float64 are resampled as they are; float16/bfloat16 go through float32.
    """
    _check_rate(orig_sr, "original sample rate")
    _check_rate(new_sr, "new sample rate")
    if orig_sr == new_sr:
        return sig
    if not isinstance(sig, torch.Tensor) or sig.ndim == 0 or not sig.is_floating_point():
        raise InputError("resample expects a floating-point tensor shaped (..., samples)")
    work = sig.detach().cpu()
    if work.dtype not in (torch.float32, torch.float64):
        work = work.float()  # float16/bfloat16: soxr has no such types
    lead, n = work.shape[:-1], work.shape[-1]
    if work.numel() == 0:
        return sig.new_zeros(*lead, round(n * new_sr / orig_sr))
    # soxr treats columns as channels: fold every leading dimension into one channel axis.
    frames = work.reshape(-1, n).T.contiguous().numpy()
    out = soxr.resample(frames, orig_sr, new_sr, quality="HQ")
    res = torch.from_numpy(np.ascontiguousarray(out.T)).reshape(*lead, out.shape[0])
    return res.to(device=sig.device, dtype=sig.dtype)


class WavStreamWriter:
    """WAV files (16-bit, mono) written chunk by chunk under temporary names, renamed once complete.

    `write(audio (B, N))` appends row b to file b and flushes, so a reader sees the audio as it comes;
    `close()` renames them into place; `abort()` (e.g. in a `finally`) removes what was not closed.
    """

    def __init__(self, paths: list[Path], sample_rate: int):
        self.paths = [Path(p) for p in paths]
        self.tmps = [temporary_path(p) for p in self.paths]
        self.files = []
        try:
            for p, t in zip(self.paths, self.tmps, strict=True):
                p.parent.mkdir(parents=True, exist_ok=True)
                self.files.append(sf.SoundFile(t, "w", samplerate=sample_rate, channels=1, subtype="PCM_16",
                                               format="WAV"))
        except (OSError, sf.LibsndfileError) as error:
            self.abort()
            raise self._failure(p, error) from error

    def write(self, audio: torch.Tensor) -> None:
        for f, row, path in zip(self.files, audio, self.paths, strict=True):
            try:
                f.write(row.detach().float().clamp(-1, 1).cpu().numpy())
                f.flush()
            except (OSError, sf.LibsndfileError) as error:
                raise self._failure(path, error) from error

    @staticmethod
    def _failure(path: Path, error: Exception) -> OSError:
        """The error naming `path`: ENOSPC on a full disk, else what libsndfile said (it gives no errno)."""
        failure = write_failure(path, error)
        return failure if failure is not None else OSError(errno.EIO, getattr(error, "error_string", str(error)),
                                                           str(path))

    def close(self) -> None:
        for f, tmp, path in zip(self.files, self.tmps, self.paths, strict=True):
            f.close()
            os.replace(tmp, path)
        self.files = []

    def abort(self) -> None:
        for f in self.files:
            with suppress(OSError, sf.LibsndfileError):  # a failing disk must not hide the first error
                f.close()
        for tmp in self.tmps:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        self.files = []
