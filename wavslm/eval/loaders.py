"""Benchmark layouts for zero-shot pair scoring, each read into a list of `Pair` records.

A pair is a positive and a negative clip (the model should give the positive the lower NLL), the item
it belongs to (pairs of one item, e.g. one word spoken by several voices, are averaged together first)
and metadata for per-subset results. `--data` is a local path (the folders shown, or one level in) or a
Hugging Face Hub dataset id (`speed/sWUGGY`), downloaded or found in the local cache (`hub.dataset_folder`).

- ZeroSpeech 2021 sLM21: `{lexical,syntactic}/{dev,test}/gold.csv` + `*.wav`. sWUGGY columns `id,
  filename, correct, frequency, voice` (and `length`, the word's phones, when present); sBLIMP `id,
  filename, correct, voice, type, subtype`. One `correct=1` and one `correct=0` row per (id, voice);
  `filename` is the wav's stem. The word row's frequency is its LibriSpeech count: 0 (or "oov", or
  empty) is out of vocabulary. The test split's gold is withheld: `split_wavs` lists its files, which
  `eval zeroshot --submission` scores for the official scorer.
- Hugging Face parquet (`speed/sWUGGY`, `speed/sBLIMP`, `speed/sStoryCloze`, `speed/tStoryCloze`,
  `slprl/SALMon`): every `*.parquet` under the folder (or one file), audio columns `positive` and
  `negative` (or `positive_audio`/`negative_audio`, `correct`/`incorrect`), each a struct of encoded
  `bytes` and `path` as `datasets` writes them. Metadata columns are used when present: `id` (the item,
  averaged over its `voice`s as the official sLM21 scorer does), `frequency`, `length`, `type`,
  `subtype`; for SALMon `task` (the part) and `ind`. SALMon's `all*` configs repeat the parts and are
  skipped.
- SALMon folders: `<part>/sample_<i>_<j>.wav`, j = 0 positive, 1 negative; `--data` is the root of the
  part folders or one part folder.
- Spoken StoryCloze (sSC/tSC) folders: `<id>_correct.wav` + `<id>_incorrect.wav` (also `_positive` /
  `_negative`, and .flac/.ogg) anywhere under `--data`, the subset being the folder relative to it.

Anything malformed raises `InputError` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ..audio import check_signal, load_audio, resample
from ..errors import InputError
from ..io import find_audio

TASKS = ("swuggy", "sblimp", "salmon", "ssc", "tsc", "storycloze")
# The eight SALMon parts, in the order the paper's tables give them.
SALMON_PARTS = ("sentiment_consistency", "speaker_consistency", "gender_consistency", "bg_domain_consistency",
                "bg_all_consistency", "rir_consistency", "sentiment_alignment", "bg_alignment")


@dataclass(frozen=True)
class Clip:
    """One audio to score: a file, or the encoded audio in a parquet file's `row` and `column`."""

    path: Path
    row: int | None = None
    column: str | None = None

    @property
    def name(self) -> str:
        """How messages and results name the clip."""
        return str(self.path) if self.row is None else f"{self.path} row {self.row} column '{self.column}'"


@dataclass
class Pair:
    positive: Clip
    negative: Clip
    item: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """The pairs of one task and where they came from: `source` as given (a path or a Hub id), the local
    `folder` read, and its `layout`."""

    pairs: list[Pair]
    source: str
    folder: Path
    layout: str


def local_folder(data: str | Path, task: str | None = None) -> Path:
    """`data` as a local path: itself when it exists, else the snapshot of the Hub dataset it names (for
    SALMon without the `all*` configs, which repeat the parts)."""
    from ..hub import dataset_folder, is_dataset_id

    if is_dataset_id(data):
        return dataset_folder(str(data), ignore=["all/*", "all_*/*"] if task == "salmon" else None)
    path = Path(data).expanduser()
    if not path.exists():
        raise InputError(f"dataset path '{data}' does not exist (nor is it a Hub dataset id such as speed/sWUGGY)")
    return path


def load_dataset(task: str, data: str | Path, split: str = "dev") -> Dataset:
    """The pairs of `task` (one of `TASKS`) found at `data`; `split` (dev | test) is for sLM21 only (a
    parquet set must hold one split: the Hugging Face sets hold only `train`)."""
    if task not in TASKS:
        raise InputError(f"unknown zero-shot task {task!r}; expected one of {', '.join(TASKS)}")
    folder = local_folder(data, task)
    parquet = _parquet_files(folder, task)
    if parquet and not (task in ("swuggy", "sblimp") and _gold(folder, _KIND[task], split, must=False)):
        _one_split(parquet, folder)
        pairs, layout = [pair for file in parquet for pair in _parquet_pairs(file, folder, task)], "Hugging Face parquet"
    elif task in ("swuggy", "sblimp"):
        pairs, layout = load_zerospeech(folder, _KIND[task], split), "ZeroSpeech 2021 gold.csv"
    elif task == "salmon":
        pairs, layout = load_salmon(folder), "SALMon folders"
    else:
        pairs, layout = load_storycloze(folder), "StoryCloze folders"
    return Dataset(pairs, str(data), folder, layout)


