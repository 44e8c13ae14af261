"""Codec and generation metrics on real speech, and the `eval codec` / `eval generation` commands end to end.

The reference codec and LM have random weights, so their scores are poor: the tests check that every
metric is computed, lies in its range and moves the right way, not that the models are good.
"""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from conftest import REFERENCE, SPEECH

from wavslm.audio import load_audio, save_audio
from wavslm.errors import InputError
from wavslm.eval import codec_eval, generation_eval, metrics
from wavslm.eval.transcripts import auto_bleu_gslm, auto_bleu_slamkit, genppl, trigram_lm, words
from wavslm.io import find_audio

CLEAN = "librispeech-dev-clean/84/84-121123-0007.wav"  # 2.0 s, "what do you mean sir"
NOISY_48K = "voicebank-noisy-testset/p287_007.wav"  # 3.4 s at 48 kHz


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    sig, _ = load_audio(SPEECH / CLEAN, sample_rate=16000, mono=True)
    return sig[0].numpy()


@pytest.fixture(scope="module")
def noisy(clip) -> np.ndarray:
    """The clip with white noise at about 5 dB SNR."""
    noise = np.random.default_rng(0).standard_normal(len(clip)).astype(np.float32)
    return clip + noise * np.sqrt(np.mean(clip**2) / 10**0.5)


@pytest.fixture(scope="module")
def resynth(clip) -> np.ndarray:
    """The clip through the random-weight reference codec, back at 16 kHz."""
    from wavslm.audio import resample
    from wavslm.codec import Codec

    codec = Codec.from_pretrained(REFERENCE / "codec_tiny_causal")
    rec = codec.decode(codec.encode(torch.from_numpy(clip)))[0]
    return resample(rec, codec.sample_rate_output, 16000).numpy()


# ---- the metric functions ------------------------------------------------------------------------------

def test_identical_audio_scores_at_the_top(clip):
    assert metrics.pesq_wb(clip, clip, 16000) > 4.5
    assert metrics.stoi(clip, clip, 16000) > 0.99
    assert metrics.mel_distance(clip, clip, 16000) == 0.0
    assert metrics.speaker_similarity(clip, clip, 16000) > 0.99


def test_noise_scores_lower_than_clean(clip, noisy):
    assert 1.0 <= metrics.pesq_wb(clip, noisy, 16000) < 2.5
    assert 0.0 < metrics.stoi(clip, noisy, 16000) < 0.95
    assert metrics.mel_distance(clip, noisy, 16000) > 0.1
    assert metrics.speaker_similarity(clip, noisy, 16000) < 0.99
    assert metrics.dnsmos(noisy, 16000)["ovrl"] < metrics.dnsmos(clip, 16000)["ovrl"] - 0.5


def test_every_metric_is_in_range_on_a_resynthesis(clip, resynth):
    assert 1.0 <= metrics.pesq_wb(clip, resynth, 16000) <= 4.64
    assert -1.0 <= metrics.stoi(clip, resynth, 16000) <= 1.0  # a mean of correlations: may dip below 0
    assert metrics.mel_distance(clip, resynth, 16000) > 0.0
    assert -1.0 <= metrics.speaker_similarity(clip, resynth, 16000) <= 1.0
    for sig in (clip, resynth):
        scores = metrics.dnsmos(sig, 16000)
        assert set(scores) == {"ovrl", "sig", "bak", "p808"}
        assert all(1.0 <= v <= 5.0 for v in scores.values()), scores


def test_other_rates_shapes_and_lengths_are_handled(clip):
    from wavslm.audio import resample

    at48k = resample(torch.from_numpy(clip)[None], 16000, 48000)  # a (1, N) tensor at 48 kHz
    assert metrics.pesq_wb(at48k, at48k, 48000) > 4.5
    longer = np.concatenate([clip, np.zeros(800, np.float32)])  # trimmed to the shorter signal
    assert metrics.stoi(clip, longer, 16000) > 0.99


