"""Streaming generation on PyTorch and on ONNX Runtime, side by side: the same model, prompt and seed.

    python bench/onnx_speed.py [--size tiny|paper|bundled] [--threads 2] [--seconds 5] [--rounds 3]

The model (`bundled`: the bundled tiny WavSLM; `tiny` / `paper`: `wavslm.benchmark.build`, random weights)
is exported with `wavslm.onnx_export.export_onnx` into a temporary folder. Each round times, one after the
other, `generation.generate_steps` (torch, float32) and `OnnxWavSLM.generate_steps` (onnxruntime, float32)
from a 3-s token prompt at batch 1: the continuation's wall time per second of audio (real-time factor)
and the time to its first audio. The best round of each is printed, with the CPU, and whether the two
gave the same tokens.
"""

import argparse
import tempfile
import time

import torch

from wavslm.benchmark import cpu_name


def _run(steps_iter, seconds: float) -> tuple[float, float, torch.Tensor]:
    start, first, toks = time.perf_counter(), None, []
    for t, _ in steps_iter:
        first = first if first is not None else time.perf_counter() - start
        toks.append(t)
    return (time.perf_counter() - start) / seconds, 1000 * first, torch.cat(toks, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["bundled", "tiny", "paper"], default="bundled")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from wavslm.benchmark import build
    from wavslm.generation import generate_steps
    from wavslm.onnx_export import export_onnx
    from wavslm.onnx_runtime import OnnxWavSLM
    from wavslm.pretrained import load_lm

    lm = load_lm(None) if args.size == "bundled" else build(args.size)
    codec = lm.require_codec()
    prompt = [torch.randint(0, codec.vocab_size, (int(3 * codec.frame_rate) // 4 * 4,),
                            generator=torch.Generator().manual_seed(0))]
    steps = int(args.seconds * codec.frame_rate) // lm.toks_per_step
    seconds = steps * lm.toks_per_step / codec.frame_rate
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_onnx(lm, folder)
        print(f"{args.size}: exported in {time.perf_counter() - start:.0f} s; {cpu_name()}, {args.threads} threads, "
              f"torch {torch.__version__}", flush=True)
        ort = OnnxWavSLM(folder, threads=args.threads)
        best = {"torch": (float("inf"), float("inf")), "onnxruntime": (float("inf"), float("inf"))}
        tokens = {}
        for _ in range(args.rounds):
            for name, make in (("torch", lambda: generate_steps(lm, prompt, steps, top_p=0.3, seed=0)),
                               ("onnxruntime", lambda: ort.generate_steps(prompt, steps, top_p=0.3, seed=0))):
                rtf, first, tokens[name] = _run(make(), seconds)
                best[name] = (min(best[name][0], rtf), min(best[name][1], first))
    for name, (rtf, first) in best.items():
        print(f"{name:12s} float32, batch 1: real-time factor {rtf:.3f}, first audio {first:.1f} ms (best of "
              f"{args.rounds}; {seconds:.1f} s from a 3-s prompt)")
    print("same tokens" if torch.equal(tokens["torch"], tokens["onnxruntime"]) else "tokens differ (a near tie moved)")


if __name__ == "__main__":
    main()
