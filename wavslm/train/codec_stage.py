"""The `codec` stage: trains a FocalCodec-Stream codec from a frozen teacher WavLM (`docs/codec_training.md`).

One run trains one sub-stage (`step`); the next starts from its export through `init_from`:

    decoder    WaveNeXt (GAN: mel + hinge + feature matching vs MPD + MSD) on the teacher's features
               (`decoder_input: codec`: on the trained codec's own decompressed tokens, a fine-tune after joint)
    posemb     causal positional convolution, distilled from the teacher's (same input, its output)
    encoder    causal WavLM (teacher's first layers, chunked attention), layer-wise MSE to the teacher
    quantizer  compressor + BSQ + decompressor without refiner, on the frozen causal encoder's features
    joint      encoder + compressor + decompressor (with its refiner) to the teacher's features

A fresh codec (no `init_from`) copies the teacher's front end and first `teacher_layers` layers into its
encoder; every other part starts at its initialisation. The teacher's targets are computed on the fly.
The export is a complete codec in the released FocalCodec layout (`export/codec`), plus the decoder's
discriminator (`export/discriminator.safetensors`) after a decoder run, so a later decoder run continues it.
"""

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from .. import hub
from ..audio import resample
from ..codec import Codec, CodecConfig
from ..config import from_dict, to_dict
from ..data.manifest import as_entries, write_atomic
from ..data.segments import AudioSegments, collate_segments
from ..errors import InputError
from ..presets import focalcodec_stream
from . import codec_steps as steps
from .discriminators import hifigan_discriminator
from .loop import TrainConfig
from .losses import (
    bsq_entropy_loss,
    feature_mse,
    layerwise_feature_mse,
    mel_loss,
    multi_resolution_stft_loss,
    pitch_losses,
)

log = logging.getLogger("wavslm.train")

STEPS = ("decoder", "posemb", "encoder", "quantizer", "joint")
PARTS = ("encoder", "compressor", "quantizer", "decompressor", "decoder")


def _paper_codec() -> dict[str, Any]:
    """FocalCodec-Stream 50 Hz, 4096 codes; the encoder's architecture comes from the teacher."""
    config = vars(focalcodec_stream(4096)).copy()
    config["encoder_config"] = {"causal": True, "window_size": 512, "lookahead_size": 3}
    return config


@dataclass
class CodecDataConfig:
    train: str = ""  # JSONL manifest
    valid: str = ""  # JSONL manifest ("" for none)
    segment_seconds: float = 0.0  # crop length; 0: decoder 3 s (150 frames), feature stages whole utterances
    context_seconds: float = 1.0  # decoder: audio each side of the crop that only the teacher sees
    max_seconds: float = 320.0  # feature stages: leave out longer utterances
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
    LEGACY_KEYS: ClassVar[dict[str, str | None]] = {"teacher_allow_pickle": None}  # pickled weights load without it now

    step: str = "decoder"  # decoder | posemb | encoder | quantizer | joint
    teacher: str = "microsoft/wavlm-large"  # Hugging Face-layout WavLM (or a FocalCodec folder: its encoder)
    teacher_layers: int = 6
    codec: dict = field(default_factory=_paper_codec)  # CodecConfig keys; {} with init_from: take its config
    init_from: str = ""  # a previous run's export folder (or any codec folder / hub id); "" for fresh
    decoder_from: str = ""  # optional: take the decoder from this export (a decoder run done in parallel)
    decoder_input: str = "teacher"  # step decoder: teacher (the recipe) | codec (fine-tune on its own tokens)
    data: CodecDataConfig = field(default_factory=CodecDataConfig)
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, batch_size=16, schedule="plateau"))


def _pitch_track(sig: Tensor, hop: int, fmin: float = 50.0, fmax: float = 600.0) -> tuple[Tensor, Tensor]:
    """pYIN with the training settings (one frame per `hop` samples, 0.25-semitone resolution) of `sig (..., N)`
    at 16 kHz: F0 `(..., T)` in Hz, 0 where unvoiced, and voicing `(..., T)` as 0/1 floats."""
    from ..pitch import track

    f0, voiced = track(sig.numpy(), Codec.sample_rate_input, fmin=fmin, fmax=fmax, hop_length=hop, resolution=0.25)
    return torch.from_numpy(np.nan_to_num(f0)).float(), torch.from_numpy(voiced).float()


def _codec_ref(ref: str) -> str:
    """An export folder holds `codec/`; anything else is a codec reference itself."""
    return str(Path(ref) / "codec") if (Path(ref) / "codec" / "config.json").is_file() else ref


