"""The sub-stages that make the encoder causal, distilled from the non-causal teacher on the same input.

    posemb   the causal positional convolution alone, to the teacher's (its input, its output)
    encoder  the whole causal WavLM (front end, chunked attention), layer-wise MSE to the teacher's layers;
             the positional convolution and the relative position bias keep their weights
"""

import torch
from torch import Tensor, nn

from ...errors import InputError
from ...wavlm import WavLM, num_frames
from ..losses import feature_mse, layerwise_feature_mse
from .base import FeatureSubstage
from .teacher import fit_length, frame_mask, layer_outputs, posemb_input


class PosembSubstage(FeatureSubstage):
    """Trains `posemb`, the encoder's positional convolution."""

    name = "posemb"
    causal_encoder = True

    def _check_codec(self) -> None:
        super()._check_codec()
        if not self.codec.encoder.config.conv_pos:
            raise InputError("codec stage: substage posemb needs a convolutional positional embedding "
                             "(conv_pos > 0)")

    def _build_nets(self, device: torch.device) -> dict[str, nn.Module]:
        return {"posemb": self.codec.encoder.encoder.positional_embedding}

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        teacher = self.teacher
        with torch.no_grad():
            x = posemb_input(teacher, batch["sig"])
            target, _ = teacher.encoder.positional_embedding(x)
        pred, _ = self.nets["posemb"](x)
        loss = feature_mse(pred, target, frame_mask(num_frames(batch["length"], teacher.config), x.shape[1]))
        return loss, {"loss": loss.detach()}


class LayerStudent(nn.Module):
    """The causal encoder being distilled: `sig (B, N)` -> its layer outputs, a list of `(B, T, D)`."""

    def __init__(self, encoder: WavLM):
        super().__init__()
        self.encoder = encoder

    def forward(self, sig: Tensor) -> list[Tensor]:
        return layer_outputs(self.encoder, sig)


class EncoderSubstage(FeatureSubstage):
    """Trains `encoder`, the causal WavLM, layer by layer against the teacher (`loss.layer_weights`)."""

    name = "encoder"
    causal_encoder = True

    def _check_codec(self) -> None:
        super()._check_codec()
        weights, layers = self.cfg.loss.layer_weights, self.codec.encoder.config.num_layers
        if len(weights) != layers:
            raise InputError(f"codec stage: loss.layer_weights has {len(weights)} weights for {layers} encoder "
                             "layers")

    def _build_nets(self, device: torch.device) -> dict[str, nn.Module]:
        return {"encoder": LayerStudent(self.codec.encoder)}

    def _fixed_parts(self) -> list[nn.Module]:
        return self._encoder_positions()

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        teacher, sig = self.teacher, batch["sig"]
        with torch.no_grad():
            targets = layer_outputs(teacher, sig)
        size = targets[0].shape[1]
        preds = [fit_length(p, size) for p in self.nets["encoder"](sig)]
        mask = frame_mask(num_frames(batch["length"], teacher.config), size)
        loss = layerwise_feature_mse(preds, targets, self.cfg.loss.layer_weights, mask)
        return loss, {"loss": loss.detach(), "last_layer_mse": feature_mse(preds[-1], targets[-1], mask).detach()}
