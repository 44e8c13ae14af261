"""The codec stage: each sub-stage learns on real speech, trains only its parts, and chains into a streaming codec."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from wavslm import Codec, InputError, load_audio
from wavslm.train.run import train

CLIPS = ("84/84-121123-0000.wav", "84/84-121123-0007.wav", "84/84-121123-0012.wav", "84/84-121123-0013.wav")
FOCAL = {"hidden_dims": [48, 48], "focal_window": 3, "focal_level": 2, "focal_factor": 2, "causal": True,
         "window_size": 16}
TOY_CODEC = {  # the encoder's architecture comes from the tiny teacher (dim 64, first 2 of its 3 layers)
    "encoder_config": {"window_size": 16, "lookahead_size": 3},
    "compressor_config": {"input_dim": 64, "output_dim": 6, "downscale_factors": [1, 1], **FOCAL},
    "quantizer_config": {"codebook_size": 64},
    "decompressor_config": {"input_dim": 6, "output_dim": 64, "upscale_factors": [1, 1], "last_window_size": 16,
                            "lookahead_size": 3, **FOCAL},
    "decoder_config": {"input_dim": 64, "num_layers": 2, "dim": 64, "ffn_dim": 128, "kernel_size": 7,
                       "hop_length": 480, "causal": True},
}
TOY_DISCRIMINATOR = {"periods": [2, 3], "period_channels": [8, 16, 16], "num_scales": 2, "scale_channels": [8, 16, 16],
                     "scale_kernel_sizes": [15, 41, 5], "scale_strides": [1, 4, 1], "scale_groups": [1, 4, 1]}
# (sub-stage, steps, lr, extra overrides); the decoder GAN as the recipe: betas (0.8, 0.99), no clipping.
PLAN = (
    ("decoder", 40, 0.002, ["train.clip=0.0", "train.betas=[0.8, 0.99]", "data.segment_seconds=0.5"]),
    ("posemb", 20, 0.005, []),
    ("encoder", 20, 0.002, []),
    ("quantizer", 30, 0.003, []),
    ("joint", 30, 0.001, []),
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread beats two by 10x or more on a shared, loaded machine (no OpenMP spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import REFERENCE, SPEECH

    folder = tmp_path_factory.mktemp("codec_stage")
    clips = [SPEECH / "librispeech-dev-clean" / c for c in CLIPS]
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(c), "duration": sf.info(c).duration}) + "\n" for c in clips))
    settings = {
        "teacher": str(REFERENCE / "hf_wavlm_tiny"), "teacher_layers": 2, "codec": TOY_CODEC,
        "discriminator": TOY_DISCRIMINATOR, "loss": {"layer_weights": [0.9, 1.0]},
        "data": {"train": str(manifest), "valid": str(manifest), "random_crop": False, "context_seconds": 0.0},
        "train": {"batch_size": 4, "schedule": "constant", "log_every": 1, "valid_batches": 1},
    }
    config = folder / "toy.yaml"
    config.write_text(yaml.safe_dump({"codec": settings}))
    return folder, config, clips


@pytest.fixture(scope="module")
def chain(setup):
    """Runs the five sub-stages in order, each from the previous one's export; returns their run folders."""
    folder, config, _ = setup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `_one_thread`, which module-scoped fixtures run before
    runs, previous = {}, []
    try:
        for substage, steps, lr, extra in PLAN:
            run = folder / substage
            overrides = [f"substage={substage}", f"train.steps={steps}", f"train.lr={lr}",
                         f"train.valid_every={steps}", f"train.save_every={steps}", *extra, *previous]
            train("codec", run, config, overrides)
            runs[substage], previous = run, [f"init_from={run / 'export'}"]
    finally:
        torch.set_num_threads(threads)
    return runs


def curve(run, key):
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if r["split"] == "train"]


def weights(run):
    return load_file(run / "export" / "codec" / "model.safetensors")


def moved(before, after):
    """Names of the tensors that differ between two exports."""
    return [k for k in after if not torch.equal(before[k], after[k])]


def prefixes(names):
    return {k.split(".")[0] if k.startswith("compressor") else ".".join(k.split(".")[:2]) for k in names}


