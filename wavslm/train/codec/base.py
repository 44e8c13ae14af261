"""What every codec sub-stage shares: the teacher, the codec being trained, the data, the export.

`CodecStage` builds, in this order (the order weights are drawn in, so a seed gives the same run): the
checks of the settings, the teacher, the codec (fresh or `init_from`), the checks of the codec, the
sub-stage's trained networks, the data. A subclass per sub-stage fills in the networks and the losses;
`FeatureSubstage` is the common case of one loss on features, one optimizer, whole utterances.
"""

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ...codec import Codec, CodecConfig
from ...config import from_dict, to_dict
from ...data.manifest import as_entries
from ...data.segments import AudioSegments, collate_segments
from ...errors import InputError
from .config import CodecStageConfig
from .teacher import ARCHITECTURE, encoder_config, load_teacher, teacher_config

log = logging.getLogger("wavslm.train")

PARTS = ("encoder", "compressor", "quantizer", "decompressor", "decoder")
DECODER_INPUT_CODEC = ("codec stage: decoder_input codec fine-tunes the decoder of a trained codec: it needs "
                       "substage decoder and init_from (e.g. the joint sub-stage's export)")


def pitch_track(sig: Tensor, hop: int, fmin: float = 50.0, fmax: float = 600.0) -> tuple[Tensor, Tensor]:
    """pYIN with the training settings (one frame per `hop` samples, 0.25-semitone resolution) of `sig (..., N)`
    at 16 kHz: F0 `(..., T)` in Hz, 0 where unvoiced, and voicing `(..., T)` as 0/1 floats."""
    from ...pitch import track

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


