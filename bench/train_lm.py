"""LM training throughput (tokens/s) for the `tiny` and a mid-size config, one process and 2-process DDP.

    python bench/train_lm.py [--steps 30] [--sizes tiny mid] [--no-ddp]

Each size gets a random-weight codec of matching width (only its decompressor runs: features come from
it on the fly, as in real training) and random token shards; the run goes through `wavslm train lm`
exactly as a user's would, alone and under `torchrun --standalone --nproc_per_node=2` (gloo, 1 thread
per process). Throughput is measured from the run's own log between step 5 and the last step.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from wavslm.codec import Codec, CodecConfig
from wavslm.data.shards import ShardWriter

SIZES = {
    # name: (layers, dim, heads, ffn, codebook, crop tokens, global batch)
    "tiny": (2, 64, 4, 128, 64, 128, 8),
    "mid": (6, 512, 8, 2048, 4096, 256, 8),
}


def make_codec(folder: Path, dim: int, codebook: int) -> Path:
    bits = codebook.bit_length() - 1
    small = {"hidden_dims": [dim, dim], "focal_window": 3, "focal_level": 2, "focal_factor": 2, "causal": True, "window_size": 64}
    config = CodecConfig(
        encoder_config={"hidden_dims": [32] * 7, "num_layers": 1, "dim": dim, "ffn_dim": dim, "num_heads": 4,
                        "num_buckets": 32, "max_distance": 64, "conv_pos": 16, "conv_pos_groups": 4, "causal": True,
                        "window_size": 64},
        compressor_config={"input_dim": dim, "output_dim": bits, "downscale_factors": [1, 1], **small},
        quantizer_config={"codebook_size": codebook},
        decompressor_config={"input_dim": bits, "output_dim": dim, "upscale_factors": [1, 1], "last_window_size": 64,
                             "lookahead_size": 3, **small},
        decoder_config={"input_dim": dim, "num_layers": 1, "dim": 64, "ffn_dim": 64, "hop_length": 480, "causal": True},
    )
    Codec(config).save_pretrained(folder)
    return folder


def make_shards(folder: Path, codebook: int, utterances: int = 64, length: int = 600) -> Path:
    g = torch.Generator().manual_seed(0)
    with ShardWriter(folder, codebook, frame_rate=50.0) as writer:
        for i in range(utterances):
            writer.append(torch.randint(0, codebook, (length,), generator=g), f"random-{i}")
    return folder


def run(work: Path, name: str, steps: int, ddp: bool) -> float:
    layers, dim, heads, ffn, codebook, crop, batch = SIZES[name]
    codec = make_codec(work / f"codec-{name}", dim, codebook) if not (work / f"codec-{name}").exists() else work / f"codec-{name}"
    shards = make_shards(work / f"shards-{name}", codebook) if not (work / f"shards-{name}").exists() else work / f"shards-{name}"
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"lm": {
        "data": {"train": str(shards), "codec": str(codec), "crop_tokens": crop},
        "model": {"num_layers": layers, "dim": dim, "ffn_dim": ffn, "num_heads": heads, "window_size": 512},
        "train": {"steps": steps, "batch_size": batch, "log_every": 1, "valid_every": 10**9, "save_every": 10**9},
    }}))
    out = work / f"run-{name}-{'ddp' if ddp else 'one'}"
    cli = ["-m", "wavslm.cli", "train", "lm", "--config", str(config), "-o", str(out)]
    if ddp:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cli]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
    else:
        command, env = [sys.executable, *cli], dict(os.environ)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first, last = next(r for r in rows if r["step"] == 5), rows[-1]
    return (last["step"] - first["step"]) * batch * crop / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--no-ddp", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            layers, dim, heads, ffn, codebook, crop, batch = SIZES[name]
            params = layers * (4 * dim * dim + 2 * dim * ffn) + dim * codebook
            one = run(Path(tmp), name, args.steps, ddp=False)
            line = f"{name:5s} ({layers} x {dim}, ~{params / 1e6:.1f} M params, batch {batch} x {crop} tokens): 1 process {one:9.0f} tokens/s"
            if not args.no_ddp:
                two = run(Path(tmp), name, args.steps, ddp=True)
                line += f"   2-process DDP {two:9.0f} tokens/s ({two / one:.2f}x)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
