"""The ssl stage: learns masked prediction on real speech, exports a Hugging Face WavLM, feeds iteration 2,
resumes exactly, and masks every item independently of its batch."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from wavslm import InputError
from wavslm.data.manifest import build_manifest
from wavslm.train import checkpoint
from wavslm.train.run import train
from wavslm.train.ssl_stage import SSLMaskingConfig, item_masks
from wavslm.wavlm import from_hf

TINY_MODEL = {"hidden_dims": [32] * 7, "num_layers": 2, "dim": 64, "ffn_dim": 128, "num_heads": 4, "num_buckets": 32,
              "max_distance": 64, "conv_pos": 16, "conv_pos_groups": 4, "dropout": 0.0, "proj_dim": 32,
              "feature_grad_mult": 1.0}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: on a shared 2-core machine a second thread costs more in contention than it gains.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A manifest of 4 real clips and a tiny iteration-1 config (fixed 1 s crops, so a few steps overfit)."""
    from conftest import SPEECH

    root = tmp_path_factory.mktemp("ssl")
    (root / "clips").mkdir()
    for clip in sorted((SPEECH / "librispeech-dev-clean" / "84").glob("*.wav"))[:4]:
        (root / "clips" / clip.name).symlink_to(clip)
    assert build_manifest(root / "clips", root / "train.jsonl", progress=False).num_files == 4
    settings = {
        "data": {"train": str(root / "train.jsonl"), "valid": str(root / "train.jsonl"), "segment_seconds": 1.0,
                 "random_crop": False, "max_items": 4},
        "model": TINY_MODEL,
        "targets": {"kind": "mfcc", "num_clusters": 16, "iters": 20, "max_frames": 2000},
        "train": {"steps": 60, "batch_size": 4, "lr": 2e-3, "schedule": "constant", "warmup_steps": 0,
                  "valid_every": 60, "valid_batches": 1, "save_every": 60, "log_every": 1},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({"ssl": settings}))
    return path


def rows(run_dir, split="train"):
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture(scope="module")
def iteration1(config, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("iteration1") / "run"
    train("ssl", run_dir, config)
    return run_dir


def test_worker_processes_train_the_same_teacher(config, tmp_path):
    """Random crops and per-epoch masks (the masks are drawn in the step, from the epoch the loop sets) come
    out the same when the items are read and collated in worker processes."""
    runs = {}
    for workers in (0, 2):
        train("ssl", tmp_path / f"w{workers}", config, ["train.steps=6", "train.num_workers=" + str(workers),
                                                        "data.random_crop=true", "train.valid_every=100"])
        runs[workers] = load_file(tmp_path / f"w{workers}" / "export" / "wavlm" / "model.safetensors")
    assert all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
    assert [r["loss"] for r in rows(tmp_path / "w0")] == [r["loss"] for r in rows(tmp_path / "w2")]


def test_iteration1_learns_mfcc_clusters_and_exports_a_hugging_face_wavlm(iteration1):
    curve = [r["loss"] for r in rows(iteration1)]
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert len(curve) == 60 and last < 0.6 * first, curve[::6]  # measured: 2.85 -> 1.11
    assert all(r["audio_seconds_per_s"] > 0 for r in rows(iteration1))  # the throughput of each log interval
    valid = rows(iteration1, "valid")[-1]
    assert valid["acc_masked"] > 0.4 and 0.3 < valid["mask_fraction"] < 0.8, valid

    export = iteration1 / "export"
    assert sorted(p.name for p in export.iterdir()) == ["kmeans.safetensors", "ssl.json", "wavlm"]
    info = json.loads((export / "ssl.json").read_text())
    assert info["targets"] == "mfcc" and info["num_clusters"] == 16 and info["frame_rate"] == 50
    trained = checkpoint.load(iteration1 / "checkpoints" / "last.pt")["nets"]["ssl"]
    assert torch.equal(load_file(export / "kmeans.safetensors")["centroids"], trained["centroids"])
    assert trained["centroids"].shape == (16, 39)

    wavlm = from_hf(export / "wavlm")
    assert wavlm.config.final_norm and not wavlm.config.causal and wavlm.config.num_layers == 2
    same = type(wavlm)(wavlm.config).eval()
    same.load_state_dict({k.removeprefix("wavlm."): v for k, v in trained.items() if k.startswith("wavlm.")})
    sig = torch.randn(2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(wavlm(sig)[0], same(sig)[0], rtol=1e-5, atol=1e-5)


def test_iteration2_clusters_the_first_export_s_features(iteration1, config, tmp_path):
    run_dir = tmp_path / "run"
    teacher = iteration1 / "export"
    train("ssl", run_dir, config, ["targets.kind=features", f"targets.teacher={teacher}", "targets.layer=1",
                                   "model.layer=1", "train.steps=4", "train.valid_every=4", "train.save_every=4"])
    assert len(rows(run_dir)) == 4 and all(r["loss"] == r["loss"] for r in rows(run_dir))
    info = json.loads((run_dir / "export" / "ssl.json").read_text())
    assert info["targets"] == "features" and info["teacher_layer"] == 1
    assert load_file(run_dir / "export" / "kmeans.safetensors")["centroids"].shape == (16, 64)  # teacher width
    from_hf(run_dir / "export" / "wavlm")


@pytest.mark.slow
def test_two_process_ddp_and_fsdp_equal_one_process(config, tmp_path):
    """Under DDP each rank's means over frames take every rank's frame count (the masked frames differ
    from item to item), so two gloo processes give one process's loss curve, not a mean of the ranks' means;
    so does FSDP2 (`train.parallel: fsdp`), whose export is a whole Hugging Face WavLM."""
    import os
    import subprocess
    import sys

    settings = ["--set", "train.steps=4", "--set", "train.valid_every=100", "--set", "train.save_every=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "wavslm.cli", "train", "ssl", "--config", str(config), "-o",
                          str(tmp_path / "one"), *settings], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "wavslm.cli", "train", "ssl", "--config", str(config), "-o", str(tmp_path / "two"),
                          *settings], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-8000:]
    fsdp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "wavslm.cli", "train", "ssl", "--config", str(config), "-o", str(tmp_path / "fsdp"),
                           *settings, "--set", "train.parallel=fsdp"], capture_output=True, text=True, env=env)
    assert fsdp.returncode == 0, fsdp.stderr[-8000:]
    a, b, c = rows(tmp_path / "one"), rows(tmp_path / "two"), rows(tmp_path / "fsdp")
    assert len(a) == len(b) == len(c) == 4
    for key in ("loss", "recon_l1") if "recon_l1" in a[0] else ("loss",):
        assert max(abs(x[key] - y[key]) for x, y in zip(a, b, strict=True)) < 1e-5, (key, a, b)
        assert max(abs(x[key] - y[key]) for x, y in zip(a, c, strict=True)) < 1e-5, (key, a, c)  # FSDP2 too
    assert from_hf(tmp_path / "fsdp" / "export" / "wavlm") is not None  # the whole weights, exported


def test_resume_continues_exactly(config, tmp_path):
    short = ["train.steps=3", "train.save_every=3", "train.valid_every=100"]
    train("ssl", tmp_path / "resumed", config, short)
    train("ssl", tmp_path / "resumed", overrides=["train.steps=6"], resume=True)
    train("ssl", tmp_path / "straight", config, ["train.steps=6", "train.save_every=6", "train.valid_every=100"])
    a = load_file(tmp_path / "resumed" / "export" / "wavlm" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "export" / "wavlm" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    resumed, straight = rows(tmp_path / "resumed"), rows(tmp_path / "straight")
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight])


def test_item_masks_do_not_depend_on_the_batch():
    masking = SSLMaskingConfig(mask_prob=0.65, mask_length=5, min_masks=1)
    items, frames = torch.tensor([7, 3, 9, 1]), torch.tensor([40, 40, 25, 40])
    whole = item_masks(items, frames, 40, (0, 2), masking)  # (seed 0, epoch 2)
    rank0 = item_masks(items[[0, 2]], frames[[0, 2]], 40, (0, 2), masking)  # as a 2-process split
    assert torch.equal(whole[[0, 2]], rank0)
    assert not whole[2, 25:].any() and whole.any(1).all()
    assert not torch.equal(whole, item_masks(items, frames, 40, (0, 3), masking))  # a new epoch, new masks


def test_config_errors(config, tmp_path):
    with pytest.raises(InputError, match="targets.kind must be mfcc or features"):
        train("ssl", tmp_path / "a", config, ["targets.kind=hubert"])
    with pytest.raises(InputError, match="needs targets.teacher"):
        train("ssl", tmp_path / "b", config, ["targets.kind=features"])
    with pytest.raises(InputError, match=r"model.layer must be null or in \[0, 2\]"):
        train("ssl", tmp_path / "c", config, ["model.layer=3"])
    with pytest.raises(InputError, match=r"reconstruction needs weight >= 0, layer in \[1, 2\]"):
        train("ssl", tmp_path / "d", config, ["reconstruction.weight=1.0", "reconstruction.layer=3"])


def test_reconstruction_term_trains_and_leaves_the_export_as_before(config, tmp_path):
    run_dir = tmp_path / "run"
    train("ssl", run_dir, config, ["reconstruction.weight=1.0", "reconstruction.layer=1", "reconstruction.n_mels=40",
                                   "train.steps=30", "train.valid_every=30", "train.save_every=30"])
    curve = [r["recon_l1"] for r in rows(run_dir)]
    assert sum(curve[-3:]) < 0.7 * sum(curve[:3]), curve[::3]
    trained = checkpoint.load(run_dir / "checkpoints" / "last.pt")["nets"]["ssl"]
    assert trained["recon.proj.weight"].shape == (40, 64)
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["kmeans.safetensors", "ssl.json", "wavlm"]
    from_hf(run_dir / "export" / "wavlm")
