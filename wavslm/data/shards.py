"""Token shards: the tokenized corpus on disk, and the aligned crops the language model trains on.

A shard set is one folder:

    tokens.bin    every utterance's tokens back to back, a flat little-endian array of `dtype`
                  (uint16 when vocab_size <= 65536, else int32), read through a memmap
    offsets.npy   int64 (N + 1,): utterance i is tokens[offsets[i] : offsets[i + 1]]
    index.jsonl   one line per utterance: {"path": source audio, "num_tokens": T, ...extra fields}
    meta.json     {"format", "version", "vocab_size", "dtype", "codec", "frame_rate",
                   "num_utterances", "num_tokens", ...extra}

`ShardWriter` only appends: the tokens of an utterance go to `tokens.bin`, then its line to `index.jsonl`,
which commits it. Reopening a folder continues after the last committed utterance whose tokens are all
present and cuts any torn tail. `close()` writes `offsets.npy` and `meta.json` (atomically); a folder
without an up-to-date `offsets.npy` is still being written and `TokenShards` refuses it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InputError
from ..io import write_atomic, write_file, write_json, write_npy
from .segments import stable_randint

FORMAT, VERSION = "wavslm.token_shards", 1
TOKENS, OFFSETS, INDEX, META = "tokens.bin", "offsets.npy", "index.jsonl", "meta.json"

log = logging.getLogger(__name__)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 for vocabularies of up to 65536 tokens (the released 4096), int32 above."""
    if vocab_size <= 0:
        raise InputError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<i4")


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META).read_text())
    except FileNotFoundError:
        raise InputError(f"'{folder}' is not a token shard folder (no {META})") from None
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read '{folder / META}': {err}") from err
    if meta.get("format") != FORMAT:
        raise InputError(f"'{folder / META}' is not a token shard description (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise InputError(f"'{folder}' was written by a newer wavslm (shard format version {meta['version']})")
    return meta


def _read_index(folder: Path, strict: bool) -> list[dict]:
    """The committed lines of `index.jsonl`; a torn last line is dropped unless `strict`."""
    path = folder / INDEX
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    entries = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)  # after the final "\n": empty, or a line the writer never finished
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry.get("num_tokens"), int) or entry["num_tokens"] < 0:
                raise ValueError("bad num_tokens")
        except (ValueError, AttributeError) as err:
            if last and not strict:
                break
            raise InputError(f"'{path}', line {number} is corrupt ({err}); the shard folder is damaged") from None
        if last and not strict:
            break  # complete JSON but no newline: not committed
        entries.append(entry)
    return entries


