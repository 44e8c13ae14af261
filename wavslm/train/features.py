"""Targets for HuBERT-style pre-training: MFCC features at WavLM's frame rate, and k-means over them.

Iteration 1 of HuBERT clusters MFCCs (13 cepstra + deltas + delta-deltas); iteration 2 clusters the
model's own intermediate features (`ssl_parts.features_for_kmeans`). Both go through the same pure
`kmeans_fit` / `kmeans_assign`.

Alignment: WavLM's non-causal conv front end (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2) is a chain
of unpadded convolutions, so output frame t sees exactly the samples `[320 t, 320 t + 400)` and there are
`T = floor((N - 400) / 320) + 1` frames (one frame for `N < 400`, which the front end zero-pads;
`wavlm.num_frames`).
`mfcc` frames the signal with the same 400-sample (25 ms) window and 320-sample (20 ms) hop, without
centring or padding, so MFCC frame t and WavLM frame t cover the same samples. (Fairseq's HuBERT computes
MFCCs at 100 Hz and keeps every other label; framing at 50 Hz directly is equivalent and cheaper.)
The causal extractor left-pads and emits a different count: labels here are for the non-causal teacher.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..wavlm import num_frames
from .mel import mel_filterbank_htk

SAMPLE_RATE = 16000
WINDOW = 400  # receptive field of WavLM's conv front end: 25 ms
HOP = 320  # its total stride: 20 ms, 50 frames/s


# ---- MFCC -----------------------------------------------------------------------------------------------


def dct_matrix(n_mels: int, n_mfcc: int) -> Tensor:
    """Orthonormal DCT-II restricted to the first `n_mfcc` outputs: `(n_mels, n_mfcc)`."""
    n = torch.arange(n_mels, dtype=torch.float64)[:, None]
    k = torch.arange(n_mfcc, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


def deltas(x: Tensor, width: int = 2) -> Tensor:
    """Regression deltas over time of `(B, T, D)`: `sum_n n (x[t+n] - x[t-n]) / (2 sum_n n^2)`, edges repeated."""
    T = x.shape[1]
    padded = F.pad(x.transpose(1, 2), (width, width), mode="replicate").transpose(1, 2)
    out = torch.zeros_like(x)
    for n in range(1, width + 1):
        out = out + n * (padded[:, width + n : width + n + T] - padded[:, width - n : width - n + T])
    return out / (2 * sum(n * n for n in range(1, width + 1)))


def cmvn(feats: Tensor, frames: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Per-utterance mean and variance normalisation of `(B, T, D)` over each row's first `frames` frames."""
    B, T, _ = feats.shape
    valid = torch.ones(B, T, 1, dtype=feats.dtype, device=feats.device)
    if frames is not None:
        inside = torch.arange(T, device=feats.device)[None, :] < frames.to(feats.device)[:, None]
        valid = inside[..., None].to(feats.dtype)
    count = valid.sum(1, keepdim=True).clamp_min(1)
    mean = (feats * valid).sum(1, keepdim=True) / count
    var = ((feats - mean) ** 2 * valid).sum(1, keepdim=True) / count
    return (feats - mean) / (var + eps).sqrt() * valid


def _hold_last(x: Tensor, frames: Tensor | None) -> Tensor:
    """Repeat each row's last valid frame over its padding, so that padding never leaks into the deltas."""
    if frames is None:
        return x
    index = torch.minimum(torch.arange(x.shape[1], device=x.device)[None, :], frames[:, None] - 1)
    return x.gather(1, index[..., None].expand_as(x))


