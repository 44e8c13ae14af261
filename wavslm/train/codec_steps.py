"""The pieces of the `codec` stage: the frozen teacher, frame bookkeeping, the trained networks, the losses.

Every trained network is an `nn.Module` whose `forward` does the whole trained computation, so the loop
can wrap it in DistributedDataParallel; the frozen teacher stays outside (run under `no_grad`).
See `docs/codec_training.md` for the recipe and `codec_stage.py` for how the sub-stages use these.
"""

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import hub
from ..config import to_dict
from ..errors import InputError
from ..modules.bsq import straight_through
from ..modules.focal import FocalCompressor, FocalDecompressor
from ..wavlm import WavLM, WavLMConfig, config_from_hf, from_hf, wavlm_ref
from .losses import discriminator_adv_loss, feature_matching_loss, generator_adv_loss, mel_loss

# WavLMConfig fields that fix the weights' shapes and meaning: the causal encoder must copy the teacher's.
ARCHITECTURE = ("hidden_dims", "kernel_sizes", "strides", "dim", "ffn_dim", "num_heads", "num_buckets",
                "max_distance", "conv_pos", "conv_pos_groups", "conv_bias")


# ---- the teacher ----------------------------------------------------------------------------------------


def teacher_config(ref: str) -> WavLMConfig:
    """The architecture of the teacher `ref`: a Hugging Face-layout WavLM, or a FocalCodec whose encoder it is."""
    resolved = hub.resolve(wavlm_ref(ref))
    values = hub.read_json(resolved.config)
    if "encoder_config" in values:  # a FocalCodec folder: its (non-causal) encoder is the teacher, as in the recipe
        from ..codec import Codec, CodecConfig
        from ..config import from_dict

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
        from ..codec import Codec

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


# ---- frames ---------------------------------------------------------------------------------------------


def num_frames(lengths: Tensor, config: WavLMConfig) -> Tensor:
    """Frames the conv front end of `config` makes from `lengths (B,)` samples (causal: left padded)."""
    n = lengths.clone()
    for k, s in zip(config.kernel_sizes, config.strides, strict=True):
        n = (n + s - 1) // s if config.causal else ((n - k).clamp(min=0) // s + 1)
    return n


def frame_mask(frames: Tensor, size: int) -> Tensor:
    """`(B, size)` bool: True for the first `frames[b]` frames of row b."""
    return torch.arange(size, device=frames.device)[None, :] < frames[:, None]


def fit_length(x: Tensor, size: int) -> Tensor:
    """Trim or right-pad (repeating the last element) `x (B, T, ...)` along time to `size`."""
    if x.shape[1] >= size:
        return x[:, :size]
    last = x[:, -1:].expand(x.shape[0], size - x.shape[1], *x.shape[2:])
    return torch.cat([x, last], dim=1)


# ---- the networks ---------------------------------------------------------------------------------------


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


class LayerStudent(nn.Module):
    """The causal encoder being distilled: `sig (B, N)` -> its layer outputs, a list of `(B, T, D)`."""

    def __init__(self, encoder: WavLM):
        super().__init__()
        self.encoder = encoder

    def forward(self, sig: Tensor) -> list[Tensor]:
        return layer_outputs(self.encoder, sig)


def without_refiner(decompressor: FocalDecompressor) -> FocalDecompressor:
    """The same decompressor (shared weights) minus its chunk refiner, as the recipe's quantizer stage trains it."""
    if decompressor.refiner is None:
        return decompressor
    with torch.device("meta"):
        view = FocalDecompressor(dataclasses.replace(decompressor.config, lookahead_size=0))
    view.in_proj, view.dropout, view.layers = decompressor.in_proj, decompressor.dropout, decompressor.layers
    return view


class QuantizedStudent(nn.Module):
    """(encoder ->) compressor -> BSQ (straight-through) -> decompressor.

    `forward(x) -> (qfeats (B, T', D), lats (B, T', bits))`, where `x` is `sig (B, N)` when an encoder
    is given (joint fine-tuning) and `feats (B, T, D)` otherwise (the quantizer stage).
    """

    def __init__(self, encoder: WavLM | None, compressor: FocalCompressor, decompressor: FocalDecompressor):
        super().__init__()
        self.encoder, self.compressor, self.decompressor = encoder, compressor, decompressor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = layer_outputs(self.encoder, x)[-1] if self.encoder is not None else x
        lats, _ = self.compressor(feats)
        # Normalise first, then straight-through (the recipe): the gradient is that of the unit-sphere point.
        codes = straight_through(F.normalize(lats, dim=-1))
        qfeats, _ = self.decompressor(codes)
        return qfeats, lats


# ---- the decoder GAN ------------------------------------------------------------------------------------


def split_halves(logits: Sequence[Tensor], feats: Sequence[Sequence[Tensor]]):
    """Outputs of one discriminator pass over `cat([real, fake])` -> (real, fake) logits and feature maps."""
    half = logits[0].shape[0] // 2
    real = ([x[:half] for x in logits], [[f[:half] for f in fs] for fs in feats])
    fake = ([x[half:] for x in logits], [[f[half:] for f in fs] for fs in feats])
    return real, fake


def discriminator_step(disc: nn.Module, real: Tensor, fake: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
    """Hinge loss of `disc` on `real` and the detached `fake (B, N)`, in one pass; also the real feature maps."""
    logits, feats = disc(torch.cat([real, fake.detach()]))
    (real_logits, real_feats), (fake_logits, _) = split_halves(logits, feats)
    return discriminator_adv_loss(real_logits, fake_logits, kind="hinge"), real_feats


def generator_losses(
    disc: nn.Module, fake: Tensor, real: Tensor, real_feats: Sequence[Sequence[Tensor]], sample_rate: int, mel: dict
) -> dict[str, Tensor]:
    """Mel L1, hinge adversarial and feature-matching losses of `fake` against `real (B, N)`.

    `disc` is the raw (not DDP-wrapped) discriminator; its weights are frozen for this pass, so the
    gradient reaches the generator only, and DDP never sees a second, parameter-free use of it.
    """
    disc.requires_grad_(False)
    try:
        fake_logits, fake_feats = disc(fake)
    finally:
        disc.requires_grad_(True)
    return {
        "mel": mel_loss(fake, real, sample_rate, **mel),
        "adv": generator_adv_loss(fake_logits, kind="hinge"),
        "fm": feature_matching_loss(real_feats, fake_feats),
    }
