"""The sub-stages that train through the binary spherical quantizer, on feature MSE plus BSQ's entropy loss:

    quantizer  compressor + BSQ + decompressor without its refiner, on the frozen causal encoder's features
               (the target is those features themselves)
    joint      encoder + compressor + decompressor with its refiner, to the non-causal teacher's features;
               the encoder's positional convolution and relative position bias keep their weights

With `loss.pitch`, a linear probe on the decompressed features is also taught pYIN's F0 and voicing, so the
tokens keep the pitch a harmonic decoder needs; the probe is a training aid and is not exported.
"""

import dataclasses
import math
from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...modules.bsq import straight_through
from ...modules.focal import FocalCompressor, FocalDecompressor
from ...wavlm import WavLM, num_frames
from ..losses import bsq_entropy_loss, feature_mse, pitch_losses
from .base import FeatureSubstage, pitch_track
from .config import CodecStageConfig
from .teacher import fit_length, frame_mask, layer_outputs


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


class QuantizedSubstage(FeatureSubstage):
    """Trains a `QuantizedStudent` (and the pitch probe, `pitch_probe`, with `loss.pitch`)."""

    def __init__(self, cfg: CodecStageConfig, device: torch.device):
        self._pitch_cache: dict[str, tuple[Tensor, Tensor]] = {}  # whole utterances' pYIN tracks, by path
        super().__init__(cfg, device)

    @abstractmethod
    def _student(self) -> dict[str, nn.Module]:
        """The trained `QuantizedStudent` by name (the name its checkpoints keep)."""

    @abstractmethod
    def _distil(self, sig: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`qfeats (B, T', D)` and `lats (B, T', bits)` of `sig (B, N)`, the target `(B, T, D)` and each row's
        valid target frames `(B,)`."""

    def _build_nets(self, device: torch.device) -> dict[str, nn.Module]:
        probe = {}
        if self.cfg.loss.pitch:
            probe["pitch_probe"] = nn.Linear(self.codec.feature_dim, 2).to(device)
        return {**self._student(), **probe}

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        w = self.cfg.loss
        qfeats, lats, target, frames = self._distil(batch["sig"], batch["length"])
        mse = feature_mse(fit_length(qfeats, target.shape[1]), target, frame_mask(frames, target.shape[1]))
        entropy = bsq_entropy_loss(lats, w.inv_temperature, w.diversity_gamma)  # all frames, as the recipe
        loss = mse + w.entropy * entropy
        metrics = {"mse": mse.detach(), "entropy": entropy.detach()}
        if "pitch_probe" in self.nets:
            pitch = self._probe_loss(qfeats, batch["f0"], batch["voiced"])
            loss = loss + w.pitch * (pitch["f0"] + pitch["voicing"])
            metrics.update({f"probe_{k}": v.detach() for k, v in pitch.items()})
        return loss, {"loss": loss.detach(), **metrics}

    # ---- the pitch probe -----------------------------------------------------------------------------

    def collate(self, items: list[dict]) -> dict[str, Tensor]:
        batch = super().collate(items)
        if "pitch_probe" in self.nets:
            batch["f0"], batch["voiced"] = self._utterance_pitch(items)
        return batch

    def _utterance_pitch(self, items: list[dict]) -> tuple[Tensor, Tensor]:
        """pYIN F0 `(B, T)` (0 where unvoiced, -1 past the end) and voicing `(B, T)` of the items, one frame
        per token. Whole utterances (no `segment_seconds`) are tracked once per run and kept, as they are read
        epoch after epoch; crops differ every time and are tracked as they come."""
        hop = self.codec.samples_per_token
        whole = self.cfg.data.segment_seconds <= 0
        rows = []
        for item in items:
            row = self._pitch_cache.get(item["path"]) if whole else None
            if row is None:
                row = pitch_track(item["sig"][hop // 2 : item["length"]], hop)  # frame t centred on token t
                if whole:
                    self._pitch_cache[item["path"]] = row
            rows.append(row)
        size = max(len(f0) for f0, _ in rows)
        f0 = torch.full((len(rows), size), -1.0)  # -1: past the utterance's end
        voiced = torch.zeros(len(rows), size)
        for i, (a, b) in enumerate(rows):
            f0[i, : len(a)], voiced[i, : len(b)] = a, b
        return f0, voiced

    def _probe_loss(self, qfeats: Tensor, f0: Tensor, voiced: Tensor) -> dict[str, Tensor]:
        """The pitch probe's losses (`pitch_losses`): it predicts log2 F0 around 150 Hz and a voicing logit."""
        out = self.nets["pitch_probe"](qfeats)
        size = min(out.shape[1], f0.shape[1])
        return pitch_losses(out[:, :size, 0] + math.log2(150.0), out[:, :size, 1], f0[:, :size].to(out.device),
                            voiced[:, :size].to(out.device))


class QuantizerSubstage(QuantizedSubstage):
    """Trains `quantizer`: the compressor and the decompressor without its refiner."""

    name = "quantizer"

    def _needs_teacher(self) -> bool:
        return not self.cfg.init_from  # a trained encoder makes the targets; a fresh one copies the teacher

    def _student(self) -> dict[str, nn.Module]:
        codec = self.codec
        return {"quantizer": QuantizedStudent(None, codec.compressor, without_refiner(codec.decompressor))}

    def _distil(self, sig: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        encoder = self.codec.encoder
        with torch.no_grad():
            target = layer_outputs(encoder, sig)[-1]
        qfeats, lats = self.nets["quantizer"](target)
        return qfeats, lats, target, num_frames(length, encoder.config)


class JointSubstage(QuantizedSubstage):
    """Trains `codec`: the encoder, the compressor and the whole decompressor, against the teacher."""

    name = "joint"
    causal_encoder = True

    def _student(self) -> dict[str, nn.Module]:
        codec = self.codec
        return {"codec": QuantizedStudent(codec.encoder, codec.compressor, codec.decompressor)}

    def _fixed_parts(self) -> list[nn.Module]:
        return self._encoder_positions()

    def _distil(self, sig: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():
            target, _ = self.teacher(sig)
        qfeats, lats = self.nets["codec"](sig)
        return qfeats, lats, target, num_frames(length, self.teacher.config)
