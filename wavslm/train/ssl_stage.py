"""The `ssl` stage: a WavLM-architecture teacher trained from scratch by HuBERT-style masked prediction.

Iteration 1 (`targets.kind: mfcc`) predicts k-means clusters of MFCCs; iteration 2 (`kind: features`)
predicts clusters of layer `targets.layer` of a previous run's export (`targets.teacher`). The k-means is
fitted when the stage is built, on up to `data.max_items` training utterances (a seeded choice, whole
files) and at most `targets.max_frames` of their frames, and is kept as a buffer of the trained net: the
checkpoint holds it, so a resumed run labels with the very centroids it started with, and DDP copies
rank 0's to every rank. Labels are computed on the fly from each batch's audio, in float32 outside
autocast, one per WavLM frame (`features.mfcc` frames the signal as the conv front end does).
`reconstruction.weight > 0` adds a log-mel reconstruction term at one layer (`ssl_parts.ReconstructionHead`):
the tiny recipe needs it so that the layers its codec distils describe the sound after minutes of training.

Masks are a pure function of `(seed, epoch, item)`: each row draws its spans from its own generator, so
one process, N processes and a resumed run mask every item alike. (The loss is the mean over the masked
frames of each rank's micro-batch, so N processes equal one only up to how those counts differ.)

The export (`RUN_DIR/export`): `wavlm/`, a Hugging Face-layout WavLM (bidirectional, final norm) that
`wavlm.from_hf` reads, the next iteration's `targets.teacher` and the `lm` stage's `init_from`;
`kmeans.safetensors` (`centroids (K, D)` of the targets this model learned to predict); `ssl.json`.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from ..data.segments import AudioSegments, collate_segments, stable_randint
from ..errors import InputError
from ..io import write_atomic, write_json
from ..wavlm import WavLM, WavLMConfig, from_hf, num_frames, save_hf, wavlm_ref
from .dist import global_count
from .features import SAMPLE_RATE, kmeans_assign, kmeans_fit, log_mel, mfcc
from .loop import TrainConfig
from .ssl_parts import MaskedPredictionHead, ReconstructionHead, SSLModel, features_for_kmeans, span_mask

log = logging.getLogger("wavslm.train")

_FRONT_END = WavLMConfig()  # the labels assume WavLM's conv front end: 400-sample window, 320-sample hop
_MASK_STREAM = 0x6D61736B  # keys the mask draws apart from the crop draws of the same (seed, epoch, item)
_VALID_EPOCH = -1  # validation masks: one fixed draw per item


@dataclass
class SSLDataConfig:
    train: str = ""  # JSONL manifest
    valid: str = ""  # JSONL manifest ("" for none)
    segment_seconds: float = 2.0  # every item is a crop of this length (shorter files are zero-padded)
    random_crop: bool = True  # False: every epoch takes each file's first segment
    max_items: int = 1000  # training utterances the k-means is fitted on (a seeded choice)


@dataclass
class SSLModelConfig:
    """A bidirectional WavLM with a final norm (the Hugging Face pre-LayerNorm layout) and HuBERT's head."""

    hidden_dims: list[int] = field(default_factory=lambda: [512] * 7)
    num_layers: int = 12
    dim: int = 768
    ffn_dim: int = 3072
    num_heads: int = 12
    num_buckets: int = 320
    max_distance: int = 800
    conv_pos: int = 128
    conv_pos_groups: int = 16
    conv_bias: bool = False
    dropout: float = 0.1
    proj_dim: int = 256
    temperature: float = 0.1
    layer: int | None = None  # predict from hidden[layer] (1-based, before the final norm); None: the output
    feature_grad_mult: float = 0.1  # HuBERT scales the conv front end's gradient down


@dataclass
class SSLTargetsConfig:
    kind: str = "mfcc"  # mfcc (iteration 1) | features (iteration 2: a layer of `teacher`)
    teacher: str = ""  # kind features: a previous ssl run's export folder (or any Hugging Face-layout WavLM)
    layer: int = 6  # kind features: cluster the teacher's hidden[layer] (1-based; 0: the first layer's input)
    num_clusters: int = 100
    iters: int = 100
    batch_size: int = 0  # 0: Lloyd over all frames; n: mini-batch k-means, n frames per update
    seed: int = 0
    max_frames: int = 250_000  # frames (50 per second) the k-means is fitted on at most


