"""The `wavslm` command, run as a real subprocess on the reference models and real speech."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf


def wavslm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "wavslm.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def models(reference):
    return reference / "wavslm_tiny", reference / "codec_tiny_causal"


@pytest.fixture
def clip(speech):
    return sorted((speech / "librispeech-dev-clean" / "84").glob("*.wav"))[0]


def test_every_verb_has_help():
    for verb in ("encode", "decode", "resynth", "generate"):
        result = wavslm(verb, "--help")
        assert result.returncode == 0 and "usage: wavslm " + verb in result.stdout


def test_encode_decode_resynth(models, clip, tmp_path):
    _, codec = models
    result = wavslm("encode", clip, "-o", tmp_path / "t.npy", "--codec", codec)
    assert result.returncode == 0, result.stderr
    toks = np.load(tmp_path / "t.npy")
    assert toks.dtype == np.int64 and toks.ndim == 2 and toks.shape[0] == 1 and 0 <= toks.min() <= toks.max() < 64
    seconds = sf.info(clip).duration
    assert abs(toks.shape[1] / 50 - seconds) < 0.03

    result = wavslm("decode", tmp_path / "t.npy", "-o", tmp_path / "d.wav", "--codec", codec)
    assert result.returncode == 0, result.stderr
    info = sf.info(tmp_path / "d.wav")
    assert info.samplerate == 24000 and info.frames == toks.shape[1] * 480

    result = wavslm("resynth", clip, "-o", tmp_path / "r.flac", "--codec", codec)
    assert result.returncode == 0, result.stderr
    decoded, _ = sf.read(tmp_path / "d.wav")
    resynth, _ = sf.read(tmp_path / "r.flac")
    assert np.abs(decoded - resynth).max() < 1e-3  # both 16-bit: the same audio


def test_generate_whole_and_streamed(models, clip, tmp_path):
    lm, _ = models
    result = wavslm("generate", clip, "-o", tmp_path / "g.wav", "--model", lm, "--seconds", "1", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "first audio after" in result.stdout
    whole, rate = sf.read(tmp_path / "g.wav")
    assert rate == 24000 and len(whole) == 48 * 480

    result = wavslm("generate", clip, "-o", tmp_path / "s.wav", "--model", lm, "--seconds", "1", "--seed", "3",
                    "--stream", "--num", "2")
    assert result.returncode == 0, result.stderr
    first, _ = sf.read(tmp_path / "s_0.wav")
    second, _ = sf.read(tmp_path / "s_1.wav")
    assert np.abs(first - whole).max() < 1e-4  # row 0 samples with the same seed (1 LSB of float noise at most)
    assert not np.array_equal(first, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.wav", "s_0.wav", "s_1.wav"]  # no partial files left

    # Packed float32 weights compute the same continuation.
    result = wavslm("generate", clip, "-o", tmp_path / "p.wav", "--model", lm, "--seconds", "1", "--seed", "3",
                    "--optimize", "float32")
    assert result.returncode == 0, result.stderr
    packed, _ = sf.read(tmp_path / "p.wav")
    assert np.abs(packed - whole).max() < 1e-3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["encode", "missing.wav", "-o", "x.npy", "--codec", "{codec}"], "input file 'missing.wav' does not exist"),
        (["resynth", "{text}", "-o", "x.wav", "--codec", "{codec}"], "not a readable WAV/FLAC/OGG file"),
        (["decode", "{text}", "-o", "x.wav", "--codec", "{codec}"], "not a .npy array"),
        (["decode", "{floats}", "-o", "x.wav", "--codec", "{codec}"], "must be a non-empty integer array"),
        (["encode", "{clip}", "-o", "x.npy", "--codec", "{tmp}"], "has no config.json"),
        (["generate", "{clip}", "-o", "x.wav", "--model", "{codec}"], "unknown keys"),
        (["generate", "{clip}", "-o", "x.wav", "--model", "{lm}", "--top-p", "0.5", "--top-k", "3"], "not both"),
        (["generate", "{short}", "-o", "x.wav", "--model", "{lm}"], "shorter than one chunk"),
    ],
)
def test_errors_are_one_line_and_exit_2(args, message, models, clip, tmp_path):
    lm, codec = models
    (tmp_path / "text.wav").write_text("not audio")
    np.save(tmp_path / "floats.npy", np.zeros(4))
    sf.write(tmp_path / "short.wav", np.zeros(800), 16000)
    names = dict(codec=codec, lm=lm, clip=clip, tmp=tmp_path, text=tmp_path / "text.wav",
                 floats=tmp_path / "floats.npy", short=tmp_path / "short.wav")
    result = wavslm(*[a.format(**names) for a in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wavslm {args[0]}: error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "x.npy").exists()
