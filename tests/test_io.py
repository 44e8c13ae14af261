"""Atomic writes of files and folders, and audio discovery: nothing half-written is ever left behind."""

import json
import os
import stat

import numpy as np
import pytest

from wavslm.errors import InputError
from wavslm.io import (
    find_audio,
    output_lock,
    remove_temporaries,
    write_atomic,
    write_file,
    write_folder,
    write_json,
    write_npy,
)

HOLDER = """
import sys
from wavslm.io import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_one_writer_per_output_and_a_killed_holder_frees_it(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(InputError, match=r"'.*out' is being written by another process"):
            with output_lock(out):
                pass
        with pytest.raises(InputError, match="is being written by another process"):
            with write_folder(out) as tmp:
                (tmp / "a.txt").write_text("lost")
        assert not out.exists() and _hidden(tmp_path) == [".out.lock"]
    finally:
        holder.send_signal(signal.SIGKILL)  # killed outright: the OS lock goes with it
        holder.wait()
    (tmp_path / ".out.0123abcd.tmp").mkdir()  # what a writer killed outright leaves behind
    (tmp_path / ".out.0123abcd.tmp" / "half.wav").write_bytes(b"RIFF")
    (tmp_path / ".outer.0123abcd.tmp").mkdir()  # another output's: not ours to remove
    with write_folder(out) as tmp:
        (tmp / "a.txt").write_text("kept")
    assert (out / "a.txt").read_text() == "kept"
    assert _hidden(tmp_path) == [".outer.0123abcd.tmp"]  # the stale temporary and the lock file are gone


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    assert write_atomic(path, "first") == path and path.read_text() == "first"

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_file(path, broken)
    assert path.read_text() == "first" and not _hidden(path.parent)


def test_new_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    write_atomic(tmp_path / "a.bin", b"\x00\x01", sync=False)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~umask


def test_text_json_and_npy_forms(tmp_path):
    write_json(tmp_path / "r.json", {"a": [1, 2.5]})
    assert (tmp_path / "r.json").read_text().endswith("}\n") and json.loads((tmp_path / "r.json").read_text())
    array = np.arange(5, dtype=np.int64)
    write_npy(tmp_path / "offsets.npy", array)
    write_npy(tmp_path / "tokens", array)  # no ".npy" is added to the name given
    assert np.array_equal(np.load(tmp_path / "offsets.npy"), array)
    assert np.array_equal(np.load(tmp_path / "tokens"), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offsets.npy", "r.json", "tokens"]


def test_remove_temporaries_clears_what_a_killed_writer_left(tmp_path):
    (tmp_path / ".last.pt.0a1b2c3d.tmp").write_bytes(b"half")
    (tmp_path / "last.pt").write_bytes(b"whole")
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_write_folder_replaces_the_folder_only_when_the_block_succeeds(tmp_path):
    out = tmp_path / "out"
    with write_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError), write_folder(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("interrupted")
    assert [p.name for p in out.iterdir()] == ["a.txt"] and not _hidden(tmp_path)
    with write_folder(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c.txt"] and not _hidden(tmp_path)


def test_write_folder_without_overwrite_takes_only_a_new_or_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with write_folder(tmp_path / "empty", overwrite=False) as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "empty" / "x").is_file()
    with pytest.raises(InputError, match="already exists and is not an empty folder"), \
            write_folder(tmp_path / "empty", overwrite=False):
        pass
    assert not _hidden(tmp_path)


def test_find_audio_order_case_limit_and_errors(tmp_path):
    for name in ("b/z.wav", "a-b.WAV", "a/b.flac", "a/c.ogg", "a/notes.txt", "c.mp3"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    rel = [p.relative_to(tmp_path).as_posix() for p in find_audio(tmp_path)]
    assert rel == ["a/b.flac", "a/c.ogg", "a-b.WAV", "b/z.wav"]
    assert [p.name for p in find_audio(tmp_path, limit=2)] == ["b.flac", "c.ogg"]
    assert [p.name for p in find_audio(tmp_path, extensions=["mp3"])] == ["c.mp3"]
    with pytest.raises(InputError, match="at least 1"):
        find_audio(tmp_path, limit=0)
    with pytest.raises(InputError, match="does not exist or is not a folder"):
        find_audio(tmp_path / "missing")
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match=r"no \.wav/\.flac/\.ogg files under"):
        find_audio(tmp_path / "none")
    assert find_audio(tmp_path / "none", allow_empty=True) == []
