"""`wavslm train STAGE`: resolve a stage's config (YAML preset + `--set` overrides), run it, resume it.

A preset file has one section per stage (`ssl:`, `codec:`, `lm:`); `--set train.lr=3e-4` overrides a key
of the chosen stage's section (values parsed as YAML). The resolved config is written to
`RUN_DIR/config.yaml`; `--resume RUN_DIR` reads it back and continues from the last checkpoint.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from ..config import from_dict, renamed, to_dict
from ..errors import InputError
from ..io import output_lock, write_atomic
from ..pretrained import preset_path
from . import dist as distributed
from .loop import Trainer

log = logging.getLogger("wavslm.train")


@contextmanager
def _locked(d: distributed.Dist, run_dir: Path) -> Iterator[None]:
    """The main rank holds `run_dir`'s output lock for the block; when it cannot, every rank stops."""
    with ExitStack() as held:
        refused = None
        if d.main:
            try:
                held.enter_context(output_lock(run_dir))
            except InputError as error:
                refused = error
        if not distributed.all_true(d, refused is None):
            raise refused or InputError(f"'{run_dir}' is being written by another process")
        yield


def _stages() -> dict[str, tuple[type, Any]]:
    from .codec import CodecStageConfig, build_codec_stage
    from .lm_stage import LMStage, LMStageConfig
    from .ssl_stage import SSLStage, SSLStageConfig

    return {"codec": (CodecStageConfig, build_codec_stage), "lm": (LMStageConfig, LMStage),
            "ssl": (SSLStageConfig, SSLStage)}


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file '{path}' does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(f"config file '{path}' is not valid YAML: {error}") from error
    except UnicodeDecodeError as error:
        raise InputError(f"config file '{path}' is not text (a YAML file is expected)") from error
    if not isinstance(values, dict):
        raise InputError(f"config file '{path}' must hold a mapping of stage sections")
    return values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Set dotted keys (`train.lr=3e-4`) in a nested dict; values are parsed as YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set expects key=value, got {item!r}")
        target = values
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise InputError(f"--set {key}: '{part}' is not a section")
        target[parts[-1]] = yaml.safe_load(raw)
    return values


def resolve(stage: str, config: str | Path | None, overrides: list[str]):
    stages = _stages()
    if stage not in stages:
        raise InputError(f"unknown stage {stage!r}; expected one of {sorted(stages)}")
    cls, _ = stages[stage]
    section = {}
    if config is not None:
        config = preset_path(str(config))  # a packaged preset's name (tiny, paper_4k) or a file
        values = read_yaml(config)
        unknown = sorted(set(values) - set(stages) - {"recipe"})
        if unknown:
            raise InputError(f"config file '{config}' has unknown sections {unknown}; expected some of "
                             f"{sorted([*stages, 'recipe'])}")
        section = values.get(stage, {})
        if not isinstance(section, dict):
            raise InputError(f"config file '{config}': section '{stage}' must be a mapping")
    source = f"config '{config}' section '{stage}'" if config else f"stage '{stage}' settings"
    # An older file's keys take their current names first, so that an override by the new name replaces them.
    return from_dict(cls, apply_overrides(renamed(cls, section, source), list(overrides)), source)


def train(
    stage: str,
    run_dir: str | Path,
    config: str | Path | None = None,
    overrides: list[str] = (),
    resume: bool = False,
    device: str = "auto",
) -> dict[str, float]:
    """Run (or resume) one stage in `run_dir`; returns the last step's metrics.

    Under `torchrun --max-restarts N`, a restarted run (one of its workers died) resumes from its newest
    checkpoint by itself: no `--resume` is typed between the restarts.
    """
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not resume and restart > 0 and saved.is_file() and any((run_dir / "checkpoints").glob("*.pt")):
        log.warning("torchrun restart %d: resuming '%s' from its newest checkpoint", restart, run_dir)
        resume = True
    if resume:
        if not saved.is_file():
            raise InputError(f"cannot resume: '{run_dir}' holds no config.yaml from an earlier run")
        values = yaml.safe_load(saved.read_text())
        stage = values["stage"]
        cls = _stages()[stage][0]
        # A run saved under older key names resumes too (e.g. the recipe's `substage=` meets a saved `step`).
        cfg = from_dict(cls, apply_overrides(renamed(cls, values["config"], saved), list(overrides)), saved)
    else:
        if (run_dir / "checkpoints" / "last.pt").exists():
            raise InputError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another folder")
        cfg = resolve(stage, config, overrides)
    d = distributed.setup(device)
    try:
        with _locked(d, run_dir):
            return _run(stage, cfg, run_dir, d, resume)
    finally:
        distributed.teardown(d)


def _run(stage: str, cfg: Any, run_dir: Path, d: distributed.Dist, resume: bool) -> dict[str, float]:
    saved = run_dir / "config.yaml"
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(d)
    import torch

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank

    def write_config() -> None:  # once the run is under way: a resume's settings fit its checkpoint
        write_atomic(saved, yaml.safe_dump({"stage": stage, "config": to_dict(cfg)}, sort_keys=False))

    built = _stages()[stage][1](cfg, d.device)
    return Trainer(built, cfg.train, run_dir, d, name=stage, resume=resume, on_start=write_config).run()
