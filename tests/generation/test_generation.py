"""Speech in, speech out: prompts from real audio, streaming generation, batches of different lengths."""

import pytest
import torch
from safetensors.torch import load_file

import wavslm
from wavslm import WavSLM, load_audio
from wavslm.generation.sampling import _most_likely, sample_next_token


@pytest.fixture(scope="module")
def lm(request):
    from conftest import REFERENCE

    return WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")  # finds ../codec_tiny_causal by itself


@pytest.fixture
def utterance(speech):
    return load_audio(sorted((speech / "librispeech-dev-clean" / "84").glob("*.wav"))[0])


def test_generate_from_a_real_utterance(lm, utterance):
    sig, sr = utterance
    prompt = sig[:, : 3 * sr]
    gen_sig, gen_toks = lm.generate(bos_sig=prompt, sample_rate=sr, max_gen_secs=1.0, seed=0)
    assert gen_toks.shape == (1, 48) and gen_toks.dtype == torch.int64  # 1 s at 50 tokens/s, whole steps
    assert gen_sig.shape == (1, round(48 / 50 * sr))  # returned at the prompt's rate
    assert torch.isfinite(gen_sig).all()


def test_stream_yields_before_the_next_step_is_computed(lm, utterance):
    sig, sr = utterance
    calls = []
    hook = lm.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        chunks = lm.stream(bos_sig=sig[:, :sr], sample_rate=sr, max_gen_secs=0.4, seed=1)
        first = next(chunks)
        assert len(calls) == 1  # only the prompt went through the LM so far
        assert first.shape == (1, 4 * 480)  # 80 ms at 24 kHz
        rest = list(chunks)
    finally:
        hook.remove()
    assert len(rest) == 4 and len(calls) == 5


def test_joined_stream_equals_offline_generation(lm, utterance):
    sig, sr = utterance
    kwargs = dict(bos_sig=sig[:, :sr], sample_rate=sr, max_gen_secs=0.8, top_p=0.8, temp=1.0, seed=5)
    streamed = torch.cat(list(lm.stream(**kwargs)), dim=1)
    offline, _ = lm.generate(**kwargs)
    from wavslm.audio import resample

    assert torch.allclose(resample(streamed, 24000, sr), offline, atol=1e-5)
    # And the audio equals decoding prompt + continuation in one pass, minus the prompt.
    toks = lm.codec.encode(resample(sig[:, :sr], sr, 16000))
    _, gen = lm.generate(bos_toks=toks, max_gen_toks=40, top_p=0.8, temp=1.0, seed=5)
    trimmed = toks[:, toks.shape[1] % 4 :]
    whole = lm.codec.decode(torch.cat([trimmed, gen], dim=1))
    stream2 = torch.cat(list(lm.stream(bos_toks=toks, max_gen_toks=40, top_p=0.8, temp=1.0, seed=5)), dim=1)
    assert (whole[:, trimmed.shape[1] * 480 :] - stream2).abs().max() < 1e-4


def test_prompts_of_different_lengths_continue_as_if_alone(lm, reference):
    toks = load_file(reference / "wavslm_tiny" / "io.safetensors")["toks"]
    a, b = toks[0, :22], toks[1, :36]  # 22 is trimmed to 20
    sig, both = lm.generate(bos_toks=[a, b], max_gen_toks=16, top_p=0.0)
    sig_a, alone_a = lm.generate(bos_toks=a, max_gen_toks=16, top_p=0.0)
    sig_b, alone_b = lm.generate(bos_toks=b, max_gen_toks=16, top_p=0.0)
    assert torch.equal(both, torch.cat([alone_a, alone_b]))
    assert (sig - torch.cat([sig_a, sig_b])).abs().max() < 1e-4


def test_spoken_prompts_of_different_lengths(lm, speech):
    clips = sorted((speech / "librispeech-dev-clean" / "84").glob("*.wav"))[:2]
    (s1, sr), (s2, _) = load_audio(clips[0]), load_audio(clips[1])
    gen, toks = lm.generate(bos_sig=[s1[0, : sr], s2[0, : 2 * sr + 123]], sample_rate=sr, max_gen_secs=0.4, seed=0)
    assert toks.shape == (2, 20) and gen.shape[0] == 2


def test_prompts_of_one_length_are_encoded_in_one_call(lm, speech, monkeypatch):
    from wavslm.generation import prompt_tokens

    sig, sr = load_audio(sorted((speech / "librispeech-dev-clean" / "84").glob("*.wav"))[0], 16000)
    calls, encode = [], lm.codec.encode
    monkeypatch.setattr(lm.codec, "encode", lambda x, *a, **k: (calls.append(len(x)), encode(x, *a, **k))[1])
    # The server's form, rows (1, N) in a list, as well as 1-D rows: equal lengths make one batch.
    rows = prompt_tokens(lm, [sig[:, :sr], sig[:, sr : 2 * sr], sig[0, :sr]], sr, None)
    assert calls == [3] and len(rows) == 3 and torch.equal(rows[0], rows[2])


