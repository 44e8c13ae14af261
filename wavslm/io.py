"""Files written whole or not at all, and the audio files of a folder.

Every file the package writes (audio, results, manifests, shards, checkpoints, model weights) goes
through `write_file`: a hidden temporary beside the destination, `.NAME.XXXXXXXX.tmp`, is filled and
then renamed over it. A rename within one folder is atomic, so a reader, or a run killed mid-write,
sees the old file or the new one, never half of one; a failure removes the temporary. Only a process
killed outright leaves one behind, which `remove_temporaries` clears. Folders built in many steps (a
corpus, a demo, a model bundle) are filled under a temporary name in the same way by `write_folder`.

    write_file(path, lambda tmp: torch.save(payload, tmp))    # any writer that takes a path
    write_atomic(path, text_or_bytes); write_json(path, value); write_npy(path, array)
    with write_folder(out) as tmp: ...                        # `out` appears only if the block succeeds
    with output_lock(out): ...                                # a second writer of `out` stops at once

`find_audio` lists the audio files under a folder (`AUDIO_EXTENSIONS`, any case) in a stable order.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from .errors import InputError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


# ---- atomic writes --------------------------------------------------------------------------------------


def temporary_path(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden name in `path`'s folder, `.NAME.<8 hex digits>.tmp`, for a file renamed over `path`
    once complete (in the same folder, so that the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


def write_file(path: str | os.PathLike, write: Callable[[Path], Any], *, sync: bool = True) -> Path:
    """Write `path` whole or not at all: `write(tmp)` fills a temporary file beside it, renamed over `path`.

    Missing parent folders are created. The temporary exists (empty) when `write` is called; `write` may
    replace or truncate it. `sync` flushes it to the disk before the rename, so that the new file also
    survives a power cut (a rename alone protects against a killed process). On any error, the
    temporary is removed, `path` is left as it was, and the error propagates. Returns `path`.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(dest)
        # Reserve the name (O_EXCL) with the permissions a plain open would give, not mkstemp's 0600.
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(dest)) from error
    try:
        write(tmp)
        if sync:
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, dest)
    except BaseException as error:
        failure = write_failure(dest, error)  # before the temporary goes: it may be what filled the disk
        with suppress(OSError):  # on a read-only or failing disk the cleanup must not hide the first error
            tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from error
        raise
    return dest


# Below this much room a failed write is put down to a full disk (libraries such as libsndfile and
# torch.save report ENOSPC as a generic failure).
DISK_FULL_BYTES = 1 << 20


def write_failure(path: str | os.PathLike, error: BaseException) -> OSError | None:
    """The `OSError` to report for `error`, raised while writing `path`: the same error naming `path` (not
    a temporary file), or ENOSPC when a library's generic failure came from a full disk; None when
    `error` is no write failure (bad input, an interrupt)."""
    if isinstance(error, OSError):
        return OSError(error.errno, error.strerror, str(path))  # OSError picks the subclass from errno
    if not isinstance(error, Exception) or isinstance(error, InputError):
        return None
    try:
        room = os.statvfs(Path(path).parent)
    except OSError:
        return None
    if room.f_bavail * room.f_frsize < DISK_FULL_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def write_atomic(path: str | os.PathLike, data: str | bytes, *, sync: bool = True) -> Path:
    """`write_file` of `data`: bytes as they are, text as UTF-8."""
    payload = data.encode() if isinstance(data, str) else data
    return write_file(path, lambda tmp: tmp.write_bytes(payload), sync=sync)


def write_json(path: str | os.PathLike, value: Any, *, sync: bool = True) -> Path:
    """`write_file` of `value` as indented JSON with a final newline."""
    return write_atomic(path, json.dumps(value, indent=2) + "\n", sync=sync)


def write_npy(path: str | os.PathLike, array: np.ndarray, *, sync: bool = True) -> Path:
    """`write_file` of `array` in NumPy's `.npy` format (under the name given: no `.npy` is added)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write_file(path, write, sync=sync)


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Remove the temporary files that processes killed mid-write left in `folder` (not recursive)."""
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


