"""Zero-shot pair scoring: the pure accuracy functions, every loader's layout and its malformed cases,
batched == one-at-a-time scores, and the CLI end to end on the reference LM with real speech."""

import csv
import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from zeroshot_cli import outcome, run_zeroshot

from wavslm.errors import InputError
from wavslm.eval.loaders import Clip, ClipReader, Pair, load_pairs
from wavslm.eval.zeroshot import (
    batches,
    encode_clips,
    evaluate,
    interval,
    item_accuracy,
    pair_accuracy,
    score_rows,
    summarize,
)

# ---- pure functions -------------------------------------------------------------------------------


def test_pair_accuracy_counts_ties_half():
    assert pair_accuracy(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 2.0, 1.0, 5.0])) == 0.625


def test_item_accuracy_averages_voices_then_items():
    # item a: two voices (1, 0) -> 0.5; b: one voice -> 1; c: three voices (0.5, 1, 0) -> 0.5.
    outcomes, items = [1, 0, 1, 0.5, 1, 0], ["a", "a", "b", "c", "c", "c"]
    assert item_accuracy(outcomes, items) == pytest.approx(2 / 3)


def _pair(item, **meta):
    return Pair(Clip(f"{item}+.wav"), Clip(f"{item}-.wav"), item, meta)


def test_summarize_swuggy_in_vocab_and_sblimp_types():
    pairs = [_pair("w1", in_vocab=True), _pair("w1", in_vocab=True), _pair("w2", in_vocab=False), _pair("w3", in_vocab=True)]
    result = summarize("swuggy", pairs, [1, 0.5, 0, 1])
    assert result["accuracy"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert result["subsets"]["in-vocab"] == {"accuracy": pytest.approx((0.75 + 1) / 2), "num_pairs": 3, "num_items": 2,
                                             "ci95": pytest.approx(interval((0.75 + 1) / 2, 2))}
    assert result["ci95"] == pytest.approx(interval((0.75 + 0 + 1) / 3, 3))
    pairs = [_pair("s1", type="morph"), _pair("s1", type="morph"), _pair("s2", type="syntax"), _pair("s3", type="syntax")]
    result = summarize("sblimp", pairs, [1, 0, 1, 0])
    assert result["accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert result["subsets"]["morph"]["accuracy"] == 0.5 and result["subsets"]["syntax"]["accuracy"] == 0.5


def test_summarize_swuggy_frequency_bands_and_length():
    """The official bands are right-open: a count of 4 is "1-5", 5 is "6-20", 19 "6-20", 20 "21-100", 100 ">100"."""
    counts = {"a": 0, "b": 4, "c": 5, "d": 19, "e": 20, "f": 100, "g": None}
    pairs = [_pair(k, frequency=c, length=len(k) + (k > "c")) for k, c in counts.items()]
    result = summarize("swuggy", pairs, [1, 0, 1, 0.5, 1, 0, 1])
    bands = result["breakdowns"]["frequency"]
    assert list(bands) == ["oov", "1-5", "6-20", "21-100", ">100"]
    assert {k: (v["accuracy"], v["num_items"]) for k, v in bands.items()} == {
        "oov": (1.0, 2), "1-5": (0.0, 1), "6-20": (0.75, 2), "21-100": (1.0, 1), ">100": (0.0, 1)}
    assert {k: v["num_items"] for k, v in result["breakdowns"]["length"].items()} == {"1": 3, "2": 4}
    assert "in-vocab" not in result["subsets"]  # no in_vocab flags given


def test_summarize_sblimp_by_subtype():
    pairs = [_pair("s1", type="t", subtype="u"), _pair("s2", type="t", subtype="v"), _pair("s3", type="t", subtype="v")]
    result = summarize("sblimp", pairs, [1, 0, 0.5])
    assert {k: v["accuracy"] for k, v in result["breakdowns"]["subtype"].items()} == {"u": 1.0, "v": 0.25}


def test_summarize_salmon_is_the_mean_over_parts_and_warns_of_missing_parts():
    pairs = [_pair("x/0", part="x"), _pair("y/0", part="y"), _pair("y/1", part="y"), _pair("y/2", part="y")]
    result = summarize("salmon", pairs, [1, 0, 0, 1])
    assert result["subsets"]["y"] == {"accuracy": pytest.approx(1 / 3), "num_pairs": 3, "num_items": 3,
                                      "ci95": pytest.approx(interval(1 / 3, 3))}
    assert result["accuracy"] == pytest.approx((1 + 1 / 3) / 2)  # not the pair mean (0.5)
    assert "mean over the 2 SALMon parts found" in result["averaging"]
    assert result["warnings"] and "2 of SALMon's 8 parts found; missing: sentiment_consistency" in result["warnings"][0]
    from wavslm.eval.loaders import SALMON_PARTS

    pairs = [_pair(f"{p}/0", part=p) for p in reversed(SALMON_PARTS)]
    result = summarize("salmon", pairs, [1] * 8)
    assert result["warnings"] == [] and list(result["subsets"]) == list(SALMON_PARTS)  # the paper's order


def test_summarize_storycloze_never_pools_subsets():
    pairs = [_pair("sSC/0", subset="sSC"), _pair("sSC/1", subset="sSC"), _pair("tSC/0", subset="tSC")]
    result = summarize("storycloze", pairs, [1, 1, 0])
    assert result["accuracy"] is None and result["ci95"] is None and "never pooled" in result["averaging"]
    assert {k: v["accuracy"] for k, v in result["subsets"].items()} == {"sSC": 1.0, "tSC": 0.0}
    assert "give one of them as --data with --task ssc or --task tsc" in result["warnings"][0]
    result = summarize("tsc", pairs[2:], [0])
    assert result["accuracy"] == 0.0 and result["averaging"] == "tSC: mean over stories"


def test_wilson_interval():
    """Wilson's score interval, checked against its closed form at a few points and the widths the suite
    sizes promise: +-0.096 at 100 items, +-0.044 at 500 (accuracy 0.5)."""
    low, high = interval(0.5, 100)
    assert high - low == pytest.approx(2 * 0.0962, abs=1e-3)
    low, high = interval(0.5, 500)
    assert high - low == pytest.approx(2 * 0.0437, abs=1e-3)
    assert interval(0.0, 10)[0] == 0.0 and interval(0.0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert interval(1.0, 10)[1] == pytest.approx(1.0) and interval(1.0, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    low, high = interval(0.54, 100)
    assert low < 0.5 < high  # 0.54 over 100 items cannot be told from chance
    low, _ = interval(0.54, 2000)
    assert low > 0.5


def test_batches_group_lengths_equal_mod_4_sorted():
    lengths = [9, 12, 5, 8, 13, 16, 7, 20]
    plan = batches(lengths, batch_size=2)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    for b in plan:
        assert len(b) <= 2 and len({lengths[i] % 4 for i in b}) == 1
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    with pytest.raises(InputError, match="at least 1"):
        batches(lengths, 0)




def test_batched_scores_equal_one_at_a_time(lm, pool):
    clips, nll = pool
    rows = encode_clips(lm, [Clip(p) for p in clips.values()] * 2)
    assert len({len(r) % 4 for r in rows}) == 4  # every residue, so several padded batches
    for reduction in ("mean", "sum"):
        expected = torch.tensor([nll[reduction][name] for name in clips] * 2)
        for batch_size in (1, 3, 16):
            got = score_rows(lm, rows, reduction, batch_size)
            assert torch.allclose(got, expected, rtol=1e-6, atol=1e-5), (reduction, batch_size)


# ---- sLM21: sWUGGY and sBLIMP ----------------------------------------------------------------------

# (id, voice, positive clip, negative clip, word frequency, type): w1 has two voices, w2 one, w3 three.
_SWUGGY = [
    ("w1", "A", "c0", "c1", "12", "t1"), ("w1", "B", "c2", "c3", "12", "t1"),
    ("w2", "A", "c4", "c5", "0", "t2"),
    ("w3", "A", "c1", "c0", "oov", "t2"), ("w3", "B", "c5", "c2", "oov", "t2"), ("w3", "C", "c3", "c3", "oov", "t2"),
]


def _write_slm21(root, kind, clips, rows=_SWUGGY):
    split = root / kind / "dev"
    split.mkdir(parents=True)
    with open(split / "gold.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "filename", "word", "correct", "frequency", "voice", "type", "subtype"])
        for n, (item, voice, pos, neg, freq, kind_) in enumerate(rows):
            for correct, clip in ((1, pos), (0, neg)):
                name = f"f{n}{'p' if correct else 'n'}"
                shutil.copy(clips[clip], split / f"{name}.wav")
                out.writerow([item, name, "x", correct, freq if correct else "oov", voice, kind_, kind_ + "a"])
    return split / "gold.csv"


def test_swuggy_end_to_end(lm, pool, tmp_path, capsys):
    clips, nll = pool
    _write_slm21(tmp_path, "lexical", clips)
    mean = nll["mean"]
    w1 = (outcome(mean, "c0", "c1") + outcome(mean, "c2", "c3")) / 2
    w2 = outcome(mean, "c4", "c5")
    w3 = (outcome(mean, "c1", "c0") + outcome(mean, "c5", "c2") + 0.5) / 3  # c3 vs itself: a tie
    out = tmp_path / "res" / "swuggy.json"
    run_zeroshot("--task", "swuggy", "--data", tmp_path, "--model", lm_path(), "-o", out, "--per-pair", "--batch-size", 3)
    results = json.loads(out.read_text())
    assert results["task"] == "swuggy" and results["split"] == "dev" and results["num_pairs"] == 6
    assert results["accuracy"] == pytest.approx((w1 + w2 + w3) / 3)
    assert results["subsets"]["in-vocab"]["accuracy"] == pytest.approx(w1)  # w2 has count 0, w3 is "oov"
    for pair, row in zip(results["pairs"], _SWUGGY, strict=True):
        assert (pair["item"], pair["voice"]) == row[:2]
        assert pair["positive_nll"] == pytest.approx(mean[row[2]], abs=1e-5)
        assert pair["negative_nll"] == pytest.approx(mean[row[3]], abs=1e-5)
    assert [p.name for p in out.parent.iterdir()] == ["swuggy.json"]  # no temporary file left behind
    assert "swuggy dev: 6 pairs" in capsys.readouterr().out


def lm_path():
    from conftest import REFERENCE

    return REFERENCE / "wavslm_tiny"


def test_sblimp_end_to_end_by_type(lm, pool, tmp_path):
    clips, nll = pool
    _write_slm21(tmp_path, "syntactic", clips)
    s = nll["sum"]
    w1 = (outcome(s, "c0", "c1") + outcome(s, "c2", "c3")) / 2  # t1
    w2 = outcome(s, "c4", "c5")  # t2
    w3 = (outcome(s, "c1", "c0") + outcome(s, "c5", "c2") + 0.5) / 3  # t2
    results = run_zeroshot("--task", "sblimp", "--data", tmp_path / "syntactic", "--model", lm_path(), "--reduction", "sum")
    assert results["accuracy"] == pytest.approx((w1 + w2 + w3) / 3)
    assert results["subsets"]["t1"]["accuracy"] == pytest.approx(w1)
    assert results["subsets"]["t2"]["accuracy"] == pytest.approx((w2 + w3) / 2)


def test_slm21_loader_paths_and_vocab(pool, tmp_path):
    clips, _ = pool
    gold = _write_slm21(tmp_path, "lexical", clips)
    for data in (tmp_path, tmp_path / "lexical", gold.parent):
        pairs = load_pairs("swuggy", data)
        assert len(pairs) == 6 and [p.meta["in_vocab"] for p in pairs] == [True, True, False, False, False, False]
    with pytest.raises(InputError, match="no gold.csv for lexical/test"):
        load_pairs("swuggy", tmp_path, "test")


def test_slm21_malformed(pool, tmp_path):
    clips, _ = pool
    gold = _write_slm21(tmp_path, "lexical", clips)
    text = gold.read_text()
    gold.write_text(text.replace("frequency", "freq", 1))
    with pytest.raises(InputError, match=f"'{gold}' has no 'frequency' column"):
        load_pairs("swuggy", tmp_path)
    gold.write_text(text)
    (gold.parent / "f2p.wav").unlink()
    with pytest.raises(InputError, match=f"'{gold}' line 6 names 'f2p', but .*f2p.wav' does not exist"):
        load_pairs("swuggy", tmp_path)
    gold.write_text(text.replace("w1,f1n,x,0", "w1,f1n,x,1"))
    with pytest.raises(InputError, match=f"'{gold}': id 'w1' voice 'B' has 2 correct and 0 incorrect rows"):
        load_pairs("swuggy", tmp_path)
    gold.write_text(text.replace("w1,f1n,x,0", "w1,f1n,x,maybe"))
    with pytest.raises(InputError, match=f"'{gold}' line 5: 'correct' must be 1 or 0"):
        load_pairs("swuggy", tmp_path)


# ---- SALMon ---------------------------------------------------------------------------------------


def _write_salmon(root, parts):
    for part, samples in parts.items():
        (root / part).mkdir(parents=True)
        for i, (pos, neg) in enumerate(samples):
            shutil.copy(pos, root / part / f"sample_{i}_0.wav")
            shutil.copy(neg, root / part / f"sample_{i}_1.wav")


def test_salmon_end_to_end_mean_over_parts(lm, pool, tmp_path):
    clips, nll = pool
    parts = {"speaker_consistency": [("c0", "c1")], "rir_consistency": [("c2", "c3"), ("c5", "c4"), ("c1", "c2")]}
    _write_salmon(tmp_path, {k: [(clips[a], clips[b]) for a, b in v] for k, v in parts.items()})
    m = nll["mean"]
    per_part = {k: sum(outcome(m, a, b) for a, b in v) / len(v) for k, v in parts.items()}
    results = run_zeroshot("--task", "salmon", "--data", tmp_path, "--model", lm_path(), "--batch-size", 2)
    assert results["split"] is None and results["num_pairs"] == 4
    assert {k: s["accuracy"] for k, s in results["subsets"].items()} == pytest.approx(per_part)
    assert results["accuracy"] == pytest.approx(sum(per_part.values()) / 2)
    assert len(load_pairs("salmon", tmp_path / "rir_consistency")) == 3  # one part folder


def test_salmon_malformed(pool, tmp_path):
    clips, _ = pool
    _write_salmon(tmp_path, {"part": [(clips["c0"], clips["c1"])]})
    shutil.copy(clips["c2"], tmp_path / "part" / "sample_7_1.wav")
    with pytest.raises(InputError, match=r"sample_7_1.wav' has no partner: sample_7_0.wav is missing"):
        load_pairs("salmon", tmp_path)
    (tmp_path / "part" / "sample_7_1.wav").rename(tmp_path / "part" / "sample_7_2.wav")
    with pytest.raises(InputError, match="sample_7_2.wav' is not named sample_<i>_0.wav"):
        load_pairs("salmon", tmp_path)


# ---- Spoken StoryCloze ----------------------------------------------------------------------------


def test_storycloze_folder_end_to_end(lm, pool, tmp_path):
    clips, nll = pool
    stories = {"sSC": [("c0", "c3"), ("c4", "c1")], "tSC": [("c5", "c2")]}
    for subset, pairs in stories.items():
        (tmp_path / subset).mkdir()
        for i, (pos, neg) in enumerate(pairs):
            shutil.copy(clips[pos], tmp_path / subset / f"story{i}_correct.wav")
            shutil.copy(clips[neg], tmp_path / subset / f"story{i}_incorrect.wav")
    (tmp_path / "sSC" / "README.txt").write_text("not audio")  # other files are ignored
    m = nll["mean"]
    outcomes = {k: [outcome(m, a, b) for a, b in v] for k, v in stories.items()}
    results = run_zeroshot("--task", "storycloze", "--data", tmp_path, "--model", lm_path())
    assert results["accuracy"] is None  # sSC and tSC are not pooled
    assert results["subsets"]["sSC"] == {"accuracy": pytest.approx(sum(outcomes["sSC"]) / 2), "num_pairs": 2,
                                         "num_items": 2, "ci95": pytest.approx(interval(sum(outcomes["sSC"]) / 2, 2))}
    results = run_zeroshot("--task", "ssc", "--data", tmp_path / "sSC", "--model", lm_path())
    assert results["accuracy"] == pytest.approx(sum(outcomes["sSC"]) / 2) and results["subsets"] == {}

    (tmp_path / "tSC" / "story0_correct.wav").unlink()
    with pytest.raises(InputError, match=r"story0_incorrect.wav' has no partner: no story0_correct audio"):
        load_pairs("storycloze", tmp_path)


def _audio_cell(path, fmt="WAV"):
    data, sr = sf.read(path, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, data, sr, format=fmt, subtype="PCM_16")
    return {"bytes": buf.getvalue(), "path": path.name}


def test_storycloze_parquet_end_to_end(lm, pool, tmp_path):
    from wavslm import load_audio

    clips, _ = pool
    stories = [("c1", "c4"), ("c3", "c0"), ("c2", "c5")]
    table = pa.table({
        "id": ["a", "b", "c"],
        "positive": [_audio_cell(clips[p], "FLAC") for p, _ in stories],
        "negative": [_audio_cell(clips[n]) for _, n in stories],
    })
    file = tmp_path / "data" / "test-00000-of-00001.parquet"
    file.parent.mkdir()
    pq.write_table(table, file, row_group_size=2)  # rows spread over two row groups
    # Expected: the same 16-bit audio, scored one clip at a time.
    nll = {}
    for name in {c for s in stories for c in s}:
        wav = tmp_path / f"{name}.wav"
        sf.write(wav, sf.read(clips[name], dtype="float32")[0], 16000, subtype="PCM_16")
        nll[name] = float(lm.score(lm.codec.encode(load_audio(wav, sample_rate=16000, mono=True)[0])))
    expected = sum(outcome(nll, p, n) for p, n in stories) / 3
    for data in (tmp_path, file):
        results = run_zeroshot("--task", "storycloze", "--data", data, "--model", lm_path(), "--per-pair")
        assert results["accuracy"] == pytest.approx(expected)
        assert results["pairs"][1]["positive"] == f"{file} row 1 column 'positive'"
        assert results["pairs"][1]["positive_nll"] == pytest.approx(nll["c3"], abs=1e-5)


def test_storycloze_parquet_malformed(lm, pool, tmp_path):
    clips, _ = pool
    file = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"audio": [_audio_cell(clips["c0"])]}), file)
    with pytest.raises(InputError, match=f"'{file}' has no 'positive' and 'negative' audio columns"):
        load_pairs("storycloze", file)
    cell = {"bytes": b"not audio at all", "path": "x.wav"}
    pq.write_table(pa.table({"positive": [cell], "negative": [_audio_cell(clips["c0"])]}), file)
    with pytest.raises(InputError, match=f"cannot decode the audio in '{file} row 0 column 'positive''"):
        evaluate(lm, load_pairs("storycloze", file), "storycloze")


def test_unreadable_and_too_short_audio_name_the_file(lm, pool, tmp_path):
    clips, _ = pool
    shutil.copy(clips["c0"], tmp_path / "a_correct.wav")
    bad = tmp_path / "a_incorrect.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(InputError, match=f"cannot read audio from '{bad}'"):
        evaluate(lm, load_pairs("storycloze", tmp_path), "storycloze")
    for samples, reason in ((1280, "too short to score: 4 tokens"), (1000, "shorter than one chunk")):
        sf.write(bad, np.zeros(samples, dtype=np.float32) + 0.01, 16000)
        with pytest.raises(InputError, match=f"'{bad}'.*{reason}"):
            evaluate(lm, load_pairs("storycloze", tmp_path), "storycloze")


def test_clip_reader_decodes_parquet_like_files(pool, tmp_path):
    clips, _ = pool
    file = tmp_path / "x.parquet"
    pq.write_table(pa.table({"positive": [_audio_cell(clips["c1"])], "negative": [_audio_cell(clips["c2"])]}), file)
    got = ClipReader(16000)(Clip(file, 0, "positive"))
    want = ClipReader(16000)(Clip(clips["c1"]))
    assert got.shape == want.shape and (got - want).abs().max() < 1e-4  # 16-bit rounding only