def load_pairs(task: str, data: str | Path, split: str = "dev") -> list[Pair]:
    """The pairs of `task` found at `data` (see `load_dataset`)."""
    return load_dataset(task, data, split).pairs


# ---- ZeroSpeech 2021 (sWUGGY, sBLIMP) -------------------------------------------------------------

_GOLD_COLUMNS = {
    "lexical": ("id", "filename", "correct", "frequency", "voice"),
    "syntactic": ("id", "filename", "correct", "voice", "type", "subtype"),
}


_KIND = {"swuggy": "lexical", "sblimp": "syntactic"}


def _split_folders(data: Path, kind: str, split: str) -> list[Path]:
    if split not in ("dev", "test"):
        raise InputError(f"split must be 'dev' or 'test', got {split!r}")
    return [data / kind / split, data / split, data]


def _gold(data: Path, kind: str, split: str, must: bool = True) -> Path | None:
    candidates = [folder / "gold.csv" for folder in _split_folders(data, kind, split)]
    gold = next((c for c in candidates if c.is_file()), None)
    if gold is None and must:
        withheld = " (the test split's gold is withheld: --submission DIR writes the files the official scorer " \
                   "grades)" if split == "test" else ""
        raise InputError(
            f"no gold.csv for {kind}/{split} under '{data}': expected '{candidates[0]}' (the sLM21 root), "
            f"'{candidates[1]}' or '{candidates[2]}'{withheld}"
        )
    return gold


def has_gold(task: str, data: Path, split: str = "dev") -> bool:
    """Whether the sLM21 split at `data` comes with its answers (a gold.csv; the test split's is withheld)."""
    return _gold(data, _KIND[task], split, must=False) is not None


def split_wavs(data: Path, kind: str, split: str) -> list[Clip]:
    """Every wav of an sLM21 split, gold or not (what a submission must score), sorted by name."""
    folders = [f for f in _split_folders(data, kind, split) if f.is_dir()]
    # The split folder itself when the sLM21 root (or kind folder) was given, else `data` holding the wavs.
    folder = next((f for f in folders if f != data), data) if folders else None
    wavs = sorted(folder.glob("*.wav")) if folder is not None else []
    if not wavs:
        raise InputError(f"no wav files for {kind}/{split} under '{data}': a ZeroSpeech 2021 submission scores the "
                         f"sLM21 wav layout ('{data / kind / split}/*.wav'), not parquet sets")
    return [Clip(w) for w in wavs]


def load_zerospeech(data: Path, kind: str, split: str = "dev") -> list[Pair]:
    """sWUGGY (`kind="lexical"`) or sBLIMP (`"syntactic"`) pairs from a `gold.csv` and its wavs."""
    gold = _gold(data, kind, split)
    with open(gold, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in _GOLD_COLUMNS[kind] if c not in header]
        if missing:
            raise InputError(f"'{gold}' has no '{missing[0]}' column (columns found: {', '.join(header) or 'none'})")
        rows = list(enumerate(reader, start=2))  # line 1 is the header

    groups: dict[tuple[str, str], dict[bool, list[tuple[int, dict]]]] = defaultdict(lambda: {True: [], False: []})
    for line, row in rows:
        groups[row["id"], row["voice"]][_correct(row["correct"], gold, line)].append((line, row))
    pairs = []
    for (item, voice), sides in groups.items():
        if len(sides[True]) != 1 or len(sides[False]) != 1:
            raise InputError(
                f"'{gold}': id {item!r} voice {voice!r} has {len(sides[True])} correct and "
                f"{len(sides[False])} incorrect rows; each id and voice needs exactly one of each"
            )
        (pos_line, pos), (neg_line, neg) = sides[True][0], sides[False][0]
        meta: dict[str, Any] = {"voice": voice}
        if kind == "lexical":
            meta.update(frequency=_count(pos["frequency"]), in_vocab=_in_vocab(pos["frequency"]))
            if pos.get("length"):
                meta["length"] = _count(pos["length"])
        else:
            meta.update(type=pos["type"], subtype=pos["subtype"])
        clips = [_gold_wav(gold, line, row["filename"]) for line, row in ((pos_line, pos), (neg_line, neg))]
        pairs.append(Pair(clips[0], clips[1], item, meta))
    return pairs


