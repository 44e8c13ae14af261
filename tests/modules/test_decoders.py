"""Waveform decoders (WaveNeXt, Vocos) and the streaming conv under them.

Parity with the reference codec's toks->sig output and with the original FocalCodec Vocos and WaveNeXt
modules (goldens in tests/assets/decoders, written by the original code), streaming == one pass, prefixes
never change, and released parameter names.
"""

import json

import pytest
import torch
from conftest import ASSETS
from safetensors import safe_open
from safetensors.torch import load_file

from wavslm.errors import InputError
from wavslm.modules.conv import StreamingConv1d
from wavslm.modules.vocos import Vocos, VocosConfig
from wavslm.modules.wavenext import ConvNeXtState, WaveNeXt, WaveNeXtConfig

TINY_VOCOS = {
    "input_dim": 12,
    "num_layers": 2,
    "dim": 16,
    "ffn_dim": 24,
    "kernel_size": 5,
    "layerscale_init": None,
    "n_fft": 40,
    "hop_length": 12,
    "causal": True,
}


def _stream(module, x: torch.Tensor, chunk: int, dim: int = 1) -> torch.Tensor:
    """Feed `x` in pieces of `chunk` frames along `dim`, carrying the state; concatenate the outputs."""
    state, outs = None, []
    for piece in x.split(chunk, dim=dim):
        y, state = module(piece, state)
        outs.append(y)
    return torch.cat(outs, dim=-1 if dim == 2 else 1)


@pytest.fixture
def reference_decoder(reference):
    folder = reference / "codec_tiny_causal"
    config = json.loads((folder / "config.json").read_text())
    assert config["decoder_name"] == "WaveNeXt"
    decoder = WaveNeXt(WaveNeXtConfig.from_dict(config["decoder_config"])).eval()
    weights = load_file(folder / "model.safetensors")
    decoder.load_state_dict(
        {k.removeprefix("decoder."): v for k, v in weights.items() if k.startswith("decoder.")}
    )
    return decoder, load_file(folder / "io.safetensors")


@torch.inference_mode()
def test_wavenext_reproduces_reference_decode(reference_decoder):
    decoder, io = reference_decoder
    sig, state = decoder(io["qfeats"])
    assert sig.shape == io["rec"].shape == (2, 100 * 480)
    torch.testing.assert_close(sig, io["rec"], atol=1e-4, rtol=0)
    assert isinstance(state, ConvNeXtState) and len(state.layers) == 2
    assert state.embedding.shape == (2, 64, 6)


