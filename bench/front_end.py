"""The conv front end of a causal WavLM, whole or in pieces (`tuning.FRONT_END_PIECE_BYTES`): time and
agreement, the bundled tiny codec's front end and a WavLM-Large-shaped one with random weights.

    python bench/front_end.py [--threads 2] [--seconds 3] [--batches 1 4 8 16]

For each batch of `--seconds` prompts it prints the best of 5 timings whole, in the pieces the front end
chooses (the same as whole where it chooses none), and the largest difference between the two outputs.
"""

import argparse
import platform
import time

import torch

from wavslm.pretrained import load_codec
from wavslm.wavlm import FeatureExtractor, WavLMConfig


def best_ms(fn, *args, rounds: int = 5) -> float:
    fn(*args)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fronts = {"tiny (bundled, 128 ch)": load_codec(None).encoder.feature_extractor,
              "WavLM-Large shape (512 ch)": FeatureExtractor(WavLMConfig(causal=True)).eval()}
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    with torch.no_grad():
        for name, front in fronts.items():
            for batch in args.batches:
                sig = 0.1 * torch.randn(batch, round(args.seconds * 16000))
                piece = front.piece_samples(sig)
                whole = best_ms(front._layers, sig, None)
                chosen = best_ms(front, sig)
                diff = float((front(sig)[0] - front._layers(sig, None)[0]).abs().max())
                pieces = "whole" if piece is None else f"pieces of {piece / 16000:.2f} s"
                print(f"{name:27s} batch {batch:2d}: whole {whole:6.1f} ms, chosen ({pieces}) {chosen:6.1f} ms, "
                      f"max difference {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
