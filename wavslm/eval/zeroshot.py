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
from ..io import write_atomic, write_json
from ..pretrained import load_lm
from .loaders import (
    SALMON_PARTS,
    TASKS,
    Clip,
    ClipReader,
    Pair,
    has_gold,
    load_dataset,
    local_folder,
    split_wavs,
)

if TYPE_CHECKING:
    from ..lm import WavSLM


# ---- scoring ------------------------------------------------------------------------------------


def context_chunks(lm: WavSLM, seconds: float) -> int:
    """Whole 4-token chunks of silence that cover `seconds` (0 -> 0)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"the silence context must be a duration of 0 seconds or more, got {seconds}")
    return math.ceil(round(seconds * lm.require_codec().frame_rate / lm.toks_per_step, 6))


def encode_clips(lm: WavSLM, clips: Sequence[Clip], context: int = 0) -> list[Tensor]:
    """Tokens `(T,)` of each clip (mono, at the codec's input rate); each must give more than one chunk.

    `context` > 0: the clip is encoded after that many chunks of silence (digital zeros), whose tokens
    lead the row; the codec is causal, so the clip's own tokens are those it gets after the silence.
    """
    codec, C = lm.require_codec(), lm.toks_per_step
    read = ClipReader(codec.sample_rate_input)
    silence = round(context * C * codec.sample_rate_input / codec.frame_rate)
    rows = []
    for clip in tqdm(clips, desc="encode", unit="clip", disable=None, leave=False):
        sig = read(clip)
        if silence:
            sig = torch.cat([sig.new_zeros(sig.shape[0], silence), sig], dim=1)
        try:
            toks = codec.encode(sig)[0]
        except InputError as error:
            raise InputError(f"cannot score '{clip.name}': {error}") from error
        own = len(toks) - C * context  # the clip's own tokens, after the silence
        if own <= (0 if context else C):
            ms = 1000 * own / codec.frame_rate
            need = "at least 1 is" if context else f"more than {C} are"
            raise InputError(f"'{clip.name}' is too short to score: {own} tokens ({ms:.0f} ms); {need} needed")
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
def batch_nll(lm: WavSLM, rows: Sequence[Tensor], reduction: str = "mean", start: int | None = None) -> Tensor:
    """Next-chunk NLL of token rows `(T_b,)` with `T_b` equal mod 4, in one pass: `-> (B,)`.

    Tokens from index `start` on are scored (default `toks_per_step`, the first predicted chunk; a
    row led by a silence context starts after it). With the default it equals `lm.score(row[None],
    reduction)` for each row (up to float rounding).
    """
    if reduction not in ("mean", "sum"):
        raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    C = lm.toks_per_step
    start = C if start is None else start
    if start < C or start % C:
        raise ValueError(f"scoring starts at a whole chunk after the first, got token {start}")
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
    # Logit p predicts token p + C: scored when that token is at or after `start` in its own row.
    real = torch.arange(L - C, device=device)[None] + C >= pad[:, None] + start
    total = torch.where(real, nll, 0.0).sum(1)
    return total / real.sum(1) if reduction == "mean" else total


def score_rows(
    lm: WavSLM, rows: Sequence[Tensor], reduction: str = "mean", batch_size: int = 16, start: int | None = None
) -> Tensor:
    """Next-chunk NLL of every token row `(T_i,)` from token `start` on (see `batch_nll`), batched by
    length: `-> (N,)` in the input order."""
    out = torch.empty(len(rows))
    plan = batches([len(r) for r in rows], batch_size, lm.toks_per_step)
    with tqdm(total=len(rows), desc="score", unit="clip", disable=None, leave=False) as bar:
        for index in plan:
            out[index] = batch_nll(lm, [rows[i] for i in index], reduction, start).cpu()
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


# The official sLM21 scorer's frequency bands: pandas.cut over [0, 1, 5, 20, 100, inf) with right-open
# bins, so "1-5" holds counts 1-4 and "6-20" counts 5-19; the labels are the scorer's own.
FREQUENCY_BANDS = (("oov", 0, 1), ("1-5", 1, 5), ("6-20", 5, 20), ("21-100", 20, 100), (">100", 100, math.inf))
TIES = "a tie (equal NLL) counts 0.5"


def frequency_band(count: int | None) -> str:
    """The official sWUGGY band of a word's LibriSpeech count (None, "oov" in the gold: "oov")."""
    count = count or 0
    return next((label for label, low, high in FREQUENCY_BANDS if low <= count < high), "oov")


def summarize(task: str, pairs: Sequence[Pair], outcomes: Sequence[float]) -> dict[str, Any]:
    """The headline `accuracy` with its 95% interval and what it is (`averaging`), `subsets` and
    `breakdowns` (name -> label -> accuracy, ci95, num_items, num_pairs), and `warnings`.

    Every figure averages each item's pairs (its voices) first, then the items, as the official sLM21
    scorer does. sWUGGY: "all" (the headline) and "in-vocab" (a word count of 1 or more); by frequency
    band and by length in phones where the data has them. sBLIMP: by type, and by subtype. SALMon: each
    part; the headline is their mean, labelled as such, with a warning when parts are missing.
    sSC / tSC: the stories. `storycloze` (folders found): each subset alone, a headline only when there is
    one, since sSC and tSC are never pooled. Intervals are Wilson's over the items (`interval`).
    """
    warnings: list[str] = []

    def subset(keep) -> dict[str, Any]:
        chosen = [i for i, p in enumerate(pairs) if keep(p)]
        if not chosen:
            return {"accuracy": None, "ci95": None, "num_items": 0, "num_pairs": 0}
        items = {pairs[i].item for i in chosen}
        value = item_accuracy([outcomes[i] for i in chosen], [pairs[i].item for i in chosen])
        return {"accuracy": value, "ci95": interval(value, len(items)), "num_items": len(items),
                "num_pairs": len(chosen)}

    def by(key: str, order: Sequence[Any] | None = None) -> dict[str, dict[str, Any]]:
        values = {p.meta[key] for p in pairs if p.meta.get(key) is not None}
        keys = [v for v in order if v in values] if order else sorted(values, key=str)
        return {str(v): subset(lambda p, v=v: p.meta.get(key) == v) for v in keys}

    everything = subset(lambda p: True)
    subsets: dict[str, dict[str, Any]] = {}
    breakdowns: dict[str, dict[str, dict[str, Any]]] = {}
    voices = "each item's voices averaged first, then the items" if any("voice" in p.meta for p in pairs) \
        else "mean over items"
    if task == "swuggy":
        subsets["all"] = everything
        overall, averaging = everything["accuracy"], f"sWUGGY all: {voices} (the official sLM21 rule)"
        if any("in_vocab" in p.meta for p in pairs):
            subsets["in-vocab"] = subset(lambda p: p.meta.get("in_vocab", False))
        if any("frequency" in p.meta for p in pairs):
            for p in pairs:
                p.meta["band"] = frequency_band(p.meta.get("frequency"))
            breakdowns["frequency"] = {label: subset(lambda p, b=label: p.meta["band"] == b)
                                       for label, _, _ in FREQUENCY_BANDS}
        if any(p.meta.get("length") is not None for p in pairs):
            breakdowns["length"] = by("length", sorted({p.meta["length"] for p in pairs if p.meta.get("length") is not None}))
    elif task == "sblimp":
        overall, averaging = everything["accuracy"], f"sBLIMP overall: {voices} (the official sLM21 rule)"
        if any("type" in p.meta for p in pairs):
            subsets = by("type")
        if any("subtype" in p.meta for p in pairs):
            breakdowns["subtype"] = by("subtype")
    elif task == "salmon":
        subsets = by("part", [*SALMON_PARTS, *sorted({p.meta["part"] for p in pairs} - set(SALMON_PARTS))])
        overall = sum(s["accuracy"] for s in subsets.values()) / len(subsets)
        averaging = (f"mean over the {len(subsets)} SALMon parts found (papers report each part; this mean is "
                     "wavslm's summary, not a SALMon figure)")
        missing = [part for part in SALMON_PARTS if part not in subsets]
        if missing:
            warnings.append(f"{len(subsets)} of SALMon's 8 parts found; missing: {', '.join(missing)}, so the mean "
                            "over parts cannot be set beside published averages")
    elif task in ("ssc", "tsc") and len({p.meta.get("subset") for p in pairs}) == 1:
        name = {"ssc": "sSC", "tsc": "tSC"}[task]
        overall, averaging = everything["accuracy"], f"{name}: mean over stories"
    else:
        subsets = by("subset")
        if len(subsets) == 1:
            overall, averaging = everything["accuracy"], "StoryCloze: mean over stories"
        else:
            overall, averaging = None, "StoryCloze: each subset alone (sSC and tSC are never pooled)"
            warnings.append(f"{len(subsets)} StoryCloze subsets found ({', '.join(subsets)}): each is reported "
                            "alone; for a headline give one of them as --data with --task ssc or --task tsc")
    ci95 = None if overall is None else interval(overall, len({p.item for p in pairs}))
    return {"accuracy": overall, "ci95": ci95, "averaging": averaging, "num_items": everything["num_items"],
            "subsets": subsets, "breakdowns": breakdowns, "warnings": warnings}


# ---- the whole evaluation -----------------------------------------------------------------------


def score_clips(
    lm: WavSLM, clips: Sequence[Clip], reduction: str = "mean", batch_size: int = 16, context: int = 0
) -> dict[Clip, float]:
    """Next-chunk NLL of each clip; `context` chunks of silence before each make its first chunk scored."""
    clips = list(dict.fromkeys(clips))
    # Identical token rows are scored once, so identical audio is an exact tie whatever its batch.
    rows = encode_clips(lm, clips, context)
    keys = [row.cpu().numpy().tobytes() for row in rows]
    unique = dict(zip(keys, rows, strict=True))
    start = lm.toks_per_step * max(1, context)
    scores = score_rows(lm, list(unique.values()), reduction, batch_size, start).tolist()
    by_key = dict(zip(unique, scores, strict=True))
    return {clip: by_key[key] for clip, key in zip(clips, keys, strict=True)}


def scored_span(lm: WavSLM, context: int) -> str:
    """How results describe which tokens of a clip were scored."""
    if context:
        ms = 1000 * context * lm.toks_per_step / lm.require_codec().frame_rate
        return f"every token, the first chunk predicted from {ms:.0f} ms of silence before the clip"
    return f"every token after the first chunk ({lm.toks_per_step} tokens), which has no context to be predicted from"


def tally(pairs: Sequence[Pair], nll: dict[Clip, float], task: str) -> dict[str, Any]:
    """The summary of `pairs` given every clip's NLL, plus per-pair NLLs and outcomes (`pairs`)."""
    pos = torch.tensor([nll[p.positive] for p in pairs], dtype=torch.float64)
    neg = torch.tensor([nll[p.negative] for p in pairs], dtype=torch.float64)
    outcomes = pair_outcomes(pos, neg).tolist()
    per_pair = [
        {"positive": p.positive.name, "negative": p.negative.name, "item": p.item,
         "positive_nll": a, "negative_nll": b, "outcome": o, **p.meta}
        for p, a, b, o in zip(pairs, pos.tolist(), neg.tolist(), outcomes, strict=True)
    ]
    return {"num_pairs": len(pairs), **summarize(task, pairs, outcomes), "pairs": per_pair}


def evaluate(
    lm: WavSLM, pairs: Sequence[Pair], task: str, reduction: str = "mean", batch_size: int = 16, context: int = 0
) -> dict[str, Any]:
    """Score every clip of `pairs` once; return the summary plus per-pair NLLs and outcomes (`pairs`).

    `context`: chunks of silence encoded before each clip, so that its first chunk is scored too.
    """
    if not pairs:
        raise InputError("the dataset has no pairs to score")
    nll = score_clips(lm, [c for p in pairs for c in (p.positive, p.negative)], reduction, batch_size, context)
    return tally(pairs, nll, task)


# ---- ZeroSpeech 2021 submissions ----------------------------------------------------------------

# What `zerospeech2021-validate` requires of meta.yaml: every key, of these types; phonetic and semantic
# parameters although only lexical and syntactic scores are written.
META_YAML = """\
author: {author}
affiliation: {affiliation}
description: {description}
open_source: false
train_set: {train_set}
visually_grounded: false
gpu_budget: 0
parameters:
  phonetic:
    metric: cosine
    frame_shift: 0.02
  semantic:
    metric: cosine
    pooling: mean
"""


def submission_description(model: str, reduction: str, span: str) -> str:
    """What meta.yaml's `description` says of the scores: the model and how it scored."""
    return f"wavslm {model}: score = minus the next-chunk NLL ({reduction} over {span})"


def check_submission(folder: Path, description: str) -> None:
    """Refuse to add scores made another way (another model, reduction or scored span) to a submission
    folder: its meta.yaml describes how the scores already there were made."""
    import yaml

    meta = Path(folder) / "meta.yaml"
    if meta.is_file():
        try:
            before = (yaml.safe_load(meta.read_text()) or {}).get("description")
        except (yaml.YAMLError, AttributeError) as error:
            raise InputError(f"'{meta}' is not a valid meta.yaml ({error})") from error
        if before != description:
            raise InputError(f"submission folder '{folder}' holds scores made another way: its meta.yaml says "
                             f"{before!r}, this run would make {description!r}; one submission is scored one way, "
                             "so choose another folder")


def write_submission(folder: Path, kind: str, split: str, scores: dict[str, float], description: str) -> Path:
    """Write `<folder>/<kind>/<split>.txt` (`<wav stem> <score>` per line, higher = more probable) in the
    official ZeroSpeech 2021 layout, with `meta.yaml` (its `description` saying how the scores were made)
    and the empty phonetic/semantic folders the validator expects when they are missing; other tasks'
    files already there are kept."""
    import yaml

    folder = Path(folder)
    check_submission(folder, description)
    out = folder / kind / f"{split}.txt"
    write_atomic(out, "".join(f"{stem} {score!r}\n" for stem, score in sorted(scores.items())))
    for sub in ("phonetic", "semantic", "lexical", "syntactic"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    meta = folder / "meta.yaml"
    if not meta.exists():
        quote = lambda text: yaml.safe_dump(text, default_style='"', width=1_000).strip()  # noqa: E731
        write_atomic(meta, META_YAML.format(
            author=quote("(your name)"), affiliation=quote("(your affiliation)"),
            description=quote(description),
            train_set=quote("(the training data)")))
    return out


# ---- CLI glue -----------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `eval zeroshot` arguments to `parser` (which already has `--device`)."""
    parser.add_argument("--task", required=True, choices=TASKS,
                        help="benchmark: swuggy, sblimp, salmon, ssc / tsc (spoken StoryCloze), or storycloze "
                             "(every subset found, each reported alone)")
    parser.add_argument("--data", required=True,
                        help="dataset folder or .parquet file, or a Hugging Face Hub dataset id (speed/sWUGGY, "
                             "slprl/SALMon), taken from the local cache when offline")
    parser.add_argument("--model", help="WavSLM folder, .json or Hub id (default: the bundled model)")
    parser.add_argument("--split", choices=("dev", "test"), default="dev", help="sLM21 split (default: dev)")
    parser.add_argument("--reduction", choices=("mean", "sum"), default="mean", help="NLL per token or per clip (default: mean)")
    parser.add_argument("--score-first-chunk", action="store_true",
                        help="encode --silence seconds of silence before each clip so that its first chunk (80 ms) "
                             "is scored too; by default it is context only, as in the original scorer")
    parser.add_argument("--silence", type=float, default=0.16, metavar="SECONDS",
                        help="silence before each clip with --score-first-chunk, in whole chunks (default: 0.16)")
    parser.add_argument("--submission", type=Path, metavar="DIR",
                        help="sWUGGY/sBLIMP: score every wav of the split, gold or not, and write DIR/lexical/<split>.txt "
                             "(or syntactic/) in the official ZeroSpeech 2021 layout, with meta.yaml")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default: 16)")
    parser.add_argument("-o", "--output", type=Path, help="results file (.json)")
    parser.add_argument("--per-pair", action="store_true", help="include every pair's NLLs in the results file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the pairs and the model, score, print a summary and write the JSON results when asked."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    submission = getattr(args, "submission", None)
    if submission is not None and args.task not in ("swuggy", "sblimp"):
        raise InputError("--submission writes the ZeroSpeech 2021 layout, which has files for swuggy and sblimp only")
    kind = {"swuggy": "lexical", "sblimp": "syntactic"}.get(args.task)
    # Before the model: a bad dataset fails fast. Without gold (the test split), a submission needs only the wavs.
    if submission is not None:
        folder = local_folder(args.data)
        wavs = split_wavs(folder, kind, args.split)
        dataset = load_dataset(args.task, folder, args.split) if has_gold(args.task, folder, args.split) else None
    else:
        dataset, wavs = load_dataset(args.task, args.data, args.split), []
    lm = load_lm(args.model, args.device)
    context = context_chunks(lm, args.silence) if getattr(args, "score_first_chunk", False) else 0
    if getattr(args, "score_first_chunk", False) and context == 0:
        raise InputError("--score-first-chunk needs --silence of more than 0 seconds")
    span = scored_span(lm, context)
    description = submission_description(args.model or "bundled", args.reduction, span)
    if submission is not None:
        check_submission(submission, description)  # before the scoring, not after
    pairs = dataset.pairs if dataset is not None else []
    clips = [c for p in pairs for c in (p.positive, p.negative)] + wavs
    if not clips:
        raise InputError("the dataset has no pairs to score")
    nll = score_clips(lm, clips, args.reduction, args.batch_size, context)
    results: dict[str, Any] = {
        "task": args.task,
        "model": args.model or "bundled",
        "data": {"source": str(args.data), "folder": str(dataset.folder if dataset else folder),
                 "layout": dataset.layout if dataset else "ZeroSpeech 2021 wavs (no gold)"},
        "split": args.split if dataset is None or dataset.layout == "ZeroSpeech 2021 gold.csv" else None,
        "reduction": args.reduction,
        "ties": TIES,
        "scored_span": span,
    }
    if pairs:
        results.update(tally(pairs, nll, args.task))
    if submission is not None:
        scores = {clip.path.stem: -nll[clip] for clip in wavs}
        written = write_submission(submission, kind, args.split, scores, description)
        results["submission"] = {"file": str(written), "num_scores": len(scores),
                                 "score": "minus the NLL: higher = more probable"}
    if not args.per_pair:
        results.pop("pairs", None)
    print(format_summary(results))
    if args.output is not None:
        write_json(args.output, results)
    return results


def format_summary(results: dict[str, Any]) -> str:
    split = f" {results['split']}" if results.get("split") else ""
    lines = []
    if "accuracy" in results:
        lines.append(f"{results['task']}{split}: {results['num_pairs']} pairs, accuracy {_percent(results['accuracy'])}"
                     f"{_range(results.get('ci95'))}  [{results['averaging']}]")
        lines += [f"  {name}: {_stats(s)}" for name, s in results["subsets"].items()]
        for title, groups in results.get("breakdowns", {}).items():
            lines.append(f"  by {title}:")
            lines += [f"    {name}: {_stats(s)}" for name, s in groups.items()]
        lines += [f"warning: {w}" for w in results.get("warnings", [])]
    if "submission" in results:
        s = results["submission"]
        lines.append(f"wrote {s['num_scores']} scores ({s['score']}) to {s['file']}")
    lines.append(f"scored: {results['scored_span']}; {results['reduction']} NLL; {results['ties']}")
    return "\n".join(lines)


def _stats(s: dict[str, Any]) -> str:
    return f"{_percent(s['accuracy'])}{_range(s.get('ci95'))} ({s['num_pairs']} pairs)"


def _range(ci95: list[float] | None) -> str:
    return "" if ci95 is None else f" (95% CI {100 * ci95[0]:.1f}-{100 * ci95[1]:.1f}%)"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
