"""Learning-rate schedules: linear warmup, then constant, cosine, or the paper's plateau rule."""

import math
from dataclasses import dataclass


@dataclass
class LRSchedule:
    """`factor(step)` multiplies the base learning rate; `on_valid(loss)` feeds the plateau rule.

    plateau: multiply by `plateau_factor` (0.9) whenever a validation improves the best loss by less than
    `plateau_threshold` (relative), as in the WavSLM paper.
    """

    kind: str = "cosine"
    total_steps: int = 1000
    warmup_steps: int = 0
    min_ratio: float = 0.0
    plateau_factor: float = 0.9
    plateau_threshold: float = 0.0025
    scale: float = 1.0
    best: float = math.inf

    def __post_init__(self):
        if self.kind not in ("constant", "cosine", "plateau"):
            raise ValueError(f"unknown schedule {self.kind!r}; expected constant, cosine or plateau")

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "cosine":
            progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)))
            return warm * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        return warm * self.scale

    def on_valid(self, loss: float) -> None:
        if self.kind == "plateau" and not loss < self.best * (1 - self.plateau_threshold):
            self.scale *= self.plateau_factor
        self.best = min(self.best, loss)

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best = state["scale"], state["best"]
