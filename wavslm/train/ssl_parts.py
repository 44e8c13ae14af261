"""HuBERT-style masked prediction for training a WavLM-architecture teacher from scratch.

Recipe (Hsu et al., 2021): mask spans of the projected conv features with a learned embedding, run the
transformer, and predict the k-means cluster of every masked frame by cosine similarity between a
projection of the output and learned cluster embeddings, divided by a temperature of 0.1. Iteration 1
clusters MFCCs (`features.mfcc`); iteration 2 clusters an intermediate layer of the iteration-1 model
(`features_for_kmeans`). Labels come from `features.kmeans_assign` and are aligned one per WavLM frame.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..wavlm import WavLM, num_frames

IGNORE = -100  # label of frames without a target (padding); never counted in the loss

# The denominator of a mean over frames, given this batch's frame count: by default the count itself (at
# least 1); under DDP `dist.global_count`, so that the ranks' losses, averaged, are the whole batch's mean.
Count = Callable[[Tensor], Tensor] | None


def _clamped(count: Tensor) -> Tensor:
    return count.clamp_min(1)


def span_mask(
    batch: int,
    T: int,
    mask_prob: float = 0.8,
    mask_length: int = 10,
    min_masks: int = 2,
    lengths: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Span mask `(B, T)` bool, as in wav2vec 2.0 / HuBERT (fairseq's `compute_mask_indices`, static spans).

    Each row of `length` valid frames draws `round_stochastically(mask_prob * length / mask_length)`
    (at least `min_masks`) distinct span starts uniformly, i.e. a frame starts a span with probability
    `mask_prob / mask_length`, and masks `mask_length` frames from each. Spans may overlap, so about
    `1 - (1 - mask_prob / mask_length) ** mask_length` of the frames end up masked (HuBERT's 0.8/10: ~57%,
    wav2vec 2.0's 0.65/10: ~49%). Spans lie inside the valid frames (`lengths (B,)`, default all T);
    a row shorter than `mask_length` is masked whole. Random numbers come from `generator` (on the CPU),
    so the mask is reproducible and independent of the device.
    """
    if lengths is None:
        lengths = torch.full((batch,), T, dtype=torch.long)
    lengths = lengths.detach().to("cpu", torch.long).clamp(0, T)
    span = torch.minimum(lengths, torch.tensor(mask_length))
    num_starts = lengths - span + 1  # starts in [0, length - span]
    expected = mask_prob * lengths.double() / mask_length
    num_mask = (expected + torch.rand(batch, generator=generator, dtype=torch.float64)).floor().long()
    num_mask = torch.minimum(num_mask.clamp_min(min_masks), num_starts).masked_fill(lengths == 0, 0)
    # A uniform random subset of `num_mask` starts: the smallest scores among the allowed positions.
    scores = torch.rand(batch, T, generator=generator)
    pos = torch.arange(T)
    scores = scores.masked_fill(pos[None, :] >= num_starts[:, None], 2.0)
    ranks = scores.argsort(-1).argsort(-1)
    starts = (ranks < num_mask[:, None]).long()
    # Frame t is masked if a span starts in (t - mask_length, t]: a window sum over the start indicator.
    ends = F.pad(starts.cumsum(-1), (mask_length, 0))
    covered = ends[:, mask_length:] - ends[:, :T]
    mask = (covered > 0) & (pos[None, :] < lengths[:, None])
    return mask.to(device) if device is not None else mask


class MaskedPredictionHead(nn.Module):
    """HuBERT's mask embedding and cluster prediction head.

    `apply_mask` replaces masked frames of the projected conv features `(B, T, dim)` by a learned vector;
    `forward` maps transformer outputs `(B, T, dim)` to `logits (B, T, num_clusters)`: cosine similarity
    between `proj(x)` (`proj_dim`) and one learned embedding per cluster, divided by `temperature`.
    """

    def __init__(self, dim: int, num_clusters: int, proj_dim: int = 256, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())
        self.proj = nn.Linear(dim, proj_dim)
        self.cluster_embeddings = nn.Parameter(torch.empty(num_clusters, proj_dim).uniform_())

    def apply_mask(self, x: Tensor, mask: Tensor) -> Tensor:
        """`x (B, T, dim)` with the frames where `mask (B, T)` is True replaced by the mask embedding."""
        return torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)

    def forward(self, x: Tensor) -> Tensor:
        """`x (B, T, dim) -> logits (B, T, num_clusters)`."""
        z = F.normalize(self.proj(x), dim=-1)
        c = F.normalize(self.cluster_embeddings, dim=-1).to(z.dtype)
        return z @ c.T / self.temperature


