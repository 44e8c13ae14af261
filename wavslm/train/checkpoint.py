"""Checkpoints that survive `kill -9`: written to a temporary file, flushed, then renamed over the old one."""

import random
from pathlib import Path
from typing import Any

import torch

from ..io import write_file


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` with `torch.save` atomically: a reader sees the old file or the new one, never half."""
    write_file(path, lambda tmp: torch.save(payload, tmp))


def load(path: Path) -> dict[str, Any]:
    # Only tensors, numbers, strings and containers: safe to read with weights_only.
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    # random.setstate needs tuples where serialisation may have produced lists.
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
