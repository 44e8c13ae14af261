"""The benchmarks as users hold them and as their official scorers grade them: ZeroSpeech 2021 submission
files graded by the official rules (tests/eval/zerospeech_rules.py), the Hugging Face parquet layouts, a
Hub id resolved from the local cache with the network off, and the first chunk scored after silence."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import zerospeech_rules as official
from conftest import REFERENCE
from zeroshot_cli import outcome, run_zeroshot

from wavslm.errors import InputError
from wavslm.eval.loaders import Clip, load_dataset
from wavslm.eval.zeroshot import context_chunks, score_clips

MODEL = REFERENCE / "wavslm_tiny"




# ---- ZeroSpeech 2021: --submission graded by the official rules --------------------------------------

# (id, voice, word clip, non-word clip, frequency, length): 1-3 voices per id, a tie (c3 vs itself), and
# every frequency band of the official scorer filled (0 = oov, 3, 7, 42, 150).
LEXICAL = [
    ("w1", "A", "c0", "c1", 3, 4), ("w1", "B", "c2", "c3", 3, 4),
    ("w2", "A", "c4", "c5", 0, 3),
    ("w3", "A", "c1", "c0", 150, 4), ("w3", "B", "c5", "c2", 150, 4), ("w3", "C", "c3", "c3", 150, 4),
    ("w4", "A", "c2", "c4", 7, 5),
    ("w5", "B", "c0", "c5", 42, 3),
]
# (id, voice, sentence clip, non-sentence clip, type, subtype)
SYNTACTIC = [
    ("s1", "A", "c0", "c1", "morphology", "agreement"), ("s1", "B", "c2", "c3", "morphology", "agreement"),
    ("s2", "A", "c4", "c5", "syntax", "order"),
    ("s3", "A", "c1", "c0", "syntax", "island"), ("s3", "B", "c5", "c2", "syntax", "island"),
    ("s3", "C", "c3", "c3", "syntax", "island"),
]


def _write_split(folder, kind, rows, clips, gold=True):
    """An sLM21 split in the official gold.csv column order, with random-looking file stems."""
    folder.mkdir(parents=True)
    lines = []
    for n, row in enumerate(rows):
        for correct, clip in ((1, row[2]), (0, row[3])):
            stem = f"x{n:02d}{'qw' if correct else 'zk'}{kind[:3]}"
            shutil.copy(clips[clip], folder / f"{stem}.wav")
            if kind == "lexical":
                lines.append({"id": row[0], "filename": stem, "voice": row[1], "frequency": row[4],
                              "word": f"{row[0]}{'' if correct else 'x'}", "phones": " ".join("p" * row[5]),
                              "length": row[5], "correct": correct})
            else:
                lines.append({"id": row[0], "filename": stem, "voice": row[1], "type": row[4], "subtype": row[5],
                              "correct": correct, "transcription": f"{row[0]} {correct}"})
    if gold:
        with open(folder / "gold.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(lines[0]))
            writer.writeheader()
            writer.writerows(lines)


def test_submission_is_graded_by_the_official_rules_as_wavslm_reports(pool, tmp_path):
    clips, _ = pool
    data, sub = tmp_path / "sLM21", tmp_path / "submission"
    _write_split(data / "lexical" / "dev", "lexical", LEXICAL, clips)
    _write_split(data / "syntactic" / "dev", "syntactic", SYNTACTIC, clips)
    for kind, rows in (("lexical", LEXICAL), ("syntactic", SYNTACTIC)):  # the test split: wavs only, gold withheld
        _write_split(data / kind / "test", kind, rows[:3], clips, gold=False)
    official.check_gold(data / "lexical" / "dev" / "gold.csv", "lexical")
    official.check_gold(data / "syntactic" / "dev" / "gold.csv", "syntactic")

    lexical = run_zeroshot("--task", "swuggy", "--data", data, "--model", MODEL, "--submission", sub, "--batch-size", 3)
    syntactic = run_zeroshot("--task", "sblimp", "--data", data, "--model", MODEL, "--submission", sub)
    official.validate(data, sub, only_dev=True)
    graded = official.score_lexical(data / "lexical" / "dev" / "gold.csv", sub / "lexical" / "dev.txt")
    assert lexical["accuracy"] == pytest.approx(graded["all"], abs=1e-4)  # the scorer rounds per id to 4 decimals
    assert lexical["subsets"]["in-vocab"]["accuracy"] == pytest.approx(graded["invocab"])
    bands = lexical["breakdowns"]["frequency"]
    assert {k: (v["num_items"], pytest.approx(v["accuracy"])) for k, v in bands.items()} == graded["by_frequency"]
    assert {int(k): (v["num_items"], pytest.approx(v["accuracy"])) for k, v in lexical["breakdowns"]["length"].items()} \
        == {int(k): v for k, v in graded["by_length"].items()}
    graded = official.score_syntactic(data / "syntactic" / "dev" / "gold.csv", sub / "syntactic" / "dev.txt")
    assert syntactic["accuracy"] == pytest.approx(graded["overall"])
    assert {k: (v["num_items"], pytest.approx(v["accuracy"])) for k, v in syntactic["subsets"].items()} == graded["by_type"]
    assert set(syntactic["breakdowns"]["subtype"]) == {"agreement", "order", "island"}

    # The test split has no gold: only the submission is written, and then both splits validate.
    with pytest.raises(InputError, match="the test split's gold is withheld: --submission DIR"):
        run_zeroshot("--task", "swuggy", "--data", data, "--model", MODEL, "--split", "test")
    for task in ("swuggy", "sblimp"):
        result = run_zeroshot("--task", task, "--data", data, "--model", MODEL, "--split", "test", "--submission", sub)
        assert "accuracy" not in result and result["submission"]["num_scores"] == 6
    official.validate(data, sub, only_dev=False)
    dev = dict(line.split() for line in (sub / "lexical" / "dev.txt").read_text().splitlines())
    test = dict(line.split() for line in (sub / "lexical" / "test.txt").read_text().splitlines())
    assert test == {k: v for k, v in dev.items() if k in test}  # the same wavs, the same scores
    with pytest.raises(official.Invalid, match="mismatch in directory"):  # --only-dev, yet test.txt is there
        official.validate(data, sub, only_dev=True)
    (data / "lexical" / "dev" / "extra.wav").write_bytes(b"")
    with pytest.raises(official.Invalid, match="mismatch in filenames"):
        official.validate(data, sub, only_dev=False)
    meta = (sub / "meta.yaml").read_text()
    assert "wavslm" in meta and "(your name)" in meta  # kept across the four runs, for the user to fill in
    with pytest.raises(InputError, match="holds scores made another way: its meta.yaml says"):
        run_zeroshot("--task", "swuggy", "--data", data, "--model", MODEL, "--submission", sub, "--reduction", "sum")
    assert (sub / "lexical" / "dev.txt").read_text() == "".join(f"{k} {v}\n" for k, v in sorted(dev.items()))
    with pytest.raises(InputError, match="files for swuggy and sblimp only"):
        run_zeroshot("--task", "salmon", "--data", data, "--model", MODEL, "--submission", sub)


def test_official_rules_catch_what_the_official_scorer_rejects(tmp_path):
    gold = tmp_path / "gold.csv"
    gold.write_text("id,filename,voice,frequency,word,phones,length,correct\n1,a,v,4.5,dog,d o g,3,1\n1,b,v,,dxg,d x g,3,0\n")
    sub = tmp_path / "dev.txt"
    sub.write_text("a -1.0\nb -2.0\n")
    with pytest.raises(TypeError, match="non-equivalent"):  # a float frequency, as the synthetic suite once wrote
        official.score_lexical(gold, sub)
    gold.write_text(gold.read_text().replace("4.5", "oov"))
    with pytest.raises(ValueError):
        official.score_lexical(gold, sub)
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "b.wav").write_bytes(b"")
    sub.write_text("a\t-1.0\nb -2.0\n")
    with pytest.raises(official.Invalid, match="bad format"):
        official.validate_scores(sub, tmp_path)


# ---- the Hugging Face parquet layouts -----------------------------------------------------------------


def _cell(path):
    """An audio cell as `datasets` stores it; 32-bit float WAV, so the scores equal the pool's exactly."""
    data, sr = sf.read(path, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, data, sr, format="WAV", subtype="FLOAT")
    return {"bytes": buf.getvalue(), "path": path.name}