def test_sampling_is_pure_and_respects_its_settings():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]]).repeat(2000, 1)
    assert torch.equal(sample_next_token(logits, top_p=0.0), torch.full((2000,), 2))
    g = torch.Generator().manual_seed(0)
    top2 = sample_next_token(logits, temp=3.0, top_k=2, generator=g)
    assert set(top2.tolist()) == {2, 3}
    # Probabilities 0.930 (token 2), 0.046 (3), 0.017 (1), 0.006 (0): a token is kept while the mass before it <= p.
    nucleus = sample_next_token(logits, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert set(nucleus.tolist()) == {2}
    nucleus = sample_next_token(logits, top_p=0.95, generator=torch.Generator().manual_seed(0))
    assert set(nucleus.tolist()) == {2, 3}
    free = sample_next_token(logits, temp=10.0, generator=torch.Generator().manual_seed(0))
    assert set(free.tolist()) == {0, 1, 2, 3}
    again = sample_next_token(logits, temp=10.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(free, again)


# ---- live sessions: the prompt read as it arrives ------------------------------------------------------


def _live_run(lm, prompt, steps, feed_sizes, **kwargs):
    with lm.live(seed=3, **kwargs) as live:
        fed, i = [], 0
        while i < prompt.shape[1]:
            n = feed_sizes[len(fed) % len(feed_sizes)]
            fed.append(live.feed(prompt[:, i : i + n]))
            i += n
        out = list(live.generate(steps))
    return torch.cat(fed, 1), torch.cat([t for t, _ in out], 1), torch.cat([a for _, a in out], 1)


def test_live_session_equals_generation_on_the_same_prompt(lm, utterance):
    from wavslm.generation import generate_steps

    sig, sr = utterance
    codec = lm.codec
    prompt = sig[:, : 10 * codec.chunk_size]  # 0.8 s of real speech at 16 kHz, whole chunks
    fed, toks, audio = _live_run(lm, prompt, 6, [1280])
    assert torch.equal(fed, codec.encode(prompt))
    steps = list(generate_steps(lm, [fed[0]], 6, seed=3))
    assert torch.equal(toks, torch.cat([t for t, _ in steps], 1))
    torch.testing.assert_close(audio, torch.cat([a for _, a in steps], 1), atol=1e-4, rtol=1e-4)
    # Pieces of any length (here 1000 and 333 samples) make the same chunks.
    fed2, toks2, audio2 = _live_run(lm, prompt, 6, [1000, 333])
    assert torch.equal(fed2, fed) and torch.equal(toks2, toks)
    torch.testing.assert_close(audio2, audio, atol=1e-5, rtol=1e-5)


def test_live_session_continues_across_generate_calls_and_refuses_misuse(lm, utterance):
    sig, _ = utterance
    prompt = sig[:, : 8 * lm.codec.chunk_size]
    _, once, _ = _live_run(lm, prompt, 6, [1280])
    with lm.live(seed=3) as live:
        with pytest.raises(wavslm.InputError, match="feed at least one whole chunk"):
            next(live.generate(2))
        assert live.feed(prompt[:, :500]).shape == (1, 0)
        live.feed(prompt[:, 500:])
        twice = torch.cat([t for t, _ in [*live.generate(2), *live.generate(4)]], 1)
        stopped = live.generate(3)
        next(stopped)
        stopped.close()  # abandoned mid-way
        with pytest.raises(wavslm.InputError, match="stopped mid-step"):
            live.feed(prompt)
    assert torch.equal(twice, once)


@pytest.mark.parametrize("temp", [0.3, 1.0, 20.0])  # peaked rows need a few tokens, flat ones need doubling
def test_nucleus_shortlist_equals_a_full_sort(temp):
    logits = torch.randn(8, 4096, generator=torch.Generator().manual_seed(1)) * 4
    probs = (logits / temp).softmax(-1)
    for p in (0.3, 0.8, 0.99):
        head, index = _most_likely(probs, p)
        kept = torch.zeros_like(probs).scatter(1, index, head.masked_fill(head.cumsum(-1) - head > p, 0.0))
        full, order = probs.sort(dim=-1, descending=True)
        want = torch.zeros_like(probs).scatter(1, order, full.masked_fill(full.cumsum(-1) - full > p, 0.0))
        assert torch.equal(kept > 0, want > 0) and torch.allclose(kept, want)
