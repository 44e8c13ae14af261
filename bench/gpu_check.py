"""One command for whenever a GPU is lent: does every stage train at paper size on it, how fast and in how
much memory; does inference on it equal the CPU's; how fast does it stream.

    python bench/gpu_check.py [--device cuda] [--size paper|tiny] [--steps 8] [--compile both|off|on] [-o FILE]

1. Training, each stage a few steps through `wavslm.train.run.train` exactly as `wavslm train` runs it,
   with random weights: the ssl teacher (WavLM-Large-shaped) and the codec's decoder and quantizer
   sub-stages on the repository's real speech (tests/assets/speech), the LM (18 x 1024) on random token
   shards of a random FocalCodec-Stream. bf16 on CUDA (fp32 on the CPU), eager and with
   `train.compile=true`. Throughput comes from the run's own log after its first steps (tokens/s, audio
   seconds/s; compilation happens in those), peak memory from `torch.cuda.max_memory_allocated`.
2. Inference on the device equals the CPU's (float32, the same random paper-size weights): LM logits and
   the codec's tokens and audio.
3. Streaming generation (`benchmark.streaming_speed`): real-time factor and time to first audio at
   batch 1 and 16.

`--device cpu --size tiny` runs it all in about a minute on a laptop, as the test suite does, so the script
is known to work before a GPU is lent. The report is printed and, with `-o`, written as JSON.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "assets" / "speech"

# name: (ssl model, ssl batch x seconds, codec teacher, codec batch x seconds, LM layers x dim x heads x ffn, LM batch x crop)
SIZES = {
    "paper": {
        "ssl": {"hidden_dims": [512] * 7, "num_layers": 24, "dim": 1024, "ffn_dim": 4096, "num_heads": 16},
        "ssl_batch": (8, 4.0),
        "teacher": {"hidden_dims": [512] * 7, "num_layers": 6, "dim": 1024, "ffn_dim": 4096, "num_heads": 16,
                    "conv_bias": True, "final_norm": True},
        "codec_batch": (8, 2.0),
        "lm": {"num_layers": 18, "dim": 1024, "ffn_dim": 4096, "num_heads": 16, "window_size": 512},
        "lm_batch": (16, 512),
    },
    "tiny": {
        "ssl": {"hidden_dims": [32] * 7, "num_layers": 2, "dim": 64, "ffn_dim": 128, "num_heads": 4, "num_buckets": 32,
                "max_distance": 64, "conv_pos": 16, "conv_pos_groups": 4, "proj_dim": 32},
        "ssl_batch": (2, 1.0),
        "teacher": {"hidden_dims": [32] * 7, "num_layers": 2, "dim": 64, "ffn_dim": 128, "num_heads": 4,
                    "conv_pos": 16, "conv_pos_groups": 4, "conv_bias": True, "final_norm": True},
        "codec_batch": (2, 1.0),
        "lm": {"num_layers": 2, "dim": 64, "ffn_dim": 128, "num_heads": 4, "window_size": 64},
        "lm_batch": (4, 64),
    },
}


def speech_manifest(work: Path, copies: int = 4) -> Path:
    """The repository's real utterances as a training manifest, each listed `copies` times: there are 7 of
    them, fewer than the paper size's batch of 8, and a throughput check needs full batches, not new audio."""
    from wavslm.data.manifest import build_manifest

    build_manifest(SPEECH, work / "once.jsonl", progress=False)
    (work / "speech.jsonl").write_text((work / "once.jsonl").read_text() * copies)
    return work / "speech.jsonl"


def random_teacher(work: Path, size: dict) -> Path:
    from wavslm.wavlm import WavLM, WavLMConfig, save_hf

    torch.manual_seed(0)
    save_hf(WavLM(WavLMConfig(**size["teacher"])), work / "teacher")
    return work / "teacher"


def tiny_codec_config(dim: int) -> dict:
    focal = {"hidden_dims": [dim, dim], "focal_window": 3, "focal_level": 2, "focal_factor": 2, "causal": True,
             "window_size": 64}
    return {
        "encoder_config": {"window_size": 64, "lookahead_size": 3},
        "compressor_config": {"input_dim": dim, "output_dim": 6, "downscale_factors": [1, 1], **focal},
        "quantizer_config": {"codebook_size": 64},
        "decompressor_config": {"input_dim": 6, "output_dim": dim, "upscale_factors": [1, 1], "last_window_size": 64,
                                "lookahead_size": 3, **focal},
        "decoder_config": {"input_dim": dim, "num_layers": 1, "dim": dim, "ffn_dim": 2 * dim, "hop_length": 480,
                           "causal": True},
    }


