"""The synthetic corpus and benchmark suite (espeak-ng): layouts, splits, determinism, and that the speech
is what it claims to be — distinct voices (resemblyzer) and intelligible words (pocketsphinx)."""

import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader")

from wavslm.data import espeak, lexicon, synth  # noqa: E402
from wavslm.data.espeak import Voice, synthesize  # noqa: E402
from wavslm.data.manifest import read_manifest  # noqa: E402
from wavslm.errors import InputError  # noqa: E402
from wavslm.eval.synth_bench import SYNTAX_TYPES, english_words, make_bench  # noqa: E402

HOURS = 0.1  # what CI generates; a few seconds on one core


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    summary = synth.make_corpus(out, HOURS, seed=0, workers=1, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "bench"
    return out, make_bench(out, seed=0, pairs=6)


def _gold(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_lexicon_size_and_grammar_are_deterministic():
    import random

    assert 900 <= len(lexicon.content_words()) <= 1200
    assert 10 <= len(lexicon.TOPICS) <= 20
    a = [lexicon.text(lexicon.sentence("food", random.Random(3))) for _ in range(3)]
    b = [lexicon.text(lexicon.sentence("food", random.Random(3))) for _ in range(3)]
    assert a == b and all(s[0].isupper() and s.endswith(".") for s in a)


def test_corpus_manifests_durations_and_splits(corpus):
    out, summary = corpus
    assert summary["hours"] >= HOURS and set(summary["utterances"]) == {"train", "valid", "test"}
    voices = json.loads((out / "voices.json").read_text())
    test_names = set(voices["splits"]["test"])
    seen = defaultdict(set)
    total = 0.0
    for split in ("train", "valid", "test"):
        entries = read_manifest(out / f"{split}.jsonl")
        assert len(entries) == summary["utterances"][split] > 0
        for e in entries:
            info = sf.info(e["path"])
            assert info.samplerate == e["sample_rate"] == 16000 and info.channels == 1
            assert e["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-5)
            assert synth.MIN_SECONDS <= e["duration"] <= synth.MAX_SECONDS
            assert e["text"] and e["topic"] in lexicon.TOPICS and f"/wavs/{e['voice']}/" in e["path"]
            seen[split].add(e["voice"])
            total += e["duration"]
    assert total / 3600 == pytest.approx(summary["hours"], abs=1e-3)
    assert seen["test"] <= test_names and not (seen["train"] | seen["valid"]) & test_names
    assert not list(out.parent.glob(".corpus.*"))  # the temporary folder was renamed


def test_corpus_is_deterministic_whatever_the_workers(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    synth.make_corpus(again, 0.01, seed=0, workers=2, progress=False)
    first = (out / "train.jsonl").read_text().splitlines()
    second = (again / "train.jsonl").read_text().splitlines()
    assert second == first[: len(second)]  # the small corpus is the start of the big one
    path = json.loads(second[0])["path"]
    assert (again / path).read_bytes() == (out / path).read_bytes()
    other = tmp_path / "other"
    synth.make_corpus(other, 0.01, seed=1, workers=1, progress=False)
    assert (other / "train.jsonl").read_text().splitlines()[0] != first[0]


def test_corpus_bad_input_and_interruption(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="positive"):
        synth.make_corpus(tmp_path / "neg", -1.0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not an empty folder"):
        synth.make_corpus(tmp_path / "full", 0.01)
    calls = []

    def failing(text, voice=None, **kw):
        calls.append(text)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return np.zeros(3 * 16000, np.float32) + 0.1

    monkeypatch.setattr(espeak, "synthesize", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.make_corpus(tmp_path / "cut", 0.01, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing half-written
    from wavslm.io import output_lock

    with output_lock(tmp_path / "busy"):  # a second writer of the same corpus stops before any synthesis
        with pytest.raises(InputError, match="is being written by another process"):
            synth.make_corpus(tmp_path / "busy", 0.01, workers=1, progress=False)
    assert len(calls) == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_bench_uses_the_corpus_test_voices(bench, corpus):
    out, summary = bench
    test_voices = json.loads((corpus[0] / "voices.json").read_text())["splits"]["test"]
    assert summary["voices"] == test_voices


def test_bench_lexical_and_syntactic_layouts(bench):
    out, _ = bench
    vocabulary = english_words()
    for task, columns in (("lexical", {"id", "filename", "correct", "frequency", "voice", "word"}),
                          ("syntactic", {"id", "filename", "correct", "voice", "type", "subtype"})):
        rows = _gold(out / task / "dev" / "gold.csv")
        assert columns <= set(rows[0])
        pairs = defaultdict(list)
        for r in rows:
            assert (out / task / "dev" / f"{r['filename']}.wav").is_file()
            pairs[r["id"]].append(r)
        assert len(pairs) == 6
        for pair in pairs.values():
            assert sorted(r["correct"] for r in pair) == ["0", "1"] and len({r["voice"] for r in pair}) == 1
            if task == "lexical":
                word, nonword = sorted(pair, key=lambda r: r["correct"], reverse=True)
                assert word["word"] in lexicon.content_words() and nonword["word"] not in vocabulary
                assert abs(len(word["word"]) - len(nonword["word"])) <= 1
    assert {r["type"] for r in _gold(out / "syntactic" / "dev" / "gold.csv")} == set(SYNTAX_TYPES)


def test_bench_answer_files_pass_the_official_scorer(bench, tmp_path, capsys):
    """The suite's gold.csv files are what the official ZeroSpeech 2021 scorer reads (integer frequencies,
    phones and their count, the columns in its order), a submission written for it validates, and the
    official rules grade it as wavslm reports (tests/eval/zerospeech_rules.py)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "eval"))
    import zerospeech_rules as official
    from conftest import REFERENCE

    from wavslm.cli import main

    out, _ = bench
    rows = official.check_gold(out / "lexical" / "dev" / "gold.csv", "lexical")
    assert all(r["phones"] and int(r["length"]) == len(r["phones"].split()) for r in rows)
    official.check_gold(out / "syntactic" / "dev" / "gold.csv", "syntactic")
    sub, model = tmp_path / "submission", str(REFERENCE / "wavslm_tiny")
    for task in ("swuggy", "sblimp"):
        assert main(["eval", "zeroshot", "--task", task, "--data", str(out), "--model", model,
                     "--submission", str(sub), "-o", str(tmp_path / f"{task}.json")]) == 0
    official.validate(out, sub, only_dev=True)
    ours = json.loads((tmp_path / "swuggy.json").read_text())
    graded = official.score_lexical(out / "lexical" / "dev" / "gold.csv", sub / "lexical" / "dev.txt")
    assert ours["accuracy"] == pytest.approx(graded["all"], abs=1e-4)
    ours = json.loads((tmp_path / "sblimp.json").read_text())
    graded = official.score_syntactic(out / "syntactic" / "dev" / "gold.csv", sub / "syntactic" / "dev.txt")
    assert ours["accuracy"] == pytest.approx(graded["overall"])

    # `wavslm eval paper` on the suite: its tasks beside the paper's WavSLM-4k row.
    capsys.readouterr()
    assert main(["eval", "paper", "--suite", str(out), "--model", model, "-o", str(tmp_path / "paper.json")]) == 0
    table = capsys.readouterr().out
    paper = json.loads((tmp_path / "paper.json").read_text())
    rows = {r["task"]: r for r in paper["rows"]}
    ours_swuggy = json.loads((tmp_path / "swuggy.json").read_text())["accuracy"]
    assert rows["sWUGGY (all)"]["wavslm"] == pytest.approx(ours_swuggy)
    assert rows["SALMon speaker consistency"]["wavslm"] is not None and rows["SALMon gender consistency"]["wavslm"] is None
    assert paper["average"] == {"wavslm": None, "paper": 69.5}  # the suite has no sentiment or gender parts
    assert re.search(rf"\nsWUGGY \(all\) +{100 * ours_swuggy:.1f} +[0-9.]+-[0-9.]+ +63\.7\n", table), table
    assert "not yet been checked against the paper itself" in table


def test_bench_storycloze_and_salmon_layouts(bench):
    out, _ = bench
    story = sorted(p.name for p in (out / "storycloze").glob("*.wav"))
    assert story == sorted(f"{i:05d}_{label}.wav" for i in range(6) for label in ("correct", "incorrect"))
    folder = out / "salmon" / "speaker_consistency"
    names = sorted(f"sample_{i}_{j}.wav" for i in range(6) for j in (0, 1))
    assert sorted(p.name for p in folder.iterdir()) == names
    same, switched = sf.read(folder / "sample_0_0.wav")[0], sf.read(folder / "sample_0_1.wav")[0]
    half = 16000  # the first sentence, spoken by the same voice in both, lasts over a second
    assert np.array_equal(same[:half], switched[:half]) and not np.array_equal(same, switched)
    assert json.loads((out / "bench.json").read_text())["storycloze"]["pairs"] == 6


def test_voices_differ():
    resemblyzer = pytest.importorskip("resemblyzer")
    import torch

    torch.set_num_threads(1)  # its small LSTM only slows down with more threads on a busy machine
    encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)
    train, test = synth.voice_inventory(0)
    voices = test[:2] + train[:1]
    texts = ["The farmer feeds the hungry goats in the barn every morning.",
             "Those singers practice a lively song on the stage at night."]
    emb = np.array([[encoder.embed_utterance(synthesize(t, v)) for t in texts] for v in voices])  # (V, 2, D)
    within = float(np.mean([emb[v, 0] @ emb[v, 1] for v in range(len(voices))]))
    between = float(np.mean([emb[a, i] @ emb[b, i] for a in range(len(voices)) for b in range(a + 1, len(voices))
                             for i in range(2)]))
    assert within > between + 0.05, (within, between)


def test_speech_is_intelligible():
    pocketsphinx = pytest.importorskip("pocketsphinx")
    jiwer = pytest.importorskip("jiwer")
    decoder = pocketsphinx.Decoder(loglevel="FATAL")
    voice = Voice("asr", language="en-us", variant="klatt4", rate=175)
    # Common words, as the recogniser's language model expects; its WER on these is 0.20.
    sentences = ["the small dog runs to the green park", "my mother cooks dinner in the kitchen every night",
                 "we drink hot coffee in the morning", "the old man reads a book about the sea",
                 "the farmer grows corn and wheat on his land", "a big ship sails across the ocean",
                 "the children play with a red ball in the garden", "the teacher gives the students a long test",
                 "she likes to walk her dog in the park", "he bought a new car last week",
                 "they watch the news on television every evening", "the weather is very cold today"]
    hyps = []
    for text in sentences:
        pcm = (np.clip(synthesize(text, voice), -1, 1) * 32767).astype(np.int16).tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyps.append(decoder.hyp().hypstr if decoder.hyp() else "")
    assert jiwer.wer(sentences, hyps) < 0.3, hyps


def test_espeak_output_does_not_depend_on_what_was_said_before():
    train, test = synth.voice_inventory(0)
    text = "The old man reads a book about the sea."
    first = [synthesize(text, v) for v in test]
    for i, v in enumerate(train):  # every voice once: Klatt and formant voices leave different state behind
        synthesize(["Hello there, how are you today?", "Fine, thank you."][i % 2], v)
    assert all(np.array_equal(a, synthesize(text, v)) for a, v in zip(first, test, strict=True))


def test_espeak_rejects_unknown_voices():
    with pytest.raises(InputError, match="variant"):
        synthesize("hello", Voice("x", "en-us", "no-such-variant"))
    with pytest.raises(InputError, match="voice"):
        synthesize("hello", Voice("x", "xx-nowhere"))
    with pytest.raises(InputError, match="empty"):
        synthesize("  ", Voice("x"))


def test_the_cli_verbs_ci_runs(tmp_path, capsys):
    """`wavslm synth corpus --hours 0.1` and `wavslm synth bench` as a user types them."""
    from wavslm.cli import main

    assert main(["synth", "corpus", "-o", str(tmp_path / "corpus"), "--hours", "0.1"]) == 0
    summary = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    assert 0.1 <= summary["hours"] < 0.12 and summary["voices"] == {"train": 42, "test": 6}
    assert main(["synth", "bench", "-o", str(tmp_path / "bench")]) == 0
    for task, gold in (("lexical", "lexical/dev/gold.csv"), ("syntactic", "syntactic/dev/gold.csv")):
        assert len(_gold(tmp_path / "bench" / gold)) == 200, task  # 100 pairs by default
    assert len(list((tmp_path / "bench" / "storycloze").glob("*_correct.wav"))) == 100
    assert len(list((tmp_path / "bench" / "salmon" / "speaker_consistency").glob("sample_*_0.wav"))) == 100
    out = capsys.readouterr().out
    assert "corpus" in out.lower() and "bench" in out.lower()
