"""The LM's decode step alone: PyTorch (float32; int8) against ONNX Runtime (float32; its dynamic int8).

    python bench/onnx_lm_step.py [--size paper|tiny] [--threads 2] [--steps 20] [--rounds 3]

Random weights of the size's WavSLM (`wavslm.benchmark.build`). After a 3-s prompt (150 tokens) read
once, each round times `--steps` next-chunk steps (4 frames each) of every variant in turn, at batch 1:
PyTorch's `lm(qfeats, state)` with its key/value cache, float32 and int8 (`optimize_for_inference`), and
the exported `lm_step.onnx` under ONNX Runtime, float32 and quantised by
`onnxruntime.quantization.quantize_dynamic` (int8 weights, activations quantised per call). Prints the best
round's milliseconds per step and tokens per second, with the CPU.
"""

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from wavslm.benchmark import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["paper", "tiny"], default="paper")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from wavslm.benchmark import build
    from wavslm.onnx_export import LMStep
    from wavslm.optimize import optimize_for_inference

    lm = build(args.size)
    codec, C = lm.require_codec(), lm.toks_per_step
    toks = torch.randint(0, codec.vocab_size, (1, 150 + C * args.steps), generator=torch.Generator().manual_seed(0))
    qfeats = codec.dequantize(toks)
    prompt, chunks = qfeats[:, :148], [qfeats[:, 148 + C * i : 148 + C * (i + 1)] for i in range(args.steps)]
    int8 = optimize_for_inference(copy.deepcopy(lm), quantize="int8")
    step = LMStep(lm).eval()

    def torch_run(model):
        with torch.inference_mode():
            _, state = model(prompt[:, :148])
            start = time.perf_counter()
            for x in chunks:
                _, state = model(x, state)
            return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder:
        f32, q8 = Path(folder) / "lm_step.onnx", Path(folder) / "lm_step_int8.onnx"
        with torch.no_grad():
            torch.onnx.export(step, (chunks[0], *step.empty_state(1)), f32, dynamo=True, opset_version=18,
                              input_names=["qfeats", "pos", "keys", "values"],
                              output_names=["logits", "keys_out", "values_out"], external_data=False, verbose=False)
        quantize_dynamic(f32, q8, weight_type=QuantType.QInt8)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions = {name: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in (("onnxruntime float32", f32), ("onnxruntime int8", q8))}

        def ort_run(session):
            pos, keys, values = (t.numpy() for t in step.empty_state(1))
            for i in range(0, 148, C):  # the prompt, chunk by chunk (not timed)
                _, keys, values = session.run(None, {"qfeats": prompt[:, i : i + C].numpy(), "pos": pos,
                                                     "keys": keys, "values": values})
                pos = pos + C
            start = time.perf_counter()
            for x in chunks:
                _, keys, values = session.run(None, {"qfeats": x.numpy(), "pos": pos, "keys": keys, "values": values})
                pos = pos + C
            return time.perf_counter() - start

        variants = {"torch float32": lambda: torch_run(lm), "torch int8": lambda: torch_run(int8),
                    **{name: (lambda s=s: ort_run(s)) for name, s in sessions.items()}}
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(args.rounds):
            for name, run in variants.items():
                best[name] = min(best[name], run())
    print(f"{args.size} LM, batch 1, {args.steps} steps of {C} tokens after a 148-token prompt; {cpu_name()}, "
          f"{args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    base = best["torch float32"]
    for name, seconds in best.items():
        print(f"{name:20s} {1000 * seconds / args.steps:7.1f} ms/step  {C * args.steps / seconds:7.1f} tok/s  "
              f"({base / seconds:.2f}x torch float32)")


if __name__ == "__main__":
    main()
