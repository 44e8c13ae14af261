"""The language model against the released format and the original implementation's outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from wavslm import InputError, WavSLM, WavSLMConfig
from wavslm.lm import next_chunk_nll


@pytest.fixture
def lm_dir(reference):
    return reference / "wavslm_tiny"


@pytest.fixture
def lm(lm_dir):
    return WavSLM.from_pretrained(lm_dir)


@pytest.fixture
def io(lm_dir):
    return load_file(lm_dir / "io.safetensors")


def stream_logits(lm, qfeats, pieces):
    """Logits from feeding `qfeats` in pieces of the given sizes, carrying the state."""
    out, state, start = [], None, 0
    for size in pieces:
        logits, state = lm(qfeats[:, start : start + size], state)
        out.append(logits)
        start += size
    assert start == qfeats.shape[1]
    return torch.cat(out, dim=1)


def test_loads_the_released_folder_unchanged(lm, lm_dir):
    released = json.loads((lm_dir / "config.json").read_text())
    assert {k: getattr(lm.config, k) for k in released} == released
    assert lm.codec is not None and lm.codec.vocab_size == lm.config.vocab_size == 64
    assert set(lm.state_dict()) - {k for k in lm.state_dict() if k.startswith("codec.")} == set(
        load_file(lm_dir / "model.safetensors")
    )


@torch.no_grad()
def test_streaming_with_the_cache_equals_one_pass(lm, io):
    full, _ = lm(io["qfeats"])
    stream = stream_logits(lm, io["qfeats"], [8] + [4] * 9)
    assert (stream - full).abs().max() < 1e-5
    # The original implementation's own streaming result agrees with its offline one the same way.
    assert (io["logits_stream"] - io["logits_full"]).abs().max() < 1e-5


@torch.no_grad()
def test_reproduces_the_original_logits_in_one_pass(lm, io):
    full, _ = lm(io["qfeats"])
    assert (full - io["logits_full"]).abs().max() < 1e-4


@torch.no_grad()
def test_reproduces_the_original_streamed_logits(lm, io):
    """The fixture's streaming schedule: an 8-frame prefill, then 4 frames per call with the cache."""
    stream = stream_logits(lm, io["qfeats"], [8] + [4] * 9)
    assert (stream - io["logits_stream"]).abs().max() < 1e-4


def test_reproduces_the_original_greedy_continuation(lm, lm_dir):
    greedy = load_file(lm_dir / "greedy.safetensors")
    _, toks = lm.generate(bos_toks=greedy["prompt"], max_gen_toks=32, top_p=0.0)
    assert torch.equal(toks, greedy["greedy"])


def random_lm(window=16, layers=2, seed=0):
    torch.manual_seed(seed)
    config = WavSLMConfig(vocab_size=32, num_layers=layers, dim=32, ffn_dim=64, num_heads=4, num_buckets=32,
                          max_distance=64, window_size=window, lookahead_size=3)
    return WavSLM(config).eval()


