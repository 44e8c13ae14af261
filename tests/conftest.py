"""Shared test fixtures: where the reference models and the speech clips live."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _first_existing(*candidates):
    for path in candidates:
        if path and Path(path).is_dir():
            return Path(path)
    return None


# The reference fixtures are used in place from the shared folder beside the checkout.
REFERENCE = _first_existing(
    os.environ.get("WAVSLM_REFERENCE"),
    REPO.parent / "shared" / "fixtures" / "reference",
    Path("/work/shared/fixtures/reference"),
)
SPEECH = _first_existing(
    os.environ.get("WAVSLM_SPEECH"),
    REPO.parent / "shared" / "data" / "speech",
    Path("/work/shared/data/speech"),
)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def reference() -> Path:
    if REFERENCE is None:
        pytest.skip("reference fixtures not found; set WAVSLM_REFERENCE to shared/fixtures/reference")
    return REFERENCE


@pytest.fixture
def speech() -> Path:
    if SPEECH is None:
        pytest.skip("speech clips not found; set WAVSLM_SPEECH to shared/data/speech")
    return SPEECH


def refit(param, output, target, rounds=1, max_iter=100):
    """Fit only `param` so that `output()` matches `target` (least squares, L-BFGS).

    Used to show that the reference fixtures differ from their saved weights in one place only: the
    relative position embedding (see tests/test_lm.py and tests/test_codec.py).
    """
    with torch.enable_grad():
        param.requires_grad_(True)
        opt = torch.optim.LBFGS([param], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

        def closure():
            opt.zero_grad()
            loss = ((output() - target) ** 2).sum()
            loss.backward()
            return loss

        for _ in range(rounds):  # a new round restarts L-BFGS's memory
            opt.step(closure)
    param.requires_grad_(False)
