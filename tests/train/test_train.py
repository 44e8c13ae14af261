"""Training: the lm stage learns, DDP under torchrun equals one process, a killed run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from wavslm import Codec, WavSLM, load_audio
from wavslm.data.shards import ShardWriter
from wavslm.train.run import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Real speech from the shared corpus, tokenized by the reference codec."""
    from conftest import REFERENCE, SPEECH

    codec_dir = REFERENCE / "codec_tiny_causal"
    codec = Codec.from_pretrained(codec_dir)
    folder = tmp_path_factory.mktemp("shards")
    clips = sorted((SPEECH / "librispeech-dev-clean").rglob("*.wav"))[:4]
    with ShardWriter(folder, codec.vocab_size, codec=str(codec_dir), frame_rate=codec.frame_rate) as writer:
        for clip in clips:
            sig, _ = load_audio(clip, sample_rate=16000, mono=True)
            writer.append(codec.encode(sig)[0], str(clip))
    return folder, codec_dir


def lm_settings(shards, **train):
    folder, codec_dir = shards
    settings = {
        "data": {"train": str(folder), "valid": str(folder), "codec": str(codec_dir), "crop_tokens": 32},
        "model": {"num_layers": 2, "dim": 64, "ffn_dim": 128, "num_heads": 4, "num_buckets": 32, "max_distance": 64,
                  "window_size": 16},
        "train": {"steps": 60, "batch_size": 4, "lr": 3e-3, "warmup_steps": 5, "valid_every": 30, "valid_batches": 1,
                  "save_every": 30, "log_every": 1, **train},
    }
    return settings


def write_config(path, settings):
    path.write_text(yaml.safe_dump({"lm": settings}))
    return path


def losses(run_dir, split="train"):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == split]