def _audio_type():
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_speed_sblimp_layout(pool, tmp_path):
    """speed/sBLIMP's columns (its dataset card): id int64, negative, positive, voice, the transcriptions, type, subtype."""
    clips, nll = pool
    rows = [(1, "A", "c0", "c1", "t1", "u"), (1, "B", "c2", "c3", "t1", "u"), (2, "A", "c4", "c5", "t2", "v"),
            (3, "A", "c5", "c2", "t2", "w")]
    table = pa.table({
        "id": pa.array([r[0] for r in rows], pa.int64()),
        "negative": pa.array([_cell(clips[r[3]]) for r in rows], _audio_type()),
        "positive": pa.array([_cell(clips[r[2]]) for r in rows], _audio_type()),
        "voice": [r[1] for r in rows], "negative_transcription": ["x"] * 4, "positive_transcription": ["y"] * 4,
        "type": [r[4] for r in rows], "subtype": [r[5] for r in rows]})
    file = tmp_path / "data" / "train-00000-of-00001.parquet"
    file.parent.mkdir()
    pq.write_table(table, file)
    m = nll["mean"]
    per_id = {1: (outcome(m, "c0", "c1") + outcome(m, "c2", "c3")) / 2, 2: outcome(m, "c4", "c5"),
              3: outcome(m, "c5", "c2")}
    result = run_zeroshot("--task", "sblimp", "--data", tmp_path, "--model", MODEL)
    assert result["data"]["layout"] == "Hugging Face parquet" and result["num_pairs"] == 4
    assert result["accuracy"] == pytest.approx(sum(per_id.values()) / 3)  # voices of id 1 averaged first
    assert result["subsets"]["t2"]["accuracy"] == pytest.approx((per_id[2] + per_id[3]) / 2)
    assert result["breakdowns"]["subtype"]["u"]["accuracy"] == pytest.approx(per_id[1])


