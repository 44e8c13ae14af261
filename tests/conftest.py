"""Shared test fixtures: the reference models and the speech clips committed under tests/assets."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets"
# Tiny models in the released formats with the original implementation's outputs (see its README).
REFERENCE = ASSETS / "reference"
# Seven real utterances (LibriSpeech, VoiceBank; CC BY 4.0, see its README).
SPEECH = ASSETS / "speech"

for _folder in (REFERENCE, SPEECH):
    if not _folder.is_dir():  # a broken checkout fails loudly rather than skipping half the suite
        raise pytest.UsageError(f"The test data folder {_folder} is missing; it is part of the repository.")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def reference() -> Path:
    return REFERENCE


@pytest.fixture
def speech() -> Path:
    return SPEECH
