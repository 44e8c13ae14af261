"""WavLM: convolutional feature extractor + transformer, and the import of Hugging Face WavLM checkpoints.

The same module serves as the codec's encoder (FocalCodec's `encoder_config` keys, causal or not, no
final norm) and as a faithful copy of a Hugging Face `microsoft/wavlm-*` model (pre-LayerNorm "large"
layout, final LayerNorm), whose upper layers initialise the language model.
"""

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import hub
from .config import buildable
from .errors import InputError
from .modules.linear import Linear
from .modules.transformer import TransformerEncoder, TransformerState
from .modules.tuning import CHANNELS_LAST_FRONT_END, FRONT_END_PIECE_BYTES


@dataclass
class WavLMConfig:
    """FocalCodec's `encoder_config` keys, plus `conv_bias` and `final_norm` for Hugging Face models."""

    hidden_dims: list[int] = field(default_factory=lambda: [512] * 7)
    kernel_sizes: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    strides: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    num_layers: int = 6
    dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    max_cached_steps: int = 2048
    dropout: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    causal: bool = False
    window_size: int = 512
    lookahead_size: int = 3
    use_flex_attention: bool = False
    conv_bias: bool = False
    final_norm: bool = False

    @property
    def hop_length(self) -> int:
        """Input samples per output frame (320 for WavLM)."""
        hop = 1
        for s in self.strides:
            hop *= s
        return hop


def num_frames(num_samples: int | Tensor, config: WavLMConfig | None = None) -> int | Tensor:
    """Frames the conv front end of `config` makes from `num_samples` input samples (an int, or lengths `(B,)`).

    `config` None: WavLM's own front end, bidirectional. Layer by layer, a causal conv pads `kernel - 1`
    samples on the left and gives `ceil(n / stride)` frames; a bidirectional one does not pad and gives
    `(n - kernel) // stride + 1`, at least 1 (`ConvBlock` zero-pads a shorter input to one kernel). For
    WavLM's front end, bidirectional, that is `max(1, (N - 400) // 320 + 1)`: frame t sees samples
    `[320 t, 320 t + 400)`.
    """
    config = WavLMConfig() if config is None else config
    n = num_samples
    for k, s in zip(config.kernel_sizes, config.strides, strict=True):
        if config.causal:
            n = (n + s - 1) // s
        elif isinstance(n, Tensor):
            n = (n - k).clamp(min=0) // s + 1
        else:
            n = max(n - k, 0) // s + 1
    return n


