"""Fixed-length audio segments cropped from the files of a manifest (codec and SSL training).

Where a segment starts in its file is a pure function of `(seed, epoch, index)` (`stable_randint`): no
global RNG, no worker state. The same item therefore gives the same crop in every process and every
DataLoader worker, which is what makes a distributed run equal a single-process one and lets a resumed
run see exactly the data it would have seen.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..audio import check_signal, load_audio
from ..errors import InputError
from .manifest import as_entries


def stable_randint(high: int, *keys: int) -> int:
    """A uniform integer in `[0, high)` determined only by the integer `keys`, e.g. `(seed, epoch, index)`.

    A keyed hash rather than an RNG, so it is the same in any process, worker or Python version.
    """
    if high <= 0:
        raise ValueError(f"high must be positive, got {high}")
    packed = struct.pack(f"<{len(keys)}Q", *(int(k) % 2**64 for k in keys))
    draw = int.from_bytes(hashlib.blake2b(packed, digest_size=8, person=b"wavslm-crop").digest(), "little")
    return draw % high  # modulo bias < high / 2**64: nothing


class AudioSegments(Dataset):
    """Mono float32 segments from the files of a manifest, resampled to `sample_rate`.

    Item `i` is `{"sig": (segment_samples,) float32, "length": int, "index": i}`: a crop of file `i`
    starting at a random offset fixed by `(seed, epoch, i)` (offset 0 when `random_crop` is False).
    Files shorter than a segment are zero-padded on the right; `length` counts their real samples.
    With `segment_seconds=None` each item is the whole file (`collate_segments` pads the batch).

    Call `set_epoch(epoch)` before each epoch (as with `DistributedSampler`) to draw new offsets, or read
    `dataset.get(i, epoch)` directly (a DataLoader with persistent workers keeps a copy of the dataset,
    so its workers do not see `set_epoch` on the main process's copy).
    """

    def __init__(
        self,
        manifest: str | os.PathLike | list[dict],
        segment_seconds: float | None,
        sample_rate: int = 16000,
        seed: int = 0,
        random_crop: bool = True,
    ):
        self.entries = as_entries(manifest)
        if segment_seconds is not None and segment_seconds <= 0:
            raise InputError(f"segment_seconds must be positive, got {segment_seconds}")
        self.segment_samples = None if segment_seconds is None else round(segment_seconds * sample_rate)
        self.sample_rate = sample_rate
        self.seed = seed
        self.random_crop = random_crop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        return self.get(index, self.epoch)

    def offset(self, index: int, epoch: int, num_samples: int) -> int:
        """Where the crop of item `index` starts in a file of `num_samples` (at `sample_rate`)."""
        if self.segment_samples is None or not self.random_crop or num_samples <= self.segment_samples:
            return 0
        return stable_randint(num_samples - self.segment_samples + 1, self.seed, epoch, index)

    def get(self, index: int, epoch: int) -> dict:
        """Item `index` as drawn in `epoch`."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} files")
        index %= len(self)
        path = self.entries[index]["path"]
        sig = self._read_native(path, index, epoch)
        if sig is None:
            whole, _ = load_audio(path, self.sample_rate, mono=True)
            start = self.offset(index, epoch, whole.shape[1])
            stop = None if self.segment_samples is None else start + self.segment_samples
            sig = whole[0, start:stop]
        length = sig.shape[0]
        if self.segment_samples is not None and length < self.segment_samples:
            sig = torch.nn.functional.pad(sig, (0, self.segment_samples - length))
        return {"sig": sig.contiguous(), "length": length, "index": index, "path": path}

    def _read_native(self, path: str, index: int, epoch: int) -> Tensor | None:
        """Read just the crop when the file is already at `sample_rate` (no resampling to do).

        The samples equal `load_audio`'s for the same span; `None` sends every other case (and every error,
        for its clear message) through `load_audio` on the whole file.
        """
        try:
            with sf.SoundFile(path) as f:
                if f.samplerate != self.sample_rate or f.frames <= 0 or self.segment_samples is None:
                    return None
                f.seek(self.offset(index, epoch, f.frames))
                data = f.read(min(self.segment_samples, f.frames), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, OSError, RuntimeError):
            return None
        check_signal(data.T, f"audio file '{path}'")
        if data.shape[1] > 1:
            data = data.mean(axis=1, keepdims=True, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(data[:, 0]))


def collate_segments(items: list[dict]) -> dict:
    """Stack items into `{"sig": (B, N) float32, "length": (B,) int64, "index": (B,) int64}`.

    Items of different lengths (whole files) are zero-padded on the right to the longest.
    """
    longest = max(item["sig"].shape[0] for item in items)
    sig = torch.zeros(len(items), longest)
    for row, item in enumerate(items):
        sig[row, : item["sig"].shape[0]] = item["sig"]
    return {
        "sig": sig,
        "length": torch.tensor([item["length"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }
