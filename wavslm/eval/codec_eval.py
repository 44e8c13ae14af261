"""`wavslm eval codec`: how much of speech a codec keeps, measured on a folder of recordings.

Every file is encoded and decoded; the resynthesis (at the codec's output rate, 24 kHz for the released
codecs) is resampled to 16 kHz and both signals are trimmed to the shorter before scoring:

    PESQ (wb), STOI, log-mel distance      resynthesis against the original
    pitch and voicing                      pYIN tracks of both (`pyin_settings` in the JSON): voicing decision
                                           error, gross pitch error (F0 off by > 20% where both are voiced),
                                           F0 RMSE in cents, voiced share of each
    DNSMOS (ovrl, sig, bak, p808)          of the resynthesis, and of the original for reference
    speaker similarity                     original vs resynthesis (resemblyzer cosine)
    WER                                    pocketsphinx transcript of the resynthesis against the reference
                                           text (`--transcripts`), else against pocketsphinx's transcript
                                           of the original (then it measures what the codec loses, not ASR
                                           accuracy); `wer_reference` in the JSON says which
    bitrate, codebook usage                over all tokens of all files

`evaluate_codec` is the library function; `configure` adds the verb's arguments to a parser.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..audio import load_audio, resample
from ..errors import InputError
from ..io import find_audio, write_json
from ..pitch import GROSS_ERROR, PYIN_SETTINGS
from ..pretrained import BUNDLED_CODEC, load_codec
from . import metrics

# ---- shared helpers (also used by generation_eval) ----------------------------------------------------

def jsonable(value):
    """Numbers as plain floats, NaN/Inf as None (JSON has neither), recursively."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def means(records: list[dict], skip: Sequence[str] = ()) -> dict[str, float | None]:
    """Per-key mean over `records` of every numeric field (None where no record has a value), skipping `skip`."""

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    keys = [k for k in records[0] if k not in skip and all(number(r.get(k)) or r.get(k) is None for r in records)]
    out = {}
    for key in keys:
        values = [r[key] for r in records if number(r.get(key)) and math.isfinite(r[key])]
        out[key] = float(np.mean(values)) if values else None
    return out


def _mono(sig: torch.Tensor) -> torch.Tensor:
    return sig.reshape(-1).float().cpu()


# ---- the evaluation ----------------------------------------------------------------------------------

def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """Read `path -> text` from a JSONL file (`{"path": ..., "text": ...}` per line) or a TSV (`path<TAB>text`)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"transcripts file '{path}' does not exist")
    table: dict[str, str] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            if line.lstrip().startswith("{"):
                entry = json.loads(line)
                key, text = entry["path"], entry["text"]
            else:
                key, text = line.split("\t", 1)
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"transcripts file '{path}', line {number}: expected JSON with \"path\" and \"text\", or path<TAB>text"
            ) from err
        table[str(key).strip()] = str(text).strip()
    if not table:
        raise InputError(f"transcripts file '{path}' holds no transcripts")
    return table


def match_transcripts(files: Sequence[Path], table: dict[str, str], root: Path, source: str) -> list[str]:
    """The text of each file, looked up by its path relative to `root`, as found, absolute, name, then stem."""
    texts = []
    for file in files:
        keys = [file.relative_to(root).as_posix(), str(file), str(file.resolve()), file.name, file.stem]
        text = next((table[k] for k in keys if k in table), None)
        if text is None:
            raise InputError(f"no transcript for '{file}' in '{source}' (keys tried: {', '.join(keys)})")
        texts.append(text)
    return texts


def _score_file(codec, path: Path, text: str | None) -> tuple[dict, torch.Tensor]:
    """Resynthesise one file and score it; returns its record and its tokens `(T,)`."""
    device = next(codec.parameters()).device
    sig, _ = load_audio(path, sample_rate=codec.sample_rate_input, mono=True)
    toks = codec.encode(sig.to(device))
    rec = resample(_mono(codec.decode(toks)), codec.sample_rate_output, metrics.RATE)
    ref = resample(_mono(sig), codec.sample_rate_input, metrics.RATE)
    n = min(len(ref), len(rec))  # the decoder may emit a few samples more or less than the input
    ref, rec = ref[:n].numpy(), rec[:n].numpy()
    sr = metrics.RATE

    reference_text = text if text is not None else metrics.transcribe(ref, sr)
    transcript = metrics.transcribe(rec, sr)
    words = len(metrics.normalise_text(reference_text).split())
    record = {
        "path": str(path),
        "seconds": n / sr,
        "tokens": int(toks.shape[1]),
        "pesq": metrics.pesq_wb(ref, rec, sr),
        "stoi": metrics.stoi(ref, rec, sr),
        "mel_distance": metrics.mel_distance(ref, rec, sr),
        **_pitch_fields(metrics.pitch(ref, rec, sr)),
        **{f"dnsmos_{k}": v for k, v in metrics.dnsmos(rec, sr).items()},
        **{f"original_dnsmos_{k}": v for k, v in metrics.dnsmos(ref, sr).items()},
        "speaker_similarity": metrics.speaker_similarity(ref, rec, sr),
        # An empty reference (pocketsphinx heard nothing in the original) leaves WER undefined.
        "wer": metrics.wer(reference_text, transcript) if words else None,
        "reference_words": words,
        "reference_text": reference_text,
        "transcript": transcript,
    }
    return record, toks[0].cpu()


def _pitch_fields(errors: dict) -> dict:
    """`metrics.pitch` under the result file's names: the original's voiced share beside the others."""
    return {"vde": errors["vde"], "gpe": errors["gpe"], "f0_rmse_cents": errors["f0_rmse_cents"],
            "voiced_share": errors["voiced_deg"], "original_voiced_share": errors["voiced_ref"]}


def evaluate_codec(codec, files: Sequence[str | os.PathLike], texts: Sequence[str] | None = None,
                   progress: bool | None = None) -> dict:
    """Resynthesise and score each of `files` with `codec`; `texts` are their reference transcripts, if known.

    Returns `{"files": [per-file records], "mean": {...}, "corpus_wer", "wer_reference", "bitrate_bps",
    "codebook_usage", ...}`. `progress=None` shows a bar only on a terminal.
    """
    files = [Path(f) for f in files]
    if not files:
        raise InputError("no audio files to evaluate")
    if texts is not None and len(texts) != len(files):
        raise InputError(f"got {len(texts)} transcripts for {len(files)} files")
    records, all_toks = [], []
    for i, path in enumerate(tqdm(files, desc="eval codec", unit="file", leave=False,
                                  disable=None if progress is None else not progress)):
        try:
            record, toks = _score_file(codec, path, None if texts is None else texts[i])
        except InputError as err:
            raise InputError(f"'{path}': {err}") from err
        records.append(record)
        all_toks.append(toks)

    scored = [r for r in records if r["wer"] is not None]
    words = sum(r["reference_words"] for r in scored)
    mean = means(records, skip=("reference_words",))
    return {
        "num_files": len(records),
        "wer_reference": "reference transcripts" if texts is not None else "pocketsphinx transcript of the original audio",
        "sample_rate_input": codec.sample_rate_input,
        "sample_rate_output": codec.sample_rate_output,
        "metric_sample_rate": metrics.RATE,
        "frame_rate": codec.frame_rate,
        "vocab_size": codec.vocab_size,
        "bitrate_bps": metrics.bitrate(codec.frame_rate, codec.vocab_size),
        "codebook_usage": metrics.codebook_usage(torch.cat(all_toks), codec.vocab_size),
        "mel_settings": metrics.MEL_SETTINGS,
        "pyin_settings": {**PYIN_SETTINGS, "gross_error": GROSS_ERROR},
        "mean": mean,
        # Errors over all reference words (files weighted by length), the usual corpus-level WER.
        "corpus_wer": sum(r["wer"] * r["reference_words"] for r in scored) / words if words else None,
        "files": records,
    }


# ---- the command ---------------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of `wavslm eval codec` (the caller adds --device)."""
    parser.add_argument("--codec", help="codec folder, .json or Hub id (default: the bundled model)")
    parser.add_argument("--data", type=Path, required=True, help="folder of audio files (.wav/.flac/.ogg, recursive)")
    parser.add_argument("--transcripts", type=Path,
                        help="reference texts: JSONL {\"path\", \"text\"} or TSV path<TAB>text (default: "
                             "WER against pocketsphinx's transcript of the original audio)")
    parser.add_argument("-o", "--output", type=Path, help="results file (.json; default: print to stdout)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N files (sorted by path)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> dict:

    files = find_audio(args.data, args.limit)
    texts = None
    if args.transcripts is not None:
        table = read_transcripts(args.transcripts)
        texts = match_transcripts(files, table, Path(args.data), str(args.transcripts))
    codec = load_codec(args.codec, args.device)
    results = {"codec": args.codec or str(BUNDLED_CODEC), "data": str(args.data), **evaluate_codec(codec, files, texts)}
    if args.output is None:
        print(json.dumps(jsonable(results), indent=2))
    else:
        write_json(args.output, jsonable(results))
        m = results["mean"]
        print(f"{args.output}: {results['num_files']} files; PESQ {m['pesq']:.2f}, STOI {m['stoi']:.3f}, "
              f"mel {m['mel_distance']:.3f}, VDE {_fmt(m['vde'])}, GPE {_fmt(m['gpe'])}, DNSMOS {m['dnsmos_ovrl']:.2f}, speaker sim {m['speaker_similarity']:.3f}, "
              f"WER {_fmt(results['corpus_wer'])}, {results['bitrate_bps']:g} b/s")
    return results


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