def test_lm_stage_overfits_real_speech_and_exports(shards, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", lm_settings(shards))
    train("lm", tmp_path / "run", config, ["data.random_crop=false", "train.steps=100", "train.schedule=constant"])
    curve = losses(tmp_path / "run")
    assert curve[-1] < 0.5 * curve[0], curve[:: max(1, len(curve) // 6)]
    assert sorted(p.name for p in (tmp_path / "run" / "export").iterdir()) == ["codec", "lm"]
    lm = WavSLM.from_pretrained(tmp_path / "run" / "export" / "lm")  # finds ../codec on its own
    assert set(load_file(tmp_path / "run" / "export" / "lm" / "model.safetensors")) == set(
        k for k in lm.state_dict() if not k.startswith("codec.")
    )
    gen_sig, gen_toks = lm.generate(bos_toks=torch.randint(0, 64, (1, 12)), max_gen_toks=8, seed=0)
    assert gen_toks.shape == (1, 8) and gen_sig.shape == (1, 8 * 480)
    assert (tmp_path / "run" / "tensorboard").is_dir() and (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_model_flops_utilisation_is_logged_from_a_counted_step(shards, tmp_path):
    """With a device peak (`train.peak_tflops`; on CUDA a known GPU's own), each train row has `mfu`: one
    step's FLOPs, counted once by PyTorch's FLOP counter, times the steps per second, over the peak. The
    crops have one length, so FLOPs per token are constant: about 6 x the LM's parameters and more."""
    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=6, valid_every=100, save_every=100, log_every=2))
    train("lm", tmp_path / "run", config, ["train.peak_tflops=0.001", "data.random_crop=false"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"]
    assert len(rows) == 3 and all(r["mfu"] > 0 for r in rows)
    per_token = [r["mfu"] * 1e9 / r["tokens_per_s"] for r in rows]  # FLOPs per token (peak 1e9 FLOP/s)
    params = sum(v.numel() for v in load_file(tmp_path / "run" / "export" / "lm" / "model.safetensors").values())
    assert max(per_token) == pytest.approx(min(per_token), rel=1e-6)
    assert 6 * params < per_token[0] < 100 * params, (per_token[0], params)
    train("lm", tmp_path / "plain", config, ["data.random_crop=false"])  # on the CPU without a peak: no mfu
    assert all("mfu" not in json.loads(line) for line in (tmp_path / "plain" / "log.jsonl").read_text().splitlines())


def run_cli(*args, env=None, **kwargs):
    return subprocess.run([*args], capture_output=True, text=True, env={**os.environ, **(env or {})}, **kwargs)


def test_two_process_ddp_with_loader_workers_matches_one_process_without(shards, tmp_path):
    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=6, valid_every=100, save_every=100, lr=1e-3))
    single = run_cli(sys.executable, "-m", "wavslm.cli", "train", "lm", "--config", config, "-o", tmp_path / "one")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = run_cli(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                  "-m", "wavslm.cli", "train", "lm", "--config", config, "-o", tmp_path / "two",
                  "--set", "train.num_workers=2", env={"OMP_NUM_THREADS": "1"})  # DataLoader workers on each rank
    assert ddp.returncode == 0, ddp.stderr[-8000:]  # the ranks' own tracebacks come before torchrun's summary
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-5, (one, two)


@pytest.mark.slow
def test_fsdp_equals_ddp_and_its_sharded_checkpoint_resumes_at_another_world_size(shards, tmp_path):
    """`train.parallel: fsdp` under torchrun (2 gloo processes): the DDP run's losses; its sharded checkpoint
    (torch.distributed.checkpoint) resumed by 2 processes ends with the uninterrupted run's weights, and
    by one process with its losses (1e-5) and weights (1e-4: one process sums the batch's gradients in
    another order, and AdamW's step turns rounding-sized gradient differences into lr-sized ones where
    a gradient is near zero); the export is the released layout."""
    import shutil

    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=6, valid_every=100, save_every=3, lr=1e-3))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "wavslm.cli"]
    one_thread = {"OMP_NUM_THREADS": "1"}
    for name, extra in (("ddp", []), ("fsdp", ["--set", "train.parallel=fsdp"])):
        done = run_cli(*torchrun, "train", "lm", "--config", config, "-o", tmp_path / name, *extra, env=one_thread)
        assert done.returncode == 0, done.stderr[-8000:]
    ddp, fsdp = losses(tmp_path / "ddp"), losses(tmp_path / "fsdp")
    assert len(ddp) == len(fsdp) == 6
    assert max(abs(a - b) for a, b in zip(ddp, fsdp, strict=True)) < 1e-5, (ddp, fsdp)
    assert (tmp_path / "fsdp" / "checkpoints" / "last" / "trainer.pt").is_file()
    assert not (tmp_path / "fsdp" / "checkpoints" / "last.pt").exists()

    done = run_cli(*torchrun, "train", "lm", "--config", config, "-o", tmp_path / "part", "--set", "train.parallel=fsdp",
                   "--set", "train.steps=3", env=one_thread)
    assert done.returncode == 0, done.stderr[-8000:]
    shutil.copytree(tmp_path / "part", tmp_path / "part1")
    done = run_cli(*torchrun, "train", "lm", "-o", tmp_path / "part", "--resume", "--set", "train.steps=6", env=one_thread)
    assert done.returncode == 0, done.stderr[-8000:]
    done = run_cli(sys.executable, "-m", "wavslm.cli", "train", "lm", "-o", tmp_path / "part1", "--resume",
                   "--set", "train.steps=6", "--set", "train.parallel=ddp", env=one_thread)  # one process, world 1
    assert done.returncode == 0, done.stderr[-4000:]
    assert losses(tmp_path / "part") == pytest.approx(fsdp, abs=1e-6)
    assert losses(tmp_path / "part1") == pytest.approx(fsdp, abs=1e-5)
    same, one = (load_file(tmp_path / p / "export" / "lm" / "model.safetensors") for p in ("part", "part1"))
    b = load_file(tmp_path / "fsdp" / "export" / "lm" / "model.safetensors")
    c = load_file(tmp_path / "ddp" / "export" / "lm" / "model.safetensors")
    assert same.keys() == one.keys() == b.keys() == c.keys()
    assert max((same[k] - b[k]).abs().max().item() for k in b) < 1e-6
    assert max((one[k] - b[k]).abs().max().item() for k in b) < 1e-4
    assert max((b[k] - c[k]).abs().max().item() for k in b) < 1e-4
    WavSLM.from_pretrained(tmp_path / "fsdp" / "export" / "lm")


