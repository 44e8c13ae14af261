"""Codec training losses and discriminators: values on crafted inputs, gradients, a tiny GAN sanity check."""

import math

import pytest
import torch

from wavslm.modules.bsq import toks_to_codes
from wavslm.modules.vocos import ISTFTHead
from wavslm.train import discriminators as D
from wavslm.train import losses as L
from wavslm.train.mel import mel_filterbank_slaney

SR = 16000


def _tone(freq: float, n: int = 4000, sr: int = SR) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * freq * torch.arange(n) / sr)


# ---------------------------------------------------------------- mel / STFT


def test_mel_spectrogram_shape_and_tone_peak():
    sig = torch.stack([_tone(1000.0), _tone(3000.0)])
    mel = L.mel_spectrogram(sig, SR, n_fft=512, hop=160, n_mels=40)
    assert mel.shape == (2, 40, 4000 // 160 + 1)
    fb = mel_filterbank_slaney(SR, 512, 40)
    for row, freq in enumerate((1000.0, 3000.0)):
        centre_bin = int(mel[row].mean(dim=1).argmax())
        centre_hz = float(fb[centre_bin].argmax()) * SR / 512
        assert abs(centre_hz - freq) < 200
    # (B, 1, N) is accepted and gives the same values
    torch.testing.assert_close(L.mel_spectrogram(sig[:, None], SR, n_fft=512, hop=160, n_mels=40), mel)


def test_mel_loss_zero_on_identical_positive_otherwise_and_differentiable():
    target = torch.randn(2, 3200)
    assert L.mel_loss(target, target, SR, n_fft=256, hop=64, n_mels=20) == 0
    pred = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    loss = L.mel_loss(pred, target, SR, n_fft=256, hop=64, n_mels=20)
    assert loss > 0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        L.mel_loss(pred[:, :-1], target, SR)


def test_spectra_of_bf16_audio_are_float32():
    """A bf16-autocast decoder hands bf16 audio to the losses and discriminators; cuFFT takes no bf16, so
    their spectra are taken in float32 (the first GPU run failed there) and equal those of the audio's
    float32 values."""
    sig = torch.stack([_tone(440.0), _tone(1250.0)]).bfloat16()
    mel = L.mel_spectrogram(sig, SR, n_fft=512, hop=160, n_mels=40)
    assert mel.dtype == torch.float32
    torch.testing.assert_close(mel, L.mel_spectrogram(sig.float(), SR, n_fft=512, hop=160, n_mels=40))
    score, feats = D.ResolutionDiscriminator(512, 128, 512)(sig)
    assert score.dtype == torch.float32 and all(f.dtype == torch.float32 for f in feats)
    head = ISTFTHead(64, 16, 4, causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(1, 5, 64)).dtype == torch.float32


def test_multi_resolution_stft_loss_decreases_towards_target():
    res = ((256, 64, 256), (128, 32, 96))
    target = _tone(440.0, 3200)[None] + 0.1 * torch.randn(1, 3200)
    noise = torch.randn_like(target)
    assert L.multi_resolution_stft_loss(target, target, res) == 0
    values = [
        float(L.multi_resolution_stft_loss(target + a * noise, target, res)) for a in (1.0, 0.3, 0.1, 0.03)
    ]
    assert all(b < a for a, b in zip(values, values[1:], strict=False)) and values[-1] > 0
    # a few gradient steps on the signal itself reduce it
    x = (target + noise).requires_grad_()
    opt = torch.optim.Adam([x], lr=0.02)
    start = float(L.multi_resolution_stft_loss(x.detach(), target, res))
    for _ in range(10):
        opt.zero_grad()
        L.multi_resolution_stft_loss(x, target, res).backward()
        opt.step()
    assert float(L.multi_resolution_stft_loss(x.detach(), target, res)) < 0.9 * start


# ---------------------------------------------------------------- feature losses


def test_feature_mse_masking_and_gradients():
    target = torch.randn(2, 5, 3)
    pred = target.clone()
    pred[1, 3:] += 1.0  # differs only on frames the mask drops
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    assert L.feature_mse(target, target) == 0
    assert L.feature_mse(pred, target, mask) == 0
    assert L.feature_mse(pred, target) == pytest.approx(2 * 3 / 30)  # 6 of 30 entries off by 1
    p = pred.clone().requires_grad_()
    t = target.clone().requires_grad_()
    L.feature_mse(p, t).backward()
    assert p.grad.abs().sum() > 0 and t.grad is None  # the target is a frozen teacher's


def test_layerwise_feature_mse_weights():
    t = [torch.zeros(1, 4, 2), torch.zeros(1, 4, 2)]
    p = [torch.ones(1, 4, 2), 2 * torch.ones(1, 4, 2)]
    assert L.layerwise_feature_mse(p, t, (0.5, 1.0)) == pytest.approx((0.5 * 1 + 1.0 * 4) / 2)
    with pytest.raises(ValueError):
        L.layerwise_feature_mse(p, t, (1.0,))


# ---------------------------------------------------------------- adversarial losses


def test_adversarial_losses_minimal_where_expected():
    hi, lo = (
        [torch.full((2, 7), 1.5), torch.full((2, 3), 1.0)],
        [torch.full((2, 7), -1.5), torch.full((2, 3), -1.0)],
    )
    assert L.generator_adv_loss(hi, "hinge") == 0
    assert L.discriminator_adv_loss(hi, lo, "hinge") == 0
    assert L.generator_adv_loss(lo, "hinge") == pytest.approx(2.5 + 2.0)  # summed over discriminators
    assert L.discriminator_adv_loss(lo, hi, "hinge") > 0
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert L.generator_adv_loss(ones, "lsgan") == 0
    assert L.discriminator_adv_loss(ones, zeros, "lsgan") == 0
    assert L.discriminator_adv_loss(zeros, ones, "lsgan") == pytest.approx(2.0)
    with pytest.raises(ValueError):
        L.generator_adv_loss(ones, "wasserstein")


def test_feature_matching_loss():
    real = [[torch.randn(2, 3, 8), torch.randn(2, 1, 4)], [torch.randn(2, 5)]]
    assert L.feature_matching_loss(real, real) == 0
    fake = [[(r + 1.0).requires_grad_() for r in k] for k in real]
    assert float(L.feature_matching_loss(real, fake).detach()) == pytest.approx(1.0)
    assert float(L.feature_matching_loss(real, fake, reduction="sum").detach()) == pytest.approx(3.0)
    real_g = [[r.clone().requires_grad_() for r in k] for k in real]
    L.feature_matching_loss(real_g, fake).backward()
    assert all(f.grad is not None for k in fake for f in k) and all(r.grad is None for k in real_g for r in k)


# ---------------------------------------------------------------- BSQ


def _codes(toks: torch.Tensor, bits: int, scale: float = 1.0) -> torch.Tensor:
    return scale * toks_to_codes(toks, bits)[None]  # (1, T, bits)


def test_bsq_entropy_prefers_confident_and_diverse_codes():
    bits = 4
    diverse = _codes(torch.arange(2**bits), bits)  # every code used once, latents on the codes
    collapsed = _codes(torch.full((16,), 5), bits)  # one code for every frame
    unsure = torch.zeros(1, 16, bits)
    unsure[..., 0] = 1.0  # on the decision boundary of 3 of the 4 bits
    l_div, l_col, l_uns = (float(L.bsq_entropy_loss(x)) for x in (diverse, collapsed, unsure))
    assert l_div == pytest.approx(-math.log(2**bits), abs=1e-3)  # the minimum, -log K
    assert l_col == pytest.approx(0.0, abs=1e-3)
    assert l_div < l_col and l_div < l_uns
    per_sample, _ = L.bsq_entropy_terms(unsure)
    assert float(per_sample) == pytest.approx(3 * math.log(2), abs=1e-3)
    # only the direction matters (latents are put on the sphere)
    assert float(L.bsq_entropy_loss(7.0 * diverse)) == pytest.approx(l_div, abs=1e-6)


def test_bsq_factorized_matches_exact_per_sample_and_bounds_codebook():
    lats = torch.randn(3, 20, 5)
    ps, cb = L.bsq_entropy_terms(lats, inv_temperature=3.0, eps=0.0)
    ps_f, cb_f = L.bsq_entropy_terms(lats, inv_temperature=3.0, eps=0.0, factorized=True)
    torch.testing.assert_close(ps_f, ps, rtol=1e-4, atol=1e-5)
    assert cb_f >= cb - 1e-5 and cb <= 5 * math.log(2) + 1e-5


def test_bsq_mask_and_gradients():
    bits = 3
    lats = torch.randn(2, 6, bits)
    padded = torch.cat([lats, torch.ones(2, 4, bits)], dim=1)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :6] = True
    torch.testing.assert_close(L.bsq_entropy_loss(padded, mask=mask), L.bsq_entropy_loss(lats))
    x = lats.clone().requires_grad_()
    L.bsq_entropy_loss(x, inv_temperature=5.0).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bsq_entropy_descent_spreads_codebook_usage():
    bits = 4
    x = (torch.ones(1, 64, bits) + 0.3 * torch.randn(1, 64, bits)).requires_grad_()
    used_before = L.lats_to_codes(x.detach()).unique(dim=1).shape[1]
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        L.bsq_entropy_loss(x, inv_temperature=5.0).backward()
        opt.step()
    used_after = L.lats_to_codes(x.detach()).unique(dim=1).shape[1]
    assert used_after > used_before and used_after >= 12


