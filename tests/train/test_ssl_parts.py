"""HuBERT-style pre-training parts: MFCC targets, k-means, span masks, the prediction head and an overfit run."""

import math

import pytest
import torch

import wavslm
from wavslm.train.features import deltas, kmeans_assign, kmeans_fit, log_mel, mfcc
from wavslm.train.ssl_parts import (
    IGNORE,
    MaskedPredictionHead,
    ReconstructionHead,
    SSLModel,
    features_for_kmeans,
    masked_prediction_loss,
    span_mask,
    ssl_forward,
)
from wavslm.wavlm import WavLM, WavLMConfig, num_frames


def tiny_wavlm(**overrides) -> WavLM:
    values = dict(hidden_dims=[32] * 7, num_layers=2, dim=64, ffn_dim=128, num_heads=4, num_buckets=32,
                  max_distance=100, conv_pos=16, conv_pos_groups=4)
    return WavLM(WavLMConfig(**{**values, **overrides}))


def utterances(speech, count: int, samples: int) -> torch.Tensor:
    paths = sorted((speech / "librispeech-dev-clean" / "84").glob("*.wav"))[:count]
    sigs = []
    for path in paths:
        sig, sr = wavslm.load_audio(path)
        assert sr == 16000
        sigs.append(sig[0, :samples])
    return torch.stack(sigs)


# ---- MFCC -----------------------------------------------------------------------------------------------


def test_mfcc_frames_match_wavlm():
    model = tiny_wavlm(hidden_dims=[8] * 7, num_layers=1, dim=16, ffn_dim=16, conv_pos=4)
    for n in [1, 399, 400, 719, 720, 1039, 1280, 16000, 16319, 16320, 16721]:
        sig = torch.randn(2, n)
        T = model.extract(sig)[0].shape[1]
        feats = mfcc(sig)
        assert feats.shape == (2, T, 39) and num_frames(n) == T, n
        assert torch.isfinite(feats).all()
    assert num_frames(torch.tensor([1, 720, 16000])).tolist() == [1, 2, 49]


def test_mfcc_of_speech_is_finite_and_normalised(speech):
    sig = utterances(speech, 1, 32000)
    plain = mfcc(sig, with_deltas=False)
    assert plain.shape == (1, 99, 13) and torch.isfinite(plain).all()
    feats = mfcc(sig, normalize=True)
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(feats.mean(1), torch.zeros(1, 39), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.std(1, unbiased=False), torch.ones(1, 39), atol=1e-3, rtol=0)


def test_mfcc_of_a_padded_batch_equals_each_row_alone(speech):
    sig = utterances(speech, 2, 24000)
    short = 15000
    batch = sig.clone()
    batch[1, short:] = 0
    lengths = torch.tensor([24000, short])
    for normalize in (False, True):
        feats = mfcc(batch, normalize=normalize, lengths=lengths)
        T = num_frames(short)
        torch.testing.assert_close(feats[0], mfcc(sig[:1], normalize=normalize)[0])
        torch.testing.assert_close(feats[1, :T], mfcc(sig[1:, :short], normalize=normalize)[0], atol=1e-4, rtol=1e-4)
    assert (feats[1, T:] == 0).all()


def test_log_mel_frames_match_wavlm_and_a_tone_lands_in_its_band():
    t = torch.arange(16000) / 16000
    sig = torch.stack([torch.sin(2 * math.pi * 300 * t), torch.sin(2 * math.pi * 3000 * t)])
    feats = log_mel(sig, n_mels=40)
    assert feats.shape == (2, num_frames(16000), 40) and torch.isfinite(feats).all()
    low, high = feats.mean(1).argmax(-1).tolist()
    assert low < 10 < 25 < high, (low, high)  # 300 Hz and 3 kHz on an HTK mel scale from 20 Hz to 8 kHz
    padded = torch.cat([sig[:1, :9000], torch.zeros(1, 7000)], 1)
    held = log_mel(padded, n_mels=40, lengths=torch.tensor([9000]))
    T = num_frames(9000)
    torch.testing.assert_close(held[0, :T], log_mel(sig[:1, :9000], n_mels=40)[0])
    assert (held[0, T:] == held[0, T - 1]).all()


def test_deltas_of_a_constant_are_zero():
    feats = mfcc(torch.full((1, 8000), 0.3))
    assert (feats[..., 13:] == 0).all()
    assert (deltas(torch.full((2, 7, 3), 1.5)) == 0).all()
    ramp = torch.arange(10.0)[None, :, None]
    assert (deltas(ramp)[0, 2:-2, 0] == 1).all()  # slope 1 away from the edges


