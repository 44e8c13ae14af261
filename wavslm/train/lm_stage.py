"""The `lm` stage: next-chunk prediction over token shards, features from the frozen decompressor.

Crops of `crop_tokens` tokens start at multiples of 4 inside an utterance, so every crop's chunks are
the chunks the model sees at inference. The logits at t predict token t + 4; the loss is the mean
cross-entropy over every predicted token inside the crop's valid length.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..codec import Codec
from ..errors import InputError
from ..lm import WavSLM, WavSLMConfig
from .loop import TrainConfig


@dataclass
class LMDataConfig:
    train: str = ""  # token shards (`wavslm tokenize` output)
    valid: str = ""  # token shards for validation ("" for none)
    codec: str = ""  # the codec the shards were made with (its decompressor makes the features)
    crop_tokens: int = 256
    random_crop: bool = True  # False: every epoch takes each utterance's first crop


@dataclass
class LMModelConfig:
    """`init`: "scratch", "wavlm" (upper layers of the Hugging Face-layout WavLM `init_from`, e.g. the
    `ssl` stage's export) or "lm" (continue from the WavSLM folder `init_from`)."""

    LEGACY_KEYS: ClassVar[dict[str, str | None]] = {"allow_pickle": None}  # pickled weights load without it now

    init: str = "scratch"
    init_from: str = ""
    first_layer: int = 6
    num_layers: int = 18
    dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    window_size: int = 512
    lookahead_size: int = 3
    dropout: float = 0.0


@dataclass
class LMStageConfig:
    data: LMDataConfig = field(default_factory=LMDataConfig)
    model: LMModelConfig = field(default_factory=LMModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def masked_next_chunk_loss(logits: Tensor, toks: Tensor, length: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """Mean NLL over valid targets: `logits (B, T, V)` at t predict `toks (B, T)` at t + step, t + step < length."""
    targets = toks[:, step:]
    valid = torch.arange(step, toks.shape[1], device=toks.device)[None, :] < length[:, None]
    nll = F.cross_entropy(logits[:, :-step].float().transpose(1, 2), targets, reduction="none")
    count = valid.sum()
    loss = (nll * valid).sum() / count.clamp(min=1)
    correct = ((logits[:, :-step].argmax(-1) == targets) & valid).sum() / count.clamp(min=1)
    return loss, correct


class LMStage:
    """Trains a WavSLM on token shards; exports the released layout beside a copy of its codec."""

    throughput = ("tokens_per_s", 1.0)  # what a batch's `length` counts, logged per second of training
    shardable = True  # train.parallel: fsdp shards its transformer layers

    def __init__(self, cfg: LMStageConfig, device: torch.device):
        from ..data.shards import TokenCrops, TokenShards, collate_tokens

        if not cfg.data.train:
            raise InputError("lm stage: data.train (a token shards folder from `wavslm tokenize`) is required")
        if not cfg.data.codec:
            raise InputError("lm stage: data.codec (the codec the shards were made with) is required")
        if cfg.data.crop_tokens % 4 or cfg.data.crop_tokens <= 4:
            raise InputError(f"lm stage: data.crop_tokens must be a multiple of 4 above 4, got {cfg.data.crop_tokens}")
        self.cfg = cfg
        self.codec = Codec.from_pretrained(cfg.data.codec).to(device).eval().requires_grad_(False)
        lm = self._build_model()
        if lm.config.vocab_size != self.codec.vocab_size or lm.config.dim != self.codec.feature_dim:
            raise InputError(
                f"lm stage: the model (vocab {lm.config.vocab_size}, dim {lm.config.dim}) does not fit the codec "
                f"(vocab {self.codec.vocab_size}, features {self.codec.feature_dim})"
            )
        self.nets: dict[str, nn.Module] = {"lm": lm.to(device)}
        self.raw = dict(self.nets)
        seed = cfg.train.seed
        self._train = TokenCrops(TokenShards(cfg.data.train), cfg.data.crop_tokens, seed=seed, random_crop=cfg.data.random_crop)
        self._valid = TokenCrops(TokenShards(cfg.data.valid), cfg.data.crop_tokens, random_crop=False) if cfg.data.valid else None
        self.collate = collate_tokens

    def _build_model(self) -> WavSLM:
        m = self.cfg.model
        vocab = self.codec.vocab_size
        if m.init == "wavlm":
            return WavSLM.from_wavlm(m.init_from, m.first_layer, m.num_layers, vocab, str(self.cfg.data.codec),
                                     m.window_size, m.lookahead_size)
        if m.init == "lm":
            return WavSLM.from_pretrained(m.init_from, load_codec=False).train()
        if m.init != "scratch":
            raise InputError(f"lm stage: model.init must be scratch, wavlm or lm, got {m.init!r}")
        config = WavSLMConfig(vocab_size=vocab, num_layers=m.num_layers, dim=m.dim, ffn_dim=m.ffn_dim,
                              num_heads=m.num_heads, num_buckets=m.num_buckets, max_distance=m.max_distance,
                              dropout=m.dropout, window_size=m.window_size, lookahead_size=m.lookahead_size,
                              codec_config=str(self.cfg.data.codec))
        return WavSLM(config)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [p for p in self.raw["lm"].parameters() if p.requires_grad]}

    def datasets(self):
        return self._train, self._valid

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        toks, length = batch["toks"], batch["length"]
        with torch.no_grad():
            qfeats = self.codec.dequantize(toks)
        logits, _ = self.nets["lm"](qfeats, use_cache=False)
        loss, acc = masked_next_chunk_loss(logits, toks, length, self.raw["lm"].toks_per_step)
        return loss, {"loss": loss.detach(), "accuracy": acc.detach()}

    def train_step(self, batch: dict[str, Tensor]) -> Iterator[tuple[str, Tensor, dict[str, float]]]:
        loss, metrics = self._loss(batch)
        yield "main", loss, metrics

    def valid_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return self._loss(batch)[1]

    def export(self, folder: Path) -> None:
        """`folder/codec` and `folder/lm` (whose `codec_config` is "../codec"): loadable by the released code."""
        self.codec.save_pretrained(folder / "codec")
        lm = self.raw["lm"]
        saved = lm.config.codec_config
        lm.config.codec_config = os.path.join("..", "codec")
        try:
            lm.save_pretrained(folder / "lm")
        finally:
            lm.config.codec_config = saved