@torch.no_grad()
def test_long_input_equals_chunk_by_chunk_streaming():
    lm = random_lm(window=16)
    qfeats = torch.randn(2, 16 * 6 + 8, 32)
    full, _ = lm(qfeats)
    assert (stream_logits(lm, qfeats, [4] * (qfeats.shape[1] // 4)) - full).abs().max() < 1e-5
    # Any split at chunk boundaries, including pieces longer than the window.
    assert (stream_logits(lm, qfeats, [40, 4, 12, 28, 20]) - full).abs().max() < 1e-5


@torch.no_grad()
def test_the_cache_stays_bounded_by_the_window():
    lm = random_lm(window=16)
    _, state = lm(torch.randn(1, 8, 32))
    for _ in range(200):
        _, state = lm(torch.randn(1, 4, 32), state)
    assert state.pos == 808
    for cache in state.caches:
        assert cache.length <= 16 + 64 and cache.capacity == 16 + 64


@torch.no_grad()
def test_a_longer_input_never_changes_earlier_complete_chunks():
    lm = random_lm()
    qfeats = torch.randn(1, 40, 32)
    short, _ = lm(qfeats[:, :24])
    long, _ = lm(qfeats)
    assert (long[:, :24] - short).abs().max() < 1e-5


@torch.no_grad()
def test_window_limits_what_a_query_sees():
    lm = random_lm(window=8)
    qfeats = torch.randn(1, 32, 32)
    base, _ = lm(qfeats)
    changed = qfeats.clone()
    changed[:, 0:4] = torch.randn(1, 4, 32)  # outside the window of chunks starting at 8 or later (two layers: 2 windows)
    out, _ = lm(changed)
    assert (out[:, 16:] - base[:, 16:]).abs().max() < 1e-5
    assert (out[:, 4:8] - base[:, 4:8]).abs().max() > 1e-3


def test_score_is_the_next_chunk_nll(lm, io):
    toks = io["toks"]
    mean, total = lm.score(toks, "mean"), lm.score(toks, "sum")
    assert torch.allclose(total, mean * (toks.shape[1] - 4), rtol=1e-5)
    logits, _ = lm(lm.codec.dequantize(toks), use_cache=False)
    manual = torch.stack([
        -torch.log_softmax(logits[b, t - 4], -1)[toks[b, t]] for b in range(2) for t in range(4, toks.shape[1])
    ]).view(2, -1).mean(1)
    assert torch.allclose(mean, manual, atol=1e-5)
    assert torch.allclose(next_chunk_nll(logits, toks, 4), manual, atol=1e-5)
    with pytest.raises(InputError, match="reduction must be 'mean' or 'sum'"):
        lm.score(toks, "max")
    with pytest.raises(InputError, match="longer than 4 tokens"):
        lm.score(toks[:, :4])


def test_greedy_and_seeded_sampling(lm, lm_dir):
    prompt = load_file(lm_dir / "greedy.safetensors")["prompt"]
    _, by_p = lm.generate(bos_toks=prompt, max_gen_toks=16, top_p=0.0)
    _, by_k = lm.generate(bos_toks=prompt, max_gen_toks=16, top_k=1, top_p=None)
    assert torch.equal(by_p, by_k)
    sig1, toks1 = lm.generate(bos_toks=prompt, max_gen_toks=16, top_p=0.9, temp=1.0, seed=7)
    sig2, toks2 = lm.generate(bos_toks=prompt, max_gen_toks=16, top_p=0.9, temp=1.0, seed=7)
    assert torch.equal(toks1, toks2) and torch.equal(sig1, sig2)
    draws = {tuple(lm.generate(bos_toks=prompt, max_gen_toks=16, top_k=20, top_p=None, temp=1.5, seed=s)[1].flatten().tolist()) for s in range(4)}
    assert len(draws) > 1
    assert toks1.shape == (2, 16) and sig1.shape == (2, 16 * 480)


def test_generation_lengths_and_prompt_alignment(lm, lm_dir):
    prompt = load_file(lm_dir / "greedy.safetensors")["prompt"]
    _, toks = lm.generate(bos_toks=prompt, max_gen_toks=10, top_p=0.0)
    assert toks.shape[1] == 8  # whole steps of 4, never more than asked
    _, default = lm.generate(bos_toks=prompt, top_p=0.0)
    assert default.shape[1] == prompt.shape[1]
    # A prompt that is not a whole number of chunks is left-trimmed to one.
    longer = torch.cat([torch.randint(0, 64, (2, 2)), prompt], dim=1)
    _, trimmed = lm.generate(bos_toks=longer, max_gen_toks=8, top_p=0.0)
    _, aligned = lm.generate(bos_toks=prompt, max_gen_toks=8, top_p=0.0)
    assert torch.equal(trimmed, aligned)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bos_toks": torch.zeros(1, 3, dtype=torch.long)}, "shorter than one chunk"),
        ({"bos_toks": torch.zeros(1, 8, dtype=torch.long), "max_gen_toks": 3}, "at least one step"),
        ({"bos_toks": torch.full((1, 8), 64)}, r"must lie in \[0, 64\)"),
        ({"bos_toks": torch.zeros(1, 8, dtype=torch.long), "top_p": 0.5, "top_k": 5}, "not both"),
        ({"bos_toks": torch.zeros(1, 8, dtype=torch.long), "temp": 0.0}, "temperature must be a positive number"),
        ({}, "exactly one prompt"),
        ({"bos_sig": torch.zeros(1, 16000)}, "sample_rate is required"),
    ],
)
def test_generation_rejects_bad_arguments(lm, kwargs, message):
    with pytest.raises(InputError, match=message):
        lm.generate(**kwargs)


@torch.no_grad()
def test_save_pretrained_round_trip(lm, lm_dir, io, tmp_path):
    out = lm.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert set(load_file(out / "model.safetensors")) == set(load_file(lm_dir / "model.safetensors"))
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config == json.loads((lm_dir / "config.json").read_text())
    again = WavSLM.from_pretrained(out, codec=lm.codec)
    a, _ = lm(io["qfeats"])
    b, _ = again(io["qfeats"])
    assert torch.equal(a, b)
