"""Sessions at different positions stepped as one batch continue exactly as each would alone."""

import pytest
import torch

from wavslm import WavSLM
from wavslm.batch_step import step_together


@pytest.fixture(scope="module")
def lm():
    from conftest import REFERENCE

    return WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")  # window 16: the caches wrap within the test


def _session(lm, prompt_len, seed, **sampling):
    toks = torch.randint(0, lm.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    live = lm.live(1, seed=seed, **sampling)
    live.feed_tokens(toks)
    return live


def test_a_batch_of_sessions_equals_each_session_alone(lm):
    # Different prompt lengths (positions), sampling settings and seeds; one joins late, one leaves early.
    settings = [(4, 0, {"top_p": 0.0}), (24, 1, {"top_p": 0.9, "temp": 1.0}), (8, 2, {"top_k": 5, "top_p": None}),
                (40, 3, {"top_p": 0.5})]
    steps = {0: range(0, 12), 1: range(0, 12), 2: range(3, 12), 3: range(0, 6)}
    alone = []
    for prompt_len, seed, sampling in settings:
        live = _session(lm, prompt_len, seed, **sampling)
        n = len(steps[len(alone)])
        alone.append(list(live.generate(n)))
    together = [_session(lm, p, s, **kw) for p, s, kw in settings]
    got = {i: [] for i in steps}
    for step in range(12):
        rows = [i for i in steps if step in steps[i]]
        for i, out in zip(rows, step_together([together[i] for i in rows]), strict=True):
            got[i].append(out)
    for i in steps:
        assert len(got[i]) == len(alone[i])
        for (toks_b, audio_b), (toks_a, audio_a) in zip(got[i], alone[i], strict=True):
            assert torch.equal(toks_b, toks_a), i
            assert torch.allclose(audio_b, audio_a, atol=1e-5), i
    # Every session can still go on by itself afterwards.
    assert len(list(together[0].generate(2))) == 2


def test_step_together_refuses_what_it_cannot_line_up(lm):
    fresh = lm.live(1)
    with pytest.raises(ValueError, match="fed, single-row"):
        step_together([fresh, _session(lm, 8, 0)])
    assert step_together([]) == []