class ReconstructionHead(nn.Module):
    """A linear map from transformer layer `layer` (1-based, as `hidden[layer]`) to the log-mel frame.

    Masked prediction alone leaves a small teacher trained for minutes with features that say little about
    the sound (a linear probe of its layers recovers a quarter of the log-mel variance), and the codec
    distils and decodes exactly those features. This term (TERA-style reconstruction, all valid frames,
    masked ones from context) keeps layer `layer` a description of the spectrum. Off unless configured.
    """

    def __init__(self, dim: int, n_mels: int, layer: int, weight: float):
        super().__init__()
        self.layer, self.weight = layer, weight
        self.proj = nn.Linear(dim, n_mels)

    def loss(self, hidden: Tensor, target: Tensor, valid: Tensor, count: Count = None) -> Tensor:
        """Mean absolute error over the `valid (B, T)` frames of `hidden (B, T, dim)` vs `target (B, T, n_mels)`
        (`count`: see `masked_prediction_loss`)."""
        err = (self.proj(hidden).float() - target.float()).abs().mean(-1)
        return (err * valid).sum() / (count or _clamped)(valid.sum())


def masked_prediction_loss(logits: Tensor, labels: Tensor, mask: Tensor, unmasked_weight: float = 0.0,
                           count: Count = None) -> Tensor:
    """Mean cross-entropy over masked frames, plus `unmasked_weight` times the mean over unmasked ones.

    `logits (B, T, K)`, `labels (B, T)` int (frames labelled `IGNORE` = -100 count nowhere), `mask (B, T)`.
    A term with no frames contributes zero (and a zero gradient). `count` turns a frame count into the
    mean's denominator (default: the count, at least 1).
    """
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    ce = ce.view_as(labels)
    has_label = labels != IGNORE
    masked, unmasked = mask & has_label, ~mask & has_label
    count = count or _clamped
    loss = (ce * masked).sum() / count(masked.sum())
    if unmasked_weight:
        loss = loss + unmasked_weight * (ce * unmasked).sum() / count(unmasked.sum())
    return loss


def _scale_grad(x: Tensor, scale: float) -> Tensor:
    """Identity forward; gradient multiplied by `scale` (HuBERT's `feature_grad_mult`)."""
    return x if scale == 1.0 else x * scale + x.detach() * (1.0 - scale)


