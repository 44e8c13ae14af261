"""The harmonic-plus-noise decoder: what its synthesiser emits for known controls, streaming against the one
pass, the fixed noise, and its place in a codec folder."""

import math

import pytest
import torch

from wavslm import Codec, InputError
from wavslm.codec import CodecConfig
from wavslm.modules.harmonic import (
    Controls,
    HarmonicNoise,
    HarmonicNoiseConfig,
    HarmonicNoiseState,
    band_noise,
)

TINY = {"input_dim": 12, "num_layers": 2, "dim": 16, "ffn_dim": 24, "hop_length": 160, "sample_rate": 8000,
        "num_harmonics": 24, "envelope_bins": 8, "noise_bands": 4, "noise_period": 4096}


def tiny(**overrides) -> HarmonicNoise:
    torch.manual_seed(0)
    return HarmonicNoise(HarmonicNoiseConfig(**{**TINY, **overrides})).eval()


def stream(decoder, qfeats, chunk):
    state, outs = None, []
    for piece in qfeats.split(chunk, dim=1):
        out, state = decoder(piece, state)
        outs.append(out)
    return torch.cat(outs, dim=1), state


@torch.no_grad()
def test_a_constant_f0_gives_its_sine_and_harmonics():
    decoder, sr, hop, frames = tiny(), 8000, 160, 20
    harmonics = torch.zeros(1, frames, 24)
    harmonics[..., 0], harmonics[..., 2] = 0.5, 0.25  # the fundamental and the third harmonic
    controls = Controls(torch.full((1, frames), 200.0), torch.ones(1, frames), harmonics, torch.zeros(1, frames, 4))
    sig, _ = decoder.render(controls)
    n = torch.arange(1, frames * hop + 1, dtype=torch.float64)  # the phase advances before the first sample
    phase = 2 * math.pi * 200.0 * n / sr
    expected = 0.5 * torch.sin(phase) + 0.25 * torch.sin(3 * phase)
    torch.testing.assert_close(sig[0].double(), expected, atol=1e-4, rtol=0)


@torch.no_grad()
def test_controls_move_linearly_within_a_frame():
    decoder, hop = tiny(), 160
    amp = torch.tensor([0.0, 1.0]).view(1, 2, 1)
    harmonics = torch.cat([amp, torch.zeros(1, 2, 23)], dim=-1)
    controls = Controls(torch.full((1, 2), 2000.0), torch.ones(1, 2), harmonics, torch.zeros(1, 2, 4))
    sig, (last, phase, position) = decoder.render(controls)
    # 2000 Hz at 8 kHz: the sine is +1 on every 4th sample from the first; in frame 1 sample j has amplitude (j+1)/hop.
    peaks = sig[0, hop::4]
    torch.testing.assert_close(peaks, (4 * torch.arange(40) + 1) / 160, atol=1e-5, rtol=0)
    assert position.tolist() == [2 * hop] and last.shape == (1, 1 + 24 + 4) and phase.dtype == torch.float64


@torch.no_grad()
def test_harmonics_at_or_above_nyquist_are_silent():
    decoder = tiny()
    controls, _ = decoder.controls(torch.randn(2, 5, 12))
    k = torch.arange(1, 25)
    above = controls.f0[..., None] * k >= 4000
    assert above.any() and (controls.harmonics[above] == 0).all() and (controls.harmonics[~above] > 0).all()
    assert ((controls.f0 >= 50) & (controls.f0 <= 500)).all()
    assert ((controls.voicing >= 0) & (controls.voicing <= 1)).all()


@torch.no_grad()
@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_streaming_equals_one_pass(chunk):
    """The phase integrates F0, so float rounding in the backbone (an ulp of F0 apart between a chunked and a
    one-pass run) adds up over time: measured 1.1e-4 to 1.7e-4 of the peak after 2 s, with random weights
    whose F0 jumps from frame to frame over 24 loud harmonics. The phase itself agrees to ~1e-6 rad."""
    decoder = tiny()
    qfeats = torch.randn(2, 100, 12)
    full, end = decoder(qfeats)
    streamed, state = stream(decoder, qfeats, chunk)
    assert isinstance(state, HarmonicNoiseState) and state.position.tolist() == [100 * 160] * 2
    assert (streamed - full).abs().max() < 5e-4 * full.abs().max()
    torch.testing.assert_close(state.phase, end.phase, atol=1e-4, rtol=0)


@torch.no_grad()
def test_longer_input_keeps_earlier_outputs_and_empty_pieces_change_nothing():
    decoder = tiny()
    qfeats = torch.randn(1, 30, 12)
    full, _ = decoder(qfeats)
    for frames in (1, 9):
        prefix, state = decoder(qfeats[:, :frames])
        assert (prefix - full[:, : frames * 160]).abs().max() < 5e-4 * full.abs().max()  # see the test above
        empty, same = decoder(qfeats[:, :0], state)
        assert empty.shape == (1, 0) and same is state