# ---- k-means --------------------------------------------------------------------------------------------


def blobs(k: int = 6, per: int = 300, dim: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=gen) * 10
    labels = torch.arange(k).repeat_interleave(per)
    return centres[labels] + 0.3 * torch.randn(k * per, dim, generator=gen), labels


@pytest.mark.parametrize("batch_size", [None, 128])
def test_kmeans_recovers_separated_blobs(batch_size):
    x, truth = blobs()
    centroids = kmeans_fit(x, 6, iters=50, seed=0, batch_size=batch_size)
    labels = kmeans_assign(x, centroids)
    table = torch.zeros(6, 6, dtype=torch.long).index_put_((truth, labels), torch.ones_like(truth), accumulate=True)
    assert ((table > 0).sum(0) == 1).all() and ((table > 0).sum(1) == 1).all()  # a bijection: equal up to permutation
    assert torch.equal(centroids, kmeans_fit(x, 6, iters=50, seed=0, batch_size=batch_size))


def test_kmeans_assign_is_chunked_and_keeps_leading_dims():
    x, _ = blobs()
    centroids = kmeans_fit(x, 4, iters=5, seed=3)
    full = kmeans_assign(x, centroids)
    assert torch.equal(full, kmeans_assign(x, centroids, chunk_size=7))
    assert torch.equal(kmeans_assign(x.view(6, 300, 4), centroids), full.view(6, 300))
    assert torch.equal(full, torch.cdist(x, centroids).argmin(-1))


def test_kmeans_with_as_many_clusters_as_points_and_bad_k():
    x = torch.randn(10, 3)
    assert kmeans_assign(x, kmeans_fit(x, 10, iters=3)).unique().numel() == 10
    with pytest.raises(ValueError, match="k"):
        kmeans_fit(x, 11)


# ---- span masks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_prob", [0.8, 0.65])
def test_span_mask_fraction(mask_prob):
    mask = span_mask(300, 400, mask_prob, 10, generator=torch.Generator().manual_seed(0))
    expected = 1 - (1 - mask_prob / 10) ** 10  # starts drawn at rate mask_prob / mask_length, spans overlapping
    assert mask.dtype == torch.bool and mask.shape == (300, 400)
    assert abs(mask.float().mean().item() - expected) < 0.02