def test_speed_swuggy_and_tstorycloze_layouts(pool, tmp_path):
    clips, nll = pool
    m = nll["mean"]
    rows = [("c0", "c1"), ("c3", "c2"), ("c4", "c5")]
    for name, extra in (("sWUGGY", {"id": ["a", "b", "c"], "voice": ["v1", "v1", "v2"], "frequency": [3, 0, 120]}),
                        ("tStoryCloze", {})):
        file = tmp_path / name / "data" / "train-00000-of-00001.parquet"
        file.parent.mkdir(parents=True)
        pq.write_table(pa.table({"positive": pa.array([_cell(clips[p]) for p, _ in rows], _audio_type()),
                                 "negative": pa.array([_cell(clips[n]) for _, n in rows], _audio_type()), **extra}),
                       file, row_group_size=2)
    outcomes = [outcome(m, p, n) for p, n in rows]
    swuggy = run_zeroshot("--task", "swuggy", "--data", tmp_path / "sWUGGY", "--model", MODEL)
    assert swuggy["accuracy"] == pytest.approx(sum(outcomes) / 3)
    assert swuggy["subsets"]["in-vocab"]["accuracy"] == pytest.approx((outcomes[0] + outcomes[2]) / 2)
    assert swuggy["breakdowns"]["frequency"]["1-5"]["num_items"] == 1
    tsc = run_zeroshot("--task", "tsc", "--data", tmp_path / "tStoryCloze", "--model", MODEL)
    assert tsc["accuracy"] == pytest.approx(sum(outcomes) / 3) and tsc["averaging"] == "tSC: mean over stories"
    assert tsc["split"] is None and tsc["data"]["layout"] == "Hugging Face parquet"
    both = run_zeroshot("--task", "tsc", "--data", tmp_path, "--model", MODEL)  # sWUGGY's and tSC's files: two subsets
    assert both["accuracy"] is None and "give one of them as --data" in both["warnings"][0]