@pytest.mark.parametrize(("substage", "key", "ratio"), [
    ("decoder", "mel", 0.85), ("posemb", "loss", 0.5), ("encoder", "loss", 0.6), ("quantizer", "mse", 0.3),
    ("joint", "mse", 0.8),
])
def test_each_sub_stage_learns(chain, substage, key, ratio):
    values = curve(chain[substage], key)
    head, tail = sum(values[:3]) / 3, sum(values[-3:]) / 3
    assert tail < ratio * head, (substage, key, values[:: max(1, len(values) // 8)])


def test_each_sub_stage_trains_only_its_parts(chain, reference):
    from wavslm.wavlm import from_hf

    exports = {substage: weights(run) for substage, run in chain.items()}
    assert (chain["decoder"] / "export" / "discriminator.safetensors").is_file()
    # A fresh codec's encoder is the teacher's front end and first 2 layers; the decoder run leaves it so.
    teacher = from_hf(reference / "hf_wavlm_tiny").state_dict()
    encoder = {k.removeprefix("encoder."): v for k, v in exports["decoder"].items() if k.startswith("encoder.")}
    assert set(encoder) == {k for k in teacher if not k.startswith(("encoder.layers.2.", "encoder.norm."))}
    assert all(torch.equal(v, teacher[k]) for k, v in encoder.items())
    pos, rel = "encoder.encoder.positional_embedding", "encoder.encoder.relative_embedding"
    assert set(moved(exports["decoder"], exports["posemb"])) == {pos + ".conv.weight", pos + ".conv.bias"}
    encoder = moved(exports["posemb"], exports["encoder"])
    assert encoder and all(k.startswith("encoder.") and not k.startswith((pos, rel)) for k in encoder)
    assert prefixes(moved(exports["encoder"], exports["quantizer"])) == {"compressor", "decompressor.in_proj",
                                                                         "decompressor.layers"}
    joint = prefixes(moved(exports["quantizer"], exports["joint"]))
    assert joint == {"encoder.feature_extractor", "encoder.norm", "encoder.feature_proj", "encoder.encoder",
                     "compressor", "decompressor.in_proj", "decompressor.layers", "decompressor.refiner"}
    assert not any(k.startswith((pos, rel)) for k in moved(exports["quantizer"], exports["joint"]))


def test_the_exported_codec_loads_is_causal_and_streams_like_offline(chain, setup):
    codec = Codec.from_pretrained(chain["joint"] / "export" / "codec")
    assert codec.causal and codec.vocab_size == 64 and codec.sample_rate_output == 24000
    sig, _ = load_audio(setup[2][3], sample_rate=16000, mono=True)
    sig = sig[:, : sig.shape[1] // codec.chunk_size * codec.chunk_size]
    toks = codec.encode(sig)
    assert toks.shape == (1, sig.shape[1] // 320) and len(toks.unique()) > 1  # not collapsed: a real check
    pieces, recs = [], []
    with codec.streaming(batch_size=1) as stream:
        for start in range(0, sig.shape[1], codec.chunk_size):
            pieces.append(stream.encode(sig[:, start : start + codec.chunk_size]))
            recs.append(stream.decode(pieces[-1]))
    assert torch.equal(torch.cat(pieces, 1), toks)
    assert (torch.cat(recs, 1) - codec.decode(toks)).abs().max() < 1e-4


def test_config_errors_name_the_problem(chain, setup, tmp_path):
    _, config, _ = setup
    with pytest.raises(InputError, match="substage must be one of decoder, posemb, encoder, quantizer, joint"):
        train("codec", tmp_path / "a", config, ["substage=vocoder"])
    with pytest.raises(InputError, match=r"codec.encoder_config.dim is 32 but must be 64"):
        train("codec", tmp_path / "b", config, ["substage=encoder", "codec.encoder_config.dim=32"])
    with pytest.raises(InputError, match=r"its compressor output_dim is 6, the codec config says 7"):
        train("codec", tmp_path / "c", config, [
            "substage=quantizer", f"init_from={chain['joint'] / 'export'}", "codec.quantizer_config.codebook_size=128",
            "codec.compressor_config.output_dim=7", "codec.decompressor_config.input_dim=7"])


def test_an_older_config_s_step_is_read_as_substage_and_both_keys_are_refused():
    from wavslm.config import from_dict
    from wavslm.train.codec import CodecStageConfig

    assert from_dict(CodecStageConfig, {"step": "quantizer"}, "old config").substage == "quantizer"
    with pytest.raises(InputError, match="has both 'step' and its new name 'substage'; keep 'substage'"):
        from_dict(CodecStageConfig, {"step": "quantizer", "substage": "joint"}, "config")


def test_a_run_saved_with_the_older_step_key_resumes_under_the_recipe_s_overrides(chain, tmp_path):
    """A run folder from before `step` became `substage` continues, given `substage=` as the recipe gives it."""
    run = tmp_path / "posemb"
    shutil.copytree(chain["posemb"], run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["config"] = {"step": saved["config"].pop("substage"), **saved["config"]}
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    train("codec", run, overrides=["substage=posemb", "train.steps=22"], resume=True)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"][-3:] == [20, 21, 22]
    assert yaml.safe_load((run / "config.yaml").read_text())["config"]["substage"] == "posemb"


def test_the_decoder_fine_tunes_on_the_codec_s_own_tokens_and_nothing_else_moves(chain, setup, tmp_path):
    _, config, _ = setup
    joint = chain["joint"] / "export"
    run = tmp_path / "finetune"
    train("codec", run, config, ["substage=decoder", "decoder_input=codec", f"init_from={joint}",
                                 "train.steps=8", "train.lr=1e-3", "train.valid_every=8", "train.save_every=8"])
    changed = moved(weights(chain["joint"]), weights(run))
    assert changed and all(k.startswith("decoder.") for k in changed)
    mel = curve(run, "mel")
    assert len(mel) == 8 and all(v == v for v in mel)
    with pytest.raises(InputError, match="decoder_input codec fine-tunes the decoder of a trained codec"):
        train("codec", tmp_path / "a", config, ["substage=decoder", "decoder_input=codec"])
    with pytest.raises(InputError, match="decoder_input must be teacher or codec"):
        train("codec", tmp_path / "b", config, ["decoder_input=tokens"])


@pytest.mark.slow
def test_two_process_ddp_decoder_matches_one_process(setup, tmp_path):
    """The GAN under DDP: the generator's adversarial pass uses the raw, frozen discriminator."""
    _, config, _ = setup
    args = ["train", "codec", "--config", str(config), "--set", "substage=decoder", "--set", "train.steps=4",
            "--set", "train.valid_every=100", "--set", "data.segment_seconds=0.5", "--set", "train.lr=0.002"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "wavslm.cli", *args, "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "wavslm.cli", *args, "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    mel_one, mel_two = curve(tmp_path / "one", "mel"), curve(tmp_path / "two", "mel")
    assert len(mel_one) == 4 and max(abs(a - b) for a, b in zip(mel_one, mel_two, strict=True)) < 1e-4
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    # Adam turns float noise in near-zero discriminator gradients into lr-sized steps; the generator is exact.
    assert max((a[k] - b[k]).abs().max().item() for k in a if k.startswith("decoder.")) < 1e-4


def test_a_pickled_teacher_loads_as_its_safetensors_twin(tmp_path):
    from conftest import REFERENCE

    from wavslm.train.codec.teacher import load_teacher

    folder = tmp_path / "wavlm_bin"  # the layout of microsoft/wavlm-large on the Hub: pytorch_model.bin only
    folder.mkdir()
    (folder / "config.json").write_bytes((REFERENCE / "hf_wavlm_tiny" / "config.json").read_bytes())
    torch.save(load_file(REFERENCE / "hf_wavlm_tiny" / "model.safetensors"), folder / "pytorch_model.bin")
    pickled = load_teacher(str(folder), 2).state_dict()
    plain = load_teacher(str(REFERENCE / "hf_wavlm_tiny"), 2).state_dict()
    assert pickled.keys() == plain.keys() and all(torch.equal(pickled[k], plain[k]) for k in plain)


HARMONIC = {"input_dim": 64, "num_layers": 2, "dim": 64, "ffn_dim": 128, "kernel_size": 7, "hop_length": 480,
            "sample_rate": 24000, "num_harmonics": 32, "envelope_bins": 16, "noise_bands": 8}


def test_a_trained_codec_takes_a_harmonic_decoder_that_learns_pitch_and_nothing_else_moves(chain, setup, tmp_path):
    """decoder_input codec with a codec config that names another decoder: a fresh HarmonicNoise decoder on the
    joint codec's tokens, taught pYIN's F0 and voicing; every other part keeps the joint run's weights."""
    _, config, _ = setup
    codec = {**TOY_CODEC, "decoder_name": "HarmonicNoise", "decoder_config": HARMONIC}
    run = tmp_path / "harmonic"
    overrides = ["substage=decoder", "decoder_input=codec", f"init_from={chain['joint'] / 'export'}",
                 "train.steps=30", "train.lr=3e-3", "train.valid_every=30", "train.save_every=30",
                 "data.segment_seconds=0.5", "loss.adv=0", "loss.fm=0", "loss.stft=1.0"]
    train("codec", run, config, [*overrides, f"codec={json.dumps(codec)}"])
    before, after = weights(chain["joint"]), weights(run)
    assert all(torch.equal(v, after[k]) for k, v in before.items() if not k.startswith("decoder."))
    assert any(k.startswith("decoder.head") for k in after) and not any("noise_table" in k for k in after)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    f0 = [r["f0"] for r in rows if r["split"] == "train"]
    assert sum(f0[-5:]) / 5 < 0.7 * sum(f0[:5]) / 5, f0[::5]  # octaves off on voiced frames: it learns F0
    valid = [r for r in rows if r["split"] == "valid"][-1]
    assert 0 <= valid["vde"] <= 1 and 0 <= valid["gpe"] <= 1
    loaded = Codec.from_pretrained(run / "export" / "codec")
    assert loaded.config.decoder_name == "HarmonicNoise" and loaded.sample_rate_output == 24000
    sig, _ = load_audio(setup[2][1], sample_rate=16000, mono=True)
    assert loaded.decode(loaded.encode(sig)).shape[1] == sig.shape[1] // 320 * 480


def test_the_pitch_probe_trains_with_the_tokens_and_is_not_exported(chain, setup, tmp_path):
    _, config, _ = setup
    run = tmp_path / "joint_pitch"
    train("codec", run, config, ["substage=joint", f"init_from={chain['quantizer'] / 'export'}",
                                 "train.steps=6", "train.valid_every=6", "train.save_every=6", "loss.pitch=1.0"])
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert all(r["probe_f0"] > 0 and 0 < r["probe_voicing"] and 0 <= r["probe_gpe"] <= 1 for r in train_rows)
    assert all(abs(r["loss"] - (r["mse"] + 0.1 * r["entropy"] + r["probe_f0"] + r["probe_voicing"])) < 1e-3
               for r in train_rows)
    assert set(weights(run)) == set(weights(chain["joint"]))  # the probe is a training aid only
