"""The official ZeroSpeech 2021 scorer's rules for sWUGGY and sBLIMP, reimplemented for the tests.

The official package (github.com/zerospeech/zerospeech2021, version 0.5) is not on PyPI and its scorers
crash under pandas 3, so the tests cannot run it; these functions follow its code
(`zerospeech2021/{meta,lexical,syntactic,leaderboard}.py` and `cli/validate.py`) step by step in plain
Python, including its quirks:

- validation: the submission folder holds exactly meta.yaml and the four task folders; `lexical/` and
  `syntactic/` exactly `dev.txt` (with `--only-dev`) or `dev.txt` and `test.txt`; each line is
  `line.strip().split(' ')` into exactly a file stem and a float; the stems are exactly those of the
  dataset's `*.wav`, without duplicates; meta.yaml has exactly its keys, with their types and choices;
- lexical: gold read indexed by `filename`, `frequency` cast to a nullable integer (a non-integral
  value or "oov" raises); words and non-words joined on (voice, id); a pair scores 1 when the word's
  score is higher, 0.5 on a tie; the mean per id; "all" is the mean of that per-id column as written
  with 4 decimals; bands from pandas.cut over [0, 1, 5, 20, 100, inf) with right-open bins; in-vocab
  the n-weighted mean of the non-"oov" bands; length groups without binning;
- syntactic: the k-th correct row paired with the k-th incorrect row (positional, gold order); the
  mean per (type, subtype, id); the overall mean of that column; by type.
"""

import csv
import math
import numbers
from collections import Counter, defaultdict
from pathlib import Path

import yaml

BANDS = [("oov", 0, 1), ("1-5", 1, 5), ("6-20", 5, 20), ("21-100", 20, 100), (">100", 100, math.inf)]


class Invalid(Exception):
    """What the official validator reports as a ValidationError, ValueError or FileNotFoundError."""


def _mean(values):
    return sum(values) / len(values)


def _frequency(value):
    """pandas' astype(Int64) of a CSV cell: integral numbers pass, empty is NA, anything else raises."""
    if value == "":
        return None
    number = float(value)  # 'oov' raises ValueError, as int('oov') does in pandas
    if number != int(number):
        raise TypeError(f"cannot safely cast non-equivalent float64 to int64: {value}")
    return int(number)


def _read_scores(path):
    with open(path) as f:
        rows = [line.strip().split(" ") for line in f]
    return {name: float(score) for name, score in rows}


