"""JSONL manifests: one audio file per line, `{"path": ..., "duration": seconds, "sample_rate": Hz}`.

`build_manifest` walks a folder (recursively, in sorted order, so the same folder always gives the same
file) and reads only each file's header (`soundfile.info`), so it is fast on large corpora. Files it
cannot read are counted in the summary, not fatal. `read_manifest` turns a manifest back into a list of
dicts, with relative paths resolved against the manifest's folder, and names the file and line of any
malformed entry.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from ..errors import InputError
from ..io import AUDIO_EXTENSIONS, find_audio, write_atomic

# How many unreadable files the summary names (all of them are counted).
_MAX_NAMED = 10


@dataclass
class ManifestSummary:
    """What `build_manifest` wrote and what it left out."""

    output: Path
    num_files: int = 0
    total_duration: float = 0.0
    num_unreadable: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), the first few
    num_filtered: int = 0  # readable but outside [min_duration, max_duration]

    def describe(self) -> str:
        """One or two lines for a command-line report."""
        text = f"wrote {self.num_files} files ({self.total_duration / 3600:.2f} h) to {self.output}"
        if self.num_filtered:
            text += f"; {self.num_filtered} left out by the duration limits"
        if self.num_unreadable:
            names = ", ".join(f"{p} ({r})" for p, r in self.unreadable)
            more = ", ..." if self.num_unreadable > len(self.unreadable) else ""
            text += f"\n{self.num_unreadable} unreadable files skipped: {names}{more}"
        return text


def _probe(path: Path) -> tuple[float, int] | str:
    """`(duration, sample_rate)` from the file's header, or the reason it cannot be read."""
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as err:
        return err.error_string.rstrip(".")
    except (OSError, RuntimeError, ValueError) as err:
        return str(err)
    if info.frames <= 0 or info.samplerate <= 0:
        return "no samples"
    return info.frames / info.samplerate, int(info.samplerate)


def build_manifest(
    audio_dir: str | os.PathLike,
    output: str | os.PathLike,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    min_duration: float | None = None,
    max_duration: float | None = None,
    relative_paths: bool = False,
    num_workers: int = 8,
    progress: bool = True,
) -> ManifestSummary:
    """Write a JSONL manifest of every audio file under `audio_dir`.

    Args:
        audio_dir: folder walked recursively; files are listed in sorted order.
        output: the `.jsonl` to write (atomically: a temporary file renamed once complete).
        extensions: suffixes to take, any case.
        min_duration, max_duration: keep only files whose duration (s) lies within these bounds.
        relative_paths: write paths relative to the manifest's folder (portable) instead of absolute.
        num_workers: threads reading headers (the work is I/O bound).
        progress: a tqdm bar on a terminal.

    Unreadable files (corrupt, empty, not audio) are skipped and reported in the summary.
    """
    for name, bound in (("--min-duration", min_duration), ("--max-duration", max_duration)):
        if bound is not None and not (math.isfinite(bound) and bound >= 0):
            raise InputError(f"{name} must be a number of seconds of at least 0, got {bound}")
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise InputError(f"--min-duration ({min_duration} s) is above --max-duration ({max_duration} s): no file "
                         "could be kept")
    files = find_audio(audio_dir, extensions=extensions, allow_empty=True)
    out = Path(output)
    summary = ManifestSummary(output=out)
    lines = []
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        probes = pool.map(_probe, files)  # map keeps the order
        for path, probe in tqdm(zip(files, probes, strict=True), total=len(files), desc="manifest", unit="file",
                                disable=None if progress else True, delay=1.0, leave=False):
            if isinstance(probe, str):
                summary.num_unreadable += 1
                if len(summary.unreadable) < _MAX_NAMED:
                    summary.unreadable.append((str(path), probe))
                continue
            duration, sample_rate = probe
            if (min_duration is not None and duration < min_duration) or (
                max_duration is not None and duration > max_duration
            ):
                summary.num_filtered += 1
                continue
            name = os.path.relpath(path.resolve(), out.resolve().parent) if relative_paths else str(path.resolve())
            lines.append(json.dumps({"path": Path(name).as_posix(), "duration": round(duration, 6),
                                     "sample_rate": sample_rate}) + "\n")
            summary.num_files += 1
            summary.total_duration += duration
    write_atomic(out, "".join(lines))
    return summary


def _parse(path: Path, text: str) -> Iterator[dict]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"manifest '{path}', line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where} is not valid JSON ({err.msg})") from None
        if not isinstance(entry, dict):
            raise InputError(f"{where} is not a JSON object")
        for key in ("path", "duration"):
            if key not in entry:
                raise InputError(f"{where} has no \"{key}\"")
        if not isinstance(entry["path"], str) or not entry["path"]:
            raise InputError(f"{where}: \"path\" must be a non-empty string")
        duration = entry["duration"]
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration >= 0:
            raise InputError(f"{where}: \"duration\" must be a non-negative number of seconds, got {duration!r}")
        yield entry


def read_manifest(
    path: str | os.PathLike, min_duration: float | None = None, max_duration: float | None = None
) -> list[dict]:
    """The entries of a JSONL manifest, in order, keeping those within the duration bounds.

    Relative `"path"`s are resolved against the manifest's folder. Blank lines are ignored; any other
    malformed line raises `InputError` naming the file and the line.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"manifest '{path}' does not exist or is not a file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read manifest '{path}': {err}") from err
    entries = []
    for entry in _parse(file, text):
        if (min_duration is not None and entry["duration"] < min_duration) or (
            max_duration is not None and entry["duration"] > max_duration
        ):
            continue
        entry["path"] = str(file.resolve().parent / entry["path"]) if not os.path.isabs(entry["path"]) else entry["path"]
        entries.append(entry)
    return entries


def as_entries(manifest: str | os.PathLike | list[dict]) -> list[dict]:
    """A manifest given as a path or already as a list of entries."""
    return list(manifest) if isinstance(manifest, list) else read_manifest(manifest)
