"""The decoder sub-stage: the waveform decoder trained on features, as a GAN (mel L1 + hinge + feature
matching against HiFi-GAN's multi-period and multi-scale discriminators), or by its spectral and pitch
losses alone when `loss.adv` and `loss.fm` are 0 (no discriminator then).

Its features are the teacher's (the recipe), or with `decoder_input: codec` the trained codec's own
decompressed tokens (a fine-tune after joint that moves nothing but the decoder). Each item is a crop of
`segment_seconds` (3 s by default) at the decoder's output rate, with `context_seconds` each side that only
the feature extractor hears. A decoder that predicts F0 and voicing (HarmonicNoise) is also taught pYIN's
tracks of the crop. The discriminator is exported beside the codec, so a later decoder run continues it.
"""

from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from ... import hub
from ...audio import resample
from ...codec import Codec
from ...errors import InputError
from ...io import write_atomic
from ..losses import (
    discriminator_adv_loss,
    feature_matching_loss,
    generator_adv_loss,
    mel_loss,
    multi_resolution_stft_loss,
    pitch_losses,
)
from .base import DECODER_INPUT_CODEC, CodecStage, pitch_track, trained_params
from .config import CodecStageConfig
from .teacher import fit_length


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


class DecoderSubstage(CodecStage):
    """Trains `generator` (the codec's decoder) and, with GAN terms, `discriminator`: one optimizer each."""

    name = "decoder"
    trains_decoder = True

    def _check_config(self, cfg: CodecStageConfig) -> None:
        if cfg.decoder_input == "codec" and not cfg.init_from:
            raise InputError(DECODER_INPUT_CODEC)

    def _needs_teacher(self) -> bool:
        return self.cfg.decoder_input == "teacher"  # a fine-tune on the codec's own tokens hears no teacher

    def _build_nets(self, device: torch.device) -> dict[str, nn.Module]:
        w = self.cfg.loss
        # A decoder trained by its spectral (and pitch) losses alone, with no GAN terms, needs no discriminator.
        self.disc = self._build_discriminator().to(device) if w.adv != 0 or w.fm != 0 else None
        nets = {"generator": self.codec.decoder}
        return {**nets, "discriminator": self.disc} if self.disc is not None else nets

    def _build_discriminator(self) -> nn.Module:
        disc = self.cfg.discriminator.build()
        saved = Path(self.cfg.init_from) / "discriminator.safetensors" if self.cfg.init_from else None
        if saved is not None and saved.is_file():
            hub.load_state(disc, hub.load_weights(saved), saved)
        return disc

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"gen": trained_params(self.raw["generator"])}
        if self.disc is not None:
            groups["disc"] = trained_params(self.raw["discriminator"])
        return groups

    # ---- data: crops with context ------------------------------------------------------------------------

    @cached_property
    def frame_rate(self) -> float:
        return Codec.sample_rate_input / self.codec.encoder.config.hop_length

    @cached_property
    def out_rate(self) -> int:
        """The decoder's output sample rate: the crops are read at it."""
        return round(self.frame_rate * self.codec.decoder.hop_length)

    @cached_property
    def frames(self) -> int:
        """S: the crop's frames that the decoder is trained on."""
        return round((self.cfg.data.segment_seconds or 3.0) * self.frame_rate)

    @cached_property
    def context(self) -> int:
        """Frames each side of the crop that only the feature extractor hears."""
        return round(self.cfg.data.context_seconds * self.frame_rate)

    def _segments(self) -> tuple[float, int]:
        return (self.frames + 2 * self.context) / self.frame_rate, self.out_rate

    def collate(self, items: list[dict]) -> dict[str, Tensor]:
        batch = super().collate(items)
        # The target is at the output rate; the teacher listens at 16 kHz.
        batch["sig_in"] = resample(batch["sig"], self.out_rate, Codec.sample_rate_input)
        if hasattr(self.codec.decoder, "controls"):
            batch["f0"], batch["voiced"] = self._pitch_targets(batch["sig_in"])
        return batch

    def _pitch_targets(self, sig_in: Tensor) -> tuple[Tensor, Tensor]:
        """pYIN F0 `(B, S)` (Hz, 0 where unvoiced) and voicing `(B, S)` of the crop's middle frames, each
        track frame centred on its codec frame's samples."""
        hop = self.codec.encoder.config.hop_length
        dec = self.codec.decoder.config
        start = self.context * hop + hop // 2
        f0, voiced = pitch_track(sig_in[:, start : start + self.frames * hop], hop,
                                 fmin=max(dec.f0_min, 50.0), fmax=min(dec.f0_max, 600.0))
        return f0[:, : self.frames], voiced[:, : self.frames]

    # ---- steps -------------------------------------------------------------------------------------------

    def train_step(self, batch: dict[str, Tensor]) -> Iterator[tuple[str, Tensor, dict[str, float]]]:
        feats, real = self._decoder_pair(batch)
        fake, pitch = self._generate(feats, real, batch)
        w = self.cfg.loss
        if self.disc is None:
            terms = {"mel": mel_loss(fake, real, self.out_rate, **self._mel())}
            loss = w.mel * terms["mel"]
        else:
            # Both optimizers step after the batch, so D and G see the same discriminator weights.
            disc_loss, real_feats = discriminator_step(self.nets["discriminator"], real, fake)
            yield "disc", disc_loss, {"disc_loss": disc_loss.detach()}
            terms = generator_losses(self.raw["discriminator"], fake, real, real_feats, self.out_rate, self._mel())
            loss = w.mel * terms["mel"] + w.adv * terms["adv"] + w.fm * terms["fm"]
        if w.stft:
            terms["stft"] = multi_resolution_stft_loss(fake, real)
            loss = loss + w.stft * terms["stft"]
        if pitch:
            loss = loss + w.f0 * pitch["f0"] + w.voicing * pitch["voicing"] + w.f0_delta * pitch["f0_delta"]
        yield "gen", loss, {"loss": loss.detach(), **{k: v.detach() for k, v in {**terms, **pitch}.items()}}

    def valid_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        feats, real = self._decoder_pair(batch)
        fake, pitch = self._generate(feats, real, batch)
        mel = mel_loss(fake, real, self.out_rate, **self._mel()).item()
        return {"loss": mel, "mel": mel, **{k: v.item() for k, v in pitch.items()}}

    def _generate(self, feats: Tensor, real: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The decoder's waveform for `feats`, cut to `real`'s length, and, for a decoder that predicts F0 and
        voicing, their losses against the pYIN targets (plus the voicing error rate and gross pitch error)."""
        if "f0" not in batch:
            return fit_length(self.nets["generator"](feats)[0], real.shape[1]), {}
        fake, _, controls = self.nets["generator"](feats, with_controls=True)
        size = min(controls.f0.shape[1], batch["f0"].shape[1])
        device = controls.f0.device
        pitch = pitch_losses(controls.f0[:, :size].log2(), torch.logit(controls.voicing[:, :size], eps=1e-6),
                             batch["f0"][:, :size].to(device), batch["voiced"][:, :size].to(device))
        return fit_length(fake, real.shape[1]), pitch

    def _mel(self) -> dict:
        loss = self.cfg.loss
        return {"n_fft": loss.mel_n_fft, "hop": self.codec.decoder.hop_length, "n_mels": loss.mel_bands}

    def _decoder_pair(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Features of the crop's middle `(B, S, D)` and the matching waveform `(B, S * hop)`: the teacher's,
        or with `decoder_input: codec` the codec's own decompressed tokens (what the decoder meets in use)."""
        with torch.no_grad():
            if self.cfg.decoder_input == "codec":
                feats = self.codec.dequantize(self.codec.encode(batch["sig_in"]))
            else:
                feats, _ = self.teacher(batch["sig_in"])
        start, hop = self.context, self.codec.decoder.hop_length
        size = min(self.frames, feats.shape[1] - start)  # without context the last frame lacks its window
        return feats[:, start : start + size], batch["sig"][:, start * hop : (start + size) * hop]

    # ---- export ------------------------------------------------------------------------------------------

    def export(self, folder: Path) -> None:
        """The codec and, with a discriminator, `folder/discriminator.safetensors` for a later decoder run."""
        super().export(folder)
        if self.disc is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.disc.state_dict().items()}
            data = safetensors_bytes(state, metadata={"format": "pt"})
            write_atomic(Path(folder) / "discriminator.safetensors", data)
