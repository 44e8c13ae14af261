"""Deviation of the inference conversions from float32: max |logit difference|, argmax agreement over
every position, and agreement of a 64-token greedy continuation, on the reference fixture LM and on a
random paper-size LM.  Run: `python bench/exactness.py [--fixture DIR]`."""

import argparse
import warnings

import torch

from wavslm import WavSLM
from wavslm.benchmark import build
from wavslm.optimize import optimize_for_inference

CONVERSIONS = (("float32", "none"), ("bfloat16", "none"), ("float32", "int8"))  # float32: the packed weights


@torch.inference_mode()
def deviation(make, vocab: int, batch: int, length: int = 148) -> dict:
    rows = {}
    for dtype, quantize in CONVERSIONS:
        lm = make()
        toks = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
        exact, _ = lm(lm.codec.dequantize(toks))
        _, greedy = lm.generate(bos_toks=toks[:1, :64], max_gen_toks=64, top_p=0.0)
        optimize_for_inference(lm, dtype=dtype, quantize=quantize)
        got, _ = lm(lm.codec.dequantize(toks))
        _, converted = lm.generate(bos_toks=toks[:1, :64], max_gen_toks=64, top_p=0.0)
        rows[f"{dtype}/{quantize}"] = {
            "max_logit_diff": (got - exact).abs().max().item(),
            "argmax_agree": (got.argmax(-1) == exact.argmax(-1)).float().mean().item(),
            "greedy_64_agree": (converted == greedy).float().mean().item(),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fixture", default="tests/assets/reference/wavslm_tiny")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name, make, vocab, batch in (("fixture", lambda: WavSLM.from_pretrained(args.fixture), 64, 2),
                                     ("paper", lambda: build("paper"), 4096, 1)):
        for conversion, row in deviation(make, vocab, batch).items():
            print(f"{name:8s} {conversion:15s} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))


if __name__ == "__main__":
    main()
