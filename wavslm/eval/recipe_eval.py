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
            suite[name] = {"accuracy": scored["accuracy"], "num_pairs": scored["num_pairs"],
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