def test_transcribe_hears_words_in_speech_and_none_in_silence(clip):
    words = metrics.transcribe(clip, 16000).split()
    assert len(words) >= 3 and all(w.isalpha() or "'" in w for w in words)
    assert len(metrics.transcribe(np.zeros(32000, np.float32), 16000).split()) <= 1
    scored = metrics.transcribe_words(clip, 16000)
    assert [w for w, _ in scored] == words and all(0.0 <= p <= 1.0 for _, p in scored)


def test_wer_normalises_case_and_punctuation():
    assert metrics.wer('Hello, World! "Don\'t" go.', "hello world don't go") == 0.0
    assert metrics.wer("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert metrics.wer("a b", "") == 1.0
    assert metrics.wer("a", "b c d") == 3.0  # insertions: WER may exceed 1
    with pytest.raises(InputError, match="reference"):
        metrics.wer(" ... ", "a")


def test_codebook_usage_and_bitrate_are_exact():
    assert metrics.codebook_usage(np.array([0, 1, 2, 3]), 4) == {
        "entropy_bits": 2.0, "normalised_entropy": 1.0, "used_share": 1.0}
    assert metrics.codebook_usage(torch.zeros(2, 5, dtype=torch.long), 4) == {
        "entropy_bits": 0.0, "normalised_entropy": 0.0, "used_share": 0.25}
    usage = metrics.codebook_usage([[0, 0, 1, 1]], 16)
    assert usage == {"entropy_bits": 1.0, "normalised_entropy": 0.25, "used_share": 0.125}
    assert metrics.bitrate(50, 65536) == 800.0 and metrics.bitrate(12.5, 2**16) == 200.0
    with pytest.raises(InputError, match=r"\[0, 4\)"):
        metrics.codebook_usage(np.array([0, 4]), 4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: metrics.pesq_wb(c[:0], c, 16000), "empty"),
        (lambda c: metrics.pesq_wb(c[:4000], c[:4000], 16000), "at least 0.5 s"),
        (lambda c: metrics.stoi(np.zeros_like(c), c, 16000), "silent"),
        (lambda c: metrics.dnsmos(np.full(16000, np.nan, np.float32), 16000), "NaN"),
        (lambda c: metrics.transcribe(c[:100], 16000), "at least 0.1 s"),
        (lambda c: metrics.speaker_similarity(np.stack([c, c]), c, 16000), "one channel"),
        (lambda c: metrics.mel_distance(np.arange(3), c, 16000), "float"),
    ],
)
def test_bad_signals_fail_with_one_clear_sentence(clip, call, message):
    with pytest.raises(InputError, match=message):
        call(clip)


def test_transcripts_are_read_from_jsonl_and_tsv(tmp_path):
    (tmp_path / "a").mkdir()
    files = [tmp_path / "a" / "x.wav", tmp_path / "y.flac"]
    (tmp_path / "t.jsonl").write_text('{"path": "a/x.wav", "text": "Hello there"}\n\n{"path": "y", "text": "Bye"}\n')
    (tmp_path / "t.tsv").write_text(f"{files[0]}\thello there\ny.flac\tbye\n")
    for name in ("t.jsonl", "t.tsv"):
        table = codec_eval.read_transcripts(tmp_path / name)
        texts = codec_eval.match_transcripts(files, table, tmp_path, name)
        assert [t.lower() for t in texts] == ["hello there", "bye"]
    with pytest.raises(InputError, match="no transcript for"):
        codec_eval.match_transcripts([tmp_path / "z.wav"], table, tmp_path, "t.tsv")
    (tmp_path / "bad.jsonl").write_text('{"file": "x"}\n')
    with pytest.raises(InputError, match="line 1"):
        codec_eval.read_transcripts(tmp_path / "bad.jsonl")


# ---- the commands end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three short clips (WAV at 16 kHz; FLAC at 48 kHz, in a subfolder) and a file that is not audio."""
    folder = tmp_path_factory.mktemp("speech")
    sig, sr = load_audio(SPEECH / CLEAN)
    save_audio(folder / "a.wav", sig, sr)
    sig, sr = load_audio(SPEECH / NOISY_48K)
    save_audio(folder / "sub" / "b.flac", sig[:, :sr], sr)  # whole seconds: DNSMOS scores fewer windows
    sig, sr = load_audio(SPEECH / "librispeech-dev-clean/84/84-121123-0000.wav")
    save_audio(folder / "sub" / "c.wav", sig, sr)
    (folder / "notes.txt").write_text("not audio")
    return folder


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")  # the lead's `wavslm eval` parser adds it
    module.configure(parser)
    return parser.parse_args(argv)