def ssl_forward(
    wavlm: WavLM,
    head: MaskedPredictionHead,
    sig: Tensor,
    labels: Tensor,
    mask_generator: torch.Generator | None,
    lengths: Tensor | None = None,
    layer: int | None = None,
    mask_prob: float = 0.8,
    mask_length: int = 10,
    min_masks: int = 2,
    unmasked_weight: float = 0.0,
    feature_grad_mult: float = 1.0,
    mask: Tensor | None = None,
    recon: ReconstructionHead | None = None,
    recon_target: Tensor | None = None,
    count: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One masked-prediction pass: `sig (B, N)` at 16 kHz, `labels (B, T)` cluster ids per WavLM frame.

    Runs `wavlm.extract` -> `feature_proj` -> dropout -> mask embedding on spans (`span_mask` with
    `mask_generator`) -> `wavlm.encoder`, predicts from the output of transformer layer `layer`
    (1-based, as `hidden[layer]`; None: the encoder's output, final norm included) and returns the loss
    with detached metrics: `loss`, `acc_masked`, `acc_unmasked`, `mask_fraction` (0-dim tensors; call
    `.item()` only when logging). `lengths (B,)`: valid samples per row; frames past them get no mask and
    no loss, but the transformer still attends to them, so prefer equal-length crops. All layers run even
    when `layer` is lower: the layers above get no gradient (DDP: `find_unused_parameters=True`).
    `mask (B, T)` bool, if given, replaces the drawn spans (e.g. one generator per item, so that an item
    is masked alike however the batch is split across ranks); frames past `lengths` are never masked.
    `recon` with `recon_target (B, T, n_mels)` adds `recon.weight` times its reconstruction loss over the
    labelled frames (metric `recon_l1`).
    """
    if layer is not None and not 0 <= layer <= wavlm.config.num_layers:
        raise ValueError(f"layer must be in [0, {wavlm.config.num_layers}], got {layer}")
    feats, _ = wavlm.extract(sig)
    B, T, _ = feats.shape
    if labels.shape != (B, T):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match the {T} WavLM frames of a batch of {B} signals "
            f"of {sig.shape[1]} samples (non-causal front end: T = floor((N - 400) / 320) + 1)"
        )
    labels = labels.to(feats.device, torch.long)
    frames = None
    if lengths is not None:
        frames = num_frames(lengths.to(feats.device))
        labels = labels.masked_fill(torch.arange(T, device=feats.device)[None, :] >= frames[:, None], IGNORE)
    x = wavlm.dropout(wavlm.feature_proj(_scale_grad(feats, feature_grad_mult)))
    if mask is None:
        mask = span_mask(B, T, mask_prob, mask_length, min_masks, frames, mask_generator, x.device)
    elif mask.shape != (B, T):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the {T} WavLM frames of a batch of {B}")
    else:
        mask = mask.to(x.device, torch.bool)
        if frames is not None:
            mask = mask & (torch.arange(T, device=x.device)[None, :] < frames[:, None])
    x = head.apply_mask(x, mask)
    hidden: list[Tensor] = []
    out, _ = wavlm.encoder(x, use_cache=False, hidden=hidden if layer is not None or recon is not None else None)
    logits = head(out if layer is None else hidden[layer])
    loss = masked_prediction_loss(logits, labels, mask, unmasked_weight, count)
    extra = {}
    if recon is not None:
        if recon_target is None or recon_target.shape[:2] != (B, T):
            raise ValueError(f"recon_target must be (B={B}, T={T}, n_mels), got "
                             f"{None if recon_target is None else tuple(recon_target.shape)}")
        recon_l1 = recon.loss(hidden[recon.layer], recon_target.to(x.device), labels != IGNORE, count)
        loss = loss + recon.weight * recon_l1
        extra["recon_l1"] = recon_l1.detach()
    with torch.no_grad():
        correct = logits.argmax(-1) == labels
        has_label = labels != IGNORE
        masked, unmasked = mask & has_label, ~mask & has_label
        metrics = {
            "loss": loss.detach(),
            "acc_masked": (correct & masked).sum() / masked.sum().clamp_min(1),
            "acc_unmasked": (correct & unmasked).sum() / unmasked.sum().clamp_min(1),
            "mask_fraction": masked.sum() / has_label.sum().clamp_min(1),
            **extra,
        }
    return loss, metrics


class SSLModel(nn.Module):
    """The teacher and its head as one module, so that DDP wraps a single `forward` (DDP only syncs
    gradients of passes that go through the wrapper's own `forward`). Saves as `wavlm.*` + `head.*`
    (+ `recon.*`); export `model.wavlm` alone."""

    def __init__(
        self,
        wavlm: WavLM,
        head: MaskedPredictionHead,
        layer: int | None = None,
        mask_prob: float = 0.8,
        mask_length: int = 10,
        min_masks: int = 2,
        unmasked_weight: float = 0.0,
        feature_grad_mult: float = 1.0,
        recon: ReconstructionHead | None = None,
    ):
        super().__init__()
        self.wavlm, self.head, self.recon = wavlm, head, recon
        self.options = dict(layer=layer, mask_prob=mask_prob, mask_length=mask_length, min_masks=min_masks,
                            unmasked_weight=unmasked_weight, feature_grad_mult=feature_grad_mult)

    def forward(
        self,
        sig: Tensor,
        labels: Tensor,
        mask_generator: torch.Generator | None = None,
        lengths: Tensor | None = None,
        mask: Tensor | None = None,
        recon_target: Tensor | None = None,
        count: Count = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`ssl_forward` with this model's options: `(loss, metrics)`."""
        return ssl_forward(self.wavlm, self.head, sig, labels, mask_generator, lengths, **self.options, mask=mask,
                           recon=self.recon, recon_target=recon_target, count=count)


@torch.no_grad()
def features_for_kmeans(wavlm: WavLM, sig: Tensor, layer: int) -> Tensor:
    """`sig (B, N) -> feats (B, T, D)`: the output of transformer layer `layer` (1-based; 0 is the input
    to the first layer), unmasked and in eval mode (dropout off; the training flag is restored after),
    for HuBERT's iteration 2: cluster these with `kmeans_fit`, label with `kmeans_assign`."""
    if not 0 <= layer <= wavlm.config.num_layers:
        raise ValueError(f"layer must be in [0, {wavlm.config.num_layers}], got {layer}")
    was_training = wavlm.training
    wavlm.eval()
    try:
        hidden: list[Tensor] = []
        wavlm(sig, hidden=hidden)
    finally:
        wavlm.train(was_training)
    return hidden[layer]