class ShardWriter:
    """Append utterances' tokens to a shard folder, resuming after the last complete one.

    Args:
        folder: created if missing; if it holds shards, they must have the same `vocab_size`.
        vocab_size: codebook size, which fixes the dtype.
        codec: a description of the codec that made the tokens (its reference), kept in meta.json.
        frame_rate: tokens per second.
        extra: more fields for meta.json (e.g. rank and world size of a tokenization part).

    Use as a context manager, or call `close()`: only then are `offsets.npy` and `meta.json` written.
    """

    def __init__(self, folder: str | os.PathLike, vocab_size: int, codec: str | None = None,
                 frame_rate: float | None = None, extra: dict | None = None):
        self.folder = Path(folder)
        self.dtype = token_dtype(vocab_size)
        self.vocab_size = vocab_size
        self.meta = {"format": FORMAT, "version": VERSION, "vocab_size": vocab_size, "dtype": self.dtype.name,
                     "codec": codec, "frame_rate": frame_rate, **(extra or {})}
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / META).exists():
            self._check_compatible(_read_meta(self.folder))
        self.entries = self._recover()
        self.num_tokens = sum(e["num_tokens"] for e in self.entries)
        # Marks the folder as being written: a reader must not trust an offsets.npy from before.
        (self.folder / OFFSETS).unlink(missing_ok=True)
        self._write_meta()
        self._tokens = open(self.folder / TOKENS, "ab")
        self._index = open(self.folder / INDEX, "ab")

    def _check_compatible(self, old: dict) -> None:
        """Refuse to mix vocabularies or frame rates; keep the old descriptions this writer was not given."""
        for key in ("vocab_size", "frame_rate"):
            if old.get(key) is not None and self.meta[key] is not None and old[key] != self.meta[key]:
                raise InputError(
                    f"'{self.folder}' holds tokens with {key} {old[key]}, not {self.meta[key]}; use another folder"
                )
        if old.get("codec") and self.meta["codec"] and old["codec"] != self.meta["codec"]:
            log.warning("'%s' was written with codec %s, now appending with %s", self.folder, old["codec"],
                        self.meta["codec"])
        for key, value in old.items():
            if self.meta.get(key) is None and key not in ("num_utterances", "num_tokens"):
                self.meta[key] = value

    def _recover(self) -> list[dict]:
        """Keep the committed utterances whose tokens are all on disk; cut everything after them."""
        entries = _read_index(self.folder, strict=False)
        tokens = self.folder / TOKENS
        available = tokens.stat().st_size // self.dtype.itemsize if tokens.exists() else 0
        kept, end = [], 0
        for entry in entries:
            if end + entry["num_tokens"] > available:
                break
            kept.append(entry)
            end += entry["num_tokens"]
        if len(kept) < len(entries):
            log.warning("'%s': %d utterances lack their tokens (a torn write); they will be redone",
                        self.folder, len(entries) - len(kept))
        if not tokens.exists() or tokens.stat().st_size != end * self.dtype.itemsize:
            with open(tokens, "ab") as f:
                f.truncate(end * self.dtype.itemsize)
        index = "".join(json.dumps(e) + "\n" for e in kept).encode()
        if not (self.folder / INDEX).exists() or (self.folder / INDEX).read_bytes() != index:
            write_atomic(self.folder / INDEX, index)
        return kept

    def _write_meta(self) -> None:
        self.meta.update(num_utterances=len(self.entries), num_tokens=self.num_tokens)
        write_json(self.folder / META, self.meta)

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, toks: Tensor | np.ndarray, path: str, **fields) -> int:
        """Add one utterance: `toks (T,)` (or `(1, T)`) integer tokens from audio `path`; returns its index.

        `fields` (JSON values) are stored on its index line, e.g. `item=` its position in the manifest.
        """
        arr = toks.detach().cpu().numpy() if isinstance(toks, Tensor) else np.asarray(toks)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"tokens of '{path}' must be integers shaped (T,), got {arr.dtype} {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise InputError(f"tokens of '{path}' must lie in [0, {self.vocab_size})")
        self._tokens.write(arr.astype(self.dtype).tobytes())
        self._tokens.flush()
        # The index line commits the utterance, so it goes after its tokens.
        entry = {"path": str(path), "num_tokens": int(arr.size), **fields}
        self._index.write((json.dumps(entry) + "\n").encode())
        self._index.flush()
        self.entries.append(entry)
        self.num_tokens += int(arr.size)
        return len(self.entries) - 1

    def close(self) -> None:
        """Write `offsets.npy` and `meta.json`; the folder is then readable by `TokenShards`."""
        if self._tokens.closed:
            return
        for f in (self._tokens, self._index):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        offsets = np.zeros(len(self.entries) + 1, dtype=np.int64)
        np.cumsum([e["num_tokens"] for e in self.entries], out=offsets[1:])
        write_npy(self.folder / OFFSETS, offsets)
        self._write_meta()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TokenShards:
    """Read a closed shard folder: `len`, `shards[i] -> (T,) int64`, `lengths`, `total_tokens`, `entry(i)`.

    The tokens stay on disk (a memmap); pickling (DataLoader workers) reopens the file instead of copying it.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta = _read_meta(self.folder)
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.vocab_size = int(self.meta["vocab_size"])
        if not (self.folder / OFFSETS).exists():
            raise InputError(f"'{self.folder}' has no {OFFSETS}: it is still being written or was interrupted; "
                             "finish or resume the run that writes it")
        self.offsets = np.load(self.folder / OFFSETS)
        size = (self.folder / TOKENS).stat().st_size if (self.folder / TOKENS).exists() else 0
        if (self.offsets.ndim != 1 or len(self.offsets) != self.meta["num_utterances"] + 1
                or int(self.offsets[-1]) * self.dtype.itemsize != size):
            raise InputError(f"'{self.folder}' is inconsistent ({OFFSETS}, {META} and {TOKENS} disagree); "
                             "rewrite it")
        self._tokens = None
        self._entries = None

    @property
    def tokens(self) -> np.ndarray:
        """Every token, flat, as a read-only memmap."""
        if self._tokens is None:
            total = int(self.offsets[-1])
            self._tokens = (np.memmap(self.folder / TOKENS, dtype=self.dtype, mode="r", shape=(total,))
                            if total else np.zeros(0, dtype=self.dtype))
        return self._tokens

    def __getstate__(self) -> dict:
        return {**vars(self), "_tokens": None}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per utterance, int64 `(N,)`."""
        return np.diff(self.offsets)

    @property
    def total_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def frame_rate(self) -> float | None:
        return self.meta.get("frame_rate")

    def _check(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"utterance {index} out of range for {len(self)} utterances")
        return index % len(self)

    def __getitem__(self, index: int) -> Tensor:
        i = self._check(index)
        return torch.from_numpy(self.tokens[self.offsets[i] : self.offsets[i + 1]].astype(np.int64))

    def slice(self, index: int, start: int, stop: int) -> Tensor:
        """Tokens `start:stop` of utterance `index` as `(stop - start,)` int64, reading only those."""
        i = self._check(index)
        lo = int(self.offsets[i])
        stop = min(stop, int(self.offsets[i + 1]) - lo)
        return torch.from_numpy(self.tokens[lo + start : lo + stop].astype(np.int64))

    @property
    def entries(self) -> list[dict]:
        """The index lines (source path, num_tokens, ...), loaded on first use."""
        if self._entries is None:
            self._entries = _read_index(self.folder, strict=True)
            if len(self._entries) != len(self):
                raise InputError(f"'{self.folder / INDEX}' has {len(self._entries)} lines for {len(self)} utterances")
        return self._entries

    def entry(self, index: int) -> dict:
        return self.entries[self._check(index)]