def lm_data(work: Path, name: str) -> tuple[Path, Path]:
    """A random codec of the size's shape and random token shards of its vocabulary."""
    from wavslm.benchmark import build
    from wavslm.data.shards import ShardWriter

    codec = build(name).codec
    codec.save_pretrained(work / "codec")
    g = torch.Generator().manual_seed(0)
    with ShardWriter(work / "shards", codec.vocab_size, codec=str(work / "codec"), frame_rate=codec.frame_rate) as w:
        for i in range(64):
            w.append(torch.randint(0, codec.vocab_size, (1200,), generator=g), f"random-{i}")
    return work / "codec", work / "shards"


def stage_configs(work: Path, name: str, steps: int, precision: str, batch: int | None = None
                  ) -> dict[str, tuple[str, dict]]:
    size = SIZES[name]
    manifest, teacher = speech_manifest(work), random_teacher(work, size)
    codec, shards = lm_data(work, name)
    train = {"steps": steps, "log_every": 1, "valid_every": 10**9, "save_every": 10**9, "schedule": "constant",
             "precision": precision}
    (b_ssl, s_ssl), (b_codec, s_codec), (b_lm, crop) = size["ssl_batch"], size["codec_batch"], size["lm_batch"]
    if batch is not None:  # e.g. the paper size's shapes checked on a CPU, in a CPU's memory
        b_ssl = b_codec = b_lm = batch
    codec_section = {"teacher": str(teacher), "teacher_layers": size["teacher"]["num_layers"],
                     "loss": {"layer_weights": [1.0] * size["teacher"]["num_layers"]},
                     "data": {"train": str(manifest), "segment_seconds": s_codec, "context_seconds": 0.0},
                     "train": {**train, "batch_size": b_codec}}
    if name == "tiny":
        codec_section["codec"] = tiny_codec_config(size["teacher"]["dim"])
    return {
        "ssl": ("ssl", {"data": {"train": str(manifest), "segment_seconds": s_ssl, "max_items": 8},
                        "model": size["ssl"], "targets": {"kind": "mfcc", "num_clusters": 16, "iters": 5},
                        "train": {**train, "batch_size": b_ssl}}),
        "codec decoder": ("codec", {**codec_section, "substage": "decoder"}),
        "codec quantizer": ("codec", {**codec_section, "substage": "quantizer"}),
        "lm": ("lm", {"data": {"train": str(shards), "codec": str(codec), "crop_tokens": crop},
                      "model": size["lm"], "train": {**train, "batch_size": b_lm}}),
    }


