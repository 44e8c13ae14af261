"""Live sessions at different positions stepped as one batch continue exactly as each would alone."""

import pytest
import torch

from wavslm import WavSLM
from wavslm.errors import InputError
from wavslm.generation import LiveBatch, Sampling, open_sessions


@pytest.fixture(scope="module")
def lm():
    from conftest import REFERENCE

    return WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")  # window 16: the caches wrap within the test


def _tokens(lm, length, seed):
    return torch.randint(0, lm.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


def _session(lm, prompt_len, seed, **sampling):
    live = lm.live(1, seed=seed, **sampling)
    live.feed_tokens(_tokens(lm, prompt_len, seed))
    return live


SETTINGS = [(4, 0, {"top_p": 0.0}), (24, 1, {"top_p": 0.9, "temp": 1.0}), (8, 2, {"top_k": 5, "top_p": None}),
            (40, 3, {"top_p": 0.5})]


def _same(got, want, what):
    assert len(got) == len(want), what
    for (toks_b, audio_b), (toks_a, audio_a) in zip(got, want, strict=True):
        assert torch.equal(toks_b, toks_a), what
        assert torch.allclose(audio_b, audio_a, atol=1e-5), what


def test_a_batch_of_sessions_equals_each_session_alone(lm):
    # Different prompt lengths (positions), sampling settings and seeds; one joins late, one leaves early;
    # every one goes on alone for two steps after leaving.
    steps = {0: range(0, 12), 1: range(0, 12), 2: range(3, 12), 3: range(0, 6)}
    alone = [list(_session(lm, p, s, **kw).generate(len(steps[i]) + 2)) for i, (p, s, kw) in enumerate(SETTINGS)]
    together = [_session(lm, p, s, **kw) for p, s, kw in SETTINGS]
    batch, got = LiveBatch(lm), {i: [] for i in steps}
    for step in range(12):
        batch.leave([together[i] for i in steps if steps[i].stop == step])
        batch.join([together[i] for i in steps if steps[i].start == step])
        for live, out in zip(batch.members, batch.step(), strict=True):
            got[together.index(live)].append(out)
    batch.leave(list(batch.members))
    assert len(batch) == 0 and batch.state is None
    for i in steps:
        got[i] += list(together[i].generate(2))
        _same(got[i], alone[i], i)


def test_stepping_appends_in_place_without_copying_the_caches(lm):
    batch = LiveBatch(lm)
    batch.join([_session(lm, p, s, **kw) for p, s, kw in SETTINGS])
    batch.step()
    batch.step()  # the first step's keys are read at the start of this one
    buffers = [(c.k.data_ptr(), c.v.data_ptr()) for c in batch.state.caches]
    for _ in range(8):
        batch.step()
    assert [(c.k.data_ptr(), c.v.data_ptr()) for c in batch.state.caches] == buffers
    # Each row at its own position: its prompt and the 9 steps read so far (the 10th is read by the next step).
    assert batch.state.row_pos.tolist() == [p + 9 * 4 for p, _, _ in SETTINGS]


def test_prompts_read_together_continue_as_prompts_read_alone(lm):
    rows = [_tokens(lm, n, seed)[0] for n, seed in ((12, 0), (12, 1), (20, 2), (12, 3))]
    samplings = [Sampling(0.8, 0.9, None), Sampling(1.0, 0.0, None), Sampling(0.8, None, 5), Sampling(0.7, 0.5, None)]
    together = open_sessions(lm, rows, samplings, [5, 6, 7, 8])
    for row, s, seed, live in zip(rows, samplings, [5, 6, 7, 8], together, strict=True):
        alone = lm.live(1, top_p=s.top_p, top_k=s.top_k, temp=s.temp, seed=seed)
        alone.feed_tokens(row[None])
        _same(list(live.generate(5)), list(alone.generate(5)), seed)


def test_a_batch_refuses_what_it_cannot_take(lm):
    batch = LiveBatch(lm)
    with pytest.raises(InputError, match="fed single-row sessions"):
        batch.join([lm.live(1)])
    live = _session(lm, 8, 0)
    batch.join([live])
    with pytest.raises(InputError, match="stepping in a LiveBatch"):
        batch.join([live])
    with pytest.raises(InputError, match="stepping in a LiveBatch"):
        next(live.generate(1))
    with pytest.raises(InputError, match="members of this batch"):
        batch.leave([_session(lm, 8, 1)])
    live.close()  # a member that closes leaves the batch
    assert len(batch) == 0 and batch.step() == []


def test_a_refused_join_leaves_every_session_as_it_was(lm):
    fed, unfed = _session(lm, 8, 0), lm.live(1)
    batch = LiveBatch(lm)
    for lives in ([fed, unfed], [fed, fed]):
        with pytest.raises(InputError):
            batch.join(lives)
    assert len(batch) == 0 and len(list(fed.generate(2))) == 2  # still its own


def test_a_window_smaller_than_a_chunk_is_refused(lm):
    from wavslm.lm import WavSLMConfig

    with pytest.raises(InputError, match=r"window_size \(2\) must be at least the chunk size \(4\)"):
        WavSLM(WavSLMConfig(vocab_size=64, num_layers=1, dim=32, ffn_dim=64, num_heads=2, window_size=2))
