"""Codec training throughput (audio seconds per second) per sub-stage, one process and 2-process DDP.

    python bench/train_codec.py [--steps 20] [--size tiny|mid] [--substages decoder quantizer] [--no-ddp]

`tiny`: the toy codec of the tests, distilled from the reference tiny Hugging Face WavLM (dim 64).
`mid`: a random-weight WavLM teacher of dim 256 (2 of 4 layers), focal blocks of 256, 4096 codes,
WaveNeXt dim 256. Runs go through `wavslm train codec` exactly as a user's would (DDP under
`torchrun --standalone --nproc_per_node=2`, 1 thread per process). Throughput = audio in the global
batches between step 5 and the last step, over the wall time the run's own log shows.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf
import torch
import yaml

from wavslm.wavlm import WavLM, WavLMConfig, save_hf

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPEECH = SHARED / "data" / "speech" / "librispeech-dev-clean"


def focal(dim: int) -> dict:
    return {"hidden_dims": [dim, dim], "focal_window": 3, "focal_level": 2, "focal_factor": 2, "causal": True, "window_size": 64}


def codec_config(dim: int, bits: int) -> dict:
    return {
        "encoder_config": {"window_size": 64, "lookahead_size": 3},
        "compressor_config": {"input_dim": dim, "output_dim": bits, "downscale_factors": [1, 1], **focal(dim)},
        "quantizer_config": {"codebook_size": 2**bits},
        "decompressor_config": {"input_dim": bits, "output_dim": dim, "upscale_factors": [1, 1], "last_window_size": 64,
                                "lookahead_size": 3, **focal(dim)},
        "decoder_config": {"input_dim": dim, "num_layers": 2, "dim": dim, "ffn_dim": 2 * dim, "hop_length": 480, "causal": True},
    }


def teacher(work: Path, size: str) -> Path:
    if size == "tiny":
        return ROOT / "tests" / "assets" / "reference" / "hf_wavlm_tiny"
    torch.manual_seed(0)
    model = WavLM(WavLMConfig(hidden_dims=[256] * 7, num_layers=4, dim=256, ffn_dim=1024, num_heads=4, conv_pos=64,
                              conv_pos_groups=16, conv_bias=True, final_norm=True))
    save_hf(model, work / "teacher")
    return work / "teacher"


def run(work: Path, size: str, substage: str, steps: int, ddp: bool, batch: int, seconds: float) -> float:
    dim, bits = (64, 6) if size == "tiny" else (256, 12)
    clips = sorted(SPEECH.rglob("*.wav"))[:16]
    manifest = work / "train.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(c), "duration": sf.info(c).duration}) + "\n" for c in clips))
    config = work / f"{size}-{substage}.yaml"
    config.write_text(yaml.safe_dump({"codec": {
        "substage": substage, "teacher": str(teacher(work, size)) if not (work / "teacher").exists() or size == "tiny" else str(work / "teacher"),
        "teacher_layers": 2, "codec": codec_config(dim, bits), "loss": {"layer_weights": [0.9, 1.0]},
        "data": {"train": str(manifest), "segment_seconds": seconds, "context_seconds": 0.0},
        "train": {"steps": steps, "batch_size": batch, "log_every": 1, "valid_every": 10**9, "save_every": 10**9,
                  "schedule": "constant"},
    }}))
    out = work / f"run-{size}-{substage}-{'ddp' if ddp else 'one'}"
    cli = ["-m", "wavslm.cli", "train", "codec", "--config", str(config), "-o", str(out)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cli] if ddp else [sys.executable, *cli]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if ddp else dict(os.environ)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first, last = next(r for r in rows if r["step"] == 5), rows[-1]
    return (last["step"] - first["step"]) * batch * seconds / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", default="tiny", choices=["tiny", "mid"])
    parser.add_argument("--substages", nargs="+", default=["decoder", "quantizer"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.0, help="crop length per item")
    parser.add_argument("--no-ddp", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for substage in args.substages:
            one = run(Path(tmp), args.size, substage, args.steps, False, args.batch, args.seconds)
            line = f"{args.size} {substage:9s} (batch {args.batch} x {args.seconds:g} s): 1 process {one:7.2f} audio s/s"
            if not args.no_ddp:
                two = run(Path(tmp), args.size, substage, args.steps, True, args.batch, args.seconds)
                line += f"   2-process DDP {two:7.2f} audio s/s ({two / one:.2f}x)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