class ConvBlock(nn.Module):
    """Strided conv -> dropout -> LayerNorm over channels -> GELU, on `(B, N, C)`.

    Causal: left context only; the first call repeats the first sample, later calls carry the last
    `kernel_size - 1` inputs. Bidirectional: no padding (inputs shorter than the kernel are zero-padded).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, stride: int, bias: bool, dropout: float, causal: bool):
        super().__init__()
        self.kernel_size = kernel_size
        self.causal = causal
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, stride, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """`x (B, N, C_in) -> (B, N', C_out)`; causal: `context` is the last `kernel_size - 1` inputs
        `(B, K - 1, C_in)` of the previous call (returned for the next)."""
        K = self.kernel_size
        if self.causal:
            left = x[:, :1].expand(-1, K - 1, -1) if context is None else context
            x = torch.cat([left, x], dim=1)
            context = x[:, x.shape[1] - (K - 1) :]
        elif x.shape[1] < K:
            x = F.pad(x, (0, 0, 0, K - x.shape[1]))
        if CHANNELS_LAST_FRONT_END.admits(0, x):
            # `(B, N, C)` is the channels-last layout of `(B, C, 1, N)`: no transposed copy in or out.
            y = F.conv2d(x.transpose(1, 2).unsqueeze(2), self.conv.weight.unsqueeze(2), self.conv.bias,
                         (1, self.conv.stride[0]))
            y = y.squeeze(2).transpose(1, 2)
        else:
            y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(self.norm(self.dropout(y))), context


class FeatureExtractor(nn.Module):
    """The 7-layer conv front end: `sig (B, N) -> (B, N / hop, hidden_dims[-1])`."""

    def __init__(self, config: WavLMConfig):
        super().__init__()
        sizes = (len(config.hidden_dims), len(config.kernel_sizes), len(config.strides))
        if len(set(sizes)) != 1:
            raise ValueError(f"hidden_dims, kernel_sizes and strides must have one entry per conv layer, got "
                             f"{sizes[0]}, {sizes[1]} and {sizes[2]}")
        dims = [1, *config.hidden_dims]
        self.layers = nn.ModuleList(
            ConvBlock(dims[i], dims[i + 1], k, s, config.conv_bias, config.dropout, config.causal)
            for i, (k, s) in enumerate(zip(config.kernel_sizes, config.strides, strict=True))
        )

    def forward(self, sig: Tensor, contexts: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        piece = self.piece_samples(sig)
        if piece is None:
            return self._layers(sig, contexts)
        outs = []
        for start in range(0, sig.shape[1], piece):
            out, contexts = self._layers(sig[:, start : start + piece], contexts)
            outs.append(out)
        return torch.cat(outs, dim=1), contexts

    def piece_samples(self, sig: Tensor) -> int | None:
        """The piece length (whole frames) in which a causal front end takes `sig (B, N)`, or None for
        the whole of it (see `tuning.FRONT_END_PIECE_BYTES`)."""
        first = self.layers[0]
        if not first.causal or not FRONT_END_PIECE_BYTES.admits(0, sig):
            return None
        stride, channels = first.conv.stride[0], first.conv.out_channels
        bytes_per_sample = sig.shape[0] * channels * sig.element_size() / stride
        if sig.shape[1] * bytes_per_sample <= 3 * FRONT_END_PIECE_BYTES.limit:
            return None
        hop = math.prod(layer.conv.stride[0] for layer in self.layers)
        return max(1, int(FRONT_END_PIECE_BYTES.limit / bytes_per_sample) // hop) * hop

    def _layers(self, sig: Tensor, contexts: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        x, new = sig[:, :, None], []
        for i, layer in enumerate(self.layers):
            x, ctx = layer(x, contexts[i] if contexts else None)
            new.append(ctx)
        return x, new


@dataclass
class WavLMState:
    """Streaming state: conv front-end contexts and the transformer's state."""

    conv: list[Tensor]
    transformer: TransformerState


