"""Long inputs cost memory linear in their length: the LM reads, the codec encodes and decodes in pieces,
with the one-pass result."""

import subprocess
import sys

import pytest
import torch

import wavslm.codec
from wavslm import Codec, WavSLM, load_audio


@pytest.fixture(scope="module")
def lm():
    from conftest import REFERENCE

    return WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")  # window 16: pieces of 64 frames


def test_the_lm_reads_a_long_input_in_pieces_with_the_one_pass_result(lm):
    toks = torch.randint(0, lm.config.vocab_size, (2, 203), generator=torch.Generator().manual_seed(0))
    qfeats = lm.codec.dequantize(toks)
    assert qfeats.shape[1] > 3 * lm.encoder.piece_size
    with torch.inference_mode():
        whole, _ = lm(qfeats, use_cache=False)
        pieces, state = lm(qfeats)
        assert state.pos == qfeats.shape[1]
        pad = torch.tensor([0, 12])  # left padding masked across pieces as in one pass
        padded = torch.nn.functional.pad(qfeats, (0, 0, 12, 0))[:, :-12]
        a, _ = lm.encoder(padded, use_cache=False, valid_from=pad)
        b, _ = lm.encoder(padded, valid_from=pad)
    assert torch.allclose(pieces, whole, atol=1e-5)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(lm.score(toks), torch.stack([lm.score(t[None])[0] for t in toks]), atol=1e-6)


def test_a_causal_codec_encodes_and_decodes_long_inputs_in_pieces(monkeypatch, reference, speech):
    codec = Codec.from_pretrained(reference / "codec_tiny_causal")
    sig, _ = load_audio(sorted(speech.rglob("*.wav"))[0], sample_rate=codec.sample_rate_input)
    sig = sig[:1, : 7 * codec.chunk_size + 300]  # the last piece holds a partial chunk
    whole = codec.encode(sig)
    toks = torch.randint(0, codec.vocab_size, (1, 4 * 7 + 2), generator=torch.Generator().manual_seed(1))
    audio = codec.decode(toks)
    monkeypatch.setattr(wavslm.codec, "PIECE_CHUNKS", 2)
    assert torch.equal(codec.encode(sig), whole)
    assert torch.allclose(codec.decode(toks), audio, atol=1e-5)


@pytest.mark.slow
def test_a_ten_minute_prompt_stays_under_one_and_a_half_gigabytes(tmp_path):
    script = (
        "import resource, torch\n"
        "from wavslm.pretrained import load_lm\n"
        "lm = load_lm(None)\n"
        "sig = torch.randn(1, 10 * 60 * 16000, generator=torch.Generator().manual_seed(0)) * 0.01\n"
        "sig_, toks = lm.generate(bos_sig=sig, sample_rate=16000, max_gen_secs=0.08, seed=0)\n"
        "assert toks.shape == (1, 4)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mib = float(done.stdout.strip().splitlines()[-1])
    assert peak_mib < 1.5 * 1024, f"peak {peak_mib:.0f} MiB"
