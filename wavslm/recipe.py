"""`wavslm recipe`: the whole stack from nothing, stage by stage, in one run folder.

    corpus -> ssl -> codec (decoder, posemb, encoder, quantizer, joint, finetune) -> calibrate -> tokenize -> lm
    -> bench -> eval -> report

Every stage writes into its own sub-folder of RUN and is skipped once done, so running the same command
again after a kill continues where it stopped (a stage cut mid-training resumes from its last checkpoint).
The preset's `recipe:` section says how much corpus to make and how each codec sub-stage differs from
the `codec:` section; `--set` overrides any key, with the section first (`lm.train.steps=100`,
`recipe.corpus.hours=0.2`).
"""

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from .config import from_dict, renamed, to_dict
from .errors import InputError
from .io import output_lock, write_atomic, write_folder, write_json
from .pretrained import preset_path
from .train.run import apply_overrides, read_yaml, train

log = logging.getLogger("wavslm.recipe")

# The codec's sub-stages in order, each run in RUN/codec_<sub-stage>; `finetune` is the decoder sub-stage
# again, on the trained codec's own tokens.
CODEC_SUBSTAGES = ("decoder", "posemb", "encoder", "quantizer", "joint", "finetune")


@dataclass
class CorpusConfig:
    hours: float = 1.0
    seed: int = 0
    workers: int = 0  # 0: one per CPU core, at most 2


@dataclass
class BenchConfig:
    pairs: int = 100
    seed: int = 0


@dataclass
class EvalConfig:
    codec_files: int = 20  # held-out utterances resynthesised for the codec metrics
    prompts: int = 8  # held-out utterances whose first `prompt_seconds` are continued
    prompt_seconds: float = 3.0
    seconds: float = 3.0
    batch_size: int = 16
    stage_files: int = 8  # held-out utterances whose STOI and pitch are measured after each codec sub-stage (0: none)


@dataclass
class CalibrateConfig:
    files: int = 8  # validation utterances on which the decoder's voiced noise gain is chosen (0: not calibrated)
    stoi_tolerance: float = 0.01  # the STOI a gain may lose against the trained decoder's


@dataclass
class RecipeConfig:
    LEGACY_KEYS: ClassVar[dict[str, str | None]] = {"codec_steps": "codec_substages"}

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    codec_substages: dict[str, list[str]] = field(default_factory=dict)  # name -> `--set` overrides of `codec:`
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def resolve_recipe(preset: str, overrides: list[str]) -> tuple[RecipeConfig, dict]:
    """The recipe section and the stage sections, with `section.key=value` overrides applied."""
    path = preset_path(preset)
    values = read_yaml(path)
    if isinstance(values.get("recipe"), dict):  # an older preset's keys by their current names, before overrides
        values["recipe"] = renamed(RecipeConfig, values["recipe"], f"{path} section 'recipe'")
    for item in overrides:
        section, dot, rest = item.partition(".")
        if not dot or section not in ("recipe", "ssl", "codec", "lm"):
            raise InputError(f"--set {item!r}: start the key with its section: recipe., ssl., codec. or lm.")
        apply_overrides(values.setdefault(section, {}), [rest])
    recipe = from_dict(RecipeConfig, values.pop("recipe", {}), f"{path} section 'recipe'")
    unknown = sorted(set(recipe.codec_substages) - set(CODEC_SUBSTAGES))
    if unknown:
        raise InputError(f"{path}: recipe.codec_substages has unknown sub-stages {unknown}; expected "
                         f"{list(CODEC_SUBSTAGES)}")
    return recipe, values


