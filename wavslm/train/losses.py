"""Codec training losses as small pure functions on tensors (see `docs/codec_training.md`).

Glossary: `sig (B, N)` waveforms (a leading `(B, 1, N)` channel axis is accepted too), `feats (B, T, D)`,
`lats (B, T, bits)`. Discriminator outputs are a list of logits tensors (one per sub-discriminator) and a
list of lists of feature maps, as `wavslm.train.discriminators` returns them.

What the FocalCodec recipes use, and which function does it:
- feature reconstruction / distillation: `feature_mse` (masked MSE), `layerwise_feature_mse`;
- BSQ regulariser: `bsq_entropy_loss` (weight 0.1, inverse temperature 100, diversity gamma 1);
- decoder GAN: `mel_loss` (weight 45) + `generator_adv_loss(kind="hinge")` (1) + `feature_matching_loss` (54),
  and `discriminator_adv_loss(kind="hinge")` for the discriminator.
`multi_resolution_stft_loss`, least-squares adversarial losses and `bsq_commitment_loss` are provided for
other set-ups; the recipes do not use them.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modules.bsq import lats_to_codes, toks_to_codes
from .mel import mel_filterbank_slaney


def _flatten_sig(sig: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    if sig.dim() == 3 and sig.shape[1] == 1:
        sig = sig[:, 0]
    return sig.reshape(-1, sig.shape[-1]), tuple(sig.shape[:-1])


def stft_magnitude(
    sig: Tensor, n_fft: int, hop: int, win_length: int | None = None, eps: float = 1e-12
) -> Tensor:
    """`sig (B, N)` -> `|STFT| (B, n_fft // 2 + 1, frames)`: Hann window, centred, reflect padding.

    The magnitude is `sqrt(max(re^2 + im^2, eps))`, which keeps the gradient finite at silent bins.
    """
    x, lead = _flatten_sig(sig)
    x = x.float()  # cuFFT takes no bf16 (a bf16-autocast decoder's output)
    win_length = n_fft if win_length is None else win_length
    window = torch.hann_window(win_length, device=x.device, dtype=x.dtype)
    spec = torch.stft(
        x, n_fft, hop, win_length, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    mag = (spec.real.square() + spec.imag.square()).clamp(min=eps).sqrt()
    return mag.reshape(*lead, *mag.shape[-2:])


def mel_spectrogram(
    sig: Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop: int = 320,
    n_mels: int = 80,
    fmin: float = 0.0,
    fmax: float | None = None,
    win_length: int | None = None,
    power: float = 1.0,
    clip: float = 1e-5,
) -> Tensor:
    """Log-mel spectrogram `sig (B, N)` -> `(B, n_mels, frames)`, `frames = N // hop + 1`.

    `log(max(mel, clip))` of the Slaney-normalised mel bank applied to `|STFT| ** power` (the recipe:
    power 1, clip 1e-5, its "dynamic range compression").
    """
    mag = stft_magnitude(sig, n_fft, hop, win_length)
    fb = mel_filterbank_slaney(sample_rate, n_fft, n_mels, fmin, fmax).to(mag.device, mag.dtype)
    mel = torch.einsum("mf,...ft->...mt", fb, mag if power == 1.0 else mag.pow(power))
    return mel.clamp(min=clip).log()


def _check_pair(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}; trim or pad first")


def mel_loss(sig_hat: Tensor, sig: Tensor, sample_rate: int, **mel_kwargs) -> Tensor:
    """Mean absolute difference of log-mel spectrograms (`mel_spectrogram` keywords pass through).

    `sig_hat, sig (B, N)` -> scalar. Recipe settings: 16 kHz decoder: `n_fft=1024, hop=320, n_mels=80,
    fmax=8000`; 24 kHz streaming decoder: `n_fft=1024, hop=480, n_mels=80, fmax=12000`.
    """
    _check_pair(sig_hat, sig, "mel_loss")
    return F.l1_loss(
        mel_spectrogram(sig_hat, sample_rate, **mel_kwargs), mel_spectrogram(sig, sample_rate, **mel_kwargs)
    )


def multi_resolution_stft_loss(
    sig_hat: Tensor,
    sig: Tensor,
    resolutions: Sequence[tuple[int, int, int]] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240)),
    eps: float = 1e-7,
) -> Tensor:
    """Spectral convergence + log-magnitude L1, averaged over `(n_fft, hop, win_length)` resolutions.

    `sig_hat, sig (B, N)` -> scalar. Per resolution: `||S - S_hat||_F / ||S||_F + mean|log S - log S_hat|`
    with `S = sqrt(max(|STFT|^2, eps))` (Parallel WaveGAN). Zero iff the magnitudes agree.
    """
    _check_pair(sig_hat, sig, "multi_resolution_stft_loss")
    total = sig.new_zeros(())
    for n_fft, hop, win in resolutions:
        mag_hat = stft_magnitude(sig_hat, n_fft, hop, win, eps)
        mag = stft_magnitude(sig, n_fft, hop, win, eps)
        sc = torch.linalg.vector_norm(mag - mag_hat) / torch.linalg.vector_norm(mag)
        total = total + sc + F.l1_loss(mag_hat.log(), mag.log())
    return total / len(resolutions)


_ADV_KINDS = ("hinge", "lsgan")


def _check_kind(kind: str) -> None:
    if kind not in _ADV_KINDS:
        raise ValueError(f"kind must be one of {_ADV_KINDS}, got {kind!r}")


def generator_adv_loss(fake_logits: Sequence[Tensor], kind: str = "hinge") -> Tensor:
    """Adversarial loss of the generator, summed over sub-discriminators (each term a mean over its logits).

    hinge (the recipe): `sum_k mean(relu(1 - D_k(fake)))`; lsgan (HiFi-GAN): `sum_k mean((1 - D_k(fake))^2)`.
    """
    _check_kind(kind)
    terms = [F.relu(1 - f).mean() if kind == "hinge" else (1 - f).square().mean() for f in fake_logits]
    return torch.stack(terms).sum()


def discriminator_adv_loss(
    real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor], kind: str = "hinge"
) -> Tensor:
    """Discriminator loss summed over sub-discriminators; pass the fake signal detached.

    hinge (the recipe): `sum_k mean(relu(1 - D_k(real))) + mean(relu(1 + D_k(fake)))`;
    lsgan: `sum_k mean((1 - D_k(real))^2) + mean(D_k(fake)^2)`.
    """
    _check_kind(kind)
    if len(real_logits) != len(fake_logits):
        raise ValueError(f"{len(real_logits)} real vs {len(fake_logits)} fake discriminator outputs")
    terms = []
    for r, f in zip(real_logits, fake_logits, strict=True):
        if kind == "hinge":
            terms.append(F.relu(1 - r).mean() + F.relu(1 + f).mean())
        else:
            terms.append((1 - r).square().mean() + f.square().mean())
    return torch.stack(terms).sum()


def feature_matching_loss(
    real_feats: Sequence[Sequence[Tensor]], fake_feats: Sequence[Sequence[Tensor]], reduction: str = "mean"
) -> Tensor:
    """L1 between discriminator feature maps of real (detached) and generated audio.

    One term `mean|fake - real|` per (sub-discriminator, layer); `reduction="mean"` averages the terms (the
    recipe, which then weights by 54 = the number of terms of its MPD + MSD, i.e. a plain sum), `"sum"` adds.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if len(real_feats) != len(fake_feats):
        raise ValueError(f"{len(real_feats)} real vs {len(fake_feats)} fake discriminator feature lists")
    terms = [
        F.l1_loss(f, r.detach())
        for real_k, fake_k in zip(real_feats, fake_feats, strict=True)
        for r, f in zip(real_k, fake_k, strict=True)
    ]
    total = torch.stack(terms).sum()
    return total / len(terms) if reduction == "mean" else total


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `x (B, T, ...)` over the positions where `mask (B, T)` is true (all when None)."""
    if mask is None:
        return x.mean()
    if mask.shape != x.shape[: mask.dim()]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not lead {tuple(x.shape)}")
    m = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - mask.dim()))).expand_as(x)
    return (x * m).sum() / m.sum().clamp(min=1)


def feature_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of `pred, target (B, T, D)` over the valid frames of `mask (B, T)` (bool).

    The target is detached (a frozen teacher's features).

    The recipe's reconstruction loss for every feature stage (decompressor output vs target features,
    distilled positional embedding vs teacher's, joint fine-tuning vs the non-causal teacher).
    """
    _check_pair(pred, target, "feature_mse")
    return _masked_mean((pred - target.detach()).square(), mask)


