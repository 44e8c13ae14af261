"""WavLM: parity with Hugging Face's WavLM on the reference checkpoint, and the LM built from its layers."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from wavslm import InputError, WavSLM
from wavslm.wavlm import WavLM, WavLMConfig, from_hf, num_frames


@pytest.mark.parametrize("causal", [False, True])
@torch.no_grad()
def test_num_frames_counts_what_the_front_end_emits(causal):
    config = WavLMConfig(hidden_dims=[4] * 7, causal=causal)
    extractor = WavLM(WavLMConfig(hidden_dims=[4] * 7, num_layers=1, dim=8, ffn_dim=8, num_heads=1,
                                  num_buckets=4, conv_pos=2, conv_pos_groups=1, causal=causal)).feature_extractor
    lengths = [1, 399, 400, 719, 720, 1280, 4321]
    counts = [extractor(torch.zeros(1, n))[0].shape[1] for n in lengths]
    assert [num_frames(n, config) for n in lengths] == counts
    assert num_frames(torch.tensor(lengths), config).tolist() == counts
    if not causal:
        assert counts == [max(1, (n - 400) // 320 + 1) for n in lengths] == [num_frames(n) for n in lengths]


@pytest.fixture
def hf_dir(reference):
    return reference / "hf_wavlm_tiny"


@torch.no_grad()
def test_every_hidden_state_matches_hugging_face(hf_dir):
    model = from_hf(hf_dir)
    io = load_file(hf_dir / "io.safetensors")
    extract, _ = model.extract(io["sig"])
    assert (extract - io["extract_features"]).abs().max() < 1e-4
    hidden = []
    last, _ = model(io["sig"], hidden=hidden)
    assert len(hidden) == model.config.num_layers + 1
    for i, h in enumerate(hidden):
        assert (h - io[f"hidden_state_{i}"]).abs().max() < 1e-4, i
    assert (last - io["last_hidden_state"]).abs().max() < 1e-4


@torch.no_grad()
def test_lm_from_the_upper_layers_computes_those_layers(hf_dir):
    """With its mask lifted, the LM backbone from layers 1..2 maps hidden state 1 to the last hidden state."""
    io = load_file(hf_dir / "io.safetensors")
    lm = WavSLM.from_wavlm(hf_dir, first_layer=1, vocab_size=64, window_size=16)
    assert lm.config.num_layers == 2 and lm.config.num_buckets == 32 and lm.config.max_distance == 64
    assert lm.codec is None
    lm.encoder.causal = False
    out, _ = lm.encoder(io["hidden_state_1"], use_cache=False)
    assert (out - io["last_hidden_state"]).abs().max() < 1e-4
    with pytest.raises(InputError, match="do not exist in a 3-layer WavLM"):
        WavSLM.from_wavlm(hf_dir, first_layer=2, num_layers=2)


def test_post_layernorm_wavlm_is_refused_clearly(hf_dir, tmp_path):
    shutil.copytree(hf_dir, tmp_path / "base")
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    config.update(do_stable_layer_norm=False, feat_extract_norm="group")
    (tmp_path / "base" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="describes a post-LayerNorm WavLM"):
        from_hf(tmp_path / "base")


@torch.no_grad()
def test_causal_wavlm_streams_chunk_by_chunk():
    torch.manual_seed(0)
    config = WavLMConfig(hidden_dims=[16] * 7, num_layers=2, dim=32, ffn_dim=64, num_heads=4, num_buckets=32,
                         max_distance=64, conv_pos=8, conv_pos_groups=4, causal=True, window_size=16)
    model = WavLM(config).eval()
    sig = torch.randn(2, 1280 * 6)
    full, _ = model(sig)
    parts, state = [], None
    for start in range(0, sig.shape[1], 1280):
        out, state = model(sig[:, start : start + 1280], state)
        parts.append(out)
    assert full.shape == (2, 24, 32)
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


@torch.no_grad()
def test_export_in_hugging_face_layout_round_trips(hf_dir, tmp_path):
    from wavslm.wavlm import save_hf

    model = from_hf(hf_dir)
    save_hf(model, tmp_path / "hf")
    assert set(load_file(tmp_path / "hf" / "model.safetensors")) == set(load_file(hf_dir / "model.safetensors"))
    again = from_hf(tmp_path / "hf")
    sig = load_file(hf_dir / "io.safetensors")["sig"]
    assert (model(sig)[0] - again(sig)[0]).abs().max() < 1e-5


def test_causal_front_end_in_pieces_equals_the_whole(monkeypatch):
    """A long batch goes through the causal front end in pieces of whole frames carrying each layer's
    context; the features equal the whole input's, also for a length that is no multiple of the hop."""
    from wavslm import wavlm
    from wavslm.modules.tuning import Tuned

    config = WavLMConfig(hidden_dims=[16] * 7, num_layers=1, dim=32, ffn_dim=64, num_heads=2, conv_pos=8,
                         conv_pos_groups=2, causal=True)
    front = WavLM(config).eval().feature_extractor
    sig = 0.1 * torch.randn(3, 16000 + 123, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole, _ = front._layers(sig, None)
        assert front.piece_samples(sig) is None  # 0.6 MB of first-layer output: far below the limit
        monkeypatch.setattr(wavlm, "FRONT_END_PIECE_BYTES", Tuned(40_000))
        piece = front.piece_samples(sig)
        assert piece is not None and piece % config.hop_length == 0 and piece < sig.shape[1]
        pieces, contexts = front(sig)
        torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-6)
        assert pieces.shape[1] == num_frames(sig.shape[1], config)
        # a bidirectional front end has no context to carry: always whole
        assert WavLM(WavLMConfig(**{**config.__dict__, "causal": False})).feature_extractor.piece_samples(sig) is None