def log_mel(
    sig: Tensor, n_mels: int = 80, low_hz: float = 20.0, high_hz: float = 8000.0, preemphasis: float = 0.97,
    lengths: Tensor | None = None,
) -> Tensor:
    """Kaldi-style log-mel filterbank energies of `sig (B, N)` at 16 kHz -> `(B, T, n_mels)`, float32.

    One frame per WavLM frame (see the module docstring). Per frame: remove the DC offset, pre-emphasise,
    Hamming window, 512-point power spectrum, `n_mels` mel filters from `low_hz` to `high_hz`, natural log
    floored at float32 eps. `lengths (B,)`: frames past each row's valid ones repeat its last valid frame.
    """
    if sig.dim() != 2:
        raise ValueError(f"log_mel expects sig of shape (B, N), got {tuple(sig.shape)}")
    sig = sig.float()
    if sig.shape[1] < WINDOW:
        sig = F.pad(sig, (0, WINDOW - sig.shape[1]))
    windows = sig.unfold(1, WINDOW, HOP)  # (B, T, 400)
    windows = windows - windows.mean(-1, keepdim=True)
    windows = torch.cat([windows[..., :1] * (1 - preemphasis), windows[..., 1:] - preemphasis * windows[..., :-1]], -1)
    windows = windows * torch.hamming_window(WINDOW, periodic=False, device=sig.device)
    n_fft = 1 << (WINDOW - 1).bit_length()
    power = torch.fft.rfft(windows, n=n_fft).abs() ** 2  # (B, T, n_fft / 2 + 1)
    # Contiguous (n_fft / 2 + 1, n_mels): a transposed view can take another BLAS path and change the sums.
    fbank = mel_filterbank_htk(SAMPLE_RATE, n_fft, n_mels, low_hz, high_hz).T.float().contiguous().to(sig.device)
    logmel = (power @ fbank).clamp_min(torch.finfo(torch.float32).eps).log()
    return _hold_last(logmel, num_frames(lengths.to(sig.device)) if lengths is not None else None)


def mfcc(
    sig: Tensor,
    n_mfcc: int = 13,
    with_deltas: bool = True,
    normalize: bool = False,
    lengths: Tensor | None = None,
    n_mels: int = 23,
    low_hz: float = 20.0,
    high_hz: float = 8000.0,
    preemphasis: float = 0.97,
    lifter: float = 22.0,
) -> Tensor:
    """Kaldi-style MFCCs of `sig (B, N)` at 16 kHz -> `(B, T, 3 n_mfcc)` (or `(B, T, n_mfcc)`), float32.

    One frame per WavLM frame (see the module docstring). Per frame: remove the DC offset, pre-emphasise,
    Hamming window, 512-point power spectrum, `n_mels` mel filters from `low_hz` to `high_hz`, log
    (floored at float32 eps), DCT-II keeping `n_mfcc` coefficients (c0 included), sinusoidal liftering.
    `with_deltas` appends deltas and delta-deltas (window +-2, edges repeated). `normalize` applies
    per-utterance CMVN after the deltas. `lengths (B,)`: valid samples per row of a right-padded batch;
    each row's valid frames then equal those of the row alone (frames past them repeat its last valid
    frame, or are zero with `normalize`). No dithering: the output is deterministic.
    """
    if sig.dim() != 2:
        raise ValueError(f"mfcc expects sig of shape (B, N), got {tuple(sig.shape)}")
    logmel = log_mel(sig, n_mels, low_hz, high_hz, preemphasis)
    ceps = logmel @ dct_matrix(n_mels, n_mfcc).to(sig.device)
    if lifter:
        i = torch.arange(n_mfcc, device=sig.device, dtype=torch.float32)
        ceps = ceps * (1 + lifter / 2 * torch.sin(math.pi * i / lifter))
    valid = num_frames(lengths.to(sig.device)) if lengths is not None else None
    ceps = _hold_last(ceps, valid)
    if with_deltas:
        d = _hold_last(deltas(ceps), valid)
        ceps = torch.cat([ceps, d, _hold_last(deltas(d), valid)], dim=-1)
    if normalize:
        ceps = cmvn(ceps, valid)
    return ceps


# ---- k-means ------------------------------------------------------------------------------------------