@pytest.mark.slow
def test_compiled_networks_train_as_the_eager_ones(shards, tmp_path):
    """`train.compile: true` compiles the LM in place: the same loss curve (float tolerance) and an export
    with the same weight names, loadable by the released layout's loader."""
    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=4, valid_every=100, save_every=4, lr=1e-3))
    train("lm", tmp_path / "eager", config)
    train("lm", tmp_path / "compiled", config, ["train.compile=true"])
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert max(abs(a - b) for a, b in zip(eager, compiled, strict=True)) < 1e-4, (eager, compiled)
    a = load_file(tmp_path / "eager" / "export" / "lm" / "model.safetensors")
    b = load_file(tmp_path / "compiled" / "export" / "lm" / "model.safetensors")
    assert a.keys() == b.keys()
    WavSLM.from_pretrained(tmp_path / "compiled" / "export" / "lm")


@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_match_one_process(shards, tmp_path):
    import socket

    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=6, valid_every=100, save_every=100, lr=1e-3))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                               "--rdzv_id=wavslm-test", "-m", "wavslm.cli", "train", "lm", "--config", str(config),
                               "-o", str(tmp_path / "nodes")], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True, env=env) for rank in (0, 1)]
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(e[-4000:] for e in errors)
    single = run_cli(sys.executable, "-m", "wavslm.cli", "train", "lm", "--config", config, "-o", tmp_path / "one",
                     env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-2000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "nodes")
    assert len(one) == len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-5, (one, two)


def _children(pid):
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip()) == pid:
            found.append(int(status.parent.name))
    return found


@pytest.mark.slow
def test_a_worker_killed_under_torchrun_max_restarts_resumes_by_itself(shards, tmp_path):
    settings = lm_settings(shards, steps=40, save_every=3, valid_every=100, lr=1e-3)
    config = write_config(tmp_path / "c.yaml", settings)
    command = ["-m", "wavslm.cli", "train", "lm", "--config", str(config), "-o"]
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                 "--max-restarts=1", *command, str(tmp_path / "elastic")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = tmp_path / "elastic" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 10):
        time.sleep(0.02)
    workers = _children(launcher.pid)
    assert workers, "no worker under torchrun"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)  # a worker dies mid-training: torchrun starts it again
    err = launcher.communicate(timeout=300)[1]
    assert launcher.returncode == 0, err[-8000:]
    assert "torchrun restart 1: resuming" in err, err[-4000:]
    clean = run_cli(sys.executable, *command, tmp_path / "clean", env={"OMP_NUM_THREADS": "1"})  # as torchrun's
    assert clean.returncode == 0, clean.stderr[-2000:]
    a = load_file(tmp_path / "elastic" / "export" / "lm" / "model.safetensors")
    b = load_file(tmp_path / "clean" / "export" / "lm" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(shards, tmp_path):
    settings = lm_settings(shards, steps=40, save_every=3, valid_every=100, lr=1e-3)
    config = write_config(tmp_path / "c.yaml", settings)
    command = [sys.executable, "-m", "wavslm.cli", "train", "lm", "--config", str(config), "-o"]
    victim = subprocess.Popen([*command, str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 10):
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = len(log.read_text().splitlines())
    assert 10 <= done < 40, "the run was not killed mid-training"
    resumed = run_cli(sys.executable, "-m", "wavslm.cli", "train", "lm", "-o", tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    clean = run_cli(*command, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-2000:]
    a = load_file(tmp_path / "killed" / "export" / "lm" / "model.safetensors")
    b = load_file(tmp_path / "clean" / "export" / "lm" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*.tmp"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(shards, tmp_path):
    from wavslm.train.loop import TrainingError

    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=50, save_every=1, valid_every=100, lr=1e12,
                                                            clip=0.0, warmup_steps=0))
    with pytest.raises(TrainingError, match=r"the main loss became (nan|inf) at step \d+; stopping \(the last good checkpoint"):
        train("lm", tmp_path / "run", config)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)  # intact


def test_export_best_takes_the_weights_of_the_best_validation(shards, tmp_path):
    from wavslm.train import checkpoint

    # A rate high enough that validation gets worse after a while: best and last differ. (The path is
    # chaotic, so rounding changes anywhere move it; at 1.0 the last loss ends far above the best.)
    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=12, valid_every=2, save_every=100, lr=1.0,
                                                            schedule="constant", warmup_steps=0, export="best"))
    train("lm", tmp_path / "run", config)
    valid = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    valid = [r["loss"] for r in valid if r["split"] == "valid"]
    assert min(valid) < valid[-1], valid
    best = checkpoint.load(tmp_path / "run" / "checkpoints" / "best.pt")["nets"]["lm"]
    exported = load_file(tmp_path / "run" / "export" / "lm" / "model.safetensors")
    assert all(torch.equal(exported[k], best[k]) for k in exported)