def test_noise_is_fixed_band_limited_and_unit_rms():
    table = band_noise(4, 4096, seed=0)
    assert torch.equal(table, band_noise(4, 4096, seed=0)) and not torch.equal(table, band_noise(4, 4096, seed=1))
    torch.testing.assert_close(table.pow(2).mean(1), torch.ones(4), atol=1e-5, rtol=0)
    spectrum = torch.fft.rfft(table.double()).abs() ** 2
    edges = [round(b * spectrum.shape[1] / 4) for b in range(5)]
    for b in range(4):
        inside = spectrum[b, edges[b] : edges[b + 1]].sum()
        assert inside / spectrum[b].sum() > 0.999999


def test_a_codec_folder_round_trips_without_the_noise_table(tmp_path):
    config = CodecConfig(**{**vars(CodecConfig()), **_tiny_codec()})
    codec = Codec(config).eval()
    codec.save_pretrained(tmp_path / "c")
    again = Codec.from_pretrained(tmp_path / "c")
    assert not any("noise_table" in k for k in again.state_dict())
    assert again.sample_rate_output == 16000 and again.causal
    toks = torch.randint(0, 64, (1, 12))
    torch.testing.assert_close(again.decode(toks), codec.decode(toks))


def test_bad_configs_are_refused_in_one_sentence():
    with pytest.raises(InputError, match="needs 0 < f0_min < f0_max < sample_rate / 2"):
        tiny(f0_min=400.0, f0_max=300.0)
    with pytest.raises(InputError, match="needs a positive noise_bands"):
        tiny(noise_bands=0)
    with pytest.raises(InputError, match="decoder synthesises at 8000 Hz but the codec's frames give 16000 Hz"):
        Codec(CodecConfig(**{**vars(CodecConfig()), **_tiny_codec(sample_rate=8000)}))
    with pytest.raises(InputError, match="unknown"):
        HarmonicNoiseConfig.from_dict({"colour": "red"})


def _tiny_codec(sample_rate: int = 16000) -> dict:
    """The reference fixture codec's sizes with a harmonic-plus-noise decoder at 16 kHz."""
    focal = {"hidden_dims": [32], "focal_window": 3, "focal_level": 2, "focal_factor": 2, "causal": True,
             "window_size": 16}
    return {
        "encoder_config": {"hidden_dims": [32] * 7, "num_layers": 1, "dim": 32, "ffn_dim": 64, "num_heads": 2,
                           "num_buckets": 32, "max_distance": 64, "conv_pos": 8, "conv_pos_groups": 4,
                           "causal": True, "window_size": 16, "lookahead_size": 3},
        "compressor_config": {"input_dim": 32, "output_dim": 6, "downscale_factors": [1], **focal},
        "quantizer_config": {"codebook_size": 64},
        "decompressor_config": {"input_dim": 6, "output_dim": 32, "upscale_factors": [1], **focal,
                                "last_window_size": 16, "lookahead_size": 3},
        "decoder_name": "HarmonicNoise",
        "decoder_config": {"input_dim": 32, "num_layers": 1, "dim": 16, "ffn_dim": 24, "hop_length": 320,
                           "sample_rate": sample_rate, "num_harmonics": 16, "envelope_bins": 8, "noise_bands": 4,
                           "noise_period": 4096},
    }


@torch.no_grad()
def test_voicing_mutes_the_noise_below_the_cutoff():
    """Bands 0-1 of 4 (0-2 kHz at 8 kHz) start below the 2 kHz cutoff: a voiced frame's noise there is the
    unvoiced level times (1 - voicing); bands 2-3 keep theirs."""
    voiced, free = tiny(), tiny(voiced_noise_cutoff=0.0)
    qfeats = torch.randn(1, 6, 12)
    gated, _ = voiced.controls(qfeats)
    plain, _ = free.controls(qfeats)
    assert voiced.low_bands.tolist() == [1.0, 1.0, 0.0, 0.0] and free.low_bands.tolist() == [0.0] * 4
    torch.testing.assert_close(gated.noise[..., :2], plain.noise[..., :2] * (1 - gated.voicing[..., None]))
    torch.testing.assert_close(gated.noise[..., 2:], plain.noise[..., 2:])


@torch.no_grad()
def test_the_voiced_noise_gain_scales_the_noise_of_voiced_frames():
    """With `voiced_noise_gain` g every band keeps (1 - voicing * (1 - g)) of the noise it had (below the
    cutoff, on top of voicing's mute); the weights (and the harmonics) are untouched, and the decoder still
    streams exactly."""
    plain, quiet = tiny(), tiny(voiced_noise_gain=0.25)
    qfeats = torch.randn(1, 30, 12)
    a, _ = plain.controls(qfeats)
    b, _ = quiet.controls(qfeats)
    assert 0.2 < float(a.voicing.min()) and float(a.voicing.max()) < 0.8  # partly voiced: both factors matter
    torch.testing.assert_close(b.noise, a.noise * (1 - 0.75 * a.voicing[..., None]))
    torch.testing.assert_close(b.harmonics, a.harmonics)
    assert sorted(quiet.state_dict()) == sorted(plain.state_dict())
    full, _ = quiet(qfeats)
    streamed, _ = stream(quiet, qfeats, 4)
    assert (streamed - full).abs().max() < 5e-4 * full.abs().max()
    with pytest.raises(InputError, match="needs 0 <= voiced_noise_gain <= 1, got 1.5"):
        tiny(voiced_noise_gain=1.5)
