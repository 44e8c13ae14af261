"""The codec against the released FocalCodec format and the original implementation's outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from wavslm import Codec, InputError, load_audio
from wavslm.codec import CodecConfig, knn_average
from wavslm.config import from_dict


@pytest.fixture
def codec_dir(reference):
    return reference / "codec_tiny_causal"


@pytest.fixture
def codec(codec_dir):
    return Codec.from_pretrained(codec_dir)


@pytest.fixture
def io(codec_dir):
    return load_file(codec_dir / "io.safetensors")


def stream(codec, sig, samples_per_call):
    toks, rec = [], []
    with codec.streaming(batch_size=sig.shape[0]) as s:
        for start in range(0, sig.shape[1], samples_per_call):
            t = s.encode(sig[:, start : start + samples_per_call])
            toks.append(t)
            rec.append(s.decode(t))
    return torch.cat(toks, 1), torch.cat(rec, 1)


def test_properties(codec):
    assert (codec.sample_rate_input, codec.sample_rate_output) == (16000, 24000)
    assert (codec.frame_rate, codec.chunk_size, codec.vocab_size, codec.feature_dim) == (50, 1280, 64, 64)
    assert codec.causal and codec.latency == 80.0


@torch.no_grad()
def test_reproduces_the_original_offline_path(codec, io):
    """sig -> feats -> lats -> toks, toks -> codes, toks -> qfeats, toks -> rec, each step from the fixture's input."""
    feats, _ = codec.encoder(io["sig"])
    assert (feats - io["feats"]).abs().max() < 1e-4
    lats, _ = codec.compressor(io["feats"])
    assert (lats - io["lats"]).abs().max() < 1e-4
    assert torch.equal(codec.quantizer.lats_to_toks(io["lats"]), io["toks"])
    assert torch.equal(codec.encode(io["sig"]), io["toks"])
    assert torch.equal(codec.quantizer.toks_to_codes(io["toks"]), io["codes"])
    assert (codec.dequantize(io["toks"]) - io["qfeats"]).abs().max() < 1e-4
    assert (codec.decode(io["toks"]) - io["rec"]).abs().max() < 1e-4


@torch.no_grad()
def test_reproduces_the_original_streamed_tokens_and_audio(codec, io):
    """The fixture streams one 1280-sample chunk per call; any whole number of chunks per call gives the same."""
    for chunks in (1, 2, 7):
        toks, rec = stream(codec, io["sig"], chunks * codec.chunk_size)
        assert torch.equal(toks, io["stream_toks"]), chunks
        assert (rec - io["stream_rec"]).abs().max() < 1e-4, chunks


def test_streaming_equals_offline_with_the_saved_weights(codec, io):
    offline = codec.encode(io["sig"])
    for samples in (1280, 2560, 7 * 1280, 1000):  # 1000: the session buffers partial chunks
        toks, rec = stream(codec, io["sig"], samples)
        assert torch.equal(toks, offline), samples
        assert (rec - codec.decode(offline)).abs().max() < 1e-4