def _read_gold(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def score_lexical(gold_csv, submission_txt):
    """`{'all', 'invocab', 'by_frequency': {band: (n, score)}, 'by_length': {length: (n, score)}}`."""
    gold, scores = _read_gold(gold_csv), _read_scores(submission_txt)
    if {r["filename"] for r in gold} != set(scores):
        raise Invalid("MismatchError: the submission's files differ from the gold's")
    for row in gold:
        row["frequency"] = _frequency(row["frequency"])
        row["score"] = scores[row["filename"]]
    words = [r for r in gold if r["correct"] == "1"]
    non_words = [r for r in gold if r["correct"] == "0"]
    per_id = defaultdict(list)
    first = {}
    for w in words:  # inner join on (voice, id): several matching rows give every combination
        for nw in non_words:
            if (nw["voice"], nw["id"]) == (w["voice"], w["id"]):
                per_id[w["id"]].append(0.5 * (w["score"] == nw["score"]) + (w["score"] > nw["score"]))
                first.setdefault(w["id"], w)
    by_pair = [(first[i]["frequency"], first[i]["length"], _mean(v)) for i, v in sorted(per_id.items())]
    if any(f is None for f, _, _ in by_pair):
        raise Invalid("boolean value of NA is ambiguous (a word row without a frequency)")
    by_frequency = {}
    for label, low, high in BANDS:
        chosen = [s for f, _, s in by_pair if low <= f < high]
        by_frequency[label] = (len(chosen), _mean(chosen) if chosen else math.nan)
    counted = [(n, s) for label, (n, s) in by_frequency.items() if label != "oov"]
    invocab = sum(n * s for n, s in counted) / sum(n for n, _ in counted)  # NaN if a band is empty
    by_length = defaultdict(list)
    for _, length, s in by_pair:
        by_length[length].append(s)
    return {"all": _mean([round(s, 4) for _, _, s in by_pair]), "invocab": invocab, "by_frequency": by_frequency,
            "by_length": {k: (len(v), _mean(v)) for k, v in by_length.items()}}


def score_syntactic(gold_csv, submission_txt):
    """`{'overall', 'by_type': {type: (n, score)}}`."""
    gold, scores = _read_gold(gold_csv), _read_scores(submission_txt)
    if {r["filename"] for r in gold} != set(scores):
        raise Invalid("MismatchError: the submission's files differ from the gold's")
    good = [r for r in gold if r["correct"] == "1"]
    bad = [r for r in gold if r["correct"] == "0"]
    groups = defaultdict(list)
    for s, ns in zip(good, bad, strict=False):  # positional, whatever their ids
        a, b = scores[s["filename"]], scores[ns["filename"]]
        groups[s["type"], s["subtype"], s["id"]].append(0.5 * (a == b) + (a > b))
    by_pair = [(key[0], _mean(v)) for key, v in sorted(groups.items())]
    by_type = defaultdict(list)
    for kind, s in by_pair:
        by_type[kind].append(s)
    return {"overall": _mean([s for _, s in by_pair]), "by_type": {k: (len(v), _mean(v)) for k, v in by_type.items()}}


_META = {"author": str, "affiliation": str, "description": str, "open_source": bool, "train_set": str,
         "visually_grounded": bool, "gpu_budget": numbers.Number, "parameters": dict}


def validate_meta(path):
    if not Path(path).is_file():
        raise Invalid("missing meta.yaml file")
    meta = yaml.safe_load(Path(path).read_text().replace("\t", " "))
    if not isinstance(meta, dict):
        raise Invalid("meta.yaml file is not valid")

    def keys(entries, expected, prefix=""):
        if set(entries) != set(expected):
            raise Invalid(f"invalid entries{prefix}: {sorted(set(entries) ^ set(expected))}")

    keys(meta, _META)
    for name, kind in _META.items():
        if not isinstance(meta[name], kind):
            raise Invalid(f"{name} must be a {kind}, it is {type(meta[name])}")
        if kind is str and not meta[name]:
            raise Invalid(f"{name} must not be an empty string")
    params = meta["parameters"]
    keys(params, ("phonetic", "semantic"), " in parameters")
    keys(params["phonetic"], ("metric", "frame_shift"), " in parameters/phonetic")
    keys(params["semantic"], ("metric", "pooling"), " in parameters/semantic")
    if params["phonetic"]["metric"] not in ("cosine", "euclidean", "kl", "kl_symmetric"):
        raise Invalid("invalid phonetic metric")
    if not isinstance(params["phonetic"]["frame_shift"], numbers.Number):
        raise Invalid("frame_shift must be a number")
    if not isinstance(params["semantic"]["metric"], str) or params["semantic"]["pooling"] not in (
            "min", "max", "mean", "sum", "last", "lastlast", "off"):
        raise Invalid("invalid semantic parameters")
    return meta


def validate_scores(submission_txt, wav_folder):
    names = []
    with open(submission_txt) as f:
        for index, line in enumerate(f, start=1):
            fields = line.strip().split(" ")
            if len(fields) != 2:
                raise Invalid(f'bad format (line {index}): must be "<filename> <score>" but is "{line.strip()}"')
            try:
                float(fields[1])
            except ValueError as error:
                raise Invalid(f'<score> must be a float but is "{fields[1]}"') from error
            names.append(fields[0])
    duplicates = [n for n, c in Counter(names).items() if c > 1]
    if duplicates:
        raise Invalid(f"duplicates found: {duplicates}")
    required = {w.stem for w in Path(wav_folder).glob("*.wav")}
    if required != set(names):
        raise Invalid(f"mismatch in filenames: missing {sorted(required - set(names))[:3]}, "
                      f"extra {sorted(set(names) - required)[:3]}")


def validate(dataset, submission, only_dev=True, tasks=("lexical", "syntactic")):
    """`zerospeech2021-validate DATASET SUBMISSION --only-dev --no-phonetic --no-semantic` (and without
    the tasks not in `tasks`)."""
    dataset, submission = Path(dataset), Path(submission)
    meta = validate_meta(submission / "meta.yaml")
    expected = {"meta.yaml", "phonetic", "lexical", "syntactic", "semantic"} | ({"code"} if meta["open_source"] else set())
    found = {p.name for p in submission.glob("*")}
    if found != expected:
        raise Invalid(f"mismatch in directory {submission}: missing {sorted(expected - found)}, extra {sorted(found - expected)}")
    for task in tasks:
        kinds = ("dev",) if only_dev else ("dev", "test")
        found = {p.name for p in (submission / task).glob("*")}
        if found != {f"{k}.txt" for k in kinds}:
            raise Invalid(f"mismatch in directory {submission / task}: {sorted(found)}")
        for kind in kinds:
            if not (dataset / task / kind).is_dir():
                raise Invalid(f"dataset not found: {dataset / task / kind}")
            validate_scores(submission / task / f"{kind}.txt", dataset / task / kind)


def check_gold(gold_csv, kind):
    """What the official `load_data` needs of a gold.csv, beyond the filenames: the columns it reads by
    position (`x.iat[0, k]` once `filename`, `phones` and `correct` are dropped) in this order, and
    integral frequencies on the word rows."""
    with open(gold_csv, newline="") as f:
        header = next(csv.reader(f))
    order = [c for c in header if c not in ("filename", "phones", "correct")]
    wanted = ["id", "voice", "frequency", "word", "length"] if kind == "lexical" else \
        ["id", "voice", "type", "subtype", "transcription"]
    missing = {"filename", "correct"} - set(header) | ({"phones"} - set(header) if kind == "lexical" else set())
    if missing:
        raise Invalid(f"{gold_csv}: no {sorted(missing)} column")
    if order[: len(wanted)] != wanted:
        raise Invalid(f"{gold_csv}: columns {order}, the official scorer reads {wanted} by position")
    rows = _read_gold(gold_csv)
    if kind == "lexical":
        for row in rows:
            frequency = _frequency(row["frequency"])
            if row["correct"] == "1" and frequency is None:
                raise Invalid(f"{gold_csv}: word {row['word']} has no frequency")
            if not row["length"].isdigit() or int(row["length"]) != len(row["phones"].split()):
                raise Invalid(f"{gold_csv}: length {row['length']} is not the number of phones {row['phones']!r}")
    return rows