class WavLM(nn.Module):
    """`sig (B, N) at 16 kHz -> feats (B, T, D)` at 50 frames/s; causal mode streams with `WavLMState`."""

    def __init__(self, config: WavLMConfig):
        super().__init__()
        self.config = config
        with buildable("WavLM"):
            self.feature_extractor = FeatureExtractor(config)
            self.norm = nn.LayerNorm(config.hidden_dims[-1])
            self.feature_proj = Linear(config.hidden_dims[-1], config.dim)
            self.dropout = nn.Dropout(config.dropout)
            self.encoder = TransformerEncoder(
                num_layers=config.num_layers,
                dim=config.dim,
                ffn_dim=config.ffn_dim,
                num_heads=config.num_heads,
                num_buckets=config.num_buckets,
                max_distance=config.max_distance,
                dropout=config.dropout,
                causal=config.causal,
                window_size=config.window_size,
                chunk_size=1 + config.lookahead_size,
                conv_pos=config.conv_pos,
                conv_pos_groups=config.conv_pos_groups,
                final_norm=config.final_norm,
            )

    def extract(self, sig: Tensor, contexts: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """Normalised conv features `(B, T, hidden_dims[-1])` (Hugging Face's `extract_features`)."""
        x, contexts = self.feature_extractor(sig, contexts)
        return self.norm(x), contexts

    def forward(
        self, sig: Tensor, state: WavLMState | None = None, hidden: list[Tensor] | None = None
    ) -> tuple[Tensor, WavLMState | None]:
        """`sig (B, N) -> feats (B, T, D)`; `hidden`, if a list, receives every layer's input and the output."""
        x, contexts = self.extract(sig, state.conv if state is not None else None)
        x = self.dropout(self.feature_proj(x))
        x, tstate = self.encoder(x, state.transformer if state is not None else None, hidden=hidden)
        return x, (WavLMState(contexts, tstate) if self.config.causal else None)


# ---- Hugging Face import ------------------------------------------------------------------------------


def config_from_hf(values: dict, source: str | os.PathLike) -> WavLMConfig:
    """Translate a Hugging Face `WavLMConfig` dict; only the pre-LayerNorm ("large") layout is supported."""
    if values.get("model_type") != "wavlm":
        raise InputError(f"config '{source}' is not a WavLM config (model_type={values.get('model_type')!r})")
    if not values.get("do_stable_layer_norm") or values.get("feat_extract_norm") != "layer":
        raise InputError(
            f"config '{source}' describes a post-LayerNorm WavLM (base); only the pre-LayerNorm layout "
            "(microsoft/wavlm-large and its kind) can be imported"
        )
    return WavLMConfig(
        hidden_dims=list(values["conv_dim"]),
        kernel_sizes=list(values["conv_kernel"]),
        strides=list(values["conv_stride"]),
        num_layers=values["num_hidden_layers"],
        dim=values["hidden_size"],
        ffn_dim=values["intermediate_size"],
        num_heads=values["num_attention_heads"],
        num_buckets=values["num_buckets"],
        max_distance=values["max_bucket_distance"],
        conv_pos=values["num_conv_pos_embeddings"],
        conv_pos_groups=values["num_conv_pos_embedding_groups"],
        conv_bias=values["conv_bias"],
        final_norm=True,
    )


_HF_LAYER_NAMES = {
    "layer_norm": "attention_norm",
    "final_layer_norm": "feed_forward_norm",
    "feed_forward.intermediate_dense": "feed_forward.in_proj",
    "feed_forward.output_dense": "feed_forward.out_proj",
}


def state_from_hf(hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face WavLM state dict to ours: fuse q/k/v, fold the weight norm, move buckets."""
    hf = {k.removeprefix("wavlm."): v for k, v in hf.items()}
    out: dict[str, Tensor] = {}
    for key, value in hf.items():
        if key.startswith("feature_extractor.conv_layers."):
            out[key.replace("conv_layers.", "layers.").replace(".layer_norm.", ".norm.")] = value
        elif key.startswith("feature_projection."):
            out[key.replace("feature_projection.layer_norm", "norm").replace("feature_projection.projection", "feature_proj")] = value
        elif key.startswith("encoder.layer_norm."):
            out[key.replace("encoder.layer_norm", "encoder.norm")] = value
        elif key.startswith("encoder.layers."):
            _, _, index, rest = key.split(".", 3)
            prefix = f"encoder.layers.{index}."
            if rest.startswith("attention.rel_attn_embed."):
                out["encoder.relative_embedding." + rest.rsplit(".", 1)[1]] = value
            elif rest.startswith(("attention.q_proj.", "attention.k_proj.", "attention.v_proj.")):
                kind = rest.rsplit(".", 1)[1]
                if rest.startswith("attention.q_proj."):
                    parts = [hf[f"{prefix}attention.{p}_proj.{kind}"] for p in "qkv"]
                    out[f"{prefix}attention.qkv_proj.{kind}"] = torch.cat(parts, dim=0)
            else:
                for old, new in _HF_LAYER_NAMES.items():
                    if rest.startswith(old + "."):
                        rest = new + rest[len(old) :]
                        break
                out[prefix + rest] = value
    out.update(_fold_weight_norm(hf))
    return out


def _fold_weight_norm(hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """The positional conv is stored weight-normalised over the kernel axis: w = g * v / ||v||."""
    base = "encoder.pos_conv_embed.conv."
    g = hf.get(base + "parametrizations.weight.original0", hf.get(base + "weight_g"))
    v = hf.get(base + "parametrizations.weight.original1", hf.get(base + "weight_v"))
    if g is None or v is None:
        raise InputError("the Hugging Face WavLM checkpoint has no positional convolution weights")
    weight = g * v / v.norm(dim=(0, 1), keepdim=True)
    return {"encoder.positional_embedding.conv.weight": weight, "encoder.positional_embedding.conv.bias": hf[base + "bias"]}


def config_to_hf(config: WavLMConfig) -> dict:
    """A Hugging Face `WavLMConfig` dict (pre-LayerNorm layout) describing a bidirectional `WavLM`."""
    if not config.final_norm:
        raise ValueError("only a WavLM with a final LayerNorm has the Hugging Face pre-LayerNorm layout")
    return {
        "model_type": "wavlm",
        "architectures": ["WavLMModel"],
        "do_stable_layer_norm": True,
        "feat_extract_norm": "layer",
        "feat_extract_activation": "gelu",
        "hidden_act": "gelu",
        "conv_dim": list(config.hidden_dims),
        "conv_kernel": list(config.kernel_sizes),
        "conv_stride": list(config.strides),
        "conv_bias": config.conv_bias,
        "num_feat_extract_layers": len(config.hidden_dims),
        "num_hidden_layers": config.num_layers,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_attention_heads": config.num_heads,
        "num_buckets": config.num_buckets,
        "max_bucket_distance": config.max_distance,
        "num_conv_pos_embeddings": config.conv_pos,
        "num_conv_pos_embedding_groups": config.conv_pos_groups,
        "layer_norm_eps": 1e-5,
        "hidden_dropout": config.dropout,
        "attention_dropout": config.dropout,
        "activation_dropout": config.dropout,
        "feat_proj_dropout": config.dropout,
    }


def state_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our WavLM state dict in Hugging Face names (q/k/v split; the positional conv as weight norm g=|w|, v=w)."""
    out: dict[str, Tensor] = {}
    inverse = {new: old for old, new in _HF_LAYER_NAMES.items()}
    for key, value in state.items():
        if key.startswith("feature_extractor.layers."):
            out[key.replace("extractor.layers.", "extractor.conv_layers.").replace(".norm.", ".layer_norm.")] = value
        elif key.startswith("norm."):
            out["feature_projection.layer_norm." + key[5:]] = value
        elif key.startswith("feature_proj."):
            out["feature_projection.projection." + key[13:]] = value
        elif key.startswith("encoder.norm."):
            out["encoder.layer_norm." + key[13:]] = value
        elif key == "encoder.relative_embedding.weight":
            out["encoder.layers.0.attention.rel_attn_embed.weight"] = value
        elif key == "encoder.positional_embedding.conv.weight":
            g = value.norm(dim=(0, 1), keepdim=True)
            out["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = g
            out["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = value
        elif key == "encoder.positional_embedding.conv.bias":
            out["encoder.pos_conv_embed.conv.bias"] = value
        elif key.startswith("encoder.layers."):
            _, _, index, rest = key.split(".", 3)
            prefix = f"encoder.layers.{index}."
            if rest.startswith("attention.qkv_proj."):
                kind = rest.rsplit(".", 1)[1]
                for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}attention.{name}_proj.{kind}"] = part.contiguous()
            else:
                for new, old in inverse.items():
                    if rest.startswith(new + "."):
                        rest = old + rest[len(new) :]
                        break
                out[prefix + rest] = value
    return out


def save_hf(model: WavLM, folder: str | os.PathLike):
    """Write `model` (bidirectional, with a final norm) as a Hugging Face WavLM folder that `from_hf` reads."""
    return hub.save_folder(folder, config_to_hf(model.config), state_to_hf(model.state_dict()))


_HF_IGNORED = ("masked_spec_embed", "quantizer.", "project_", "lm_head.", "adapter.")


def wavlm_ref(ref: str | os.PathLike) -> str:
    """An `ssl` run's export folder holds its WavLM in `wavlm/`; any other reference is taken as it is."""
    inner = os.path.join(ref, "wavlm")
    return inner if os.path.isfile(os.path.join(inner, "config.json")) else str(ref)


def from_hf(ref: str | os.PathLike) -> WavLM:
    """Load a Hugging Face WavLM (folder or Hub id, e.g. `microsoft/wavlm-large`, or an `ssl` run's export)
    as a bidirectional `WavLM`."""
    resolved = hub.resolve(wavlm_ref(ref))
    config = config_from_hf(hub.read_json(resolved.config), resolved.config)
    if resolved.weights is None:
        raise InputError(f"WavLM '{ref}' has no weights (model.safetensors or pytorch_model.bin)")
    hf = {k: v for k, v in hub.load_weights(resolved.weights).items() if not k.removeprefix("wavlm.").startswith(_HF_IGNORED)}
    model = WavLM(config)
    hub.load_state(model, state_from_hf(hf), resolved.weights)
    return model.eval()