def test_real_speech_any_sample_rate(codec, speech):
    path = next((speech / "voicebank-noisy-testset").glob("*.wav"))
    sig, sr = load_audio(path, sample_rate=codec.sample_rate_input)
    toks = codec.encode(sig)
    assert toks.shape == (1, -(-sig.shape[1] // 320))  # causal convs pad on the left: ceil(N / 320) tokens
    rec = codec.decode(toks)
    assert rec.shape[1] == toks.shape[1] * 480 and torch.isfinite(rec).all()


@pytest.mark.parametrize(
    ("sig", "message"),
    [
        (torch.zeros(1, 1000), r"shorter than one chunk \(1280 samples = 80 ms\)"),
        (torch.zeros(1, 2000, dtype=torch.int16), "expects a float waveform"),
        (torch.zeros(1, 1, 2000), r"expects a waveform \(B, N\) or \(N,\)"),
        (torch.full((1, 2000), float("nan")), "NaN or infinite"),
    ],
)
def test_bad_waveforms(codec, sig, message):
    with pytest.raises(InputError, match=message):
        codec.encode(sig)


def test_bad_tokens_and_streams(codec):
    with pytest.raises(InputError, match=r"tokens must lie in \[0, 64\)"):
        codec.decode(torch.full((1, 4), 64))
    with pytest.raises(InputError, match=r"integer tensor \(B, T\)"):
        codec.decode(torch.zeros(1, 4))
    with codec.streaming(batch_size=2) as s, pytest.raises(InputError, match="opened for batch size 2, got 1"):
        s.encode(torch.zeros(1, 1280))


def test_non_causal_codec_refuses_to_stream(codec_dir):
    config = json.loads((codec_dir / "config.json").read_text())
    for part in ("encoder_config", "compressor_config", "decompressor_config", "decoder_config"):
        config[part]["causal"] = False
    offline = Codec(from_dict(CodecConfig, config, "test")).eval()
    assert not offline.causal and offline.latency is None
    assert offline.encode(torch.randn(1, 3200)).shape == (1, 9)  # no padding: (N - 400) // 320 + 1 frames
    with pytest.raises(InputError, match="not causal, so it cannot stream"):
        offline.streaming()


def test_unknown_module_name(codec_dir):
    config = json.loads((codec_dir / "config.json").read_text())
    config["decoder_name"] = "HiFiGAN"
    with pytest.raises(InputError, match="unknown decoder_name 'HiFiGAN'; expected one of"):
        Codec(from_dict(CodecConfig, config, "test"))


def test_knn_voice_conversion(codec, speech):
    source, _ = load_audio(next((speech / "voicebank-noisy-testset").glob("*.wav")), sample_rate=16000)
    target = [load_audio(p, sample_rate=16000)[0] for p in sorted((speech / "librispeech-dev-clean" / "84").glob("*.wav"))[:2]]
    matching = codec.matching_set(target)
    assert matching.shape[1] == codec.feature_dim and matching.shape[0] > 100
    toks = codec.encode(source)
    plain = codec.decode(toks)
    converted = codec.decode(toks, matching_set=matching)
    assert converted.shape == plain.shape and (converted - plain).abs().max() > 1e-3
    # Each frame's single nearest neighbour among its own frames is itself: k=1 on itself is the identity.
    qfeats = codec.dequantize(toks)
    assert torch.equal(knn_average(qfeats, qfeats[0], k=1), qfeats)
    # Streaming conversion equals offline conversion.
    with codec.streaming(matching_set=matching) as s:
        streamed = torch.cat([s.decode(toks[:, i : i + 4]) for i in range(0, toks.shape[1], 4)], 1)
    assert (streamed - converted).abs().max() < 1e-4
    with pytest.raises(InputError, match="matching set must be"):
        codec.decode(toks, matching_set=torch.zeros(10, 3))


def test_old_checkpoints_with_separate_qkv_load(codec_dir, tmp_path, io):
    """The first FocalCodec release stored q/k/v apart; they load into the fused projection."""
    import shutil

    from safetensors.torch import save_file

    state = load_file(codec_dir / "model.safetensors")
    for key in [k for k in state if k.endswith(("qkv_proj.weight", "qkv_proj.bias"))]:
        q, k, v = state.pop(key).chunk(3)
        for name, value in zip("qkv", (q, k, v), strict=True):
            state[key.replace("qkv_proj", f"{name}_proj")] = value.contiguous()
    shutil.copy(codec_dir / "config.json", tmp_path / "config.json")
    save_file(state, tmp_path / "model.safetensors")
    old = Codec.from_pretrained(tmp_path)
    assert torch.equal(old.encode(io["sig"]), Codec.from_pretrained(codec_dir).encode(io["sig"]))
