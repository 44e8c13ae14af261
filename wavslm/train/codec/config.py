"""The `codec:` section of a preset: the sub-stage to train, its teacher, codec, data, losses and training."""

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ...presets import focalcodec_stream
from ..discriminators import hifigan_discriminator
from ..loop import TrainConfig


def _paper_codec() -> dict[str, Any]:
    """FocalCodec-Stream 50 Hz, 4096 codes; the encoder's architecture comes from the teacher."""
    config = vars(focalcodec_stream(4096)).copy()
    config["encoder_config"] = {"causal": True, "window_size": 512, "lookahead_size": 3}
    return config


@dataclass
class CodecDataConfig:
    train: str = ""  # JSONL manifest
    valid: str = ""  # JSONL manifest ("" for none)
    segment_seconds: float = 0.0  # crop length; 0: decoder 3 s (150 frames), the others whole utterances
    context_seconds: float = 1.0  # decoder: audio each side of the crop that only the teacher sees
    max_seconds: float = 320.0  # feature sub-stages: leave out longer utterances
    random_crop: bool = True  # False: every epoch takes the same crops (start of file / fixed)


@dataclass
class CodecLossConfig:
    mel: float = 45.0
    adv: float = 1.0
    fm: float = 54.0
    entropy: float = 0.1
    layer_weights: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # one per teacher layer
    inv_temperature: float = 100.0
    diversity_gamma: float = 1.0
    mel_n_fft: int = 1024
    mel_bands: int = 80  # hop = the decoder's, 0 Hz to Nyquist
    # A decoder that predicts F0 and voicing (HarmonicNoise) is taught them from pYIN tracks of the input:
    f0: float = 10.0  # L1 of log2 F0 (octaves) on frames pYIN calls voiced
    voicing: float = 5.0  # binary cross-entropy of the voicing against pYIN's decision
    f0_delta: float = 0.0  # L1 of the frame-to-frame change of log2 F0 against the track's (0: off)
    stft: float = 0.0  # multi-resolution STFT loss (spectral convergence + log magnitude)
    # quantizer and joint: a linear probe on the decompressed features is taught pYIN's F0 and voicing
    # alongside them, so the tokens keep the pitch a harmonic decoder needs (0: off)
    pitch: float = 0.0


@dataclass
class DiscriminatorConfig:
    """HiFi-GAN's multi-period + multi-scale discriminator (the recipe's sizes by default)."""

    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    period_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    period_kernel_size: int = 5
    period_stride: int = 3
    num_scales: int = 3
    scale_channels: tuple[int, ...] = (128, 128, 256, 512, 1024, 1024, 1024)
    scale_kernel_sizes: tuple[int, ...] = (15, 41, 41, 41, 41, 41, 5)
    scale_strides: tuple[int, ...] = (1, 2, 2, 4, 4, 1, 1)
    scale_groups: tuple[int, ...] = (1, 4, 16, 16, 16, 16, 1)

    def build(self) -> nn.Module:
        mpd = {"periods": self.periods, "channels": self.period_channels, "kernel_size": self.period_kernel_size,
               "stride": self.period_stride}
        msd = {"num_scales": self.num_scales, "channels": self.scale_channels,
               "kernel_sizes": self.scale_kernel_sizes, "strides": self.scale_strides, "groups": self.scale_groups}
        return hifigan_discriminator(mpd, msd)


@dataclass
class CodecStageConfig:
    LEGACY_KEYS: ClassVar[dict[str, str | None]] = {
        "teacher_allow_pickle": None,  # pickled weights load without it now
        "step": "substage",  # renamed: "step" is the optimizer's counter
    }

    substage: str = "decoder"  # decoder | posemb | encoder | quantizer | joint
    teacher: str = "microsoft/wavlm-large"  # Hugging Face-layout WavLM (or a FocalCodec folder: its encoder)
    teacher_layers: int = 6
    codec: dict = field(default_factory=_paper_codec)  # CodecConfig keys; {} with init_from: take its config
    init_from: str = ""  # a previous run's export folder (or any codec folder / hub id); "" for fresh
    decoder_from: str = ""  # optional: take the decoder from this export (a decoder run done in parallel)
    decoder_input: str = "teacher"  # substage decoder: teacher (the recipe) | codec (fine-tune on its own tokens)
    data: CodecDataConfig = field(default_factory=CodecDataConfig)
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, batch_size=16, schedule="plateau"))
