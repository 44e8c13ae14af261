"""The frozen teacher WavLM, and a WavLM run frame by frame as the sub-stages' targets need it.

The teacher stays outside the trained networks and runs under `no_grad`; the codec's encoder copies its
architecture (`ARCHITECTURE`) and, in a fresh codec, its front end and first layers.
"""

import dataclasses

import torch
from torch import Tensor

from ... import hub
from ...config import to_dict
from ...errors import InputError
from ...wavlm import WavLM, WavLMConfig, config_from_hf, from_hf, wavlm_ref

# WavLMConfig fields that fix the weights' shapes and meaning: the causal encoder must copy the teacher's.
ARCHITECTURE = ("hidden_dims", "kernel_sizes", "strides", "dim", "ffn_dim", "num_heads", "num_buckets",
                "max_distance", "conv_pos", "conv_pos_groups", "conv_bias")


# ---- the teacher ----------------------------------------------------------------------------------------


def teacher_config(ref: str) -> WavLMConfig:
    """The architecture of the teacher `ref`: a Hugging Face-layout WavLM, or a FocalCodec whose encoder it is."""
    resolved = hub.resolve(wavlm_ref(ref))
    values = hub.read_json(resolved.config)
    if "encoder_config" in values:  # a FocalCodec folder: its (non-causal) encoder is the teacher, as in the recipe
        from ...codec import Codec, CodecConfig
        from ...config import from_dict

        config = from_dict(CodecConfig, values, f"codec config '{resolved.config}'")
        if config.encoder_name != "WavLM":
            raise InputError(f"teacher '{ref}': its encoder is {config.encoder_name!r}, not a WavLM")
        with torch.device("meta"):
            return Codec(config).encoder.config
    return config_from_hf(values, resolved.config)


def load_teacher(ref: str, layers: int) -> WavLM:
    """The frozen teacher: the conv front end and the first `layers` transformer layers of `ref`, no final norm.

    Its output is the recipe's target features ("layer 6 of WavLM-Large, no final norm" at paper scale).
    """
    config = teacher_config(ref)
    if config.causal:
        raise InputError(f"teacher '{ref}' is causal; the recipe distils from a non-causal (full-context) WavLM")
    if not 1 <= layers <= config.num_layers:
        raise InputError(f"teacher_layers must be in [1, {config.num_layers}] for teacher '{ref}', got {layers}")
    if "encoder_config" in hub.read_json(hub.resolve(wavlm_ref(ref)).config):
        from ...codec import Codec

        full = Codec.from_pretrained(ref).encoder
    else:
        full = from_hf(ref)
    keep = {k: v for k, v in full.state_dict().items()
            if not k.startswith("encoder.norm.") and not _layer_at_or_above(k, layers)}
    teacher = WavLM(dataclasses.replace(config, num_layers=layers, final_norm=False))
    hub.load_state(teacher, keep, ref)
    return teacher.eval().requires_grad_(False)


def _layer_at_or_above(key: str, layers: int) -> bool:
    parts = key.split(".")
    return key.startswith("encoder.layers.") and int(parts[2]) >= layers


def encoder_config(teacher: WavLMConfig, layers: int, given: dict) -> dict:
    """The codec's `encoder_config`: the teacher's architecture with `layers` layers, causal by default,
    overridden by the keys `given`; any architecture key that then differs from the teacher's is an error."""
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(WavLMConfig)})
    if unknown:
        raise InputError(f"codec.encoder_config has unknown keys {unknown}")
    base = to_dict(teacher)
    values = {**base, "num_layers": layers, "final_norm": False, "causal": True, **given}
    required = {**{k: base[k] for k in ARCHITECTURE}, "num_layers": layers, "final_norm": False}
    for key, want in required.items():
        if values[key] != want:
            raise InputError(f"codec.encoder_config.{key} is {values[key]!r} but must be {want!r} to copy the "
                             f"teacher's first {layers} layers; leave it out to take the teacher's")
    return values


# ---- a WavLM, frame by frame ----------------------------------------------------------------------------


def layer_outputs(wavlm: WavLM, sig: Tensor) -> list[Tensor]:
    """Every transformer layer's output `(B, T, D)` for `sig (B, N)`, one pass, no key/value cache."""
    x, _ = wavlm.extract(sig)
    hidden: list[Tensor] = []
    wavlm.encoder(wavlm.dropout(wavlm.feature_proj(x)), use_cache=False, hidden=hidden)
    return hidden[1:]


def posemb_input(wavlm: WavLM, sig: Tensor) -> Tensor:
    """What the positional convolution of `wavlm` sees: the projected front-end features `(B, T, D)`."""
    x, _ = wavlm.extract(sig)
    return wavlm.dropout(wavlm.feature_proj(x))


def frame_mask(frames: Tensor, size: int) -> Tensor:
    """`(B, size)` bool: True for the first `frames[b]` frames of row b."""
    return torch.arange(size, device=frames.device)[None, :] < frames[:, None]


def fit_length(x: Tensor, size: int) -> Tensor:
    """Trim or right-pad (repeating the last element) `x (B, T, ...)` along time to `size`."""
    if x.shape[1] >= size:
        return x[:, :size]
    last = x[:, -1:].expand(x.shape[0], size - x.shape[1], *x.shape[2:])
    return torch.cat([x, last], dim=1)
