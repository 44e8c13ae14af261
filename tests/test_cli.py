"""The `wavslm` command, run as a real subprocess on the reference models and real speech."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from wavslm import load_audio


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
    (["--max-duration", "nan"], "--max-duration must be a number of seconds of at least 0, got nan"),
    (["--min-duration", "-1"], "--min-duration must be a number of seconds of at least 0, got -1.0"),
    (["--min-duration", "5", "--max-duration", "2"], "--min-duration (5.0 s) is above --max-duration (2.0 s)"),
])
def test_manifest_duration_bounds_are_checked(speech, tmp_path, capsys, flags, message):
    _refused(capsys, ["manifest", speech, "-o", tmp_path / "m.jsonl", *flags], message)
    assert not any(tmp_path.iterdir())


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
    for prompt, message in (([0.0] * 1600, r"bos_sig must be a tensor .*; got a list of float"),
                            (torch.zeros(0, 1600), r"bos_sig holds no rows \(shape \(0, 1600\)\)"),
                            (torch.zeros(1, 1, 1600), "got a 3-D tensor"), ([], "bos_sig is an empty list"),
                            ([torch.zeros(2, 1600)], r"got a list of \(2, 1600\) tensor"),
                            (torch.zeros(1, 1801 * 16000), "the prompt lasts 1801 s; at most 1800 s")):
        with pytest.raises(InputError, match=message):
            lm.generate(bos_sig=prompt, sample_rate=16000, max_gen_toks=8)
    with pytest.raises(InputError, match="the prompt lasts 1801 s"):
        lm.generate(bos_toks=torch.zeros(1, 1801 * 50, dtype=torch.long), max_gen_toks=8)


def test_a_prompt_file_over_thirty_minutes_is_refused_from_its_header(models, tmp_path, capsys):
    long = tmp_path / "long.wav"
    with sf.SoundFile(long, "w", samplerate=8000, channels=1, subtype="PCM_16") as f:
        for _ in range(31):
            f.write(np.zeros(60 * 8000, dtype=np.int16))
    _refused(capsys, ["generate", long, "-o", tmp_path / "g.wav", "--model", models[0]],
             "audio file '" + str(long) + "' lasts 1860 s; at most 1800 s (30 min) are read")


# ---- a full or read-only disk: one sentence naming the user's file, no temporary left ---------------

NAMESPACE = """
set -e
mount -t tmpfs -o size=400k tmpfs "$MNT"
if [ "$MODE" = full ]; then dd if=/dev/zero of="$MNT/fill" bs=1k count=330 2>/dev/null; fi
mkdir "$MNT/out"
if [ "$MODE" = ro ]; then mount -o remount,ro "$MNT"; fi
set +e
"$@"
echo "rc=$?"
find "$MNT/out" -mindepth 1 -name '.*' -printf 'left %P\\n'
find "$MNT/out" -mindepth 1 -maxdepth 1 -printf 'out %P\\n'
"""


def _on_small_disk(mode, argv, tmp_path):
    """Run `wavslm ARGV` (OUT/ standing for a folder on the disk) where that disk is full or read-only: a
    400 kB tmpfs mounted in a user and mount namespace of its own (no privileges needed)."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel refuses unprivileged user namespaces (unshare -rm), so no disk can be mounted")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    argv = [str(a).replace("OUT/", f"{mnt}/out/") for a in argv]
    result = subprocess.run(["unshare", "-rm", "sh", "-c", NAMESPACE, "sh", sys.executable, "-m", "wavslm.cli", *argv],
                            capture_output=True, text=True, env={**os.environ, "MNT": str(mnt), "MODE": mode})
    lines = result.stdout.splitlines()
    rc = int(next(line for line in lines if line.startswith("rc="))[3:])
    return rc, result.stderr, [line[5:] for line in lines if line.startswith("left ")], \
        [line[4:] for line in lines if line.startswith("out ")]


