"""Codec speed at paper size: encode / decode real-time factors for 10 s of real speech on this machine.

    python bench/resynth.py [--threads N] [--seconds 10]

Builds a FocalCodec-Stream-shaped codec with random weights (`wavslm.presets.focalcodec_stream`), saves it
in the released layout, and times, side by side in one run: offline encode, offline decode, streaming
encode+decode 80 ms at a time, and the `wavslm resynth` command end to end (process start included).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import wavslm
from wavslm.codec import Codec
from wavslm.presets import focalcodec_stream

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"


def speech(seconds: float) -> torch.Tensor:
    clips = sorted(SPEECH.glob("librispeech-dev-clean/**/*.wav")) if SPEECH.is_dir() else []
    parts, total = [], 0
    for clip in clips:
        sig, _ = wavslm.load_audio(clip, sample_rate=16000, mono=True)
        parts.append(sig)
        total += sig.shape[1]
        if total >= seconds * 16000:
            break
    if not parts:  # no corpus beside the checkout: noise has the same cost
        return torch.randn(1, int(seconds * 16000)) * 0.1
    return torch.cat(parts, dim=1)[:, : int(seconds * 16000)]


def timed(fn, repeat=2):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    codec = Codec(focalcodec_stream()).eval()
    params = sum(p.numel() for p in codec.parameters())
    sig = speech(args.seconds)
    dur = sig.shape[1] / 16000
    print(f"codec: {params / 1e6:.1f} M parameters, {args.threads} threads, {dur:.1f} s of speech")

    t_enc, toks = timed(lambda: codec.encode(sig))
    t_dec, _ = timed(lambda: codec.decode(toks))

    def streaming():
        with codec.streaming() as s:
            for start in range(0, sig.shape[1], codec.chunk_size):
                s.decode(s.encode(sig[:, start : start + codec.chunk_size]))

    t_stream, _ = timed(streaming, repeat=1)
    rows = [("encode (offline)", t_enc), ("decode (offline)", t_dec), ("encode+decode, 80 ms chunks", t_stream)]
    with tempfile.TemporaryDirectory() as tmp:
        codec.save_pretrained(Path(tmp) / "codec")
        wavslm.save_audio(Path(tmp) / "in.wav", sig, 16000)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wavslm.cli", "resynth", str(Path(tmp) / "in.wav"), "-o",
                        str(Path(tmp) / "out.wav"), "--codec", str(Path(tmp) / "codec")], check=True)
        rows.append(("`wavslm resynth` (whole command)", time.perf_counter() - start))
    for name, seconds in rows:
        print(f"{name:36s} {seconds:7.2f} s   real-time factor {seconds / dur:.3f}")


if __name__ == "__main__":
    main()