def test_config_errors(shards, tmp_path):
    from wavslm import InputError

    config = write_config(tmp_path / "c.yaml", lm_settings(shards))
    with pytest.raises(InputError, match=r"section 'lm'.*unknown keys \['colour'\]"):
        train("lm", tmp_path / "run", config, ["train.colour=red"])
    with pytest.raises(InputError, match="--set expects key=value"):
        train("lm", tmp_path / "run", config, ["train.lr"])
    with pytest.raises(InputError, match="unknown stage 'music'"):
        train("music", tmp_path / "run", config)
    with pytest.raises(InputError, match="holds no config.yaml"):
        train("lm", tmp_path / "nothing", resume=True)
    # Values no run can use: one sentence before anything is built or written.
    for override, message in (("train.batch_size=0", "'batch_size' must be at least 1, got 0"),
                              ("train.save_every=0", "'save_every' must be at least 1"),
                              ("train.steps=-5", "'steps' must be at least 1, got -5"),
                              ("train.lr=-1", "'lr' must be a positive number"),
                              ("train.lr=.nan", "'lr' must be a positive number")):
        with pytest.raises(InputError, match=message):
            train("lm", tmp_path / "bad", config, [override])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(InputError, match="the dataset has 4 items, fewer than one batch of 8"):
        train("lm", tmp_path / "small", config, ["train.batch_size=8"])
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"lm": lm_settings(shards), "music": {"tempo": 120}}))
    with pytest.raises(InputError, match=r"unknown sections \['music'\]"):
        train("lm", tmp_path / "bad", extra)
    from conftest import SPEECH

    wav = sorted(SPEECH.rglob("*.wav"))[0]
    with pytest.raises(InputError, match=r"unknown preset .* or a \.yaml file"):
        train("lm", tmp_path / "bad", wav)
    (tmp_path / "audio.yaml").write_bytes(wav.read_bytes())  # binary under a YAML name
    with pytest.raises(InputError, match="is not text"):
        train("lm", tmp_path / "bad", tmp_path / "audio.yaml")


def test_worker_processes_give_the_same_batches_and_the_same_model(shards, tmp_path):
    exported = {}
    for workers in (0, 2):
        settings = lm_settings(shards, steps=12, batch_size=4, grad_accum=2, num_workers=workers, valid_every=100)
        train("lm", tmp_path / f"w{workers}", write_config(tmp_path / f"w{workers}.yaml", settings))
        exported[workers] = load_file(tmp_path / f"w{workers}" / "export" / "lm" / "model.safetensors")
    assert all(torch.equal(exported[0][k], exported[2][k]) for k in exported[0])
    assert losses(tmp_path / "w0") == losses(tmp_path / "w2")
    logged = [json.loads(line) for line in (tmp_path / "w2" / "log.jsonl").read_text().splitlines()]
    assert all(r["tokens_per_s"] > 0 for r in logged if r["split"] == "train")  # each log interval's throughput
    # What the workers collate is each step's share of its global batch, cropped as its epoch says.
    from wavslm.data.shards import TokenCrops, collate_tokens
    from wavslm.train.loop import EpochItems, StepSampler, TrainConfig, global_batch, micro_batches

    crops = TokenCrops(shards[0], crop_tokens=16)
    cfg = TrainConfig(steps=6, batch_size=4, grad_accum=2, seed=3)
    loader = torch.utils.data.DataLoader(EpochItems(crops), batch_sampler=StepSampler(len(crops), cfg, 1, 2, start=2),
                                         collate_fn=collate_tokens, num_workers=2)
    expected = []
    for step in range(2, 6):  # from step 2, as a resumed run; rank 1 of 2
        epoch, indices = global_batch(step, 4, len(crops), 3)
        crops.set_epoch(epoch)
        expected += [collate_tokens([crops[i] for i in part]) for part in micro_batches(indices, 1, 2, 2)]
    got = list(loader)
    assert len(got) == len(expected) == 8
    assert all(torch.equal(g[k], e[k]) for g, e in zip(got, expected, strict=True) for k in e)
    assert len({tuple(e["toks"].flatten().tolist()) for e in expected}) > 1  # the epochs' crops differ