def _correct(value: str, gold: Path, line: int) -> bool:
    flag = (value or "").strip().lower()
    if flag in ("1", "true"):
        return True
    if flag in ("0", "false"):
        return False
    raise InputError(f"'{gold}' line {line}: 'correct' must be 1 or 0, got {value!r}")


def _in_vocab(frequency: Any) -> bool:
    """A word seen in LibriSpeech: its row's frequency is a count of 1 or more ("oov", 0 or empty are not),
    as the official scorer's bands have it."""
    return (_count(frequency) or 0) >= 1


def _count(value: Any) -> int | None:
    """A whole count from a CSV cell or parquet value; None for "oov", empty or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def _gold_wav(gold: Path, line: int, filename: str) -> Clip:
    wav = gold.parent / (filename if filename.endswith(".wav") else f"{filename}.wav")
    if not wav.is_file():
        raise InputError(f"'{gold}' line {line} names '{filename}', but '{wav}' does not exist")
    return Clip(wav)


# ---- SALMon ---------------------------------------------------------------------------------------

_SALMON = re.compile(r"sample_(\d+)_(\d+)")


def load_salmon(data: Path) -> list[Pair]:
    """SALMon pairs from `<part>/sample_<i>_<j>.wav` (j = 0 positive, 1 negative), part by part."""
    own = sorted(data.glob("sample_*.wav"))
    parts = [data] if own else sorted(p for p in data.iterdir() if p.is_dir() and any(p.glob("sample_*.wav")))
    if not parts:
        raise InputError(f"no SALMon samples under '{data}': expected <part>/sample_<i>_<j>.wav files")
    pairs = []
    for part in parts:
        samples: dict[int, dict[int, Path]] = defaultdict(dict)
        for wav in sorted(part.glob("sample_*.wav")):
            match = _SALMON.fullmatch(wav.stem)
            if match is None or match[2] not in ("0", "1"):
                raise InputError(f"'{wav}' is not named sample_<i>_0.wav (positive) or sample_<i>_1.wav (negative)")
            samples[int(match[1])][int(match[2])] = wav
        for i, sides in sorted(samples.items()):
            if len(sides) != 2:
                j, wav = next(iter(sides.items()))
                raise InputError(f"'{wav}' has no partner: sample_{i}_{1 - j}.wav is missing from '{part}'")
            pairs.append(Pair(Clip(sides[0]), Clip(sides[1]), f"{part.name}/{i}", {"part": part.name}))
    return pairs


# ---- Spoken StoryCloze ----------------------------------------------------------------------------

_STORY = re.compile(r"(.+)_(correct|incorrect|positive|negative)", re.IGNORECASE)


def load_storycloze(data: Path) -> list[Pair]:
    """sSC/tSC pairs from a folder of `<id>_correct.wav`/`<id>_incorrect.wav` files."""
    stories: dict[tuple[str, str], dict[bool, Path]] = defaultdict(dict)
    for path in find_audio(data, allow_empty=True):
        match = _STORY.fullmatch(path.stem)
        if match is None:
            continue
        key, positive = (_subset(path.parent, data), match[1]), match[2].lower() in ("correct", "positive")
        if positive in stories[key]:
            raise InputError(f"'{path}' and '{stories[key][positive]}' are both the {match[2].lower()} ending of story {match[1]!r}")
        stories[key][positive] = path
    if not stories:
        raise InputError(f"no StoryCloze pairs under '{data}': expected <id>_correct.wav + <id>_incorrect.wav or .parquet files")
    pairs = []
    for (subset, story), sides in sorted(stories.items()):
        if len(sides) != 2:
            positive, path = next(iter(sides.items()))
            wanted = "incorrect" if positive else "correct"
            raise InputError(f"'{path}' has no partner: no {story}_{wanted} audio file beside it")
        pairs.append(Pair(Clip(sides[True]), Clip(sides[False]), f"{subset}/{story}", {"subset": subset}))
    return pairs


def _subset(folder: Path, root: Path) -> str:
    return folder.relative_to(root).as_posix() if folder != root else root.name


# ---- Hugging Face parquet -------------------------------------------------------------------------

_COLUMNS = (("positive", "negative"), ("positive_audio", "negative_audio"), ("correct", "incorrect"))
_META = ("id", "voice", "frequency", "length", "type", "subtype", "task", "ind")


def _parquet_files(data: Path, task: str) -> list[Path]:
    """The parquet files to read at `data` (one file, or all under a folder). For SALMon the `all*`
    configs (`all/`, `all_alignment/`, ...) are left out: they repeat the parts."""
    if data.is_file():
        return [data] if data.suffix == ".parquet" else []
    files = sorted(data.rglob("*.parquet"))
    if task == "salmon":
        kept = [f for f in files if not any(p == "all" or p.startswith("all_") for p in f.relative_to(data).parts[:-1])]
        if files and not kept:
            raise InputError(f"'{data}' holds only SALMon's all* configs; give the folder of the per-part configs "
                             "(bg_alignment/, speaker_consistency/, ...)")
        files = kept
    return files


_SPLIT = re.compile(r"(train|validation|valid|dev|test)(?=[-_.]|$)")


def _one_split(files: list[Path], root: Path) -> None:
    """Refuse parquet files of several splits (`dev-00000-of-00001.parquet`, `test/0000.parquet`) read as one."""
    found = {m[1] for f in files for part in f.relative_to(root).parts if (m := _SPLIT.match(part))} \
        if root.is_dir() else set()
    if len(found) > 1:
        raise InputError(f"'{root}' holds parquet files of several splits ({', '.join(sorted(found))}); give the "
                         "file or folder of one split as --data")


def _parquet_pairs(file: Path, root: Path, task: str) -> list[Pair]:
    """One pair per row. The item is the row's `id` (several voices of one id are averaged first, as in
    sLM21), else the row itself; SALMon's part is its `task` column, else the folder."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except Exception as error:  # pyarrow raises several types for a damaged or foreign file
        raise InputError(f"cannot read '{file}' as a parquet file ({error})") from error
    names = parquet.schema_arrow.names
    columns = next((c for c in _COLUMNS if all(n in names for n in c)), None)
    if columns is None:
        raise InputError(f"'{file}' has no 'positive' and 'negative' audio columns (columns found: {', '.join(names)})")
    present = [n for n in _META if n in names]
    rows = parquet.read(columns=present).to_pylist() if present else [{} for _ in range(parquet.metadata.num_rows)]
    where = _subset(file.parent, root) if root.is_dir() else file.parent.name
    pairs = []
    for index, row in enumerate(rows):
        meta: dict[str, Any] = {}
        if task == "salmon":
            part = str(row.get("task") or where.split("/")[0])
            meta["part"] = part
            item = f"{part}/{row['ind']}" if "ind" in row else f"{part}/{where}/{file.stem}/{index}"
        elif "id" in row:
            item = f"{where}/{row['id']}"
        else:
            item = f"{where}/{file.stem}/{index}"
        if "voice" in row:
            meta["voice"] = row["voice"]
        if task == "swuggy" and "frequency" in row:
            meta.update(frequency=_count(row["frequency"]), in_vocab=_in_vocab(row["frequency"]))
        if task == "swuggy" and "length" in row:
            meta["length"] = _count(row["length"])
        if task == "sblimp":
            meta.update({k: row[k] for k in ("type", "subtype") if k in row})
        if task in ("ssc", "tsc", "storycloze"):
            meta["subset"] = where
        pairs.append(Pair(Clip(file, index, columns[0]), Clip(file, index, columns[1]), item, meta))
    return pairs