def _parts(codec: Codec) -> dict[str, dict]:
    """Each part's normalised config (defaults filled in), to compare two codecs' architectures."""
    parts = {name: to_dict(getattr(codec, name).config) for name in PARTS if name != "quantizer"}
    return {**parts, "quantizer": {"codebook_size": codec.quantizer.codebook_size}}


def _check_same(want: dict, have: dict, what: str, parts: tuple[str, ...] = PARTS) -> None:
    for part in parts:
        for key in sorted(set(want[part]) | set(have[part])):
            if want[part].get(key) != have[part].get(key):
                raise InputError(f"{what}: its {part} {key} is {have[part].get(key)!r}, the codec config says "
                                 f"{want[part].get(key)!r}; make them agree (or set codec: {{}} to take its config)")


class CodecStage:
    """One sub-stage of codec training (see the module notes); the loop drives it."""

    def __init__(self, cfg: CodecStageConfig, device: torch.device):
        if cfg.step not in STEPS:
            raise InputError(f"codec stage: step must be one of {', '.join(STEPS)}, got {cfg.step!r}")
        if cfg.decoder_input not in ("teacher", "codec"):
            raise InputError(f"codec stage: decoder_input must be teacher or codec, got {cfg.decoder_input!r}")
        if cfg.decoder_input == "codec" and (cfg.step != "decoder" or not cfg.init_from):
            raise InputError("codec stage: decoder_input codec fine-tunes the decoder of a trained codec: it needs "
                             "step decoder and init_from (e.g. the joint sub-stage's export)")
        if not cfg.data.train:
            raise InputError("codec stage: data.train (a JSONL manifest of audio files) is required")
        self.cfg, self.step = cfg, cfg.step
        # A quantizer run on a trained encoder, and a decoder fine-tune on the codec's own tokens, need no teacher.
        need_teacher = not (cfg.init_from and (cfg.step == "quantizer" or cfg.decoder_input == "codec"))
        self.teacher = steps.load_teacher(cfg.teacher, cfg.teacher_layers).to(device) if need_teacher else None
        self.codec = self._build_codec(steps.teacher_config(cfg.teacher)).to(device).eval().requires_grad_(False)
        self._check()
        # A decoder trained by its spectral (and pitch) losses alone, with no GAN terms, needs no discriminator.
        gan = cfg.loss.adv != 0 or cfg.loss.fm != 0
        self.disc = self._build_discriminator().to(device) if self.step == "decoder" and gan else None
        self.nets = self._build_nets()
        self.raw = dict(self.nets)
        for net in self.nets.values():
            net.requires_grad_(True)
        if self.step in ("encoder", "joint"):  # the recipe keeps both position signals as distilled / copied
            transformer = self.codec.encoder.encoder
            for name in ("positional_embedding", "relative_embedding"):
                if hasattr(transformer, name):
                    getattr(transformer, name).requires_grad_(False)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            trained = sum(p.numel() for group in self.param_groups().values() for p in group)
            log.info("codec stage: step %s, %.2fM trained parameters", self.step, trained / 1e6)
        self._datasets()

    # ---- building ---------------------------------------------------------------------------------

    def _build_codec(self, teacher_cfg) -> Codec:
        cfg = self.cfg
        wanted = None
        if not isinstance(cfg.codec, dict):
            raise InputError(f"codec stage: 'codec' must be a mapping of CodecConfig keys, got {cfg.codec!r}")
        if cfg.codec:
            given = dict(cfg.codec)
            own = given.get("encoder_config", {})
            given["encoder_config"] = steps.encoder_config(teacher_cfg, cfg.teacher_layers, own)
            wanted = from_dict(CodecConfig, given, "codec stage: 'codec'")
        if cfg.init_from:
            ref = _codec_ref(cfg.init_from)
            codec = Codec.from_pretrained(ref)
            if wanted is not None:
                with torch.device("meta"):
                    want = _parts(Codec(wanted))
                # A decoder run may give a trained codec a new decoder (another architecture, fresh weights).
                swap = cfg.step == "decoder" and want["decoder"] != _parts(codec)["decoder"]
                _check_same(want, _parts(codec), f"init_from '{ref}'",
                            parts=tuple(p for p in PARTS if p != "decoder") if swap else PARTS)
                if swap:
                    log.info("codec stage: init_from '%s' with a new %s decoder", ref, wanted.decoder_name)
                    state = {k: v for k, v in codec.state_dict().items() if not k.startswith("decoder.")}
                    codec = Codec(wanted)
                    codec.load_state_dict({**codec.state_dict(), **state})
        elif wanted is None:
            raise InputError("codec stage: a fresh run (no init_from) needs the codec's architecture in 'codec'")
        else:
            codec = Codec(wanted)
            if codec.config.encoder_name != "WavLM":
                raise InputError("codec stage: the encoder must be a WavLM (encoder_name: WavLM)")
            codec.encoder.load_state_dict(self.teacher.state_dict())  # same architecture, same names
        if cfg.decoder_from:
            ref = _codec_ref(cfg.decoder_from)
            donor = Codec.from_pretrained(ref)
            _check_same(_parts(codec), _parts(donor), f"decoder_from '{ref}'", parts=("decoder",))
            codec.decoder.load_state_dict(donor.decoder.state_dict())
        return codec

    def _check(self) -> None:
        codec, cfg = self.codec, self.cfg
        dim = codec.encoder.config.dim
        for part, value in (("compressor input_dim", codec.compressor.config.input_dim),
                            ("decompressor output_dim", codec.decompressor.config.output_dim),
                            ("decoder input_dim", codec.decoder.config.input_dim)):
            if value != dim:
                raise InputError(f"codec stage: the {part} is {value}, but the encoder (teacher) width is {dim}")
        if self.teacher is not None:  # e.g. an init_from codec made from another teacher
            mine, theirs = to_dict(codec.encoder.config), to_dict(self.teacher.config)
            for key in (*steps.ARCHITECTURE, "num_layers"):
                if mine[key] != theirs[key]:
                    raise InputError(f"codec stage: the codec's encoder {key} is {mine[key]!r} but the teacher's "
                                     f"(first {cfg.teacher_layers} layers) is {theirs[key]!r}")
        if self.step in ("posemb", "encoder", "joint") and not codec.encoder.config.causal:
            raise InputError(f"codec stage: step {self.step} distils a causal encoder, but the codec's is not causal")
        if self.step == "posemb" and not codec.encoder.config.conv_pos:
            raise InputError("codec stage: step posemb needs a convolutional positional embedding (conv_pos > 0)")
        if self.step == "encoder" and len(cfg.loss.layer_weights) != codec.encoder.config.num_layers:
            raise InputError(f"codec stage: loss.layer_weights has {len(cfg.loss.layer_weights)} weights for "
                             f"{codec.encoder.config.num_layers} encoder layers")

    def _build_discriminator(self) -> nn.Module:
        disc = self.cfg.discriminator.build()
        saved = Path(self.cfg.init_from) / "discriminator.safetensors" if self.cfg.init_from else None
        if saved is not None and saved.is_file():
            hub.load_state(disc, hub.load_weights(saved), saved)
        return disc

    def _build_nets(self) -> dict[str, nn.Module]:
        codec = self.codec
        if self.step == "decoder":
            return {"generator": codec.decoder, **({"discriminator": self.disc} if self.disc is not None else {})}
        if self.step == "posemb":
            return {"posemb": codec.encoder.encoder.positional_embedding}
        if self.step == "encoder":
            return {"encoder": steps.LayerStudent(codec.encoder)}
        probe = {"pitch_probe": nn.Linear(codec.feature_dim, 2)} if self.cfg.loss.pitch else {}
        if self.step == "quantizer":
            unrefined = steps.without_refiner(codec.decompressor)
            return {"quantizer": steps.QuantizedStudent(None, codec.compressor, unrefined), **probe}
        return {"codec": steps.QuantizedStudent(codec.encoder, codec.compressor, codec.decompressor), **probe}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        def trained(*nets: nn.Module) -> list[nn.Parameter]:
            return [p for net in nets for p in net.parameters() if p.requires_grad]

        if self.step == "decoder":
            groups = {"gen": trained(self.raw["generator"])}
            return {**groups, "disc": trained(self.raw["discriminator"])} if self.disc is not None else groups
        return {"main": trained(*self.raw.values())}

    # ---- data -------------------------------------------------------------------------------------

    def _datasets(self) -> None:
        data, seed = self.cfg.data, self.cfg.train.seed
        if self.step == "decoder":
            frame_rate = Codec.sample_rate_input / self.codec.encoder.config.hop_length
            self.out_rate = round(frame_rate * self.codec.decoder.hop_length)
            self.frames = round((data.segment_seconds or 3.0) * frame_rate)
            self.context = round(data.context_seconds * frame_rate)
            seconds, rate = (self.frames + 2 * self.context) / frame_rate, self.out_rate
        else:
            seconds, rate = (data.segment_seconds or None), Codec.sample_rate_input

        def segments(manifest: str, random_crop: bool) -> AudioSegments:
            entries = as_entries(manifest)
            if seconds is None:
                entries = [e for e in entries if float(e.get("duration", 0.0)) <= data.max_seconds]
                if not entries:
                    raise InputError(f"manifest '{manifest}' has no utterance of at most {data.max_seconds} s")
            return AudioSegments(entries, seconds, rate, seed=seed, random_crop=random_crop)

        self._train = segments(data.train, data.random_crop)
        self._valid = segments(data.valid, False) if data.valid else None

    def datasets(self):
        return self._train, self._valid

    def collate(self, items: list[dict]) -> dict[str, Tensor]:
        batch = collate_segments(items)
        if self.step == "decoder":  # the target is at the output rate; the teacher listens at 16 kHz
            batch["sig_in"] = resample(batch["sig"], self.out_rate, Codec.sample_rate_input)
            if hasattr(self.codec.decoder, "controls"):
                batch["f0"], batch["voiced"] = self._pitch_targets(batch["sig_in"])
        elif "pitch_probe" in self.nets:
            batch["f0"], batch["voiced"] = self._utterance_pitch(items)
        return batch

    def _utterance_pitch(self, items: list[dict]) -> tuple[Tensor, Tensor]:
        """pYIN F0 `(B, T)` (0 where unvoiced, -1 past the end) and voicing `(B, T)` of the items, one frame per
        token. Whole utterances (no `segment_seconds`) are tracked once per run and kept, as the feature stages
        read them epoch after epoch; crops differ every time and are tracked as they come."""
        hop = self.codec.samples_per_token
        whole = self.cfg.data.segment_seconds <= 0
        cache = self.__dict__.setdefault("_pitch_cache", {})
        rows = []
        for item in items:
            row = cache.get(item["path"]) if whole else None
            if row is None:
                row = _pitch_track(item["sig"][hop // 2 : item["length"]], hop)  # frame t centred on token t
                if whole:
                    cache[item["path"]] = row
            rows.append(row)
        size = max(len(f0) for f0, _ in rows)
        f0 = torch.full((len(rows), size), -1.0)  # -1: past the utterance's end
        voiced = torch.zeros(len(rows), size)
        for i, (a, b) in enumerate(rows):
            f0[i, : len(a)], voiced[i, : len(b)] = a, b
        return f0, voiced

    def _pitch_targets(self, sig_in: Tensor) -> tuple[Tensor, Tensor]:
        """pYIN F0 `(B, S)` (Hz, 0 where unvoiced) and voicing `(B, S)` of the crop's middle frames, each
        track frame centred on its codec frame's samples."""
        hop = self.codec.encoder.config.hop_length
        dec = self.codec.decoder.config
        start = self.context * hop + hop // 2
        f0, voiced = _pitch_track(sig_in[:, start : start + self.frames * hop], hop,
                                  fmin=max(dec.f0_min, 50.0), fmax=min(dec.f0_max, 600.0))
        return f0[:, : self.frames], voiced[:, : self.frames]

    # ---- steps ------------------------------------------------------------------------------------

    def train_step(self, batch: dict[str, Tensor]) -> Iterator[tuple[str, Tensor, dict[str, float]]]:
        if self.step != "decoder":
            loss, metrics = self._feature_loss(batch)
            yield "main", loss, metrics
            return
        feats, real = self._decoder_pair(batch)
        fake, pitch = self._generate(feats, real, batch)
        w = self.cfg.loss
        if self.disc is None:
            terms = {"mel": mel_loss(fake, real, self.out_rate, **self._mel())}
            loss = w.mel * terms["mel"]
        else:
            # Both optimizers step after the batch, so D and G see the same discriminator weights.
            disc_loss, real_feats = steps.discriminator_step(self.nets["discriminator"], real, fake)
            yield "disc", disc_loss, {"disc_loss": disc_loss.item()}
            terms = steps.generator_losses(self.raw["discriminator"], fake, real, real_feats, self.out_rate,
                                           self._mel())
            loss = w.mel * terms["mel"] + w.adv * terms["adv"] + w.fm * terms["fm"]
        if w.stft:
            terms["stft"] = multi_resolution_stft_loss(fake, real)
            loss = loss + w.stft * terms["stft"]
        if pitch:
            loss = loss + w.f0 * pitch["f0"] + w.voicing * pitch["voicing"]
        yield "gen", loss, {"loss": loss.item(), **{k: v.item() for k, v in {**terms, **pitch}.items()}}

    def valid_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        if self.step != "decoder":
            return self._feature_loss(batch)[1]
        feats, real = self._decoder_pair(batch)
        fake, pitch = self._generate(feats, real, batch)
        mel = mel_loss(fake, real, self.out_rate, **self._mel()).item()
        return {"loss": mel, "mel": mel, **{k: v.item() for k, v in pitch.items()}}

    def _generate(self, feats: Tensor, real: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The decoder's waveform for `feats`, cut to `real`'s length, and, for a decoder that predicts F0 and
        voicing, their losses against the pYIN targets (plus the voicing error rate and gross pitch error)."""
        if "f0" not in batch:
            return steps.fit_length(self.nets["generator"](feats)[0], real.shape[1]), {}
        fake, _, controls = self.nets["generator"](feats, with_controls=True)
        size = min(controls.f0.shape[1], batch["f0"].shape[1])
        device = controls.f0.device
        pitch = pitch_losses(controls.f0[:, :size].log2(), torch.logit(controls.voicing[:, :size], eps=1e-6),
                             batch["f0"][:, :size].to(device), batch["voiced"][:, :size].to(device))
        return steps.fit_length(fake, real.shape[1]), pitch

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

    def _feature_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        sig, length = batch["sig"], batch["length"]
        teacher, codec, w = self.teacher, self.codec, self.cfg.loss
        if self.step == "posemb":
            with torch.no_grad():
                x = steps.posemb_input(teacher, sig)
                target, _ = teacher.encoder.positional_embedding(x)
            pred, _ = self.nets["posemb"](x)
            loss = feature_mse(pred, target, steps.frame_mask(steps.num_frames(length, teacher.config), x.shape[1]))
            return loss, {"loss": loss.item()}
        if self.step == "encoder":
            with torch.no_grad():
                targets = steps.layer_outputs(teacher, sig)
            size = targets[0].shape[1]
            preds = [steps.fit_length(p, size) for p in self.nets["encoder"](sig)]
            mask = steps.frame_mask(steps.num_frames(length, teacher.config), size)
            loss = layerwise_feature_mse(preds, targets, w.layer_weights, mask)
            return loss, {"loss": loss.item(), "last_layer_mse": feature_mse(preds[-1], targets[-1], mask).item()}
        if self.step == "quantizer":  # the target is the frozen causal encoder's own features
            with torch.no_grad():
                target = steps.layer_outputs(codec.encoder, sig)[-1]
            qfeats, lats = self.nets["quantizer"](target)
            frames = steps.num_frames(length, codec.encoder.config)
        else:  # joint: the whole causal path to the non-causal teacher's features
            with torch.no_grad():
                target, _ = teacher(sig)
            qfeats, lats = self.nets["codec"](sig)
            frames = steps.num_frames(length, teacher.config)
        mse = feature_mse(steps.fit_length(qfeats, target.shape[1]), target, steps.frame_mask(frames, target.shape[1]))
        entropy = bsq_entropy_loss(lats, w.inv_temperature, w.diversity_gamma)  # all frames, as the recipe
        loss = mse + w.entropy * entropy
        metrics = {"mse": mse.item(), "entropy": entropy.item()}
        if "pitch_probe" in self.nets:
            pitch = self._probe_loss(qfeats, batch["f0"], batch["voiced"])
            loss = loss + w.pitch * (pitch["f0"] + pitch["voicing"])
            metrics.update({f"probe_{k}": v.item() for k, v in pitch.items()})
        return loss, {"loss": loss.item(), **metrics}

    def _probe_loss(self, qfeats: Tensor, f0: Tensor, voiced: Tensor) -> dict[str, Tensor]:
        """The pitch probe's losses (`pitch_losses`): it predicts log2 F0 around 150 Hz and a voicing logit."""
        out = self.nets["pitch_probe"](qfeats)
        size = min(out.shape[1], f0.shape[1])
        return pitch_losses(out[:, :size, 0] + math.log2(150.0), out[:, :size, 1], f0[:, :size].to(out.device),
                            voiced[:, :size].to(out.device))

    # ---- export -----------------------------------------------------------------------------------

    def export(self, folder: Path) -> None:
        """`folder/codec` (released layout, loadable by `Codec.from_pretrained`) and, after a decoder run,
        `folder/discriminator.safetensors`."""
        self.codec.save_pretrained(Path(folder) / "codec")
        if self.disc is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.disc.state_dict().items()}
            data = safetensors_bytes(state, metadata={"format": "pt"})
            write_atomic(Path(folder) / "discriminator.safetensors", data)