def merge_shards(parts: list[str | os.PathLike], output: str | os.PathLike, extra: dict | None = None) -> TokenShards:
    """Merge closed shard folders `parts` into one at `output`.

    When every utterance carries an `"item"` (its position in the manifest, as `tokenize_manifest` writes),
    the output is in item order, so parts written by several ranks merge into exactly what one rank writes;
    otherwise the parts are concatenated in the order given. Files are written under temporary names and
    renamed, `meta.json` last.
    """
    shards = [TokenShards(p) for p in parts]
    if not shards:
        raise InputError("merge_shards needs at least one part")
    out = Path(output)
    first = shards[0].meta
    for s in shards[1:]:
        for key in ("vocab_size", "dtype", "frame_rate", "codec"):
            if s.meta.get(key) != first.get(key):
                raise InputError(f"cannot merge '{s.folder}' with '{shards[0].folder}': their {key} differ "
                                 f"({s.meta.get(key)!r} vs {first.get(key)!r})")
        if s.folder.resolve() == out.resolve():
            raise InputError(f"cannot merge '{s.folder}' into itself")
    order = [(p, i) for p, s in enumerate(shards) for i in range(len(s))]
    if all("item" in s.entry(i) for p, s in enumerate(shards) for i in range(len(s))):
        order.sort(key=lambda pi: shards[pi[0]].entry(pi[1])["item"])
        items = [shards[p].entry(i)["item"] for p, i in order]
        if len(set(items)) != len(items):
            raise InputError(f"cannot merge {[str(s.folder) for s in shards]}: some items appear in two parts")

    out.mkdir(parents=True, exist_ok=True)
    # Without meta.json a half-merged folder reads as "not a shard folder" rather than as stale data.
    (out / META).unlink(missing_ok=True)
    offsets = np.zeros(len(order) + 1, dtype=np.int64)

    def write_tokens(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for n, (p, i) in enumerate(order):
                s = shards[p]
                f.write(s.tokens[s.offsets[i] : s.offsets[i + 1]].tobytes())
                offsets[n + 1] = offsets[n] + s.lengths[i]

    def write_index(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for p, i in order:
                f.write((json.dumps(shards[p].entry(i)) + "\n").encode())

    write_file(out / TOKENS, write_tokens)
    write_file(out / INDEX, write_index)
    write_npy(out / OFFSETS, offsets)
    drop = ("num_utterances", "num_tokens", "rank", "world_size")
    meta = {k: v for k, v in first.items() if k not in drop}
    meta.update(extra or {}, num_utterances=len(order), num_tokens=int(offsets[-1]))
    write_json(out / META, meta)
    return TokenShards(out)


class TokenCrops(Dataset):
    """Crops of `crop_tokens` tokens for language-model training, aligned to the codec's chunks.

    Item `i` is `{"toks": (crop_tokens,) int64, "length": int, "index": utterance}` from the i-th
    utterance with at least `align` tokens (shorter ones are left out here). A crop starts at a multiple
    of `align` (chunks are aligned to absolute multiples of 4 tokens), at an offset fixed by
    `(seed, epoch, utterance)`; with `random_crop=False`, at 0. An utterance shorter than the crop is cut
    to a multiple of `align` and padded with `pad_id`; `length` counts its real tokens.
    """

    def __init__(self, shards: TokenShards | str | os.PathLike, crop_tokens: int, align: int = 4, seed: int = 0,
                 random_crop: bool = True, pad_id: int = 0):
        self.shards = shards if isinstance(shards, TokenShards) else TokenShards(shards)
        if align <= 0 or crop_tokens <= 0 or crop_tokens % align:
            raise InputError(f"crop_tokens ({crop_tokens}) must be a positive multiple of align ({align})")
        self.crop_tokens, self.align, self.seed = crop_tokens, align, seed
        self.random_crop, self.pad_id = random_crop, pad_id
        self.utterances = np.flatnonzero(self.shards.lengths >= align)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        return self.get(index, self.epoch)

    def offset(self, utterance: int, epoch: int) -> int:
        """Where the crop of `utterance` starts in `epoch` (a multiple of `align`)."""
        usable = int(self.shards.lengths[utterance]) // self.align * self.align
        starts = (usable - self.crop_tokens) // self.align + 1
        if starts <= 1 or not self.random_crop:
            return 0
        return self.align * stable_randint(starts, self.seed, epoch, utterance)

    def get(self, index: int, epoch: int) -> dict:
        """Item `index` as drawn in `epoch`."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} utterances")
        utterance = int(self.utterances[index])
        usable = int(self.shards.lengths[utterance]) // self.align * self.align
        start = self.offset(utterance, epoch)
        toks = self.shards.slice(utterance, start, start + min(self.crop_tokens, usable))
        length = toks.shape[0]
        if length < self.crop_tokens:
            toks = torch.nn.functional.pad(toks, (0, self.crop_tokens - length), value=self.pad_id)
        return {"toks": toks, "length": length, "index": utterance}


def collate_tokens(items: list[dict]) -> dict:
    """Stack items into `{"toks": (B, crop) int64, "length": (B,) int64, "index": (B,) int64}`."""
    return {
        "toks": torch.stack([item["toks"] for item in items]),
        "length": torch.tensor([item["length"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }
