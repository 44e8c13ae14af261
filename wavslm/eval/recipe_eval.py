"""The recipe's evaluation: the synthetic benchmark suite, codec metrics and generation metrics on held-out
voices, for one trained model. Every number comes from the same functions as `wavslm eval ...`."""

import json
import logging
from collections import defaultdict
from pathlib import Path

from ..errors import InputError

log = logging.getLogger("wavslm.eval")

# The synthetic suite's folders and the loader (task) that reads each (`wavslm synth bench` writes them).
SUITE = {"lexical": ("swuggy", "lexical"), "syntactic": ("sblimp", "syntactic"),
         "topic_story": ("storycloze", "storycloze"), "speaker_consistency": ("salmon", "salmon")}


def held_out_files(manifest: str | Path, count: int) -> list[Path]:
    """`count` utterances of a manifest, taken round-robin over its voices (so every voice is heard)."""
    path = Path(manifest)
    if not path.is_file():
        raise InputError(f"manifest '{path}' does not exist")
    by_voice: dict[str, list[Path]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_voice[str(row.get("voice", ""))].append(Path(row["path"]) if Path(row["path"]).is_absolute()
                                                         else path.parent / row["path"])
    files, voices = [], sorted(by_voice)
    while len(files) < count and any(by_voice.values()):
        for voice in voices:
            if by_voice[voice] and len(files) < count:
                files.append(by_voice[voice].pop(0))
    return files


STAGE_METRICS = ("stoi", "vde", "gpe", "f0_rmse_cents")


def stage_scores(substage: str, codec_ref: str | Path, teacher_ref: str | Path, teacher_layers: int,
                 files: list[Path]) -> dict[str, float | None]:
    """Mean STOI, voicing decision error, gross pitch error and F0 RMSE (cents) of `files` resynthesised along
    the path codec sub-stage `substage` trained, so a run shows where intelligibility and pitch are lost:
    decoder: the teacher's features -> decoder (the codec's ceiling); posemb/encoder: the causal encoder's
    features -> decoder; quantizer: tokens -> decompressor without its refiner -> decoder; joint (and the
    decoder's fine-tune after it): the whole codec. A pitch error is averaged over the files where it is
    defined."""
    import torch

    from ..audio import load_audio
    from ..codec import Codec
    from ..train.codec.quantized import without_refiner
    from ..train.codec.teacher import load_teacher

    codec = Codec.from_pretrained(codec_ref).eval()
    teacher = load_teacher(str(teacher_ref), teacher_layers) if substage == "decoder" else None
    scores: dict[str, list[float]] = {k: [] for k in STAGE_METRICS}
    for path in files:
        sig, _ = load_audio(path, sample_rate=codec.sample_rate_input, mono=True)
        with torch.inference_mode():
            if substage == "decoder":
                out = codec.decoder(teacher(sig)[0])[0]
            elif substage in ("posemb", "encoder"):
                out = codec.decoder(codec.encoder(sig)[0])[0]
            elif substage == "quantizer":
                qfeats = without_refiner(codec.decompressor)(codec.quantizer.toks_to_codes(codec.encode(sig)))[0]
                out = codec.decoder(qfeats)[0]
            else:
                out = codec.decode(codec.encode(sig))
        measured = resynthesis_scores(codec, sig, out)
        for key in STAGE_METRICS:
            if measured[key] is not None:
                scores[key].append(measured[key])
    return {k: sum(v) / len(v) if v else None for k, v in scores.items()}


def resynthesis_scores(codec, sig, out) -> dict[str, float | None]:
    """STOI and the pitch errors (`metrics.pitch`) of `out` (at the codec's output rate) against `sig` (at its
    input rate), both at the metrics' rate and trimmed to the shorter."""
    from ..audio import resample
    from . import metrics

    ref = resample(sig.reshape(-1), codec.sample_rate_input, metrics.RATE)
    rec = resample(out.reshape(-1), codec.sample_rate_output, metrics.RATE)
    n = min(len(ref), len(rec))
    ref, rec = ref[:n].numpy(), rec[:n].numpy()
    return {"stoi": metrics.stoi(ref, rec, metrics.RATE), **metrics.pitch(ref, rec, metrics.RATE)}


def evaluate_run(lm_dir: str | Path, test_manifest: str | Path, bench_dir: str | Path | None, cfg) -> dict:
    """All the recipe's metrics for the model in `lm_dir` (its codec is found beside it)."""
    from ..lm import WavSLM
    from .codec_eval import evaluate_codec
    from .generation_eval import evaluate_generation
    from .loaders import load_pairs
    from .zeroshot import evaluate

    lm = WavSLM.from_pretrained(lm_dir)
    results: dict = {"model": str(lm_dir)}
    if bench_dir is not None:
        suite = {}
        for name, (task, folder) in SUITE.items():
            pairs = load_pairs(task, Path(bench_dir) / folder, "dev")
            scored = evaluate(lm, pairs, task, "mean", cfg.batch_size)
            suite[name] = {"accuracy": scored["accuracy"], "ci95": scored["ci95"], "num_pairs": scored["num_pairs"],
                           "subsets": scored.get("subsets", {})}
            log.info("%s: accuracy %.3f over %d pairs", name, scored["accuracy"], scored["num_pairs"])
        results["synthetic_suite"] = suite
    codec_files = held_out_files(test_manifest, cfg.codec_files)
    codec = evaluate_codec(lm.codec, codec_files, progress=False)
    results["codec"] = {k: v for k, v in codec.items() if k != "files"}
    prompts = held_out_files(test_manifest, cfg.prompts)
    generation = evaluate_generation(lm, prompts, prompt_seconds=cfg.prompt_seconds, seconds=cfg.seconds,
                                     seed=0, progress=False)
    results["generation"] = {k: v for k, v in generation.items() if k not in ("files", "continuations")}
    return results