class Recipe:
    """One run folder; `run()` does every stage not yet done."""

    def __init__(self, preset: str, run_dir: str | os.PathLike, overrides: list[str] = (), corpus: str | None = None,
                 device: str = "auto"):
        self.run_dir = Path(run_dir)
        self.device = device
        self.recipe, self.sections = resolve_recipe(preset, list(overrides))
        self.corpus = Path(corpus) if corpus else self.run_dir / "corpus"
        self.synthetic = corpus is None
        self.config = self.run_dir / "recipe.yaml"
        self.timings: dict[str, float] = {}

    # ---- the stages -------------------------------------------------------------------------------

    def run(self) -> dict:
        with output_lock(self.run_dir):  # a second recipe into the same folder stops at once
            return self._run()

    def _run(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        stages = [("corpus", self.make_corpus), ("ssl", self.train_ssl)]
        stages += [(f"codec_{name}", lambda s=name: self.train_codec(s)) for name in CODEC_SUBSTAGES]
        stages += [("calibrate", self.calibrate), ("tokenize", self.tokenize), ("lm", self.train_lm)]
        if self.synthetic:
            stages += [("bench", self.make_bench)]
        stages += [("eval", self.evaluate)]
        for name, func in stages:
            self._stage(name, func)
        return self.report()

    def _stage(self, name: str, func) -> None:
        done = self.run_dir / "done" / name
        if done.is_file():
            log.info("recipe: %s already done", name)
            self.timings[name] = json.loads(done.read_text())["seconds"]
            return
        log.info("recipe: %s", name)
        start = time.perf_counter()
        func()
        self.timings[name] = time.perf_counter() - start
        write_json(done, {"seconds": self.timings[name]})
        print(f"recipe: {name} done in {self.timings[name]:.0f} s", flush=True)

    def _train(self, stage: str, folder: Path, overrides: list[str]) -> None:
        # A stage killed mid-training resumes from its checkpoint; the settings are re-applied as given.
        resume = (folder / "checkpoints" / "last.pt").is_file()
        config = self.run_dir / "presets" / f"{stage}.yaml"
        write_atomic(config, yaml.safe_dump({stage: self.sections.get(stage, {})}))
        train(stage, folder, None if resume else config, overrides, resume=resume, device=self.device)

    def make_corpus(self) -> None:
        if not self.synthetic:
            for split in ("train", "valid", "test"):
                if not (self.corpus / f"{split}.jsonl").is_file():
                    raise InputError(f"corpus folder '{self.corpus}' has no {split}.jsonl manifest")
            return
        from .data.synth import make_corpus

        c = self.recipe.corpus
        make_corpus(self.corpus, hours=c.hours, seed=c.seed, workers=c.workers or min(2, os.cpu_count() or 1))

    def _data(self) -> list[str]:
        return [f"data.train={self.corpus / 'train.jsonl'}", f"data.valid={self.corpus / 'valid.jsonl'}"]

    def train_ssl(self) -> None:
        self._train("ssl", self.run_dir / "ssl", self._data())

    def train_codec(self, substage: str) -> None:
        index = CODEC_SUBSTAGES.index(substage)
        folder = self.run_dir / f"codec_{substage}"
        chain = []
        if index:  # each sub-stage starts from the previous one's export
            chain = [f"init_from={self.run_dir / f'codec_{CODEC_SUBSTAGES[index - 1]}' / 'export'}"]
        kind = [f"substage={substage}"] if substage != "finetune" else ["substage=decoder", "decoder_input=codec"]
        overrides = [*kind, f"teacher={self.run_dir / 'ssl' / 'export'}", *self._data(), *chain,
                     *self.recipe.codec_substages.get(substage, [])]
        self._train("codec", folder, overrides)
        if self.recipe.eval.stage_files:
            from .eval.recipe_eval import held_out_files, stage_scores
            from .train.codec import CodecStageConfig

            layers = self.sections.get("codec", {}).get("teacher_layers", CodecStageConfig.teacher_layers)
            files = held_out_files(self.corpus / "test.jsonl", self.recipe.eval.stage_files)
            scores = stage_scores("joint" if substage == "finetune" else substage, folder / "export" / "codec",
                                  self.run_dir / "ssl" / "export", layers, files)
            write_json(folder / "scores.json", {**scores, "files": len(files)})
            print(f"recipe: codec {substage}: STOI {scores['stoi']:.3f}, VDE {_fmt(scores['vde'])}, GPE "
                  f"{_fmt(scores['gpe'])} on {len(files)} held-out utterances", flush=True)

    def calibrate(self) -> None:
        """The harmonic-plus-noise decoder's voiced noise gain, chosen on validation speech
        (`train.codec.calibrate`); another decoder, or `recipe.calibrate.files: 0`, leaves the codec as trained."""
        from .eval.recipe_eval import held_out_files
        from .train.codec.calibrate import calibrate_noise

        trained = self.run_dir / f"codec_{CODEC_SUBSTAGES[-1]}" / "export" / "codec"
        c = self.recipe.calibrate
        decoder = json.loads((trained / "config.json").read_text()).get("decoder_name")
        if not c.files or decoder != "HarmonicNoise":
            return
        files = held_out_files(self.corpus / "valid.jsonl", c.files)
        result = calibrate_noise(trained, files, self.run_dir / "calibrate", stoi_tolerance=c.stoi_tolerance)
        row = result["gains"][f"{result['chosen']:g}"]
        print(f"recipe: calibrate: voiced noise gain {result['chosen']:g} (STOI {row['stoi']:.3f}, VDE "
              f"{_fmt(row['vde'])} on {len(files)} validation utterances)", flush=True)

    @property
    def codec_dir(self) -> Path:
        """The codec the LM reads: the calibrated one when the recipe calibrated it."""
        calibrated = self.run_dir / "calibrate" / "codec"
        if (calibrated / "config.json").is_file():
            return calibrated
        return self.run_dir / f"codec_{CODEC_SUBSTAGES[-1]}" / "export" / "codec"

    def tokenize(self) -> None:
        from .codec import Codec
        from .data.tokenize import tokenize_manifest

        codec = Codec.from_pretrained(self.codec_dir)
        for split in ("train", "valid"):
            tokenize_manifest(self.corpus / f"{split}.jsonl", self.run_dir / "shards" / split, codec,
                              codec_ref=str(self.codec_dir))

    def train_lm(self) -> None:
        shards = self.run_dir / "shards"
        self._train("lm", self.run_dir / "lm", [
            f"data.train={shards / 'train'}", f"data.valid={shards / 'valid'}", f"data.codec={self.codec_dir}",
            f"model.init_from={self.run_dir / 'ssl' / 'export'}",
        ])

    def make_bench(self) -> None:
        from .eval.synth_bench import make_bench

        make_bench(self.run_dir / "bench", seed=self.recipe.bench.seed, pairs=self.recipe.bench.pairs)

    def evaluate(self) -> None:
        from .eval.recipe_eval import evaluate_run

        results = evaluate_run(self.run_dir / "lm" / "export" / "lm", self.corpus / "test.jsonl",
                               self.run_dir / "bench" if self.synthetic else None, self.recipe.eval)
        write_json(self.run_dir / "eval.json", results)

    def compare(self, lm_dir: str | os.PathLike) -> dict:
        """Evaluate another model (the one this run is to replace) on this run's held-out data and suite, the
        same way as the run's own; written to `compare.json`, which the model card sets beside the run's."""
        from .eval.recipe_eval import evaluate_run

        results = evaluate_run(Path(lm_dir), self.corpus / "test.jsonl",
                               self.run_dir / "bench" if self.synthetic else None, self.recipe.eval)
        write_json(self.run_dir / "compare.json", results)
        return results

    # ---- bookkeeping ------------------------------------------------------------------------------

    def _write_config(self) -> None:
        resolved = {"recipe": to_dict(self.recipe), **self.sections}
        if self.config.is_file() and yaml.safe_load(self.config.read_text()) != resolved:
            log.warning("recipe: the settings differ from the ones this run started with (%s); stages already "
                        "done are kept", self.config)
        write_atomic(self.config, yaml.safe_dump(resolved, sort_keys=False))

    def report(self) -> dict:
        evaluation = json.loads((self.run_dir / "eval.json").read_text())
        by_stage = {substage: {k: v for k, v in json.loads(path.read_text()).items() if k != "files"}
                    for substage in CODEC_SUBSTAGES
                    if (path := self.run_dir / f"codec_{substage}" / "scores.json").is_file()}
        calibration = self.run_dir / "calibrate" / "scores.json"
        report = {"run_dir": str(self.run_dir), "seconds": self.timings,
                  "total_seconds": sum(self.timings.values()), "codec_by_stage": by_stage,
                  "calibration": json.loads(calibration.read_text()) if calibration.is_file() else None,
                  "eval": evaluation}
        write_json(self.run_dir / "report.json", report)
        return report


# The bundled model's quality targets (README of assets/tiny): name -> (where, key, "min" | "max", bound).
# Held-out voices; "voiced share ratio" is the continuations' voiced share over their prompts'.
TARGETS = {
    "codec voicing decision error": ("codec", "vde", "max", 0.15),
    "codec gross pitch error": ("codec", "gpe", "max", 0.10),
    "codec STOI": ("codec", "stoi", "min", 0.80),
    "codec DNSMOS overall": ("codec", "dnsmos_ovrl", "min", 2.1),
    "codec speaker similarity": ("codec", "speaker_similarity", "min", 0.85),
    "lexical accuracy": ("synthetic_suite", "lexical", "min", 0.65),
    "syntactic accuracy": ("synthetic_suite", "syntactic", "min", 0.58),
    "speaker consistency": ("synthetic_suite", "speaker_consistency", "min", 0.85),
    "continuations' voiced share ratio": ("generation", "voiced_share_ratio", "min", 0.6),
    "continuations' DNSMOS overall": ("generation", "dnsmos_ovrl", "min", 2.0),
}


def bundle(run_dir: str | os.PathLike, out_dir: str | os.PathLike, command: str) -> Path:
    """Copy a finished recipe's codec and LM (released layout) to `out_dir` with a model card."""
    import shutil

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    report = json.loads((run_dir / "report.json").read_text())
    with write_folder(out_dir) as tmp:
        # lm/ (codec_config "../codec") and codec/
        shutil.copytree(run_dir / "lm" / "export", tmp, dirs_exist_ok=True)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(report, run_dir, tmp, command))
    return out_dir


