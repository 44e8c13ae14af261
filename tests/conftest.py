"""Shared test fixtures: the reference models and the speech clips committed under tests/assets."""

import os
from pathlib import Path

import pytest
import soundfile as sf
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


# ---- the evaluation tests' reference LM and pool of real speech clips (tests/eval) ----------------


@pytest.fixture(scope="session")
def lm():
    from wavslm import WavSLM

    torch.set_num_threads(2)
    return WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")


@pytest.fixture(scope="session")
def pool(lm, tmp_path_factory):
    """Six clips of 10, 15, ..., 35 tokens (every residue mod 4) and their one-at-a-time `lm.score` NLLs."""
    from wavslm import load_audio

    folder = tmp_path_factory.mktemp("pool")
    sources = sorted((SPEECH / "librispeech-dev-clean" / "84").glob("*.wav"))
    clips, nll = {}, {"mean": {}, "sum": {}}
    for i in range(6):
        sig, sr = load_audio(sources[i], sample_rate=16000, mono=True)
        path = folder / f"c{i}.wav"
        sf.write(path, sig[0, 4000 : 4000 + 320 * (10 + 5 * i) - 100].numpy(), sr, subtype="FLOAT")
        clips[f"c{i}"] = path
        toks = lm.codec.encode(load_audio(path, sample_rate=16000, mono=True)[0])
        for reduction in nll:
            nll[reduction][f"c{i}"] = float(lm.score(toks, reduction))
    return clips, nll


# ---- the server's engine, driven directly (tests/serve, tests/test_onnx_export.py) -----------------


async def chunks_of(engine, gen, keep: int | None = None) -> list:
    """`gen`'s chunks from `engine.step` (the first `keep` of them, if given), then the generation closed."""
    chunks = []
    while (keep is None or len(chunks) < keep) and (chunk := await engine.step(gen)) is not None:
        chunks.append(chunk)
    await engine.call(engine.close, gen)
    return chunks


async def open_together(engine, sig, sample_rate: int, settings: list) -> list:
    """Generations of one prompt under each of `settings`, queued while the model thread is held, so that
    they are read in one job and join the batch together."""
    import asyncio
    import threading

    gate = threading.Event()
    engine.model_thread.submit(gate.wait)
    opening = [asyncio.ensure_future(engine.open(sig, sample_rate, s)) for s in settings]
    await asyncio.sleep(0.01)
    gate.set()
    return list(await asyncio.gather(*opening))
