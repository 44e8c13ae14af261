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


# ---- what a careless user types: refused before any work, in one sentence, nothing lost -------------


def _refused(capsys, argv, message):
    from wavslm.cli import main

    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_outputs_never_replace_inputs(models, clip, tmp_path, capsys):
    lm, codec = models
    prompt = tmp_path / "prompt.wav"
    prompt.write_bytes(clip.read_bytes())
    before = prompt.read_bytes()
    _refused(capsys, ["generate", prompt, "-o", prompt, "--model", lm], "is the input file")
    _refused(capsys, ["generate", prompt, "-o", tmp_path / "." / "prompt.wav", "--model", lm], "is the input file")
    _refused(capsys, ["resynth", prompt, "-o", prompt, "--codec", codec], "is the input file")
    _refused(capsys, ["manifest", tmp_path, "-o", prompt], "has an audio file's name")
    assert prompt.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["prompt.wav"]
    _refused(capsys, ["encode", tmp_path, "-o", tmp_path / "t.npy", "--codec", codec], "is a folder, not a file")
    _refused(capsys, ["encode", prompt, "-o", tmp_path, "--codec", codec], "is a folder; give a file name")


@pytest.mark.parametrize("flags, message", [
    (["--seconds", "nan"], "--seconds must be a positive number"),
    (["--seconds", "inf"], "--seconds must be a positive number"),
    (["--seconds", "-1"], "--seconds must be a positive number"),
    (["--seconds", "0"], "--seconds must be a positive number"),
    (["--seconds", "100", "--num", "40"], "at most 3600 s per run"),
    (["--seed", str(2**63)], "--seed must be in [0, 2^63)"),
    (["--temp", "nan"], "--temp must be a positive number"),
    (["--top-p", "0.5", "--top-k", "3"], "give --top-p or --top-k, not both"),
])
def test_generate_values_are_checked_before_any_work(models, clip, tmp_path, capsys, flags, message):
    _refused(capsys, ["generate", clip, "-o", tmp_path / "g.wav", "--model", models[0], *flags], message)
    assert not any(tmp_path.iterdir())


def test_token_files_that_cannot_be_decoded_are_refused(models, tmp_path, capsys):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    _refused(capsys, ["decode", empty, "-o", tmp_path / "d.wav", "--codec", models[1]], "not a .npy array")
    np.save(tmp_path / "wide.npy", np.zeros((5000, 8), dtype=np.int64))
    _refused(capsys, ["decode", tmp_path / "wide.npy", "-o", tmp_path / "d.wav", "--codec", models[1]],
             "at most 16 are decoded at once")
    assert not (tmp_path / "d.wav").exists()


def test_top_k_alone_is_taken_and_bad_api_values_get_one_sentence(models):
    import torch

    from wavslm import InputError, WavSLM

    lm = WavSLM.from_pretrained(models[0])
    prompt = torch.randint(0, 64, (1, 8))
    _, toks = lm.generate(bos_toks=prompt, max_gen_toks=8, top_k=5, seed=0)
    assert toks.shape == (1, 8)
    for kwargs, message in (({"max_gen_secs": float("nan")}, "max_gen_secs must be a finite number"),
                            ({"seed": 2**70}, "seed must be an integer"), ({"seed": "abc"}, "seed must be an integer"),
                            ({"seed": 1.5}, "seed must be an integer"), ({"temp": float("inf")}, "temperature")):
        with pytest.raises(InputError, match=message):
            lm.generate(bos_toks=prompt, **{"max_gen_toks": 8, **kwargs} if "max_gen_secs" not in kwargs else kwargs)
