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