def test_a_second_writer_of_a_run_folder_stops_before_anything_is_written(shards, tmp_path):
    from wavslm import InputError
    from wavslm.io import output_lock

    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=2))
    with output_lock(tmp_path / "run"):
        with pytest.raises(InputError, match="'.*run' is being written by another process"):
            train("lm", tmp_path / "run", config)
        assert not (tmp_path / "run").exists()
    train("lm", tmp_path / "run", config)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_manifest_and_tokenize_under_torchrun_equal_one_process(speech, reference, tmp_path):
    codec = reference / "codec_tiny_causal"
    made = run_cli(sys.executable, "-m", "wavslm.cli", "manifest", speech / "librispeech-dev-clean", "-o", tmp_path / "m.jsonl")
    assert made.returncode == 0 and "wrote 6 files" in made.stdout, made.stderr
    one = run_cli(sys.executable, "-m", "wavslm.cli", "tokenize", tmp_path / "m.jsonl", "-o", tmp_path / "one", "--codec", codec)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_cli(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "wavslm.cli",
                  "tokenize", tmp_path / "m.jsonl", "-o", tmp_path / "two", "--codec", codec, env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "one" / "tokens.bin").read_bytes() == (tmp_path / "two" / "tokens.bin").read_bytes()


@pytest.mark.parametrize("preset", ["paper_4k.yaml", "tiny.yaml"])
def test_presets_resolve(preset):

    from wavslm.pretrained import PRESETS
    from wavslm.recipe import resolve_recipe
    from wavslm.train.run import read_yaml, resolve

    path = PRESETS / preset
    for stage in read_yaml(path):
        if stage == "recipe":
            resolve_recipe(str(path), [])
        else:
            resolve(stage, path, [])


def test_a_refused_resume_changes_nothing_and_damaged_checkpoints_fall_back(shards, tmp_path, caplog):
    from wavslm import InputError

    config = write_config(tmp_path / "c.yaml", lm_settings(shards, steps=6, save_every=2, valid_every=3))
    run = tmp_path / "run"
    train("lm", run, config)
    saved = (run / "config.yaml").read_text()
    # Settings the checkpoint does not fit: one sentence, and the run's config.yaml is left as it was.
    with pytest.raises(InputError, match="does not fit the run's settings"):
        train("lm", run, None, ["model.num_layers=3"], resume=True)
    assert (run / "config.yaml").read_text() == saved
    # A truncated last.pt: the newest intact checkpoint (best.pt) is taken, and the log keeps its steps only.
    best_step = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["step"]
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    os.utime(run / "checkpoints" / "best.pt")  # newer than the damaged last.pt
    with open(run / "log.jsonl", "a") as log:  # what a run killed after logging past its checkpoint leaves
        log.write(json.dumps({"stage": "lm", "split": "train", "step": best_step + 1, "loss": 1.0}) + "\n")
        log.write('{"stage": "lm", "split": "tr')
    with caplog.at_level("WARNING", logger="wavslm.train"):
        train("lm", run, None, ["train.steps=8"], resume=True)
    assert any("resumed from best.pt" in r.getMessage() and "last.pt is damaged" in r.getMessage() for r in caplog.records)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(steps) == list(range(1, 9)), (best_step, steps)  # each step logged once
    # Nothing intact, or nothing at all, is an error under --resume rather than a fresh start.
    for name in ("last.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes(b"")
    with pytest.raises(InputError, match="every checkpoint .* is damaged"):
        train("lm", run, None, resume=True)
    for name in ("last.pt", "best.pt"):
        (run / "checkpoints" / name).unlink()
    with pytest.raises(InputError, match="holds no checkpoint"):
        train("lm", run, None, resume=True)
