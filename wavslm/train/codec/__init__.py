"""The `codec` stage: trains a FocalCodec-Stream codec from a frozen teacher WavLM (`docs/codec_training.md`).

One run trains one sub-stage (`substage`); the next starts from its export through `init_from`:

    decoder    WaveNeXt (GAN: mel + hinge + feature matching vs MPD + MSD) on the teacher's features
               (`decoder_input: codec`: on the trained codec's own decompressed tokens, a fine-tune after joint)
    posemb     causal positional convolution, distilled from the teacher's (same input, its output)
    encoder    causal WavLM (teacher's first layers, chunked attention), layer-wise MSE to the teacher
    quantizer  compressor + BSQ + decompressor without refiner, on the frozen causal encoder's features
    joint      encoder + compressor + decompressor (with its refiner) to the teacher's features

Each sub-stage is a class (`SUBSTAGES`) over `base.CodecStage`, which holds what they share. A fresh codec
(no `init_from`) copies the teacher's front end and first `teacher_layers` layers into its encoder; every
other part starts at its initialisation. The teacher's targets are computed on the fly. The export is a
complete codec in the released FocalCodec layout (`export/codec`), plus the decoder's discriminator
(`export/discriminator.safetensors`) after a decoder run, so a later decoder run continues it.
"""

import torch

from ...errors import InputError
from .base import CodecStage
from .config import CodecStageConfig
from .decoder import DecoderSubstage
from .encoder import EncoderSubstage, PosembSubstage
from .quantized import JointSubstage, QuantizerSubstage

SUBSTAGES: dict[str, type[CodecStage]] = {
    "decoder": DecoderSubstage,
    "posemb": PosembSubstage,
    "encoder": EncoderSubstage,
    "quantizer": QuantizerSubstage,
    "joint": JointSubstage,
}


def build_codec_stage(cfg: CodecStageConfig, device: torch.device) -> CodecStage:
    """The sub-stage that `cfg.substage` names, ready for the loop: what `wavslm train codec` runs."""
    if cfg.substage not in SUBSTAGES:
        raise InputError(f"codec stage: substage must be one of {', '.join(SUBSTAGES)}, got {cfg.substage!r}")
    return SUBSTAGES[cfg.substage](cfg, device)


__all__ = ["SUBSTAGES", "CodecStage", "CodecStageConfig", "build_codec_stage"]