@torch.inference_mode()
@pytest.mark.parametrize("chunk", [4, 1, 7])
def test_wavenext_streaming_equals_one_pass(reference_decoder, chunk):
    decoder, io = reference_decoder
    full, _ = decoder(io["qfeats"])
    torch.testing.assert_close(_stream(decoder, io["qfeats"], chunk), full, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_wavenext_longer_input_keeps_earlier_outputs(reference_decoder):
    decoder, io = reference_decoder
    full, _ = decoder(io["qfeats"])
    for frames in (1, 5, 37):
        prefix, _ = decoder(io["qfeats"][:, :frames])
        torch.testing.assert_close(prefix, full[:, : frames * 480], atol=1e-5, rtol=0)


def _tiny_vocos(**overrides) -> Vocos:
    torch.manual_seed(0)
    vocos = Vocos(VocosConfig.from_dict({**TINY_VOCOS, **overrides})).eval()
    with torch.no_grad():  # random weights well away from the init so every path matters
        for p in vocos.parameters():
            p.normal_(0.0, 0.3)
    return vocos


@torch.inference_mode()
@pytest.mark.parametrize("chunk", [4, 1, 5])
def test_vocos_causal_streaming_equals_one_pass(chunk):
    vocos = _tiny_vocos()
    qfeats = torch.randn(2, 13, 12)
    full, state = vocos(qfeats)
    assert full.shape == (2, 13 * 12) and torch.isfinite(full).all()
    assert state.embedding.shape == (2, 12, 4) and all(s.shape == (2, 16, 4) for s in state.layers)
    torch.testing.assert_close(_stream(vocos, qfeats, chunk), full, atol=1e-5, rtol=1e-5)
    for frames in (1, 6):
        prefix, _ = vocos(qfeats[:, :frames])
        torch.testing.assert_close(prefix, full[:, : frames * 12], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_vocos_causal_start_replicates_first_frame():
    # The released causal Vocos pads its first chunk with copies of the first frame, not zeros.
    vocos = _tiny_vocos()
    qfeats = torch.randn(1, 3, 12)
    padded, _ = vocos(torch.cat([qfeats[:, :1].expand(1, 20, 12), qfeats], dim=1))
    out, _ = vocos(qfeats)
    torch.testing.assert_close(out, padded[:, 20 * 12 :], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_vocos_non_causal_shapes_and_no_stream():
    vocos = _tiny_vocos(causal=False, hop_length=13)  # n_fft - hop odd: one extra sample, as released
    sig, state = vocos(torch.randn(2, 9, 12))
    assert sig.shape == (2, 9 * 13 + 1) and state is None and torch.isfinite(sig).all()
    with pytest.raises(ValueError, match="cannot stream"):
        vocos(torch.randn(2, 9, 12), state=ConvNeXtState(torch.zeros(2, 12, 4), ()))


def test_vocos_parameter_names_are_the_released_ones():
    # Read off the original vocos.py: Vocos.{backbone: VocosBackbone, head: ISTFTHead}; the iSTFT window
    # buffers are non-persistent; every block has `gamma` because the backbone always sets a layer scale.
    expected = {
        "backbone.embedding.weight": (16, 12, 5),
        "backbone.embedding.bias": (16,),
        "backbone.input_norm.weight": (16,),
        "backbone.input_norm.bias": (16,),
        "backbone.output_norm.weight": (16,),
        "backbone.output_norm.bias": (16,),
        "head.proj.weight": (42, 16),
        "head.proj.bias": (42,),
    }
    for i in range(2):
        expected |= {
            f"backbone.layers.{i}.dwconv.weight": (16, 1, 5),
            f"backbone.layers.{i}.dwconv.bias": (16,),
            f"backbone.layers.{i}.norm.weight": (16,),
            f"backbone.layers.{i}.norm.bias": (16,),
            f"backbone.layers.{i}.pwconv1.weight": (24, 16),
            f"backbone.layers.{i}.pwconv1.bias": (24,),
            f"backbone.layers.{i}.pwconv2.weight": (16, 24),
            f"backbone.layers.{i}.pwconv2.bias": (16,),
            f"backbone.layers.{i}.gamma": (16,),
        }
    for causal in (True, False):
        got = {k: tuple(v.shape) for k, v in _tiny_vocos(causal=causal).state_dict().items()}
        assert got == expected
    gamma = Vocos(VocosConfig.from_dict(TINY_VOCOS)).backbone.layers[0].gamma
    assert torch.equal(gamma, torch.full((16,), 0.5))  # layer scale defaults to 1 / num_layers


def test_configs_reject_unknown_keys_and_accept_legacy_vocos_keys():
    with pytest.raises(InputError, match=r"decoder_config \(WaveNeXt\) has unknown keys \[.n_fft.\]"):
        WaveNeXtConfig.from_dict({"input_dim": 4, "n_fft": 8})
    with pytest.raises(InputError, match=r"decoder_config \(Vocos\) has unknown keys"):
        VocosConfig.from_dict({"input_dim": 4, "hop": 8})
    legacy = VocosConfig.from_dict({"input_channels": 7, "input_dim": 3, "padding": "same"})
    assert legacy.input_dim == 7 and VocosConfig.from_dict(legacy.to_dict()) == legacy
    with pytest.raises(InputError, match="n_fft > hop_length"):
        Vocos(VocosConfig(n_fft=16, hop_length=16, causal=False))


@torch.inference_mode()
@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
def test_streaming_conv_chunks_equal_one_pass(pad_mode):
    conv = StreamingConv1d(3, 5, 3, dilation=2, causal=True, pad_mode=pad_mode)
    x = torch.randn(2, 3, 11)
    full, state = conv(x)
    assert full.shape == (2, 5, 11) and state.shape == (2, 3, 4)
    for chunk in (1, 3):
        torch.testing.assert_close(_stream(conv, x, chunk, dim=2), full, atol=1e-6, rtol=0)
    empty, same_state = conv(x[..., :0], state)  # an empty piece changes nothing
    assert empty.shape == (2, 5, 0) and same_state is state


@torch.inference_mode()
@pytest.mark.parametrize("name", ["vocos_causal", "vocos_noncausal", "wavenext_causal", "wavenext_noncausal"])
def test_matches_the_original_modules(name):
    """The original's weights load under the same names and shapes and give the original's output."""
    path = ASSETS / "decoders" / f"{name}.safetensors"
    with safe_open(path, "pt") as f:
        config = json.loads(f.metadata()["config"])
    golden = load_file(path)
    cls, config_cls = (Vocos, VocosConfig) if name.startswith("vocos") else (WaveNeXt, WaveNeXtConfig)
    ours = cls(config_cls.from_dict(config)).eval()
    ours.load_state_dict({k.removeprefix("weights."): v for k, v in golden.items() if k.startswith("weights.")})
    got, _ = ours(golden["qfeats"])
    torch.testing.assert_close(got, golden["sig"], atol=1e-5, rtol=1e-5)
