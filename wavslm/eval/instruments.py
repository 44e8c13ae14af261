"""Opt-in instruments that papers use for generated speech, loaded from local checkpoints (no download).

Each is named after what it is, and so are its results:

- `Whisper(path)`: a Whisper checkpoint in the Hugging Face layout (e.g. a local copy of
  `openai/whisper-large-v3-turbo`, SlamKit's), transcribing 16 kHz audio through `transformers`' ASR
  pipeline; its transcripts feed Auto-BLEU and GenPPL beside pocketsphinx's.
- `TextLM(path)`: a causal text LM (GPT-2, Llama) in the Hugging Face layout; `nll(text)` is the mean
  token NLL with the tokenizer's start token as context only, SlamKit's GenPPL ingredient.
- `SpeakerVerifier(path)`: a WavLM x-vector model (`microsoft/wavlm-base-plus-sv`): cosine similarity of
  the embeddings of two 16 kHz signals.
- `UTMOS(repo, weights)`: UTMOS22 strong from a local clone of SpeechMOS (`tarepan/SpeechMOS`, its
  `hubconf.py` entry `utmos22_strong`) and its state dict (`utmos22_strong_step7459_v1.pt`).

They need `transformers` (and SpeechMOS its own requirements), which the core install does not include:
`pip install 'wavslm[instruments]'`. A missing package or a path without a checkpoint is one sentence.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

RATE = 16_000


def _transformers(what: str):
    try:
        import transformers
    except ImportError as error:
        raise InputError(f"{what} needs the transformers package: pip install 'wavslm[instruments]'") from error
    transformers.logging.set_verbosity_error()  # its load reports and progress bars would bury the results
    transformers.logging.disable_progress_bar()
    return transformers


def _folder(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(f"{what} checkpoint '{path}' is not a folder with a config.json (the Hugging Face layout)")
    return folder


class Whisper:
    """Transcribe 16 kHz audio with a local Whisper checkpoint (greedy, English)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        transformers = _transformers("--whisper")
        self.pipe = transformers.pipeline("automatic-speech-recognition", model=str(_folder(path, "Whisper")),
                                          device=torch.device(device))
        # English-only checkpoints (*.en) take no language or task.
        multilingual = getattr(self.pipe.model.generation_config, "is_multilingual", False)
        self.options = {"language": "en", "task": "transcribe"} if multilingual else {}

    def __call__(self, sig: np.ndarray) -> str:
        out = self.pipe({"raw": np.asarray(sig, dtype=np.float32), "sampling_rate": RATE},
                        generate_kwargs=self.options)
        return out["text"].strip()


class TextLM:
    """Mean token NLL of a text under a local causal LM; the start token is context only."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        transformers = _transformers("--text-lm")
        folder = _folder(path, "text LM")
        self.name = f"lm-{Path(path).name}"  # results: nll_lm-<folder>_<asr>, apart from nll_trigram_*
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def nll(self, text: str) -> float | None:
        """Mean NLL (nats) per predicted token; None for an empty text."""
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and (ids.shape[1] == 0 or ids[0, 0] != bos):
            ids = torch.cat([torch.tensor([[bos]]), ids], dim=1)
        if ids.shape[1] < 2:
            return None
        ids = ids.to(self.device)
        logits = self.model(ids).logits[0, :-1].float()
        return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))


class SpeakerVerifier:
    """Cosine similarity of WavLM x-vector embeddings of two 16 kHz signals."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        transformers = _transformers("--speaker-verifier")
        folder = _folder(path, "speaker verification")
        self.name = Path(path).name
        self.features = transformers.AutoFeatureExtractor.from_pretrained(folder)
        self.model = transformers.WavLMForXVector.from_pretrained(folder).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def embed(self, sig: np.ndarray) -> torch.Tensor:
        inputs = self.features(np.asarray(sig, dtype=np.float32), sampling_rate=RATE, return_tensors="pt")
        return torch.nn.functional.normalize(self.model(**inputs.to(self.device)).embeddings[0].float(), dim=-1)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(self.embed(a) @ self.embed(b))


class UTMOS:
    """UTMOS22 strong (SpeechMOS) from a local clone of its repository and its weights."""

    def __init__(self, repo: str | Path, weights: str | Path, device: str = "cpu"):
        repo, weights = Path(repo).expanduser(), Path(weights).expanduser()
        if not (repo / "hubconf.py").is_file():
            raise InputError(f"--utmos '{repo}' is not a clone of SpeechMOS (no hubconf.py in it)")
        if not weights.is_file():
            raise InputError(f"--utmos-weights '{weights}' does not exist")
        self.model = torch.hub.load(str(repo), "utmos22_strong", source="local", trust_repo=True, pretrained=False)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, sig: np.ndarray) -> float:
        wave = torch.as_tensor(np.asarray(sig, dtype=np.float32), device=self.device)[None]
        score = float(self.model(wave, RATE)[0])
        return score if math.isfinite(score) else math.nan