@pytest.fixture
def lm_config(models, clip, tmp_path):
    from wavslm import Codec
    from wavslm.data.shards import ShardWriter

    codec = Codec.from_pretrained(models[1])
    with ShardWriter(tmp_path / "shards", codec.vocab_size, codec=str(models[1])) as writer:
        sig, _ = load_audio(clip, 16000, mono=True)
        writer.append(codec.encode(sig)[0], str(clip))
    config = tmp_path / "lm.yaml"
    config.write_text(f"""lm:
  data: {{train: {tmp_path / 'shards'}, valid: {tmp_path / 'shards'}, codec: {models[1]}, crop_tokens: 32}}
  model: {{num_layers: 1, dim: 64, ffn_dim: 64, num_heads: 2, num_buckets: 16, max_distance: 32, window_size: 16}}
  train: {{steps: 2, batch_size: 1, warmup_steps: 1, valid_every: 1, valid_batches: 1, save_every: 1, log_every: 1}}
""")
    return config


@pytest.mark.parametrize("mode, verb, message, kept", [
    ("full", "resynth", "the disk is full: cannot write '{mnt}/out/r.wav'", []),
    ("full", "generate", "the disk is full: cannot write '{mnt}/out/g.wav'", []),
    ("full", "train", "the disk is full: cannot write '{mnt}/out/run/", ["run"]),  # a run folder to resume
    ("full", "synth", "the disk is full: cannot write '{mnt}/out/corpus/wavs/", []),
    ("ro", "tokenize", "cannot write '{mnt}/out/tok': it is on a read-only file system", []),
    ("ro", "manifest", "cannot write '{mnt}/out/m.jsonl': '{mnt}/out' is not a writable folder", []),
    ("ro", "eval", "cannot write '{mnt}/out/r.json': '{mnt}/out' is not a writable folder", []),
])
def test_a_full_or_read_only_disk_is_one_sentence(mode, verb, message, kept, models, clip, speech, lm_config,
                                                   tmp_path):
    lm, codec = models
    argv = {
        "resynth": ["resynth", clip, "-o", "OUT/r.wav", "--codec", codec],
        "generate": ["generate", clip, "-o", "OUT/g.wav", "--model", lm, "--stream", "--seconds", "30"],
        "train": ["train", "lm", "--config", lm_config, "-o", "OUT/run", "--device", "cpu"],
        "synth": ["synth", "corpus", "-o", "OUT/corpus", "--hours", "0.01"],
        "tokenize": ["tokenize", lm_config.parent / "shards" / "index.jsonl", "-o", "OUT/tok", "--codec", codec],
        "manifest": ["manifest", speech, "-o", "OUT/m.jsonl"],
        "eval": ["eval", "codec", "--codec", codec, "--data", speech, "-o", "OUT/r.json"],
    }[verb]
    if verb == "synth":
        pytest.importorskip("espeakng_loader")
    if verb == "tokenize":  # a manifest of the clip
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(json.dumps({"path": str(clip), "duration": sf.info(clip).duration}) + "\n")
        argv[1] = manifest
    rc, err, left, out = _on_small_disk(mode, argv, tmp_path)
    expected = message.format(mnt=tmp_path / "mnt")
    assert expected in err and "Traceback" not in err and err.count("\n") == 1, err
    assert rc == (2 if "writable folder" in message else 1), err
    assert left == [] and out == kept, (left, out)  # no temporary anywhere, no half-written file


def test_sigterm_mid_stream_removes_the_partial_file(models, clip, tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "wavslm.cli", "generate", str(clip), "-o", str(out / "g.wav"),
                             "--model", str(models[0]), "--stream", "--seconds", "600"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob(".g.wav.*.tmp")) and time.monotonic() < deadline:  # streaming has begun
        time.sleep(0.05)
    assert list(out.glob(".g.wav.*.tmp")), "the stream never started"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "wavslm generate: stopped (SIGTERM); no half-written file was kept", err
    assert list(out.iterdir()) == []