@dataclass
class SSLMaskingConfig:
    mask_prob: float = 0.8  # a frame starts a span with probability mask_prob / mask_length
    mask_length: int = 10
    min_masks: int = 2
    unmasked_weight: float = 0.0  # weight of the loss on unmasked frames


@dataclass
class SSLReconstructionConfig:
    """Optional log-mel reconstruction from one layer (`ssl_parts.ReconstructionHead`); weight 0: off."""

    weight: float = 0.0
    layer: int = 3  # 1-based transformer layer (the codec distils the teacher's first `teacher_layers`)
    n_mels: int = 80


@dataclass
class SSLStageConfig:
    data: SSLDataConfig = field(default_factory=SSLDataConfig)
    model: SSLModelConfig = field(default_factory=SSLModelConfig)
    targets: SSLTargetsConfig = field(default_factory=SSLTargetsConfig)
    masking: SSLMaskingConfig = field(default_factory=SSLMaskingConfig)
    reconstruction: SSLReconstructionConfig = field(default_factory=SSLReconstructionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, warmup_steps=100, clip=10.0))


def item_masks(indices: Tensor, frames: Tensor, T: int, keys: tuple[int, ...], masking: SSLMaskingConfig) -> Tensor:
    """Span masks `(B, T)` bool; row b is `span_mask` over its `frames[b]` valid frames, drawn from a
    generator seeded by `(*keys, indices[b])` alone, so an item's mask never depends on its batch."""
    rows = []
    for index, length in zip(indices.tolist(), frames.tolist(), strict=True):
        gen = torch.Generator().manual_seed(stable_randint(2**63, *keys, index, _MASK_STREAM))
        rows.append(span_mask(1, T, masking.mask_prob, masking.mask_length, masking.min_masks,
                              torch.tensor([length]), gen))
    return torch.cat(rows)