def test_eval_codec_writes_every_field(data, tmp_path, capsys):
    out = tmp_path / "results" / "codec.json"
    args = _parse(codec_eval, ["--codec", str(REFERENCE / "codec_tiny_causal"), "--data", str(data),
                               "--limit", "2", "-o", str(out)])
    args.func(args)
    assert str(out) in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    assert results["num_files"] == 2 and [f["path"] for f in results["files"]] == [str(data / "a.wav"), str(data / "sub/b.flac")]
    assert results["wer_reference"] == "pocketsphinx transcript of the original audio"
    assert results["sample_rate_output"] == 24000 and results["metric_sample_rate"] == 16000
    assert results["bitrate_bps"] == 50 * 6  # 50 tokens/s x log2(64)
    assert 0 < results["codebook_usage"]["used_share"] <= 1 and results["mel_settings"]["n_mels"] == 80
    mean = results["mean"]
    assert 1 <= mean["pesq"] <= 4.64 and -1 <= mean["stoi"] <= 1 and mean["mel_distance"] > 0
    assert all(1 <= mean[f"{p}dnsmos_{k}"] <= 5 for p in ("", "original_") for k in ("ovrl", "sig", "bak", "p808"))
    assert -1 <= mean["speaker_similarity"] <= 1 and mean["wer"] >= 0 and results["corpus_wer"] >= 0
    # The fixture codec has random weights: its resynthesis is not speech, so voicing is mostly lost.
    assert results["pyin_settings"] == {"sample_rate": 16000, "fmin": 60.0, "fmax": 400.0, "frame_length": 1024,
                                        "hop_length": 160, "resolution": 0.1, "gross_error": 0.2}
    assert 0.3 < mean["original_voiced_share"] < 0.9 and 0 <= mean["voiced_share"] <= 1
    assert 0 <= mean["vde"] <= 1 and (mean["gpe"] is None or 0 <= mean["gpe"] <= 1)
    first = results["files"][0]
    assert first["tokens"] == 100 and abs(first["seconds"] - 2.0) < 0.05
    assert first["reference_text"] and isinstance(first["transcript"], str)


def test_eval_generation_writes_every_field(data, tmp_path):
    out, audio = tmp_path / "gen.json", tmp_path / "audio"
    # 1.28 s of continuation (16 steps) doubles to 10.24 s, which DNSMOS scores in a single window.
    args = _parse(generation_eval, ["--model", str(REFERENCE / "wavslm_tiny"), "--prompts", str(data / "sub"),
                                    "--limit", "1", "--prompt-seconds", "1", "--seconds", "1.28", "--num", "2",
                                    "--seed", "7", "-o", str(out), "--save-audio", str(audio)])
    args.func(args)
    results = json.loads(out.read_text())
    assert results["model"] == str(REFERENCE / "wavslm_tiny")
    assert results["settings"] == {"prompt_seconds": 1.0, "seconds": 1.28, "seed": 7, "num": 2, "top_p": 0.3,
                                   "temp": 0.8, "device": "cpu", "instruments": {
                                       "whisper": None, "text_lm": None, "speaker_verifier": None, "utmos": None,
                                       "utmos_weights": None}}
    assert results["num_prompts"] == 1 and results["num_continuations"] == 2
    assert "pocketsphinx_words_per_second" in results["intelligibility"]
    rows = results["continuations"]
    assert [r["seed"] for r in rows] == [7, 8] and all(r["seconds"] == 1.28 for r in rows)
    for row in rows:
        assert all(1 <= row[f"dnsmos_{k}"] <= 5 for k in ("ovrl", "sig", "bak", "p808"))
        assert -1 <= row["speaker_similarity_resemblyzer"] <= 1 and row["pocketsphinx_words_per_second"] >= 0
        assert row["pocketsphinx_confidence"] is None or 0 <= row["pocketsphinx_confidence"] <= 1
        assert row["prompt_seconds"] == 1.0 and row["prompt_pocketsphinx_words_per_second"] > 0
        # The prompt is real speech, so the prompt + continuation transcript has words the trigram scores.
        tokens = words(row["transcript_full_pocketsphinx"])
        assert tokens and row["nll_trigram_pocketsphinx"] > 0
        assert row["auto_bleu2_gslm_pocketsphinx"] == auto_bleu_gslm(tokens, 2)
        assert row["auto_bleu2_slamkit_pocketsphinx"] == auto_bleu_slamkit(tokens, 2)
        assert 0 <= row["voiced_share"] <= 1 and 0.2 < row["prompt_voiced_share"] <= 1  # the prompt is speech
        sig, sr = load_audio(row["audio"])
        assert sr == 24000 and sig.shape[1] == 64 * 480  # 64 tokens
    assert set(results["mean"]) >= {"dnsmos_ovrl", "speaker_similarity_resemblyzer", "pocketsphinx_words_per_second",
                                    "pocketsphinx_confidence", "auto_bleu2_gslm_pocketsphinx", "nll_trigram_pocketsphinx"}
    nlls = [r["nll_trigram_pocketsphinx"] for r in rows]
    assert results["genppl"] == {"trigram_pocketsphinx": {"value": pytest.approx(math.exp(sum(nlls) / 2)),
                                                          "num_transcripts": 2}}
    assert "seed" not in results["mean"] and 0 < results["codebook_usage"]["used_share"] <= 1


