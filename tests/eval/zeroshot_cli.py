"""Helpers of the zero-shot tests: `wavslm eval zeroshot` run in-process, and one pair's outcome."""

import argparse

from wavslm.eval.zeroshot import configure


def run_zeroshot(*argv):
    """`wavslm eval zeroshot ARGV` in this process (`--device cpu`): its results dict."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    configure(parser)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def outcome(nll, pos, neg):
    """1 if the positive clip has the lower NLL, 0.5 on a tie, else 0."""
    return 1.0 if nll[pos] < nll[neg] else 0.5 if nll[pos] == nll[neg] else 0.0