class SSLStage:
    """HuBERT-style pre-training of a bidirectional WavLM (see the module notes); the loop drives it."""

    throughput = ("audio_seconds_per_s", 1 / SAMPLE_RATE)  # what a batch's `length` counts, per second
    shardable = True  # train.parallel: fsdp shards its transformer layers

    def __init__(self, cfg: SSLStageConfig, device: torch.device):
        self.cfg, self.device = cfg, torch.device(device)
        self._check()
        model = self._build_model()
        self.teacher = self._load_teacher() if cfg.targets.kind == "features" else None
        seed = cfg.train.seed
        self._train = AudioSegments(cfg.data.train, cfg.data.segment_seconds, SAMPLE_RATE, seed=seed,
                                    random_crop=cfg.data.random_crop)
        self._valid = (AudioSegments(cfg.data.valid, cfg.data.segment_seconds, SAMPLE_RATE, random_crop=False)
                       if cfg.data.valid else None)
        model.register_buffer("centroids", self._fit_kmeans())
        self.nets: dict[str, nn.Module] = {"ssl": model.to(self.device)}
        self.raw = dict(self.nets)
        self.collate = collate_segments

    # ---- building ---------------------------------------------------------------------------------

    def _check(self) -> None:
        cfg = self.cfg
        if not cfg.data.train:
            raise InputError("ssl stage: data.train (a JSONL manifest of audio files) is required")
        if cfg.targets.kind not in ("mfcc", "features"):
            raise InputError(f"ssl stage: targets.kind must be mfcc or features, got {cfg.targets.kind!r}")
        if cfg.targets.kind == "features" and not cfg.targets.teacher:
            raise InputError("ssl stage: targets.kind features needs targets.teacher (a previous ssl run's export)")
        layer = cfg.model.layer
        if layer is not None and (not isinstance(layer, int) or not 0 <= layer <= cfg.model.num_layers):
            raise InputError(f"ssl stage: model.layer must be null or in [0, {cfg.model.num_layers}], got {layer!r}")
        if cfg.targets.num_clusters < 2:
            raise InputError(f"ssl stage: targets.num_clusters must be at least 2, got {cfg.targets.num_clusters}")
        if cfg.data.max_items < 1 or cfg.targets.max_frames < cfg.targets.num_clusters:
            raise InputError("ssl stage: data.max_items must be positive and targets.max_frames at least "
                             "targets.num_clusters")
        r = cfg.reconstruction
        if r.weight < 0 or (r.weight and not (1 <= r.layer <= cfg.model.num_layers and r.n_mels >= 1)):
            raise InputError(f"ssl stage: reconstruction needs weight >= 0, layer in [1, {cfg.model.num_layers}] "
                             f"and n_mels >= 1; got {r}")
        m = cfg.masking
        if not 0 < m.mask_prob <= 1 or m.mask_length < 1 or m.min_masks < 0:
            raise InputError(f"ssl stage: masking needs 0 < mask_prob <= 1, mask_length >= 1 and min_masks >= 0; "
                             f"got {m}")

    def _build_model(self) -> SSLModel:
        m, k = self.cfg.model, self.cfg.masking
        config = WavLMConfig(hidden_dims=list(m.hidden_dims), num_layers=m.num_layers, dim=m.dim, ffn_dim=m.ffn_dim,
                             num_heads=m.num_heads, num_buckets=m.num_buckets, max_distance=m.max_distance,
                             dropout=m.dropout, conv_pos=m.conv_pos, conv_pos_groups=m.conv_pos_groups,
                             conv_bias=m.conv_bias, causal=False, final_norm=True)
        wavlm = WavLM(config)
        head = MaskedPredictionHead(m.dim, self.cfg.targets.num_clusters, m.proj_dim, m.temperature)
        r = self.cfg.reconstruction
        recon = ReconstructionHead(m.dim, r.n_mels, r.layer, r.weight) if r.weight else None
        model = SSLModel(wavlm, head, m.layer, k.mask_prob, k.mask_length, k.min_masks, k.unmasked_weight,
                         m.feature_grad_mult, recon)
        if m.layer is not None:  # what lies above the predicting layers gets no gradient: freeze it (and DDP
            top = max(m.layer, r.layer if r.weight else 0)  # need not look for unused ones)
            frozen = [*wavlm.encoder.layers[top:], wavlm.encoder.norm]
            if top == 0:
                frozen.append(wavlm.encoder.relative_embedding)
            for module in frozen:
                module.requires_grad_(False)
            log.info("ssl stage: predicting from layer %d; the layers above it stay as initialised", m.layer)
        return model

    def _load_teacher(self) -> WavLM:
        t = self.cfg.targets
        ref = wavlm_ref(t.teacher)
        teacher = from_hf(ref)
        tc = teacher.config
        if list(tc.kernel_sizes) != _FRONT_END.kernel_sizes or list(tc.strides) != _FRONT_END.strides:
            raise InputError(f"ssl stage: teacher '{ref}' has a conv front end other than WavLM's "
                             f"(kernels {tc.kernel_sizes}, strides {tc.strides}), so its frames would not align")
        if not 0 <= t.layer <= tc.num_layers:
            raise InputError(f"ssl stage: targets.layer must be in [0, {tc.num_layers}] for teacher '{ref}', "
                             f"got {t.layer}")
        return teacher.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def _target_feats(self, sig: Tensor, lengths: Tensor | None = None) -> Tensor:
        """What the k-means clusters, `(B, T, D)` float32: MFCCs or the teacher's layer, never under autocast."""
        with torch.autocast(sig.device.type, enabled=False):
            if self.teacher is None:
                return mfcc(sig.float(), lengths=lengths)
            return features_for_kmeans(self.teacher, sig.float(), self.cfg.targets.layer).float()

    def _fit_kmeans(self) -> Tensor:
        """Centroids `(K, D)` of the targets of up to `max_items` whole training files; deterministic."""
        t, entries = self.cfg.targets, self._train.entries
        chosen = torch.randperm(len(entries), generator=torch.Generator().manual_seed(t.seed))
        chosen = chosen[: self.cfg.data.max_items]
        files = AudioSegments([entries[i] for i in sorted(chosen.tolist())], None, SAMPLE_RATE)
        per_file = -(-t.max_frames // len(files))  # a seeded subset of each file's frames bounds the memory
        gen = torch.Generator().manual_seed(t.seed + 1)
        parts = []
        for i in range(len(files)):
            feats = self._target_feats(files[i]["sig"][None].to(self.device))[0]
            keep = torch.randperm(len(feats), generator=gen)[:per_file].sort().values
            parts.append(feats[keep.to(feats.device)])
        feats = torch.cat(parts)[: t.max_frames]
        if len(feats) < t.num_clusters:
            raise InputError(f"ssl stage: {len(feats)} frames from {len(files)} files cannot make "
                             f"{t.num_clusters} clusters")
        log.info("ssl stage: fitting %d %s clusters on %d frames of %d files", t.num_clusters, t.kind, len(feats),
                 len(files))
        return kmeans_fit(feats, t.num_clusters, t.iters, t.seed, t.batch_size or None)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [p for p in self.raw["ssl"].parameters() if p.requires_grad]}

    def datasets(self):
        return self._train, self._valid

    # ---- steps ------------------------------------------------------------------------------------

    def _loss(self, net: nn.Module, batch: dict[str, Tensor], epoch: int, train: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of `batch` and its metrics. In training its means over frames are over every rank's
        frames (`global_count`), so that the loss under DDP equals one process on the whole batch;
        validation keeps each rank's own means (ranks may validate different numbers of batches)."""
        sig, length = batch["sig"], batch["length"]
        labels = kmeans_assign(self._target_feats(sig, length), self.raw["ssl"].centroids)
        mask = item_masks(batch["index"], num_frames(length.cpu()), labels.shape[1], (self.cfg.train.seed, epoch),
                          self.cfg.masking)
        target = None
        if self.cfg.reconstruction.weight:
            with torch.no_grad(), torch.autocast(sig.device.type, enabled=False):
                target = log_mel(sig.float(), self.cfg.reconstruction.n_mels, lengths=length)
        loss, metrics = net(sig, labels, lengths=length, mask=mask, recon_target=target,
                            count=global_count if train else None)
        return loss, {k: v.detach() for k, v in metrics.items()}

    def train_step(self, batch: dict[str, Tensor]) -> Iterator[tuple[str, Tensor, dict[str, float]]]:
        loss, metrics = self._loss(self.nets["ssl"], batch, self._train.epoch, train=True)  # the loop set the epoch
        yield "main", loss, metrics

    def valid_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return self._loss(self.raw["ssl"], batch, _VALID_EPOCH)[1]

    # ---- export -----------------------------------------------------------------------------------

    def export(self, folder: Path) -> None:
        """`folder/wavlm` (Hugging Face layout), `folder/kmeans.safetensors` and `folder/ssl.json`."""
        folder, model, t = Path(folder), self.raw["ssl"], self.cfg.targets
        save_hf(model.wavlm, folder / "wavlm")
        centroids = {"centroids": model.centroids.detach().cpu().contiguous()}
        write_atomic(folder / "kmeans.safetensors", safetensors_bytes(centroids, metadata={"format": "pt"}))
        info = {
            "targets": t.kind,
            "teacher": wavlm_ref(t.teacher) if t.kind == "features" else None,
            "teacher_layer": t.layer if t.kind == "features" else None,
            "mfcc": {"n_mfcc": 13, "deltas": True, "normalize": False} if t.kind == "mfcc" else None,
            "num_clusters": t.num_clusters,
            "predict_layer": self.cfg.model.layer,
            "sample_rate": SAMPLE_RATE,
            "frame_rate": SAMPLE_RATE // _FRONT_END.hop_length,
        }
        write_json(folder / "ssl.json", info)
