"""Focal compressor / decompressor and the binary spherical quantizer: parity with the released codec,
streaming equals one pass, config checking."""

import functools
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wavslm.errors import InputError
from wavslm.modules.bsq import BinarySphericalQuantizer, code_scale, lats_to_codes, straight_through
from wavslm.modules.focal import (
    FocalCompressor,
    FocalCompressorConfig,
    FocalCompressorState,
    FocalDecompressor,
    FocalDecompressorConfig,
)


def _load(module: torch.nn.Module, weights: dict, prefix: str) -> torch.nn.Module:
    module.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    return module.eval()


@functools.cache
def _reference_codec(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    weights = load_file(folder / "model.safetensors")
    compressor = _load(FocalCompressor.from_config(config["compressor_config"]), weights, "compressor.")
    quantizer = BinarySphericalQuantizer.from_config(config["quantizer_config"])
    decompressor = _load(
        FocalDecompressor.from_config(config["decompressor_config"]), weights, "decompressor."
    )
    return compressor, quantizer, decompressor, load_file(folder / "io.safetensors")


@pytest.fixture
def codec_parts(reference):
    """(compressor, quantizer, decompressor, io tensors) of the causal reference codec, loaded once."""
    return _reference_codec(reference / "codec_tiny_causal")


def _stream(module, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Feed `x (B, T, C)` in pieces of the given sizes (the last repeated to the end), carrying state."""
    outs, state, start, i = [], None, 0, 0
    while start < x.shape[1]:
        size = sizes[min(i, len(sizes) - 1)]
        y, state = module(x[:, start : start + size], state)
        outs.append(y)
        start, i = start + size, i + 1
    return torch.cat(outs, dim=1)


# --- parity with the released implementation -------------------------------------------------------


@torch.no_grad()
def test_reference_parity(codec_parts):
    compressor, quantizer, decompressor, io = codec_parts
    lats, _ = compressor(io["feats"])
    torch.testing.assert_close(lats, io["lats"], atol=1e-4, rtol=0)
    assert torch.equal(quantizer.lats_to_toks(io["lats"]), io["toks"])
    assert torch.equal(quantizer.lats_to_toks(lats), io["toks"])
    codes = quantizer.toks_to_codes(io["toks"])
    torch.testing.assert_close(codes, io["codes"], atol=1e-6, rtol=0)
    assert torch.equal(quantizer.lats_to_codes(io["lats"]), codes)
    qfeats, _ = decompressor(codes)
    torch.testing.assert_close(qfeats, io["qfeats"], atol=1e-4, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("sizes", [[4], [12, 4], [1], [3, 5, 2]])
def test_reference_compressor_streams(codec_parts, sizes):
    compressor, quantizer, _, io = codec_parts
    offline, _ = compressor(io["feats"])
    torch.testing.assert_close(_stream(compressor, io["feats"], sizes), offline, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("sizes", [[4], [12, 4], [8, 4, 12]])
def test_reference_decompressor_streams(codec_parts, sizes):
    _, quantizer, decompressor, io = codec_parts
    codes = quantizer.toks_to_codes(io["toks"])
    offline, _ = decompressor(codes)
    torch.testing.assert_close(_stream(decompressor, codes, sizes), offline, atol=1e-5, rtol=0)


@torch.no_grad()
def test_partial_group_restarts_groups_and_warns(codec_parts, caplog):
    """After a call that ends mid-group, the next call's groups start at its own first frame (released rule)."""
    _, quantizer, decompressor, io = codec_parts
    codes = quantizer.toks_to_codes(io["toks"][:, :11])
    head, state = decompressor(codes[:, :7])
    assert state.partial == 3
    with caplog.at_level(logging.WARNING, logger="wavslm.modules.focal"):
        tail, state = decompressor(codes[:, 7:], state)
    assert "inside a group" in caplog.text and state.partial == 0
    # The head (7 frames) equals a one-pass run over the same 7 frames; the tail's group is [7, 11).
    torch.testing.assert_close(head, decompressor(codes[:, :7])[0], atol=0, rtol=0)
    seen = []
    hook = decompressor.refiner.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        decompressor(codes)  # one pass, to capture the refiner's input
    finally:
        hook.remove()
    torch.testing.assert_close(tail, decompressor.refiner(seen[0][:, 7:]), atol=1e-5, rtol=0)


# --- random-weight tiny configs ---------------------------------------------------------------------


def _tiny(causal: bool, factors=(2, 1), **extra):
    focal = dict(focal_window=3, focal_level=2, focal_factor=2, causal=causal, window_size=5, **extra)
    comp = FocalCompressorConfig(
        input_dim=16, output_dim=4, hidden_dims=(12, 8), downscale_factors=factors, **focal
    )
    dec = FocalDecompressorConfig(
        input_dim=4,
        output_dim=16,
        hidden_dims=(8, 12),
        upscale_factors=factors[::-1],
        last_window_size=6,
        **focal,
    )
    return FocalCompressor(comp).eval(), FocalDecompressor(dec).eval()


@torch.no_grad()
@pytest.mark.parametrize(
    "extra", [{}, {"use_post_norm": True, "use_layerscale": True, "normalize_modulator": True}]
)
def test_causal_tiny_streams_equal_one_pass(extra):
    compressor, decompressor = _tiny(causal=True, **extra)
    feats = torch.randn(2, 23, 16)
    lats, _ = compressor(feats)
    assert lats.shape == (2, 12, 4)  # ceil(23 / 2)
    torch.testing.assert_close(lats.norm(dim=-1), torch.ones(2, 12))
    for sizes in ([1], [2], [3, 1, 4], [7]):
        torch.testing.assert_close(_stream(compressor, feats, sizes), lats, atol=1e-5, rtol=0)
    # A longer input never changes earlier outputs.
    longer, _ = compressor(torch.cat([feats, torch.randn(2, 9, 16)], dim=1))
    torch.testing.assert_close(longer[:, :11], lats[:, :11], atol=1e-5, rtol=0)

    codes = lats_to_codes(lats)
    qfeats, state = decompressor(codes)
    assert qfeats.shape == (2, 24, 16) and decompressor.group_size == 4 and state.partial == 0
    # Upscale x2: pieces of 2 codes give whole groups of 4 frames.
    for sizes in ([2], [6, 2], [4, 2, 6]):
        torch.testing.assert_close(_stream(decompressor, codes, sizes), qfeats, atol=1e-5, rtol=0)


@torch.no_grad()
def test_non_causal_tiny_shapes():
    compressor, decompressor = _tiny(causal=False, use_post_norm=True)
    feats = torch.randn(2, 23, 16)
    lats, state = compressor(feats)
    assert lats.shape == (2, 12, 4) and state is None
    qfeats, state = decompressor(lats_to_codes(lats))
    assert qfeats.shape == (2, 24, 16) and state is None and decompressor.refiner is None
    assert decompressor.group_size == 1
    # Global context: the first frame depends on the last one.
    changed, _ = compressor(torch.cat([feats[:, :-1], feats[:, -1:] + 1], dim=1))
    assert not torch.allclose(changed[:, 0], lats[:, 0])
    with pytest.raises(ValueError, match="non-causal"):
        compressor(feats, FocalCompressorState((), ()))


def test_empty_pieces_keep_the_stream():
    compressor, decompressor = _tiny(causal=True)
    with torch.no_grad():
        _, state = compressor(torch.randn(1, 5, 16))
        lats, same = compressor(torch.randn(1, 0, 16), state)
        assert lats.shape == (1, 0, 4) and same is state
        qfeats, none = decompressor(torch.randn(1, 0, 4))
        assert qfeats.shape == (1, 0, 16) and none is None


def test_config_keys_checked():
    with pytest.raises(InputError, match="compressor_config has unknown keys"):
        FocalCompressor.from_config({"input_dim": 8, "bogus": 1})
    with pytest.raises(InputError, match="decompressor_config has unknown keys"):
        FocalDecompressor({"lookahead": 3})
    with pytest.raises(InputError, match="equal length"):
        FocalDecompressorConfig.from_dict({"hidden_dims": [8, 8], "upscale_factors": [1]})
    with pytest.raises(InputError, match="unknown quantizer_config key"):
        BinarySphericalQuantizer.from_config({"codebook_size": 64, "dim": 6})
    with pytest.raises(InputError, match="power of two"):
        BinarySphericalQuantizer(48)
    cfg = FocalDecompressorConfig.from_dict({"hidden_dims": [8, 8], "upscale_factors": [1, 2]})
    assert FocalDecompressorConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["hidden_dims"] == [8, 8]


# --- binary spherical quantizer ---------------------------------------------------------------------


def test_bsq_codes_and_tokens():
    q = BinarySphericalQuantizer(64)
    s = code_scale(6)
    lats = torch.tensor([[[0.3, -0.1, 0.0, -2.0, -0.0, 1e-9]]])
    toks, codes = q(lats)
    assert toks.dtype == torch.int64 and toks.tolist() == [[0b100001]]  # zero counts as negative
    assert torch.equal(codes, torch.tensor([[[s, -s, -s, -s, -s, s]]]))
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(1, 1))
    all_toks = torch.arange(64)
    assert torch.equal(q.codes_to_toks(q.toks_to_codes(all_toks)), all_toks)
    assert torch.equal(q.codebook, q.toks_to_codes(all_toks))
    with pytest.raises(ValueError, match="6 dims"):
        q(torch.randn(1, 2, 5))


def test_bsq_straight_through_gradient():
    lats = torch.randn(2, 3, 6, requires_grad=True)
    codes = straight_through(lats)
    assert torch.equal(codes.detach(), lats_to_codes(lats.detach()))
    (codes * torch.arange(6.0)).sum().backward()
    torch.testing.assert_close(lats.grad, torch.arange(6.0).expand(2, 3, 6))