def _nearest(x: Tensor, centroids: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest centroid for each row of `x (N, D)`, chunked."""
    c_sq = centroids.pow(2).sum(-1)
    labels, dists = [], []
    for chunk in x.split(chunk_size):
        d = (chunk.pow(2).sum(-1, keepdim=True) - 2 * chunk @ centroids.T + c_sq).clamp_min_(0)
        dist, label = d.min(-1)
        labels.append(label)
        dists.append(dist)
    return torch.cat(labels), torch.cat(dists)


def kmeans_assign(feats: Tensor, centroids: Tensor, chunk_size: int = 16384) -> Tensor:
    """Nearest-centroid labels: `feats (..., D)`, `centroids (k, D)` -> `labels (...)` int64."""
    flat = feats.reshape(-1, feats.shape[-1]).to(centroids.dtype)
    return _nearest(flat, centroids, chunk_size)[0].reshape(feats.shape[:-1])


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator, chunk_size: int) -> Tensor:
    """Greedy k-means++ seeding (2 + log k candidates per step, keep the one lowering the potential most)."""
    N = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(N, (1,), generator=gen))
    centroids = [x[first]]
    closest = _nearest(x, x[first : first + 1], chunk_size)[1]
    for _ in range(1, k):
        total = closest.sum()
        if total > 0:
            cand = torch.multinomial(closest.double().cpu() / float(total), trials, replacement=True, generator=gen)
        else:  # fewer distinct points than k: any point will do
            cand = torch.randint(N, (trials,), generator=gen)
        cand = cand.to(x.device)
        d = torch.stack([_nearest(x, x[c : c + 1], chunk_size)[1] for c in cand])  # (trials, N)
        d = torch.minimum(d, closest[None])
        best = int(d.sum(-1).argmin())
        centroids.append(x[cand[best]])
        closest = d[best]
    return torch.stack(centroids)


def kmeans_fit(
    feats: Tensor,
    k: int,
    iters: int = 100,
    seed: int = 0,
    batch_size: int | None = None,
    init_size: int = 20000,
    tol: float = 1e-4,
    chunk_size: int = 16384,
) -> Tensor:
    """Fit `k` centroids `(k, D)` to `feats (N, D)`; deterministic given `seed`.

    Seeding: greedy k-means++ on a random subset of at most `max(init_size, 3 k)` points.
    `batch_size=None`: Lloyd iterations over all points (chunked), stopping early once the centroids
    move less than `tol` times the mean feature variance. `batch_size=n`: `iters` mini-batch updates
    (Sculley 2010: each centroid moves to the running mean of the points it has been given), for corpora
    too large to sweep. Empty clusters are re-seeded with the points farthest from their centroid (in the
    whole set for Lloyd, in the current batch for mini-batches), so no randomness is involved there.
    Computes in float32 (float64 if given), on the device of `feats`.
    """
    if feats.dim() != 2:
        raise ValueError(f"kmeans_fit expects feats of shape (N, D), got {tuple(feats.shape)}")
    N = feats.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"kmeans_fit needs 1 <= k <= N points, got k={k} and N={N}")
    x = feats if feats.dtype == torch.float64 else feats.float()
    gen = torch.Generator().manual_seed(seed)
    pool = x
    if N > max(init_size, 3 * k):
        pool = x[torch.randperm(N, generator=gen)[: max(init_size, 3 * k)].to(x.device)]
    centroids = _kmeans_pp(pool, k, gen, chunk_size)
    if batch_size is None:
        threshold = tol * x.var(0, unbiased=False).mean()
        for _ in range(iters):
            labels, dists = _nearest(x, centroids, chunk_size)
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, labels, x)
            new = sums / counts.clamp_min(1)[:, None].to(x.dtype)
            empty = (counts == 0).nonzero().flatten()
            if len(empty):
                new[empty] = x[dists.topk(len(empty)).indices]
            shift = (new - centroids).pow(2).sum(-1).max()
            centroids = new
            if not len(empty) and shift <= threshold:
                break
        return centroids
    counts = torch.zeros(k, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        batch = x[torch.randint(N, (min(batch_size, N),), generator=gen).to(x.device)]
        labels, dists = _nearest(batch, centroids, chunk_size)
        n = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, labels, batch)
        counts = counts + n
        centroids = torch.where(n[:, None] > 0, (centroids * (counts - n)[:, None] + sums) / counts.clamp_min(1)[:, None], centroids)
        empty = (counts == 0).nonzero().flatten()[: len(batch)]
        if len(empty):
            centroids[empty] = batch[dists.topk(len(empty)).indices]
    return centroids
