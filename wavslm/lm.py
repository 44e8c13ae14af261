"""WavSLM: causal WavLM layers over codec features, predicting the token chunk that follows.

The input is the decompressor's `qfeats (B, T, D)` (there is no token embedding table); a final
LayerNorm and a bias-free head give `logits (B, T, V)`. Next-chunk objective: the logits at t predict
token `t + toks_per_step`.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import hub
from .codec import Codec
from .config import buildable, from_dict, to_dict
from .errors import InputError
from .generation import LiveSession, generate, stream
from .modules.linear import Linear
from .modules.transformer import TransformerEncoder, TransformerState


@dataclass
class WavSLMConfig:
    """The released `config.json` keys, unchanged.

    `max_cached_steps` (the released size of a precomputed position-bias table) and `use_flex_attention`
    are kept for round trips but change nothing here: the bias is computed for the distances in use.
    """

    vocab_size: int = 4096
    num_layers: int = 18
    dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    max_cached_steps: int = 2048
    dropout: float = 0.0
    causal: bool = True
    window_size: int = 512
    lookahead_size: int = 3
    use_flex_attention: bool = False
    codec_config: str = "lucadellalib/focalcodec_50hz_4k_causal"
    toks_per_step: int = 4

    @property
    def chunk_size(self) -> int:
        return 1 + self.lookahead_size


class WavSLM(nn.Module):
    """The language model, optionally holding its (frozen) codec as `self.codec`."""

    def __init__(self, config: WavSLMConfig, codec: Codec | None = None):
        super().__init__()
        self.config = config
        with buildable("WavSLM"):
            self.encoder = self._stack(config)
        self.head = Linear(config.dim, config.vocab_size, bias=False)
        self.codec = None
        if codec is not None:
            self.attach_codec(codec)

    @staticmethod
    def _stack(config: WavSLMConfig) -> TransformerEncoder:
        return TransformerEncoder(
            num_layers=config.num_layers,
            dim=config.dim,
            ffn_dim=config.ffn_dim,
            num_heads=config.num_heads,
            num_buckets=config.num_buckets,
            max_distance=config.max_distance,
            dropout=config.dropout,
            causal=config.causal,
            window_size=config.window_size,
            chunk_size=config.chunk_size,
            final_norm=True,
        )

    def attach_codec(self, codec: Codec) -> None:
        """Use `codec` to turn tokens into features and back; it is frozen and never saved with the LM."""
        if codec.vocab_size != self.config.vocab_size:
            raise InputError(
                f"the codec has {codec.vocab_size} codes but the language model predicts {self.config.vocab_size}"
            )
        if codec.feature_dim != self.config.dim:
            raise InputError(f"the codec's features have {codec.feature_dim} dims but the LM expects {self.config.dim}")
        self.codec = codec.eval().requires_grad_(False)

    @property
    def toks_per_step(self) -> int:
        return self.config.toks_per_step

    def forward(
        self, qfeats: Tensor, state: TransformerState | None = None, use_cache: bool = True
    ) -> tuple[Tensor, TransformerState | None]:
        """`qfeats (B, T, D) -> logits (B, T, V)` and the state to continue from.

        Any number of new frames per call. The state is updated in place (its key/value cache is
        preallocated); `use_cache=False` (training) returns no state.
        """
        feats, state = self.encoder(qfeats, state, use_cache=use_cache)
        return self.logits(feats), state

    def logits(self, feats: Tensor) -> Tensor:
        """`feats (B, T, D) -> logits (B, T, V)`, float32 whatever the weights' dtype."""
        return self.head(feats).float()

    def require_codec(self) -> Codec:
        """The attached codec, or one sentence saying that there is none."""
        if self.codec is None:
            raise InputError("this language model has no codec attached; load it with WavSLM.from_pretrained")
        return self.codec

    @torch.inference_mode()
    def score(self, toks: Tensor, reduction: str = "mean") -> Tensor:
        """Next-chunk negative log-likelihood of each sequence `toks (B, T) -> (B,)`.

        Every token `t >= toks_per_step` is predicted by the logits at `t - toks_per_step`; `reduction`
        is "mean" (per predicted token) or "sum".
        """
        if reduction not in ("mean", "sum"):
            raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        C = self.toks_per_step
        if toks.ndim != 2 or toks.shape[1] <= C:
            raise InputError(f"score needs token sequences (B, T) longer than {C} tokens, got {tuple(toks.shape)}")
        # With a cache, long sequences are read in pieces (memory linear in the length; the same logits).
        logits, _ = self(self.require_codec().dequantize(toks), use_cache=True)
        return next_chunk_nll(logits, toks, C, reduction)

    # ---- generation (the loops live in the generation package) -----------------------------------

    def generate(self, *args: Any, **kwargs: Any):
        """Continue a prompt; see `wavslm.generation.generate` for the arguments."""
        return generate(self, *args, **kwargs)

    def stream(self, *args: Any, **kwargs: Any):
        """Yield audio chunks as they are generated; see `wavslm.generation.stream`."""
        return stream(self, *args, **kwargs)

    def live(self, batch_size: int = 1, **kwargs: Any) -> LiveSession:
        """A session that reads prompt audio as it arrives and then continues it; see
        `wavslm.generation.LiveSession` (keywords: top_p, top_k, temp, seed)."""
        return LiveSession(self, batch_size, **kwargs)

    # ---- loading and saving -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        ref: str | os.PathLike,
        codec: Codec | str | os.PathLike | None = None,
        load_codec: bool = True,
    ) -> "WavSLM":
        """Load a released-layout LM and the codec its config names (or the `codec` given).

        `codec_config` is resolved relative to the model's folder first, then as a Hub id. Pass a
        loaded `Codec` to avoid any second lookup, or `load_codec=False` to work on features only.
        """
        resolved = hub.resolve(ref)
        config = from_dict(WavSLMConfig, hub.read_json(resolved.config), f"config '{resolved.config}'")
        if resolved.weights is None:
            raise InputError(f"model '{ref}' has no weights (model.safetensors) beside {resolved.config.name}")
        model = cls(config)
        hub.load_state(model, hub.load_weights(resolved.weights), resolved.weights)
        if isinstance(codec, Codec):
            model.attach_codec(codec)
        elif codec is not None or load_codec:
            model.attach_codec(_load_codec(codec or config.codec_config, resolved))
        return model.eval()

    @classmethod
    def from_wavlm(
        cls,
        wavlm_ref: str | os.PathLike,
        first_layer: int = 6,
        num_layers: int | None = None,
        vocab_size: int = 4096,
        codec_config: str = WavSLMConfig.codec_config,
        window_size: int = 512,
        lookahead_size: int = 3,
    ) -> "WavSLM":
        """A new LM whose backbone is a Hugging Face WavLM's upper layers (0-based `first_layer` on).

        The paper's model takes WavLM-Large layers 7-24 (`first_layer=6`, 18 layers); the relative
        position embedding and the final LayerNorm come from the same checkpoint, the head is fresh.
        """
        from .wavlm import from_hf

        wavlm = from_hf(wavlm_ref)
        total = wavlm.config.num_layers
        num_layers = total - first_layer if num_layers is None else num_layers
        if not 0 <= first_layer < total or num_layers < 1 or first_layer + num_layers > total:
            raise InputError(f"layers {first_layer}..{first_layer + (num_layers or 0) - 1} do not exist in a {total}-layer WavLM")
        src = wavlm.config
        config = WavSLMConfig(
            vocab_size=vocab_size,
            num_layers=num_layers,
            dim=src.dim,
            ffn_dim=src.ffn_dim,
            num_heads=src.num_heads,
            num_buckets=src.num_buckets,
            max_distance=src.max_distance,
            window_size=window_size,
            lookahead_size=lookahead_size,
            codec_config=codec_config,
        )
        model = cls(config)
        model.encoder.relative_embedding.load_state_dict(wavlm.encoder.relative_embedding.state_dict())
        model.encoder.norm.load_state_dict(wavlm.encoder.norm.state_dict())
        for i, layer in enumerate(model.encoder.layers):
            layer.load_state_dict(wavlm.encoder.layers[first_layer + i].state_dict())
        return model

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the released layout: `config.json` + `model.safetensors` (no `codec.*` weights)."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("codec.")}
        return hub.save_folder(folder, to_dict(self.config), state)


def codec_target(ref: "str | os.PathLike", model: hub.Resolved) -> "str | Path":
    """Where the codec `ref` named by `model`'s config is: beside the model first, else `ref` as given (a Hub id)."""
    local = (model.folder / ref) if not os.path.isabs(ref) else Path(ref)
    return local if local.exists() or local.with_name(local.name + ".json").exists() else ref


def _load_codec(ref: "str | os.PathLike", model: hub.Resolved) -> Codec:
    try:
        return Codec.from_pretrained(codec_target(ref, model))
    except InputError as error:
        raise InputError(f"cannot load the codec '{ref}' named by {model.config}: {error}") from error


def next_chunk_nll(logits: Tensor, toks: Tensor, step: int, reduction: str = "mean") -> Tensor:
    """Per-sequence NLL where `logits[:, t]` predicts `toks[:, t + step]`: `(B, T, V), (B, T) -> (B,)`."""
    B = toks.shape[0]
    nll = F.cross_entropy(
        logits[:, :-step].reshape(-1, logits.shape[-1]).float(), toks[:, step:].reshape(-1), reduction="none"
    ).view(B, -1)
    return nll.mean(1) if reduction == "mean" else nll.sum(1)