def test_span_mask_min_masks_lengths_and_determinism():
    lengths = torch.tensor([60, 25, 6, 0])
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        mask = span_mask(4, 60, mask_prob=0.01, mask_length=10, min_masks=2, lengths=lengths, generator=gen)
        assert mask[0].sum() >= 11 and mask[1].sum() >= 11  # two distinct spans of 10 cover at least 11 frames
        assert mask[2, :6].all()  # shorter than a span: masked whole
        assert not (mask & (torch.arange(60)[None, :] >= lengths[:, None])).any()
    first = span_mask(8, 100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, span_mask(8, 100, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(first, span_mask(8, 100, generator=torch.Generator().manual_seed(6)))


# ---- head and loss --------------------------------------------------------------------------------------


def test_head_masks_and_starts_near_uniform():
    head = MaskedPredictionHead(64, 16, proj_dim=256)
    x = torch.randn(3, 50, 64)
    mask = span_mask(3, 50, generator=torch.Generator().manual_seed(0))
    y = head.apply_mask(x, mask)
    assert torch.equal(y[~mask], x[~mask]) and (y[mask] == head.mask_embedding).all()
    logits = head(torch.randn(3, 50, 64))
    assert logits.shape == (3, 50, 16) and logits.abs().max() <= 10 + 1e-4  # cosine / 0.1
    loss = masked_prediction_loss(logits, torch.randint(16, (3, 50)), mask)
    assert abs(loss.item() - math.log(16)) < 0.3


def test_masked_prediction_loss_terms():
    logits = torch.randn(2, 5, 4, requires_grad=True)
    labels = torch.tensor([[0, 1, 2, 3, IGNORE], [3, 2, 1, 0, 1]])
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    masked = ce[mask & (labels != IGNORE)].mean()
    torch.testing.assert_close(masked_prediction_loss(logits, labels, mask), masked)
    both = masked_prediction_loss(logits, labels, mask, unmasked_weight=0.5)
    torch.testing.assert_close(both, masked + 0.5 * ce[~mask].mean())
    empty = masked_prediction_loss(logits, labels, torch.zeros_like(mask))
    empty.backward()
    assert empty.item() == 0 and (logits.grad == 0).all()


# ---- the masked-prediction pass ------------------------------------------------------------------------


def test_ssl_forward_checks_labels_and_uses_an_intermediate_layer():
    model, head = tiny_wavlm(), MaskedPredictionHead(64, 8, 32)
    sig = torch.randn(2, 8000)
    with pytest.raises(ValueError, match="WavLM frames"):
        ssl_forward(model, head, sig, torch.zeros(2, 30, dtype=torch.long), None)
    labels = torch.randint(8, (2, num_frames(8000)))
    loss, metrics = ssl_forward(model, head, sig, labels, torch.Generator().manual_seed(0), layer=1,
                                lengths=torch.tensor([8000, 4000]))
    loss.backward()
    assert set(metrics) == {"loss", "acc_masked", "acc_unmasked", "mask_fraction"}
    assert 0.3 < metrics["mask_fraction"].item() < 0.9
    assert model.encoder.layers[1].feed_forward_norm.weight.grad is None  # above the predicting layer
    assert model.feature_extractor.layers[0].conv.weight.grad.abs().sum() > 0


def test_ssl_model_wraps_ssl_forward():
    wavlm, head = tiny_wavlm(), MaskedPredictionHead(64, 8, 32)
    model = SSLModel(wavlm, head, layer=2, mask_prob=0.65, unmasked_weight=0.1)
    sig, labels = torch.randn(2, 4000), torch.randint(8, (2, num_frames(4000)))
    loss, metrics = model(sig, labels, torch.Generator().manual_seed(2))
    direct, _ = ssl_forward(wavlm, head, sig, labels, torch.Generator().manual_seed(2), layer=2, mask_prob=0.65,
                            unmasked_weight=0.1)
    torch.testing.assert_close(loss, direct)
    assert {k.split(".")[0] for k in model.state_dict()} == {"wavlm", "head"}


def test_reconstruction_term_adds_a_log_mel_l1_at_its_layer():
    wavlm, head = tiny_wavlm(), MaskedPredictionHead(64, 8, 32)
    recon = ReconstructionHead(64, 20, layer=1, weight=0.5)
    model = SSLModel(wavlm, head, layer=2, recon=recon)
    sig, labels = torch.randn(2, 4000), torch.randint(8, (2, num_frames(4000)))
    target = log_mel(sig, n_mels=20)
    loss, metrics = model(sig, labels, torch.Generator().manual_seed(3), recon_target=target)
    plain, _ = ssl_forward(wavlm, head, sig, labels, torch.Generator().manual_seed(3), layer=2)
    hidden: list[torch.Tensor] = []
    mask = span_mask(2, labels.shape[1], generator=torch.Generator().manual_seed(3))
    x = head.apply_mask(wavlm.feature_proj(wavlm.extract(sig)[0]), mask)
    wavlm.encoder(x, use_cache=False, hidden=hidden)
    by_hand = (recon.proj(hidden[1]) - target).abs().mean()
    torch.testing.assert_close(metrics["recon_l1"], by_hand.detach())
    torch.testing.assert_close(loss, plain + 0.5 * by_hand)
    assert {k.split(".")[0] for k in model.state_dict()} == {"wavlm", "head", "recon"}
    with pytest.raises(ValueError, match="recon_target must be"):
        model(sig, labels, torch.Generator().manual_seed(3))


def test_features_for_kmeans_is_the_unmasked_hidden_state():
    model = tiny_wavlm(dropout=0.1).train()
    sig = torch.randn(2, 6400)
    feats = features_for_kmeans(model, sig, layer=1)
    assert model.training and not feats.requires_grad
    hidden: list[torch.Tensor] = []
    with torch.no_grad():
        model.eval()(sig, hidden=hidden)
    assert feats.shape == (2, num_frames(6400), 64) and torch.equal(feats, hidden[1])


def test_overfits_two_utterances_with_mfcc_kmeans_labels(speech):
    sig = utterances(speech, 2, 16000)
    feats = mfcc(sig, normalize=True)
    labels = kmeans_assign(feats, kmeans_fit(feats.flatten(0, 1), 16, iters=30, seed=0))
    model, head = tiny_wavlm(), MaskedPredictionHead(64, 16, 32)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=2e-3)
    gen = torch.Generator()
    losses = []
    for _ in range(60):
        gen.manual_seed(0)  # the same masks every step: a fixed batch to memorise
        loss, metrics = ssl_forward(model, head, sig, labels, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert metrics["acc_masked"].item() > 0.5