def _corpus_line(corpus: dict) -> str:
    if not corpus:
        return "Corpus: the recipe's --corpus manifests."
    u, v = corpus["utterances"], corpus["voices"]
    return (f"Corpus: {corpus['hours']:.2f} h of synthetic speech, {sum(u.values())} utterances (train/valid/test "
            f"{u['train']}/{u['valid']}/{u['test']}), {v['train']} training voices and {v['test']} held-out test voices, "
            f"{corpus['lexicon_words']} words over {len(corpus['topics'])} topics; made in {corpus['generation_seconds']:.0f} s.")


def _codec_line(folder: Path) -> str:
    from .codec import Codec

    codec = Codec.from_pretrained(folder)
    bits = codec.vocab_size.bit_length() - 1
    return (f"{'causal' if codec.causal else 'non-causal'}, {codec.frame_rate:g} tokens/s, {codec.vocab_size} codes "
            f"({bits} bits, {codec.frame_rate * bits:g} b/s), {codec.sample_rate_input // 1000} kHz in, "
            f"{codec.sample_rate_output / 1000:g} kHz out, {1000 * codec.chunk_size / codec.sample_rate_input:g} ms "
            f"streaming steps")


def _metric(evaluation: dict, where: str, key: str) -> float | None:
    if where == "codec":
        return evaluation["codec"]["mean"].get(key)
    if where == "generation":
        mean = evaluation["generation"]["mean"]
        if key == "voiced_share_ratio":
            shares = mean.get("voiced_share"), mean.get("prompt_voiced_share")
            return None if None in shares or not shares[1] else shares[0] / shares[1]
        return mean.get(key)
    return evaluation[where][key]["accuracy"]