def test_speed_swuggy_columns_read_by_its_users(pool, tmp_path):
    """The speed/sWUGGY columns that code loading it reads (potsawee/blueberry-eval, sWUGGY/inference_speech_0shot.py):
    `id`, `positive`/`negative` audio, `positive_word`/`negative_word`, one `train` split. No frequency column:
    there is no in-vocabulary subset, and the item is the id."""
    clips, nll = pool
    m = nll["mean"]
    rows = [(7, "c0", "c1", "brick", "brack"), (8, "c3", "c2", "stone", "stoun"), (8, "c4", "c5", "stone", "stoun")]
    file = tmp_path / "data" / "train-00000-of-00001.parquet"
    file.parent.mkdir()
    pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                             "positive": pa.array([_cell(clips[r[1]]) for r in rows], _audio_type()),
                             "negative": pa.array([_cell(clips[r[2]]) for r in rows], _audio_type()),
                             "positive_word": [r[3] for r in rows], "negative_word": [r[4] for r in rows]}), file)
    result = run_zeroshot("--task", "swuggy", "--data", tmp_path, "--model", MODEL)
    by_id = {7: outcome(m, "c0", "c1"), 8: (outcome(m, "c3", "c2") + outcome(m, "c4", "c5")) / 2}
    assert result["num_pairs"] == 3 and result["accuracy"] == pytest.approx(sum(by_id.values()) / 2)
    assert "in-vocab" not in result.get("subsets", {})


def test_salmon_parquet_layout_skips_the_all_configs(pool, tmp_path):
    """slprl/SALMon: <part>/train-00000-of-00001.parquet with task, ind, positive_audio, negative_audio."""
    clips, nll = pool
    m = nll["mean"]
    parts = {"speaker_consistency": [("c0", "c1"), ("c2", "c3")], "sentiment_alignment": [("c5", "c4")]}
    for part, rows in parts.items():
        file = tmp_path / part / "train-00000-of-00001.parquet"
        file.parent.mkdir()
        pq.write_table(pa.table({"task": [part] * len(rows), "ind": list(range(len(rows))),
                                 "positive_audio": pa.array([_cell(clips[p]) for p, _ in rows], _audio_type()),
                                 "negative_audio": pa.array([_cell(clips[n]) for _, n in rows], _audio_type())}), file)
    (tmp_path / "all" / "train").mkdir(parents=True)  # the parquet conversion's `all` config: every part again
    shutil.copy(tmp_path / "speaker_consistency" / "train-00000-of-00001.parquet", tmp_path / "all" / "train" / "0000.parquet")
    result = run_zeroshot("--task", "salmon", "--data", tmp_path, "--model", MODEL)
    per_part = {k: sum(outcome(m, p, n) for p, n in v) / len(v) for k, v in parts.items()}
    assert result["num_pairs"] == 3  # the `all` copy was not scored again
    assert {k: v["accuracy"] for k, v in result["subsets"].items()} == pytest.approx(per_part)
    assert list(result["subsets"]) == ["speaker_consistency", "sentiment_alignment"]  # the paper's order
    assert result["accuracy"] == pytest.approx(sum(per_part.values()) / 2)
    assert "2 of SALMon's 8 parts found" in result["warnings"][0]
    # Two shards of one part without `ind` columns: four items, not two.
    shard = tmp_path / "noind" / "rir_consistency"
    shard.mkdir(parents=True)
    for k in range(2):
        pq.write_table(pa.table({"positive_audio": pa.array([_cell(clips["c0"]), _cell(clips["c1"])], _audio_type()),
                                 "negative_audio": pa.array([_cell(clips["c2"]), _cell(clips["c3"])], _audio_type())}),
                       shard / f"train-0000{k}-of-00002.parquet")
    assert len({p.item for p in load_dataset("salmon", tmp_path / "noind").pairs}) == 4
    # Files of two splits are not read as one.
    shutil.copy(shard / "train-00000-of-00002.parquet", shard / "test-00000-of-00001.parquet")
    with pytest.raises(InputError, match="holds parquet files of several splits \\(test, train\\)"):
        load_dataset("salmon", tmp_path / "noind")
    # One `all` config given on purpose is read, its parts told apart by the `task` column.
    assert {p.meta["part"] for p in load_dataset("salmon", tmp_path / "all").pairs} == {"speaker_consistency"}
    (tmp_path / "only" / "all_consistency").mkdir(parents=True)
    shutil.copy(tmp_path / "all" / "train" / "0000.parquet", tmp_path / "only" / "all_consistency" / "train.parquet")
    with pytest.raises(InputError, match="holds only SALMon's all\\* configs"):
        load_dataset("salmon", tmp_path / "only")


