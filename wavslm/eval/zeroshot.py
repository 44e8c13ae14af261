"""Zero-shot pair scoring: does the LM give the positive clip of each pair the lower next-chunk NLL?

`wavslm eval zeroshot --task T --data DIR` scores every clip of a benchmark (loaders in
`eval.loaders`) with the same next-chunk NLL as `WavSLM.score`, in length-sorted batches, and reports
the share of pairs won (a tie counts 0.5), overall and per subset.

Batching is exact: each clip is dequantized alone (the decompressor carries state, so padding would
change its features), then clips whose token counts agree mod 4 are left-padded by whole chunks and run
together with the padding masked (`valid_from`), as `generation._start` does. Right padding would leak:
attention is bidirectional inside each aligned 4-token chunk.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..errors import InputError
from ..io import write_json
from ..pretrained import load_lm
from .loaders import TASKS, Clip, ClipReader, Pair, load_pairs

if TYPE_CHECKING:
    from ..lm import WavSLM


# ---- scoring ------------------------------------------------------------------------------------


def encode_clips(lm: WavSLM, clips: Sequence[Clip]) -> list[Tensor]:
    """Tokens `(T,)` of each clip (mono, at the codec's input rate); each must give more than one chunk."""
    codec, C = lm.require_codec(), lm.toks_per_step
    read = ClipReader(codec.sample_rate_input)
    rows = []
    for clip in tqdm(clips, desc="encode", unit="clip", disable=None, leave=False):
        sig = read(clip)
        try:
            toks = codec.encode(sig)[0]
        except InputError as error:
            raise InputError(f"cannot score '{clip.name}': {error}") from error
        if len(toks) <= C:
            ms = 1000 * len(toks) / codec.frame_rate
            raise InputError(f"'{clip.name}' is too short to score: {len(toks)} tokens ({ms:.0f} ms); more than {C} are needed")
        rows.append(toks)
    return rows


def batches(lengths: Sequence[int], batch_size: int, step: int = 4) -> list[list[int]]:
    """Indices grouped into batches of at most `batch_size` whose lengths agree mod `step`, sorted by length.

    Rows of one batch can then be left-padded by whole chunks, keeping each row's chunk alignment.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    out = []
    for residue in range(step):
        group = sorted((i for i, n in enumerate(lengths) if n % step == residue), key=lambda i: lengths[i])
        out += [group[s : s + batch_size] for s in range(0, len(group), batch_size)]
    return out


@torch.inference_mode()
def batch_nll(lm: WavSLM, rows: Sequence[Tensor], reduction: str = "mean") -> Tensor:
    """Next-chunk NLL of token rows `(T_b,)` with `T_b` equal mod 4, in one pass: `-> (B,)`.

    Equals `lm.score(row[None], reduction)` for each row (up to float rounding).
    """
    if reduction not in ("mean", "sum"):
        raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    C = lm.toks_per_step
    lengths = [len(r) for r in rows]
    L = max(lengths)
    if any((L - n) % C for n in lengths):
        raise ValueError(f"rows of one batch must have lengths equal mod {C}, got {lengths}")
    device = next(lm.parameters()).device
    qfeats = [lm.codec.dequantize(r[None].to(device)) for r in rows]  # each alone: the decompressor is causal
    pad = torch.tensor([L - n for n in lengths], device=device)
    x = torch.cat([F.pad(q, (0, 0, L - q.shape[1], 0)) for q in qfeats])  # (B, L, D), left-padded
    toks = torch.stack([F.pad(r.to(device), (L - len(r), 0)) for r in rows])  # (B, L)
    feats, _ = lm.encoder(x, valid_from=pad)  # with a cache: a long clip is read in pieces, memory linear
    logits = lm.logits(feats)  # (B, L, V)
    nll = F.cross_entropy(logits[:, :-C].flatten(0, 1).float(), toks[:, C:].flatten(), reduction="none")
    nll = nll.view(len(rows), L - C)
    real = torch.arange(L - C, device=device)[None] >= pad[:, None]  # the logit and its target are both real
    total = torch.where(real, nll, 0.0).sum(1)
    return total / real.sum(1) if reduction == "mean" else total


def score_rows(lm: WavSLM, rows: Sequence[Tensor], reduction: str = "mean", batch_size: int = 16) -> Tensor:
    """Next-chunk NLL of every token row `(T_i,)`, batched by length: `-> (N,)` in the input order."""
    out = torch.empty(len(rows))
    plan = batches([len(r) for r in rows], batch_size, lm.toks_per_step)
    with tqdm(total=len(rows), desc="score", unit="clip", disable=None, leave=False) as bar:
        for index in plan:
            out[index] = batch_nll(lm, [rows[i] for i in index], reduction).cpu()
            bar.update(len(index))
    return out


# ---- accuracy (pure) ----------------------------------------------------------------------------


def pair_outcomes(pos_nll: Tensor, neg_nll: Tensor) -> Tensor:
    """Per pair: 1 if the positive has the lower NLL, 0.5 on a tie, else 0. `(P,), (P,) -> (P,)`."""
    return (pos_nll < neg_nll).double() + 0.5 * (pos_nll == neg_nll).double()


def pair_accuracy(pos_nll: Tensor, neg_nll: Tensor) -> float:
    """Share of pairs whose positive has the lower NLL (ties count 0.5)."""
    return float(pair_outcomes(torch.as_tensor(pos_nll), torch.as_tensor(neg_nll)).mean())


def item_accuracy(outcomes: Sequence[float], items: Sequence[str]) -> float:
    """Mean over items of the mean outcome of each item's pairs (its voices), as the sLM21 scorer does."""
    by_item: dict[str, list[float]] = defaultdict(list)
    for outcome, item in zip(outcomes, items, strict=True):
        by_item[item].append(float(outcome))
    return sum(sum(v) / len(v) for v in by_item.values()) / len(by_item)


Z95 = 1.959964  # two-sided 95% quantile of the normal distribution


def interval(accuracy: float, items: int) -> list[float]:
    """Wilson's 95% score interval for an accuracy over `items` independent items (100 items: +-0.096
    at 0.5; 500: +-0.044). An item scored by several voices counts once: its voices are not independent."""
    z2 = Z95**2 / items
    centre = (accuracy + z2 / 2) / (1 + z2)
    half = Z95 * math.sqrt(accuracy * (1 - accuracy) / items + z2 / (4 * items)) / (1 + z2)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def summarize(task: str, pairs: Sequence[Pair], outcomes: Sequence[float]) -> dict[str, Any]:
    """Overall accuracy, its 95% interval (`ci95`) and `subsets` (name -> accuracy, ci95, pairs) for `task`.

    sWUGGY: "all" and "in-vocab"; sBLIMP: each `type`; both averaged over voices, then items.
    SALMon: each part, the overall being the mean over parts. StoryCloze: each subset folder.
    Intervals are Wilson's over the items (`interval`).
    """
    def subset(keep) -> dict[str, Any]:
        chosen = [i for i, p in enumerate(pairs) if keep(p)]
        if not chosen:
            return {"accuracy": None, "ci95": None, "num_pairs": 0}
        value = item_accuracy([outcomes[i] for i in chosen], [pairs[i].item for i in chosen])
        return {"accuracy": value, "ci95": interval(value, len({pairs[i].item for i in chosen})),
                "num_pairs": len(chosen)}

    def by(key: str) -> dict[str, dict[str, Any]]:
        return {v: subset(lambda p, v=v: p.meta[key] == v) for v in sorted({p.meta[key] for p in pairs})}

    if task == "swuggy":
        subsets = {"all": subset(lambda p: True), "in-vocab": subset(lambda p: p.meta["in_vocab"])}
        overall = subsets["all"]["accuracy"]
    elif task == "sblimp":
        subsets, overall = by("type"), subset(lambda p: True)["accuracy"]
    elif task == "salmon":
        subsets = by("part")
        overall = sum(s["accuracy"] for s in subsets.values()) / len(subsets)
    else:
        subsets, overall = by("subset"), subset(lambda p: True)["accuracy"]
    return {"accuracy": overall, "ci95": interval(overall, len({p.item for p in pairs})), "subsets": subsets}


# ---- the whole evaluation -----------------------------------------------------------------------


def evaluate(
    lm: WavSLM, pairs: Sequence[Pair], task: str, reduction: str = "mean", batch_size: int = 16
) -> dict[str, Any]:
    """Score every clip of `pairs` once; return the summary plus per-pair NLLs and outcomes (`pairs`)."""
    if not pairs:
        raise InputError("the dataset has no pairs to score")
    clips = list(dict.fromkeys(c for p in pairs for c in (p.positive, p.negative)))
    # Identical token rows are scored once, so identical audio is an exact tie whatever its batch.
    rows = encode_clips(lm, clips)
    keys = [row.cpu().numpy().tobytes() for row in rows]
    unique = dict(zip(keys, rows, strict=True))
    scores = dict(zip(unique, score_rows(lm, list(unique.values()), reduction, batch_size).tolist(), strict=True))
    nll = {clip: scores[key] for clip, key in zip(clips, keys, strict=True)}
    pos = torch.tensor([nll[p.positive] for p in pairs], dtype=torch.float64)
    neg = torch.tensor([nll[p.negative] for p in pairs], dtype=torch.float64)
    outcomes = pair_outcomes(pos, neg).tolist()
    per_pair = [
        {"positive": p.positive.name, "negative": p.negative.name, "item": p.item,
         "positive_nll": a, "negative_nll": b, "outcome": o, **p.meta}
        for p, a, b, o in zip(pairs, pos.tolist(), neg.tolist(), outcomes, strict=True)
    ]
    return {"num_pairs": len(pairs), **summarize(task, pairs, outcomes), "pairs": per_pair}


# ---- CLI glue -----------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `eval zeroshot` arguments to `parser` (which already has `--device`)."""
    parser.add_argument("--task", required=True, choices=TASKS, help="benchmark layout to read")
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (or a .parquet file for storycloze)")
    parser.add_argument("--model", help="WavSLM folder, .json or Hub id (default: the bundled model)")
    parser.add_argument("--split", choices=("dev", "test"), default="dev", help="sLM21 split (default: dev)")
    parser.add_argument("--reduction", choices=("mean", "sum"), default="mean", help="NLL per token or per clip (default: mean)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default: 16)")
    parser.add_argument("-o", "--output", type=Path, help="results file (.json)")
    parser.add_argument("--per-pair", action="store_true", help="include every pair's NLLs in the results file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the pairs and the model, score, print a summary and write the JSON results when asked."""

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    pairs = load_pairs(args.task, args.data, args.split)  # before the model: a bad dataset fails fast
    lm = load_lm(args.model, args.device)
    scored = evaluate(lm, pairs, args.task, args.reduction, args.batch_size)
    results = {
        "task": args.task,
        "model": args.model or "bundled",
        "reduction": args.reduction,
        "split": args.split if args.task in ("swuggy", "sblimp") else None,
        **scored,
    }
    if not args.per_pair:
        del results["pairs"]
    print(format_summary(results))
    if args.output is not None:
        write_json(args.output, results)
    return results


def format_summary(results: dict[str, Any]) -> str:
    split = f" {results['split']}" if results.get("split") else ""
    lines = [f"{results['task']}{split}: {results['num_pairs']} pairs, accuracy {_percent(results['accuracy'])}"
             f"{_range(results.get('ci95'))}"]
    lines += [f"  {name}: {_percent(s['accuracy'])}{_range(s.get('ci95'))} ({s['num_pairs']} pairs)"
              for name, s in results["subsets"].items()]
    return "\n".join(lines)


def _range(ci95: list[float] | None) -> str:
    return "" if ci95 is None else f" (95% CI {100 * ci95[0]:.1f}-{100 * ci95[1]:.1f}%)"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