def test_bsq_commitment_loss():
    codes = _codes(torch.arange(8), 3, scale=2.5)
    assert float(L.bsq_commitment_loss(codes)) == pytest.approx(0.0, abs=1e-12)
    assert L.bsq_commitment_loss(torch.randn(2, 5, 3)) > 0


# ---------------------------------------------------------------- discriminators


def _tiny_hifigan() -> D.CombinedDiscriminator:
    return D.hifigan_discriminator(
        mpd={"periods": (2, 3), "channels": (4, 8)},
        msd={
            "num_scales": 2,
            "channels": (4, 8, 8),
            "kernel_sizes": (5, 5, 3),
            "strides": (1, 2, 1),
            "groups": (1, 4, 1),
        },
    )


def test_discriminator_output_shapes():
    sig = torch.randn(2, 600)
    mpd = D.MultiPeriodDiscriminator(periods=(2, 3, 5), channels=(4, 8, 8))
    logits, feats = mpd(sig)
    assert len(logits) == len(feats) == 3 and all(len(f) == 4 for f in feats)  # 3 convs + logits map
    for lg, ft, p in zip(logits, feats, (2, 3, 5), strict=True):
        assert lg.shape[0] == 2 and ft[-1].shape[-1] == p
        torch.testing.assert_close(lg, ft[-1].flatten(1))
    comb = _tiny_hifigan()
    logits, feats = comb(sig)
    assert len(logits) == 4 and [len(f) for f in feats] == [3, 3, 4, 4]
    logits_b1n, _ = comb(sig[:, None])
    for a, b in zip(logits, logits_b1n, strict=True):
        torch.testing.assert_close(a, b)
    mrd = D.MultiResolutionDiscriminator(resolutions=((128, 32, 128), (64, 16, 64)), channels=4, num_layers=3)
    logits, feats = mrd(sig)
    assert len(logits) == 2 and all(lg.dim() == 2 and lg.shape[0] == 2 for lg in logits)
    assert feats[0][0].shape[:3] == (2, 4, 600 // 32 + 1)
    with pytest.raises(ValueError):
        comb(torch.randn(2, 2, 600))


def test_tiny_gan_steps_move_losses_the_right_way():
    real = torch.stack([_tone(300.0, 800), _tone(700.0, 800)])
    fake = (0.5 * torch.randn(2, 800)).requires_grad_()
    disc = _tiny_hifigan()
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)

    def d_loss() -> torch.Tensor:
        return L.discriminator_adv_loss(disc(real)[0], disc(fake.detach())[0])

    d_start = float(d_loss().detach())
    for _ in range(10):
        d_opt.zero_grad()
        d_loss().backward()
        d_opt.step()
    assert float(d_loss().detach()) < d_start

    # generator side: with the discriminator frozen, moving the fake signal lowers its adversarial loss
    d_opt.zero_grad()
    disc.requires_grad_(False)
    g_opt = torch.optim.Adam([fake], lr=1e-2)

    def g_loss() -> torch.Tensor:
        fake_logits, fake_feats = disc(fake)
        _, real_feats = disc(real)
        return L.generator_adv_loss(fake_logits) + L.feature_matching_loss(real_feats, fake_feats)

    g_start = float(g_loss().detach())
    for _ in range(10):
        g_opt.zero_grad()
        g_loss().backward()
        g_opt.step()
    assert float(g_loss().detach()) < g_start
    assert all(p.grad is None for p in disc.parameters())


def test_pitch_losses_count_the_frames_they_say():
    f0 = torch.tensor([[100.0, 200.0, 0.0, -1.0]])  # voiced, voiced, unvoiced, no track (padding)
    voiced = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    log2_f0 = torch.tensor([[math.log2(100.0), math.log2(300.0), 7.0, 7.0]])  # exact, then 1.5x off
    logits = torch.tensor([[5.0, -5.0, -5.0, 5.0]])  # the second decision is wrong; the padding one is ignored
    out = L.pitch_losses(log2_f0, logits, f0, voiced)
    assert out["f0"].item() == pytest.approx(math.log2(1.5) / 2)
    assert out["gpe"].item() == pytest.approx(0.5) and out["vde"].item() == pytest.approx(1 / 3)
    assert out["f0_delta"].item() == pytest.approx(math.log2(1.5))  # one voiced pair; its error moved by that
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :3], voiced[0, :3])
    assert out["voicing"].item() == pytest.approx(expected.item())