def test_hub_id_resolved_from_the_local_cache_with_the_network_off(pool, tmp_path):
    """`--data speed/tStoryCloze` read from a Hugging Face cache (the layout huggingface_hub writes) by
    the installed command, offline: the network namespace cut where `unshare` may, the Hub told offline."""
    clips, nll = pool
    snapshot = tmp_path / "hub" / "datasets--speed--tStoryCloze" / "snapshots" / "0123abcd"
    (snapshot / "data").mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    rows = [("c0", "c1"), ("c3", "c2")]
    pq.write_table(pa.table({"positive": pa.array([_cell(clips[p]) for p, _ in rows], _audio_type()),
                             "negative": pa.array([_cell(clips[n]) for _, n in rows], _audio_type())}),
                   snapshot / "data" / "train-00000-of-00001.parquet")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    offline = ["unshare", "-rn"] if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0 else []
    wavslm = [str(Path(sys.executable).parent / "wavslm")]  # the installed command
    out = tmp_path / "tsc.json"
    done = subprocess.run([*offline, *wavslm, "eval", "zeroshot", "--task", "tsc", "--data", "speed/tStoryCloze",
                           "--model", str(MODEL), "-o", str(out)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    m = nll["mean"]
    assert result["accuracy"] == pytest.approx(sum(outcome(m, p, n) for p, n in rows) / 2)
    assert result["data"]["source"] == "speed/tStoryCloze" and result["data"]["folder"] == str(snapshot)
    done = subprocess.run([*offline, *wavslm, "eval", "zeroshot", "--task", "sblimp", "--data", "speed/sBLIMP",
                           "--model", str(MODEL)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "dataset 'speed/sBLIMP' is neither a local path nor in the local Hugging Face cache" in done.stderr


# ---- the first chunk, scored after silence ------------------------------------------------------------


def test_score_first_chunk_scores_every_token_after_silence(lm, pool):
    """With k chunks of silence, a clip's NLL is the mean over all of its own tokens, its first chunk
    predicted from the silence: the same as the LM run over the silence + clip tokens by hand."""
    clips, nll = pool
    C, context = lm.toks_per_step, context_chunks(lm, 0.1)
    assert context == 2 and context_chunks(lm, 0.16) == 2 and context_chunks(lm, 0) == 0
    with pytest.raises(InputError, match="0 seconds or more"):
        context_chunks(lm, -1)
    from wavslm import load_audio

    expected = {}
    lengths = []
    for name in ("c0", "c4"):
        sig = load_audio(clips[name], sample_rate=16000, mono=True)[0]
        toks = lm.codec.encode(torch.cat([torch.zeros(1, context * C * 320), sig], 1))
        with torch.inference_mode():
            logits, _ = lm(lm.codec.dequantize(toks))
        losses = F.cross_entropy(logits[0, :-C], toks[0, C:], reduction="none")
        expected[name] = float(losses[context * C - C :].mean())  # the targets from the clip's first token on
        assert toks.shape[1] - context * C == len(lm.codec.encode(sig)[0])
        lengths.append(toks.shape[1])
    assert lengths[0] % C == lengths[1] % C  # so batch_size 2 left-pads one row: the span mask meets padding
    for batch_size in (1, 2):
        got = score_clips(lm, [Clip(clips["c0"]), Clip(clips["c4"])], "mean", batch_size, context)
        assert got[Clip(clips["c0"])] == pytest.approx(expected["c0"], abs=1e-5)
        assert got[Clip(clips["c4"])] == pytest.approx(expected["c4"], abs=1e-5)
    assert expected["c0"] != pytest.approx(nll["mean"]["c0"], abs=1e-3)  # the default scores another span