class CodecStage(ABC):
    """One sub-stage of codec training, as the loop drives it (`loop.Stage`); `SUBSTAGES` names each subclass.

    `teacher`: the frozen teacher WavLM, or None where the sub-stage needs none; `codec`: the whole codec,
    frozen but for what `nets` trains; `nets`: the trained networks by name (checkpoints keep these names).
    """

    name: ClassVar[str]
    causal_encoder: ClassVar[bool] = False  # it distils a causal encoder: the codec's must be causal
    trains_decoder: ClassVar[bool] = False  # it may give an init_from codec a new decoder (another kind)
    # What a batch's `length` counts (samples at the input rate), logged per second of training.
    throughput: ClassVar[tuple[str, float]] = ("audio_seconds_per_s", 1 / Codec.sample_rate_input)

    def __init__(self, cfg: CodecStageConfig, device: torch.device):
        if cfg.decoder_input not in ("teacher", "codec"):
            raise InputError(f"codec stage: decoder_input must be teacher or codec, got {cfg.decoder_input!r}")
        self._check_config(cfg)
        if not cfg.data.train:
            raise InputError("codec stage: data.train (a JSONL manifest of audio files) is required")
        self.cfg = cfg
        self.teacher = None
        if self._needs_teacher():
            self.teacher = load_teacher(cfg.teacher, cfg.teacher_layers).to(device)
        self.codec = self._build_codec(teacher_config(cfg.teacher)).to(device).eval().requires_grad_(False)
        self._check_codec()
        self.nets = self._build_nets(device)
        self.raw = dict(self.nets)
        for net in self.nets.values():
            net.requires_grad_(True)
        for part in self._fixed_parts():
            part.requires_grad_(False)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            trained = sum(p.numel() for group in self.param_groups().values() for p in group)
            log.info("codec stage: substage %s, %.2fM trained parameters", self.name, trained / 1e6)
        self._train, self._valid = self._datasets()

    # ---- what a sub-stage fills in -------------------------------------------------------------------

    def _check_config(self, cfg: CodecStageConfig) -> None:
        """Refuse settings this sub-stage cannot use, before anything is loaded (only the decoder sub-stage
        takes `decoder_input: codec`)."""
        if cfg.decoder_input == "codec":
            raise InputError(DECODER_INPUT_CODEC)

    def _needs_teacher(self) -> bool:
        """Whether the teacher is loaded: for its targets, or to copy its layers into a fresh codec's encoder."""
        return True

    def _check_codec(self) -> None:
        """Refuse a codec this sub-stage cannot train (each part's width, the teacher's architecture)."""
        codec, cfg = self.codec, self.cfg
        dim = codec.encoder.config.dim
        for part, value in (("compressor input_dim", codec.compressor.config.input_dim),
                            ("decompressor output_dim", codec.decompressor.config.output_dim),
                            ("decoder input_dim", codec.decoder.config.input_dim)):
            if value != dim:
                raise InputError(f"codec stage: the {part} is {value}, but the encoder (teacher) width is {dim}")
        if self.teacher is not None:  # e.g. an init_from codec made from another teacher
            mine, theirs = to_dict(codec.encoder.config), to_dict(self.teacher.config)
            for key in (*ARCHITECTURE, "num_layers"):
                if mine[key] != theirs[key]:
                    raise InputError(f"codec stage: the codec's encoder {key} is {mine[key]!r} but the teacher's "
                                     f"(first {cfg.teacher_layers} layers) is {theirs[key]!r}")
        if self.causal_encoder and not codec.encoder.config.causal:
            raise InputError(f"codec stage: substage {self.name} distils a causal encoder, but the codec's is "
                             "not causal")

    @abstractmethod
    def _build_nets(self, device: torch.device) -> dict[str, nn.Module]:
        """The trained networks by name: parts of `self.codec` (already on `device`) and training aids."""

    def _fixed_parts(self) -> list[nn.Module]:
        """Modules inside the trained networks that keep their weights."""
        return []

    @abstractmethod
    def _segments(self) -> tuple[float | None, int]:
        """Each item's length in seconds (None: whole utterances, up to `data.max_seconds`) and sample rate."""

    @abstractmethod
    def train_step(self, batch: dict[str, Tensor]) -> Iterator[tuple[str, Tensor, dict[str, float]]]: ...

    @abstractmethod
    def valid_step(self, batch: dict[str, Tensor]) -> dict[str, float]: ...

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": trained_params(*self.raw.values())}

    def collate(self, items: list[dict]) -> dict[str, Tensor]:
        return collate_segments(items)

    # ---- building --------------------------------------------------------------------------------------

    def _build_codec(self, teacher_cfg) -> Codec:
        cfg = self.cfg
        wanted = None
        if not isinstance(cfg.codec, dict):
            raise InputError(f"codec stage: 'codec' must be a mapping of CodecConfig keys, got {cfg.codec!r}")
        if cfg.codec:
            given = dict(cfg.codec)
            own = given.get("encoder_config", {})
            given["encoder_config"] = encoder_config(teacher_cfg, cfg.teacher_layers, own)
            wanted = from_dict(CodecConfig, given, "codec stage: 'codec'")
        if cfg.init_from:
            ref = _codec_ref(cfg.init_from)
            codec = Codec.from_pretrained(ref)
            if wanted is not None:
                with torch.device("meta"):
                    want = _parts(Codec(wanted))
                # A decoder run may give a trained codec a new decoder (another architecture, fresh weights).
                swap = self.trains_decoder and want["decoder"] != _parts(codec)["decoder"]
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

    def _encoder_positions(self) -> list[nn.Module]:
        """The encoder's positional convolution and relative position bias: the recipe keeps both as they were
        distilled (posemb) or copied from the teacher."""
        transformer = self.codec.encoder.encoder
        return [getattr(transformer, name) for name in ("positional_embedding", "relative_embedding")
                if hasattr(transformer, name)]

    # ---- data ------------------------------------------------------------------------------------------

    def _datasets(self) -> tuple[AudioSegments, AudioSegments | None]:
        data, seed = self.cfg.data, self.cfg.train.seed
        seconds, rate = self._segments()

        def segments(manifest: str, random_crop: bool) -> AudioSegments:
            entries = as_entries(manifest)
            if seconds is None:
                entries = [e for e in entries if float(e.get("duration", 0.0)) <= data.max_seconds]
                if not entries:
                    raise InputError(f"manifest '{manifest}' has no utterance of at most {data.max_seconds} s")
            return AudioSegments(entries, seconds, rate, seed=seed, random_crop=random_crop)

        return segments(data.train, data.random_crop), segments(data.valid, False) if data.valid else None

    def datasets(self):
        return self._train, self._valid

    # ---- export ----------------------------------------------------------------------------------------

    def export(self, folder: Path) -> None:
        """`folder/codec`: the whole codec in the released layout, loadable by `Codec.from_pretrained`."""
        self.codec.save_pretrained(Path(folder) / "codec")


class FeatureSubstage(CodecStage):
    """A sub-stage that distils features: whole utterances (or `segment_seconds` crops) at 16 kHz, one loss,
    one optimizer (`main`)."""

    @abstractmethod
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The loss of `batch` and its metrics, `loss` among them."""

    def _segments(self) -> tuple[float | None, int]:
        return self.cfg.data.segment_seconds or None, Codec.sample_rate_input

    def train_step(self, batch: dict[str, Tensor]) -> Iterator[tuple[str, Tensor, dict[str, float]]]:
        loss, metrics = self.loss(batch)
        yield "main", loss, metrics

    def valid_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return self.loss(batch)[1]


def trained_params(*nets: nn.Module) -> list[nn.Parameter]:
    """The parameters of `nets` that are trained (in order: the optimizer's state follows it)."""
    return [p for net in nets for p in net.parameters() if p.requires_grad]