def model_card(report: dict, run_dir: Path, folder: Path, command: str) -> str:
    from safetensors.torch import load_file

    def params(path: Path) -> int:
        return sum(t.numel() for t in load_file(path).values())

    summary = run_dir / "corpus" / "corpus.json"
    corpus = json.loads(summary.read_text()) if summary.is_file() else {}
    e = report["eval"]
    sizes = {p: (folder / p / "model.safetensors").stat().st_size / 2**20 for p in ("codec", "lm")}
    lines = [
        "# wavslm tiny: the bundled default model", "",
        "A WavSLM trained from nothing on a 2-core CPU, on synthetic speech (espeak-ng, many voices). It is the",
        "default `--model`/`--codec` of every `wavslm` command and of `make demo`. A toy, trained in minutes;",
        "its measured quality is below.", "",
        "## How it was made", "", f"```sh\n{command}\n```", "",
        _corpus_line(corpus), "",
        f"Training time: {report['total_seconds'] / 60:.1f} min in all (wall clock, this machine):", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in report["seconds"].items()], "",
        "## Size", "",
        f"- codec: {params(folder / 'codec' / 'model.safetensors') / 1e6:.2f} M parameters ({sizes['codec']:.1f} MB), "
        f"{_codec_line(folder / 'codec')}",
        f"- LM: {params(folder / 'lm' / 'model.safetensors') / 1e6:.2f} M parameters ({sizes['lm']:.1f} MB), "
        "next-chunk prediction (4 tokens per step, lookahead 3), initialised from the teacher's upper layers", "",
        "## Quality on held-out voices", "",
        "| target | wanted | measured | met |", "|---|---|---|---|",
    ]
    for name, (where, key, sense, bound) in TARGETS.items():
        got = _metric(e, where, key)
        met = "n/a" if got is None else "yes" if (got >= bound if sense == "min" else got <= bound) else "no"
        lines.append(f"| {name} | {'≥' if sense == 'min' else '≤'} {bound:.2f} | {_fmt(got)} | {met} |")
    lines += ["", "Every metric of the recipe's report (`report.json` beside this file):", "",
              "| synthetic suite | accuracy | 95% interval | pairs |", "|---|---|---|---|"]
    for name, r in e.get("synthetic_suite", {}).items():
        ci = r.get("ci95")
        lines.append(f"| {name} | {r['accuracy']:.3f} | {'n/a' if ci is None else f'{ci[0]:.3f}-{ci[1]:.3f}'} | "
                     f"{r['num_pairs']} |")
    lines += ["", f"Codec resynthesis of {e['codec']['num_files']} held-out utterances "
              f"(WER against {e['codec']['wer_reference']}):", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in e["codec"]["mean"].items() if isinstance(v, float)]
    lines += [f"| codebook {k} | {v:.3f} |" for k, v in e["codec"]["codebook_usage"].items()]
    if report.get("codec_by_stage"):
        lines += ["", "STOI and pitch after each codec sub-stage, on held-out utterances, along the path that "
                  "sub-stage trained (decoder: the teacher's own features; encoder: the causal encoder's, "
                  "unquantised; quantizer and joint: through the tokens):", "",
                  "| sub-stage | STOI | voicing error | gross pitch error | F0 RMSE (cents) |", "|---|---|---|---|---|",
                  *[f"| {k} | {_fmt(v.get('stoi'))} | {_fmt(v.get('vde'))} | {_fmt(v.get('gpe'))} | "
                    f"{_fmt(v.get('f0_rmse_cents'), 0)} |" for k, v in report["codec_by_stage"].items()]]
    if report.get("calibration"):
        c = report["calibration"]
        lines += ["", f"The decoder's voiced noise gain, chosen on {c['files']} validation utterances (training voices): "
                  f"{c['chosen']:g} ({c['criterion']}, tolerance {c['stoi_tolerance']:g}):", "",
                  "| voiced noise gain | STOI | voicing error | gross pitch error |", "|---|---|---|---|",
                  *[f"| {g} | {_fmt(v['stoi'])} | {_fmt(v['vde'])} | {_fmt(v['gpe'])} |" for g, v in c["gains"].items()]]
    g = e["generation"]
    lines += ["", f"Generation: {g['num_continuations']} continuations of {g['settings']['prompt_seconds']} s "
              f"held-out prompts, {g['settings']['seconds']} s each (top-p {g['settings']['top_p']}, "
              f"temperature {g['settings']['temp']}, seeds from {g['settings']['seed']}):", "",
              "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in g["mean"].items() if isinstance(v, float)]
    lines += ["", f"Intelligibility measure: {g['intelligibility']}", ""]
    if (run_dir / "compare.json").is_file():
        lines += _before_after(json.loads((run_dir / "compare.json").read_text()), e)
    return "\n".join(lines)


def _before_after(before: dict, after: dict) -> list[str]:
    """Every metric of the compared model and of this run, measured on the same held-out data and suite."""
    rows = [(f"{name} accuracy", before.get("synthetic_suite", {}).get(name, {}).get("accuracy"), r["accuracy"])
            for name, r in after.get("synthetic_suite", {}).items()]
    for part in ("codec", "generation"):
        old, new = before.get(part, {}).get("mean", {}), after[part]["mean"]
        rows += [(f"{part} {k}", old.get(k), v) for k, v in new.items() if isinstance(v, float)]
    return ["## Before and after", "", f"`{before['model']}` (before) and this model, on the same held-out "
            "utterances, prompts and suite:", "", "| metric | before | after |", "|---|---|---|",
            *[f"| {name} | {_fmt(a)} | {_fmt(b)} |" for name, a, b in rows], ""]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