@contextmanager
def write_folder(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Fill a fresh hidden folder beside `path`; it becomes `path` when the block ends without error.

        with write_folder("demo_out") as tmp:
            save_audio(tmp / "a.wav", ...)

    On an error the temporary folder is removed and `path` is left as it was. An existing `path` is
    replaced (`overwrite`) or must be an empty folder (otherwise `InputError` before the block runs).
    The old folder is first renamed aside, so between the two renames neither is missing for longer
    than a rename, and it is deleted only once the new one is in place. `path`'s `output_lock` is held
    throughout: a second writer of the same folder stops before it starts, and what writers killed
    outright left beside `path` is removed first.
    """
    dest = Path(path)
    with output_lock(dest):
        if not overwrite and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise InputError(f"output folder '{path}' already exists and is not an empty folder; choose a new one")
        # What writers killed outright left (the lock says that none of them is alive).
        for stale in dest.parent.glob(f".{glob.escape(dest.name)}.{'[0-9a-f]' * 8}.*"):
            if stale.is_dir() and stale.suffix in (".tmp", ".old"):
                shutil.rmtree(stale, ignore_errors=True)
            elif stale.suffix in (".tmp", ".old"):
                stale.unlink(missing_ok=True)
        tmp = temporary_path(dest)
        try:
            tmp.mkdir()
            yield tmp
            _replace_folder(tmp, dest)
        except OSError as error:  # name the user's folder, not the temporary one
            where = str(error.filename or "").replace(str(tmp), str(dest), 1) or str(dest)
            raise OSError(error.errno, error.strerror, where) from error
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(tmp: Path, dest: Path) -> None:
    """Rename the finished folder `tmp` to `dest`, an existing `dest` first renamed aside and then removed."""
    old = temporary_path(dest, ".old") if dest.exists() else None
    if old is not None:
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink(missing_ok=True)


# ---- one writer per output --------------------------------------------------------------------------


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the writer's lock of output `path` (a folder or file, existing or not) for the block.

    The lock is an OS lock (`flock`) on `.NAME.lock` beside `path`, so a process killed outright never
    leaves it held, and the folder's own contents stay as they are. The file is removed on exit (the lock
    library notices a lock file unlinked under it and takes a fresh one).

    Raises:
        InputError: another process holds the lock of `path`.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    file = dest.with_name(f".{dest.name}.lock")
    lock = FileLock(file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"'{path}' is being written by another process (its lock '{file}' is held); wait for "
                         "it to finish or choose another output") from None
    except OSError as error:  # a read-only or full disk: say so of `path`, not of the lock file
        raise OSError(error.errno, error.strerror, str(dest)) from error
    try:
        yield
    finally:
        try:
            file.unlink(missing_ok=True)  # while still held: a waiting writer then takes a fresh file
        finally:
            lock.release()


# ---- audio discovery -----------------------------------------------------------------------------------


def find_audio(
    folder: str | os.PathLike,
    limit: int | None = None,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    allow_empty: bool = False,
) -> list[Path]:
    """The files under `folder` (recursive) whose suffix is one of `extensions`, any case, at most `limit`.

    Sorted by their path relative to `folder`, compared part by part, so the order is the same on
    every system ("a/b.wav" before "a-b.wav"). Folders are walked, symbolic links to folders are not.

    Raises:
        InputError: `folder` is not a folder, `limit` is below 1, or no file matches (unless `allow_empty`).
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"audio folder '{folder}' does not exist or is not a folder")
    if limit is not None and limit < 1:
        raise InputError(f"the file limit must be at least 1, got {limit}")
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    found = []
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        found.extend(Path(parent, name) for name in files if name.lower().endswith(exts))
    if not found and not allow_empty:
        names = "/".join(exts)
        raise InputError(f"no {names} files under '{folder}'")
    return sorted(found, key=lambda p: p.relative_to(root).parts)[:limit]