def train_once(work: Path, label: str, stage: str, section: dict, compile: bool, device: str) -> dict:
    from wavslm.train.run import train

    config = work / f"{label.replace(' ', '_')}.yaml"
    config.write_text(yaml.safe_dump({stage: section}))
    out = work / f"run-{label.replace(' ', '_')}-{'compiled' if compile else 'eager'}"
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(stage, out, config, [f"train.compile={'true' if compile else 'false'}"], device=device)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"]
    key = "tokens_per_s" if "tokens_per_s" in rows[-1] else "audio_seconds_per_s"
    settled = rows[len(rows) // 2 :]  # past the first steps (and the compilation)
    return {"stage": label, "compile": compile, "throughput": sum(r[key] for r in settled) / len(settled),
            "unit": key, "loss": rows[-1]["loss"], "wall_s": wall,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def training(work: Path, name: str, steps: int, device: str, compile_modes: list[bool], batch: int | None = None,
             stages: list[str] | None = None) -> list[dict]:
    precision = "bf16" if device == "cuda" else "fp32"
    results = []
    for label, (stage, section) in stage_configs(work, name, steps, precision, batch).items():
        if stages and label not in stages:
            continue
        for compile in compile_modes:
            try:
                results.append(train_once(work, label, stage, section, compile, device))
            except Exception as error:  # one stage's failure is a finding, not the end of the check
                results.append({"stage": label, "compile": compile, "error": f"{type(error).__name__}: {error}"})
            print(_train_line(results[-1]), flush=True)
    return results


@torch.inference_mode()
def equality(name: str, device: str) -> dict:
    """The same random weights on the CPU and on `device`: LM logits and codec tokens / audio."""
    from wavslm.benchmark import build

    lm = build(name)
    toks = torch.randint(0, lm.codec.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))
    sig = torch.randn(1, 2 * lm.codec.sample_rate_input, generator=torch.Generator().manual_seed(2)) * 0.1
    cpu_logits, _ = lm(lm.codec.dequantize(toks))
    cpu_toks = lm.codec.encode(sig)
    cpu_audio = lm.codec.decode(cpu_toks)
    lm = lm.to(device)
    dev_logits, _ = lm(lm.codec.dequantize(toks.to(device)))
    dev_toks = lm.codec.encode(sig.to(device))
    dev_audio = lm.codec.decode(cpu_toks.to(device))
    return {
        "lm_logits_max_abs_diff": float((dev_logits.float().cpu() - cpu_logits).abs().max()),
        "lm_logits_scale": float(cpu_logits.abs().max()),
        "codec_token_agreement": float((dev_toks.cpu() == cpu_toks).float().mean()),
        "codec_audio_max_abs_diff": float((dev_audio.float().cpu() - cpu_audio).abs().max()),
    }


def streaming(name: str, device: str, batches: tuple[int, ...]) -> list[dict]:
    from wavslm.benchmark import build, streaming_speed

    lm = build(name).to(device)
    out = []
    for batch in batches:
        streaming_speed(lm, batch, prompt_seconds=1.0, seconds=1.0)  # warm-up
        out.append({"batch": batch, **streaming_speed(lm, batch, prompt_seconds=3.0, seconds=5.0)})
        print(f"streaming batch {batch:2d}: real-time factor {out[-1]['stream_rtf']:.3f}, first audio "
              f"{out[-1]['first_audio_ms']:.0f} ms, prompt read in {out[-1]['prompt_rtf']:.3f} s per second of it", flush=True)
    return out


def _train_line(r: dict) -> str:
    mode = "compiled" if r["compile"] else "eager"
    if "error" in r:
        return f"train {r['stage']:15s} {mode:8s} FAILED {r['error']}"
    memory = "" if r["peak_memory_gib"] is None else f", peak {r['peak_memory_gib']:.1f} GiB"
    return (f"train {r['stage']:15s} {mode:8s} {r['throughput']:10.1f} {r['unit']}{memory} "
            f"(loss {r['loss']:.3f}, {r['wall_s']:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=list(SIZES), default="paper")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compile", choices=["both", "off", "on"], default="both")
    parser.add_argument("--stream-batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--batch", type=int, help="every stage's global batch (default: the size's own)")
    parser.add_argument("--parts", nargs="+", choices=["training", "equality", "streaming"],
                        default=["training", "equality", "streaming"],
                        help="which checks to run (e.g. the eager runs first, the compiled ones in a second call)")
    parser.add_argument("--stages", nargs="+", choices=["ssl", "codec decoder", "codec quantizer", "lm"],
                        help="which stages to train (default: all)")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: pass --device cpu (with --size tiny for a quick run)")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"gpu_check on {args.device} ({device_name}), size {args.size}, torch {torch.__version__}", flush=True)
    modes = {"both": [False, True], "off": [False], "on": [True]}[args.compile]
    report = {"device": args.device, "device_name": device_name, "size": args.size, "torch": torch.__version__}
    report["training"] = []
    if "training" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            report["training"] = training(Path(tmp), args.size, args.steps, args.device, modes, args.batch, args.stages)
    if "equality" not in args.parts:
        report["equality"] = None
    elif args.device != "cpu":
        report["equality"] = equality(args.size, args.device)
        print("inference on the device vs the CPU: " + ", ".join(f"{k} {v:.3g}" for k, v in report["equality"].items()))
    else:
        report["equality"] = None
        print("inference on the device vs the CPU: skipped (the device is the CPU)")
    report["streaming"] = []
    if "streaming" in args.parts:
        report["streaming"] = streaming(args.size, args.device, tuple(args.stream_batches))
    failed = [r for r in report["training"] if "error" in r]
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    if failed:
        sys.exit(f"{len(failed)} training run(s) failed")


if __name__ == "__main__":
    main()