def test_voiced_share_tells_speech_from_noise(clip):
    assert 0.4 < metrics.voiced_share(clip, 16000) < 0.95
    noise = np.random.default_rng(0).normal(0, 0.05, 32000).astype(np.float32)
    assert metrics.voiced_share(noise, 16000) < 0.05


def test_eval_commands_name_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        find_audio(tmp_path / "missing")
    with pytest.raises(InputError, match="no .wav/.flac/.ogg files"):
        find_audio(tmp_path)


# ---- transcript measures: Auto-BLEU by both definitions, the offline trigram ---------------------------


@pytest.mark.parametrize(("text", "gslm", "slamkit"), [
    ("a a a", 0.5, 1.0),  # GSLM: unigrams all repeated, the two bigrams overlap their copies -> (1 + 0) / 2
    ("a b a b", (1 + 2 / 3) / 2, 2 / 3),
    ("the cat sat on the mat", (2 / 6 + 0) / 2, 0.0),
    ("hello", 0.0, 0.0),
    ("", 0.0, 0.0),
])
def test_auto_bleu_follows_each_reference_definition(text, gslm, slamkit):
    """Worked by hand from fairseq's `self_auto_bleu.auto_bleu` (orders 1-2, arithmetic mean) and SlamKit's
    `calc_auto_bleu` (bigrams only, repeats anywhere else)."""
    tokens = text.split()
    assert auto_bleu_gslm(tokens, 2) == pytest.approx(gslm)
    assert auto_bleu_slamkit(tokens, 2) == pytest.approx(slamkit)


def test_trigram_lm_scores_sentences_and_skips_unknown_words():
    lm = trigram_lm()
    good, shuffled = lm.score("the cat sat on the mat".split()), lm.score("mat the on sat cat the".split())
    assert good["scored"] == 7 and good["oov"] == 0  # six words and </s>
    # log10 P = -14.0506 read off the model through pocketsphinx's own NGramModel.prob: ppl 101.7
    assert math.exp(good["nll"]) == pytest.approx(101.7, abs=0.1)
    assert shuffled["nll"] > good["nll"] + 1
    odd = lm.score("The cat sat on the zzqx".split())
    assert odd["oov"] == 1 and odd["scored"] == 6
    assert lm.score([]) == {"nll": None, "scored": 0, "oov": 0}  # no transcript, no NLL (as with a text LM)
    assert genppl([1.0, 3.0, None]) == {"value": pytest.approx(math.exp(2.0)), "num_transcripts": 2}
    assert genppl([]) == {"value": None, "num_transcripts": 0}
    assert words("Hello, world. The world's END!") == ["hello", "world", "the", "world's", "end"]