def layerwise_feature_mse(
    preds: Sequence[Tensor], targets: Sequence[Tensor], weights: Sequence[float], mask: Tensor | None = None
) -> Tensor:
    """`(1 / L) * sum_l weights[l] * feature_mse(preds[l], targets[l], mask)` over L layers of `(B, T, D)`.

    The recipe's causal encoder distillation: the outputs of all 6 transformer layers of the causal student
    against the non-causal teacher's, weights `(0.5, 0.6, 0.7, 0.8, 0.9, 1.0)`.
    """
    if not len(preds) == len(targets) == len(weights) > 0:
        raise ValueError(
            f"need as many preds, targets and weights (>0): {len(preds)}, {len(targets)}, {len(weights)}"
        )
    terms = [w * feature_mse(p, t, mask) for p, t, w in zip(preds, targets, weights, strict=True)]
    return torch.stack(terms).sum() / len(terms)


def _entropy(p: Tensor, logp: Tensor, eps: float) -> Tensor:
    """`-sum p log p` over the last axis, the log clamped at `log(eps)` like the recipe (eps=0: exact)."""
    if eps > 0:
        logp = logp.clamp(min=math.log(eps))
    return -(p * logp).sum(dim=-1)


def bsq_entropy_terms(
    lats: Tensor,
    inv_temperature: float = 100.0,
    factorized: bool = False,
    eps: float = 1e-5,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample entropy and codebook entropy of BSQ's soft code assignment; see `bsq_entropy_loss`."""
    bits = lats.shape[-1]
    u = F.normalize(lats, dim=-1).reshape(-1, bits)
    if mask is not None:
        u = u[mask.reshape(-1).bool()]
    if u.shape[0] == 0:
        raise ValueError("bsq_entropy_terms: no valid frames")
    if factorized:
        # q(c_d = +s | u) = sigmoid(4 beta s u_d): the softmax over all codes factorizes per dimension.
        a = 4.0 * inv_temperature * u / math.sqrt(bits)
        p = torch.stack([torch.sigmoid(a), torch.sigmoid(-a)], dim=-1)  # (N, bits, 2)
        logp = torch.stack([F.logsigmoid(a), F.logsigmoid(-a)], dim=-1)
        per_sample = _entropy(p, logp, eps).sum(dim=-1).mean()
        avg = p.mean(dim=0)  # (bits, 2)
        codebook = _entropy(avg, avg.log(), eps).sum()
        return per_sample, codebook
    codebook_codes = toks_to_codes(torch.arange(2**bits, device=u.device), bits, u.dtype)  # (K, bits)
    logits = 2.0 * inv_temperature * (u @ codebook_codes.T)  # -beta * ||u - c||^2 up to a per-row constant
    logp = logits.log_softmax(dim=-1)
    p = logp.exp()
    per_sample = _entropy(p, logp, eps).mean()
    avg = p.mean(dim=0)
    codebook = _entropy(avg, avg.clamp(min=torch.finfo(avg.dtype).tiny).log(), eps)
    return per_sample, codebook


def bsq_entropy_loss(
    lats: Tensor,
    inv_temperature: float = 100.0,
    diversity_gamma: float = 1.0,
    factorized: bool = False,
    eps: float = 1e-5,
    mask: Tensor | None = None,
) -> Tensor:
    """BSQ entropy regulariser `H_sample - gamma * H_codebook` of `lats (B, T, bits)` -> scalar (unweighted).

    Each latent is put on the unit sphere, `u = lats / ||lats||`; the codes are `c in {-s, +s}^bits`,
    `s = 1 / sqrt(bits)` (`K = 2 ** bits` of them). The soft assignment of a frame is
    `q(c | u) = softmax_c(-beta * ||u - c||^2) = softmax_c(2 * beta * <u, c>)`, `beta = inv_temperature`.

    - `H_sample = E_u[H(q(. | u))]`: low when every frame sits confidently on one code;
    - `H_codebook = H(E_u[q(. | u)])`: high when the batch spreads over the whole codebook.

    Minimising `H_sample - gamma * H_codebook` therefore asks for confident and diverse codes; its minimum
    is `-gamma * log K` (at most `log K` codebook entropy with zero per-sample entropy).

    `factorized=False` (the recipe) forms `q` over all `K` codes: memory `frames * K`. Because
    `<u, c> = sum_d u_d c_d`, `q` is exactly a product of per-bit Bernoullis,
    `q(c_d = +s | u) = sigmoid(4 * beta * s * u_d)`, so `H_sample` is the sum of the bit entropies either
    way (equal when `eps=0`). `factorized=True` (the BSQ paper's cheap form) also replaces `H_codebook`
    by the sum of the entropies of the mean bit probabilities, an upper bound of the exact value; memory
    `frames * bits`. `eps` clamps probabilities inside the logs as the recipe does (1e-5); 0 is exact.
    `mask (B, T)` keeps only valid frames (the recipe uses all frames, padding included).
    The recipe adds `0.1 * bsq_entropy_loss(lats)` (gamma 1, beta 100) to the feature MSE.
    """
    per_sample, codebook = bsq_entropy_terms(lats, inv_temperature, factorized, eps, mask)
    return per_sample - diversity_gamma * codebook


def bsq_commitment_loss(lats: Tensor, mask: Tensor | None = None) -> Tensor:
    """`mean ||u - sg(code(u))||^2` with `u` the unit-normalised `lats (B, T, bits)`: pulls latents onto codes.

    Optional: neither FocalCodec recipe uses a commitment term (BSQ's codes lie on the same sphere as `u`).
    """
    u = F.normalize(lats, dim=-1)
    return _masked_mean((u - lats_to_codes(u).detach()).square().sum(dim=-1), mask)


def pitch_losses(log2_f0: Tensor, voicing_logit: Tensor, f0: Tensor, voiced: Tensor) -> dict[str, Tensor]:
    """Predicted F0 and voicing against a pitch track (pYIN), over frames `(B, T)`.

    `log2_f0`: predicted log2 F0 in Hz; `voicing_logit`: predicted voicing before the sigmoid; `f0`: the track
    in Hz, 0 where unvoiced and negative where there is no track (padding); `voiced`: 1 or 0.
    Returns `f0` (mean L1 in octaves over frames voiced in the track), `f0_delta` (mean L1 in octaves of the
    frame-to-frame change of F0 against the track's, over pairs of consecutive frames both voiced: a
    contour term, since per-frame errors that are small but independent make the harmonics wobble),
    `voicing` (binary cross-entropy over tracked frames), and for the log (no gradient) `vde` (share of
    tracked frames whose decision at 0.5 differs) and `gpe` (share of voiced frames more than 20% off).
    """
    tracked, mask = f0 >= 0, (voiced > 0) & (f0 > 0)
    zero = log2_f0.new_zeros(())
    error = log2_f0 - f0.clamp_min(1.0).log2()
    octaves = error.abs()
    pairs = mask[:, 1:] & mask[:, :-1]
    decided = (voicing_logit > 0).float()
    return {
        "f0": octaves[mask].mean() if mask.any() else zero,
        "f0_delta": (error[:, 1:] - error[:, :-1]).abs()[pairs].mean() if pairs.any() else zero,
        "voicing": F.binary_cross_entropy_with_logits(voicing_logit[tracked], voiced[tracked].float()),
        "vde": (decided != voiced.float())[tracked].float().mean().detach(),
        "gpe": (octaves[mask] > math.log2(1.2)).float().mean().detach() if mask.any() else zero,
    }