# ---- reading clips --------------------------------------------------------------------------------


class ClipReader:
    """Reads clips as mono `sig (1, N)` at `sample_rate`; keeps the last few parquet row groups it read."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self._group = functools.lru_cache(maxsize=4)(self._read_group)
        self._offsets: dict[Path, np.ndarray] = {}

    def __call__(self, clip: Clip) -> torch.Tensor:
        if clip.row is None:
            return load_audio(clip.path, sample_rate=self.sample_rate, mono=True)[0]
        cell = self._cell(clip)
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data and isinstance(cell, dict) and cell.get("path"):
            # `datasets` leaves bytes empty when the audio stayed in a file beside the parquet.
            return load_audio(clip.path.parent / cell["path"], sample_rate=self.sample_rate, mono=True)[0]
        if not data:
            raise InputError(f"'{clip.name}' holds no audio")
        try:
            array, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise InputError(f"cannot decode the audio in '{clip.name}': not WAV/FLAC/OGG bytes ({error})") from error
        check_signal(array.T, f"the audio in '{clip.name}'")
        sig = torch.from_numpy(np.ascontiguousarray(array.mean(axis=1, dtype=np.float32)))[None]
        return resample(sig, sr, self.sample_rate)

    def _cell(self, clip: Clip) -> Any:
        import pyarrow.parquet as pq

        if clip.path not in self._offsets:
            meta = pq.ParquetFile(clip.path).metadata
            self._offsets[clip.path] = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        offsets = self._offsets[clip.path]
        group = int(np.searchsorted(offsets, clip.row, side="right")) - 1
        return self._group(clip.path, group, clip.column)[clip.row - offsets[group]]

    @staticmethod
    def _read_group(path: Path, group: int, column: str) -> list:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(column).to_pylist()
