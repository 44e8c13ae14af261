"""`wavslm eval paper`: the WavSLM paper's likelihood tasks, printed beside its WavSLM-4k row.

The tasks are those of the paper's table: four SALMon parts (sentiment, speaker and gender consistency,
sentiment alignment), sWUGGY, sBLIMP and topic StoryCloze, each scored as `eval zeroshot` scores it
(mean next-chunk NLL, the first chunk as context, a tie 0.5, the official sLM21 averaging), from the data
given (folders or Hub ids). The paper's figures come from two independent summaries of the paper, not
from the paper itself; the output says so until they are checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..io import write_json
from ..pretrained import load_lm
from .loaders import Dataset, load_dataset
from .zeroshot import context_chunks, evaluate, scored_span

if TYPE_CHECKING:
    from ..lm import WavSLM

# (row, task, SALMon part or None, the paper's WavSLM-4k accuracy in %).
ROWS = (
    ("SALMon sentiment consistency", "salmon", "sentiment_consistency", 75.0),
    ("SALMon speaker consistency", "salmon", "speaker_consistency", 88.5),
    ("SALMon gender consistency", "salmon", "gender_consistency", 90.5),
    ("SALMon sentiment alignment", "salmon", "sentiment_alignment", 51.5),
    ("sWUGGY (all)", "swuggy", None, 63.7),
    ("sBLIMP", "sblimp", None, 53.9),
    ("tSC", "tsc", None, 63.3),
)
PAPER_AVERAGE = 69.5  # the mean of the seven figures above
PROVENANCE = ("The paper's figures are taken from two independent summaries of the WavSLM paper and have not "
              "yet been checked against the paper itself.")


def run_paper(lm: WavSLM, datasets: dict[str, Dataset], split: str = "dev", batch_size: int = 16,
              context: int = 0) -> dict[str, Any]:
    """Score each task's dataset (task -> `Dataset`); return the rows, ours beside the paper's."""
    scored = {}
    for task, dataset in datasets.items():
        result = evaluate(lm, dataset.pairs, task, "mean", batch_size, context)
        result.pop("pairs")
        scored[task] = {"data": dataset.source, "layout": dataset.layout, **result}
    rows = []
    for name, task, part, paper in ROWS:
        result = scored.get(task)
        figure = result if part is None or result is None else result["subsets"].get(part)
        accuracy = None if figure is None else figure["accuracy"]
        rows.append({"task": name, "wavslm": accuracy, "ci95": None if figure is None else figure["ci95"],
                     "paper": paper})
    ours = [r["wavslm"] for r in rows]
    average = None if any(a is None for a in ours) else sum(ours) / len(ours)
    return {"rows": rows, "average": {"wavslm": average, "paper": PAPER_AVERAGE}, "tasks": scored,
            "split": split, "scored_span": scored_span(lm, context), "reduction": "mean",
            "provenance": PROVENANCE}


def format_table(results: dict[str, Any]) -> str:
    width = max(len(r["task"]) for r in results["rows"])
    lines = [f"{'task':<{width}}  {'wavslm':>7}  {'95% CI':>11}  {'WavSLM-4k (paper)':>17}"]
    for r in results["rows"]:
        ours = "n/a" if r["wavslm"] is None else f"{100 * r['wavslm']:.1f}"
        ci = "" if r["ci95"] is None else f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}"
        lines.append(f"{r['task']:<{width}}  {ours:>7}  {ci:>11}  {r['paper']:>17.1f}")
    avg = results["average"]
    ours = "n/a" if avg["wavslm"] is None else f"{100 * avg['wavslm']:.1f}"
    lines.append(f"{'average':<{width}}  {ours:>7}  {'':>11}  {avg['paper']:>17.1f}")
    missing = [r["task"] for r in results["rows"] if r["wavslm"] is None]
    if missing:
        lines.append(f"n/a: not given or not in the data ({', '.join(missing)}); the average needs all seven")
    lines.append(f"scored: {results['scored_span']}; mean NLL; a tie counts 0.5")
    lines.append(results["provenance"])
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `eval paper` arguments to `parser` (which already has `--device`)."""
    for flag, what in (("salmon", "SALMon (the part folders or configs, e.g. slprl/SALMon)"),
                       ("swuggy", "sWUGGY (sLM21 root or lexical folder, or speed/sWUGGY)"),
                       ("sblimp", "sBLIMP (sLM21 root or syntactic folder, or speed/sBLIMP)"),
                       ("tsc", "topic StoryCloze (folder, parquet or speed/tStoryCloze)")):
        parser.add_argument(f"--{flag}", metavar="DATA", help=f"{what}: a local path or a Hub dataset id")
    parser.add_argument("--suite", type=Path, help="the synthetic suite of `wavslm synth bench` for every task it has")
    parser.add_argument("--model", help="WavSLM folder, .json or Hub id (default: the bundled model)")
    parser.add_argument("--score-first-chunk", action="store_true",
                        help="encode 0.16 s of silence before each clip so that its first chunk is scored too")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default: 16)")
    parser.add_argument("-o", "--output", type=Path, help="results file (.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = {}
    if args.suite is not None:
        data.update(salmon=args.suite / "salmon", swuggy=args.suite / "lexical", sblimp=args.suite / "syntactic",
                    tsc=args.suite / "storycloze")
    data.update({task: getattr(args, task) for task in ("salmon", "swuggy", "sblimp", "tsc") if getattr(args, task)})
    if not data:
        raise InputError("give the data of at least one task: --salmon, --swuggy, --sblimp, --tsc or --suite")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    # sLM21's dev split: the test gold is withheld (`eval zeroshot --submission` writes files for its grader).
    datasets = {task: load_dataset(task, source, "dev") for task, source in data.items()}  # before the model
    lm = load_lm(args.model, args.device)
    context = context_chunks(lm, 0.16) if args.score_first_chunk else 0
    results = {"model": args.model or "bundled", **run_paper(lm, datasets, "dev", args.batch_size, context)}
    print(format_table(results))
    if args.output is not None:
        write_json(args.output, results)
    return results
