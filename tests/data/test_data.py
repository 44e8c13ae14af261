"""Manifests, audio segments, token shards and tokenization on the real speech clips and the tiny codec."""

import json
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from wavslm import Codec, InputError, load_audio
from wavslm.codec import CodecConfig
from wavslm.config import from_dict
from wavslm.data import (
    AudioSegments,
    ShardWriter,
    TokenCrops,
    TokenShards,
    build_manifest,
    collate_segments,
    collate_tokens,
    encode_long,
    merge_parts,
    merge_shards,
    read_manifest,
    stable_randint,
    tokenize_manifest,
)


@pytest.fixture
def codec(reference):
    return Codec.from_pretrained(reference / "codec_tiny_causal")


@pytest.fixture
def clips(speech, tmp_path):
    """A folder with the shortest real clips (four at 16 kHz, one at 48 kHz) and its manifest."""
    folder = tmp_path / "clips"
    folder.mkdir()
    by_length = lambda paths: sorted(paths, key=lambda p: sf.info(p).frames / sf.info(p).samplerate)  # noqa: E731
    chosen = by_length((speech / "librispeech-dev-clean" / "84").glob("*.wav"))[:4]
    chosen += by_length((speech / "voicebank-noisy-testset").glob("*.wav"))[:1]
    for path in chosen:
        shutil.copy(path, folder / path.name)
    build_manifest(folder, tmp_path / "clips.jsonl", progress=False)
    return read_manifest(tmp_path / "clips.jsonl")


# ---- manifests --------------------------------------------------------------------------------------


def test_manifest_of_the_speech_folder(speech, tmp_path):
    out = tmp_path / "m.jsonl"
    summary = build_manifest(speech, out, progress=False)
    entries = read_manifest(out)
    assert summary.num_files == len(entries) == 7 and summary.num_unreadable == 0
    paths = [e["path"] for e in entries]
    assert paths == sorted(paths, key=lambda p: p.split("/")) and len(set(paths)) == 7
    for e in entries:
        info = sf.info(e["path"])
        assert e["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-6)
        assert e["sample_rate"] == info.samplerate
    assert abs(summary.total_duration - sum(e["duration"] for e in entries)) < 1e-3
    build_manifest(speech, tmp_path / "again.jsonl", num_workers=1, progress=False)
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()  # deterministic

    # Duration limits, and relative paths resolved against the manifest's folder.
    short = build_manifest(speech, tmp_path / "sub" / "short.jsonl", max_duration=3.0, relative_paths=True,
                           progress=False)
    assert short.num_files + short.num_filtered == 7 and 0 < short.num_files < 7
    raw = [json.loads(line) for line in (tmp_path / "sub" / "short.jsonl").read_text().splitlines()]
    assert all(not r["path"].startswith("/") and r["duration"] <= 3.0 for r in raw)
    assert all(sf.info(e["path"]).frames for e in read_manifest(tmp_path / "sub" / "short.jsonl"))
    assert len(read_manifest(out, min_duration=3.0)) == 7 - short.num_files


def test_corrupt_files_are_reported_not_fatal(speech, tmp_path):
    folder = tmp_path / "audio"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(next((speech / "voicebank-noisy-testset").glob("*.wav")), folder / "nested" / "good.WAV")
    (folder / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage")
    (folder / "empty.flac").write_bytes(b"")
    (folder / "notes.txt").write_text("not audio")
    summary = build_manifest(folder, tmp_path / "m.jsonl", progress=False)
    assert (summary.num_files, summary.num_unreadable) == (1, 2)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in summary.unreadable) == ["bad.wav", "empty.flac"]
    assert "2 unreadable files" in summary.describe()
    assert read_manifest(tmp_path / "m.jsonl")[0]["path"].endswith("nested/good.WAV")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"path": "a.wav", "duration": 1.0', r"line 2 is not valid JSON"),
        ('{"duration": 1.0}', r"line 2 has no \"path\""),
        ('{"path": "a.wav"}', r"line 2 has no \"duration\""),
        ('{"path": "a.wav", "duration": "long"}', r"line 2: \"duration\" must be a non-negative number"),
        ("[1, 2]", r"line 2 is not a JSON object"),
    ],
)
def test_malformed_manifest_lines(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"path": "ok.wav", "duration": 2.0}\n' + line + "\n")
    with pytest.raises(InputError, match=rf"manifest '.*bad\.jsonl', {message}"):
        read_manifest(path)
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "missing.jsonl")


# ---- audio segments ---------------------------------------------------------------------------------


def test_segments_are_deterministic_and_change_with_the_epoch(clips):
    a = AudioSegments(clips, segment_seconds=1.0, seed=3)
    b = AudioSegments(clips, segment_seconds=1.0, seed=3)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["sig"].shape == (16000,) and x["sig"].dtype == torch.float32 and x["length"] == 16000
        assert torch.equal(x["sig"], y["sig"]) and x["index"] == i
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["sig"], b[i]["sig"]) for i in range(len(a)))
    assert torch.equal(b[2]["sig"], a.get(2, epoch=1)["sig"])
    assert any(a.offset(i, 0, 10**6) != AudioSegments(clips, 1.0, seed=4).offset(i, 0, 10**6) for i in range(5))

    # The crop is exactly that span of the (resampled, mono) file, read in place or through load_audio.
    for i in range(len(a)):
        whole, _ = load_audio(clips[i]["path"], 16000, mono=True)
        start = a.offset(i, 0, whole.shape[1])
        assert torch.equal(a[i]["sig"], whole[0, start : start + 16000])
    assert stable_randint(1000, 0, 1, 2) == stable_randint(1000, 0, 1, 2) != stable_randint(1000, 0, 2, 1)


def test_short_files_are_padded_and_whole_files_collate(clips):
    long = AudioSegments(clips, segment_seconds=60.0, random_crop=False)
    item = long[0]
    assert item["sig"].shape == (960000,) and 0 < item["length"] < 960000
    assert not item["sig"][item["length"] :].any()
    batch = collate_segments([long[0], long[1]])
    assert batch["sig"].shape == (2, 960000) and batch["length"].tolist() == [long[0]["length"], long[1]["length"]]
    whole = AudioSegments(clips, segment_seconds=None)
    batch = collate_segments([whole[0], whole[1]])
    assert batch["sig"].shape == (2, max(batch["length"].tolist())) and batch["index"].tolist() == [0, 1]


# ---- token shards -----------------------------------------------------------------------------------


def test_shards_round_trip_resume_and_torn_tail(tmp_path):
    gen = torch.Generator().manual_seed(0)
    utts = [torch.randint(0, 4096, (n,), generator=gen) for n in (10, 0, 7, 33)]
    with ShardWriter(tmp_path / "s", 4096, codec="tiny", frame_rate=50.0) as w:
        for i, u in enumerate(utts[:2]):
            w.append(u, f"u{i}.wav", item=i)
    with pytest.raises(InputError, match="still being written"):
        w2 = ShardWriter(tmp_path / "s", 4096)
        TokenShards(tmp_path / "s")
    w2.append(utts[2], "u2.wav")  # reopened: appends after the first two
    w2.close()
    shards = TokenShards(tmp_path / "s")
    assert len(shards) == 3 and shards.total_tokens == 17 and shards.dtype == np.uint16
    assert all(torch.equal(shards[i], utts[i]) and shards[i].dtype == torch.int64 for i in range(3))
    assert shards.entry(2)["path"] == "u2.wav" and shards.meta["codec"] == "tiny" and shards.frame_rate == 50.0

    # A kill in the middle of the last utterance: its tokens are partly there, its index line not at all
    # (or torn); reopening drops it and the rewrite gives the same result as a clean run.
    with ShardWriter(tmp_path / "s", 4096) as w:
        w.append(utts[3], "u3.wav")
    tokens = tmp_path / "s" / "tokens.bin"
    with open(tokens, "r+b") as f:
        f.truncate(tokens.stat().st_size - 5)  # 33 tokens -> 30.5
    with open(tmp_path / "s" / "index.jsonl", "ab") as f:
        f.write(b'{"path": "torn')
    w = ShardWriter(tmp_path / "s", 4096)
    assert len(w) == 3 and tokens.stat().st_size == 17 * 2
    w.append(utts[3], "u3.wav")
    w.close()
    shards = TokenShards(tmp_path / "s")
    assert [shards[i].tolist() for i in range(4)] == [u.tolist() for u in utts]
    assert shards.lengths.tolist() == [10, 0, 7, 33] and shards.offsets.tolist() == [0, 10, 10, 17, 50]
    copy = pickle.loads(pickle.dumps(shards))  # as DataLoader workers get it: reopened, not copied
    assert copy._tokens is None and torch.equal(copy[3], utts[3])

    with pytest.raises(InputError, match="vocab_size 4096, not 100000"):
        ShardWriter(tmp_path / "s", 100000)
    with ShardWriter(tmp_path / "s", 4096) as w, pytest.raises(InputError, match=r"must lie in \[0, 4096\)"):
        w.append(torch.tensor([4096]), "bad.wav")


def test_dtype_follows_the_vocabulary(tmp_path):
    for vocab, dtype in ((2**16, np.uint16), (2**16 + 1, np.int32)):
        with ShardWriter(tmp_path / str(vocab), vocab) as w:
            w.append(torch.tensor([0, vocab - 1, 5]), "x.wav")
        shards = TokenShards(tmp_path / str(vocab))
        assert shards.dtype == dtype and shards.meta["dtype"] == np.dtype(dtype).name
        assert (tmp_path / str(vocab) / "tokens.bin").stat().st_size == 3 * np.dtype(dtype).itemsize
        assert shards[0].tolist() == [0, vocab - 1, 5]


def test_merge_orders_by_manifest_item(tmp_path):
    for rank in (0, 1):
        with ShardWriter(tmp_path / f"p{rank}", 64) as w:
            for item in range(rank, 5, 2):
                w.append(torch.full((item + 1,), item), f"{item}.wav", item=item)
    merged = merge_shards([tmp_path / "p0", tmp_path / "p1"], tmp_path / "m")
    assert [merged[i].tolist() for i in range(5)] == [[i] * (i + 1) for i in range(5)]
    with ShardWriter(tmp_path / "other", 128) as w:
        w.append(torch.tensor([1]), "x.wav")
    with pytest.raises(InputError, match="vocab_size differ"):
        merge_shards([tmp_path / "p0", tmp_path / "other"], tmp_path / "m2")


def test_token_crops_are_aligned_and_deterministic(tmp_path):
    lengths = [3, 4, 9, 40, 100, 17]
    with ShardWriter(tmp_path / "s", 4096) as w:
        for n in lengths:
            w.append(torch.arange(n), f"{n}.wav")
    shards = TokenShards(tmp_path / "s")
    crops = TokenCrops(shards, crop_tokens=12, seed=1)
    assert len(crops) == 5 and crops.utterances.tolist() == [1, 2, 3, 4, 5]  # the 3-token one is left out
    again = TokenCrops(tmp_path / "s", crop_tokens=12, seed=1)
    starts = set()
    for epoch in range(6):
        crops.set_epoch(epoch)
        for i in range(len(crops)):
            item, n = crops[i], lengths[crops[i]["index"]]
            assert torch.equal(item["toks"], again.get(i, epoch)["toks"]) and item["toks"].shape == (12,)
            first = int(item["toks"][0])
            assert first % 4 == 0  # tokens are arange, so the first one is the offset
            usable = n // 4 * 4
            assert item["length"] == min(12, usable)
            assert item["toks"][: item["length"]].tolist() == list(range(first, first + item["length"]))
            assert not item["toks"][item["length"] :].any()
            if n == 100:
                starts.add(first)
    assert len(starts) > 1  # epochs draw different offsets
    batch = collate_tokens([crops[0], crops[1]])
    assert batch["toks"].shape == (2, 12) and batch["length"].tolist() == [4, 8]
    with pytest.raises(InputError, match="multiple of align"):
        TokenCrops(shards, crop_tokens=10)


# ---- tokenization -----------------------------------------------------------------------------------


def test_tokenize_equals_codec_encode(clips, codec, tmp_path):
    summary = tokenize_manifest(clips, tmp_path / "tok", codec, codec_ref="tiny", progress=False)
    assert summary.written == 5 and not summary.skipped and summary.merged == tmp_path / "tok"
    shards = TokenShards(tmp_path / "tok")
    assert len(shards) == 5 and shards.vocab_size == 64 and shards.frame_rate == 50.0
    for i, entry in enumerate(clips):
        sig, _ = load_audio(entry["path"], 16000, mono=True)
        assert torch.equal(shards[i], codec.encode(sig)[0]), entry["path"]
        assert shards.entry(i)["path"] == entry["path"]
    # Small windows (one chunk; two chunks) give the same tokens, a partial last chunk included.
    sig, _ = load_audio(clips[0]["path"], 16000, mono=True)
    assert sig.shape[1] % 1280 and torch.equal(encode_long(codec, sig, window_seconds=0.16), shards[0])
    assert torch.equal(encode_long(codec, sig[:, :9000], window_seconds=0.08), codec.encode(sig[:, :9000])[0])


def test_tokenize_with_reading_workers_writes_the_same_shards(clips, codec, tmp_path):
    """Audio read and resampled by 2 worker processes ahead of the encoder: the same tokens, order and
    skips as reading in the loop (an unreadable file among them)."""
    entries = [*clips[:2], {"path": str(tmp_path / "missing.wav"), "duration": 1.0}, *clips[2:]]
    runs = {}
    for workers in (0, 2):
        summary = tokenize_manifest(entries, tmp_path / f"w{workers}", codec, codec_ref="tiny", progress=False,
                                    workers=workers)
        shards = TokenShards(tmp_path / f"w{workers}")
        runs[workers] = ([shards[i] for i in range(len(shards))], [shards.entry(i)["path"] for i in range(len(shards))],
                         summary.skipped)
    assert len(runs[0][0]) == 5 and len(runs[0][2]) == 1 and "missing.wav" in runs[0][2][0][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[2][0], strict=True))
    assert runs[0][1:] == runs[2][1:]


def test_tokenize_resumes_without_writing_twice(clips, codec, tmp_path, monkeypatch):
    import wavslm.data.tokenize as tok

    class Killed(BaseException):
        pass

    calls, kill_at = [], [3]
    real = tok.encode_long

    def counting(codec, sig, window_seconds):
        calls.append(sig.shape[1])
        if len(calls) == kill_at[0]:
            raise Killed  # killed while encoding the third utterance
        return real(codec, sig, window_seconds)

    monkeypatch.setattr(tok, "encode_long", counting)
    with pytest.raises(Killed):
        tokenize_manifest(clips, tmp_path / "tok", codec, progress=False)
    assert not (tmp_path / "tok" / "meta.json").exists()
    calls.clear()
    kill_at[0] = None
    summary = tokenize_manifest(clips, tmp_path / "tok", codec, progress=False)
    assert (summary.done_before, summary.written, len(calls)) == (2, 3, 3)
    monkeypatch.setattr(tok, "encode_long", real)
    tokenize_manifest(clips, tmp_path / "ref", codec, progress=False)
    for name in ("tokens.bin", "offsets.npy", "index.jsonl"):
        assert (tmp_path / "tok" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    again = tokenize_manifest(clips, tmp_path / "tok", codec, progress=False)  # all done: nothing to encode
    assert (again.done_before, again.written) == (5, 0)


def test_a_second_tokenize_into_the_same_folder_stops_at_once(clips, reference, tmp_path):
    import subprocess
    import sys

    from wavslm.io import output_lock

    manifest, out = tmp_path / "clips.jsonl", tmp_path / "tok"
    command = [sys.executable, "-m", "wavslm.cli", "tokenize", str(manifest), "-o", str(out), "--codec",
               str(reference / "codec_tiny_causal"), "--device", "cpu"]
    with output_lock(out / "part-000"):  # this process is the first writer
        second = subprocess.run(command, capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith("wavslm tokenize: error: ") and second.stderr.count("\n") == 1, second.stderr
        assert "is being written by another process" in second.stderr
        assert sorted(p.name for p in out.iterdir()) == [".part-000.lock"]  # the second wrote nothing
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert len(TokenShards(out)) == 5 and not list(out.glob(".*.lock"))


def test_two_ranks_merged_equal_one_rank_and_bad_files_are_skipped(clips, codec, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF----WAVEfmt nonsense")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(800, dtype=np.float32), 16000)
    entries = clips[:2] + [{"path": str(bad), "duration": 1.0}] + clips[2:] + [{"path": str(short), "duration": 0.05}]

    single = tokenize_manifest(entries, tmp_path / "one", codec, progress=False)
    assert single.written == 5 and len(single.skipped) == 2
    reasons = dict(single.skipped)
    assert "not a readable WAV/FLAC/OGG" in reasons[str(bad)] and "shorter than one codec chunk" in reasons[str(short)]

    r0 = tokenize_manifest(entries, tmp_path / "two", codec, rank=0, world_size=2, progress=False)
    assert r0.merged is None and r0.assigned == 4  # rank 1 has not finished yet
    with pytest.raises(InputError, match="part-001 are not complete"):
        merge_parts(tmp_path / "two", 2)
    r1 = tokenize_manifest(entries, tmp_path / "two", codec, rank=1, world_size=2, progress=False)
    assert r1.merged is None and len(r0.skipped) + len(r1.skipped) == 2
    merged = merge_parts(tmp_path / "two", 2)
    assert len(merged) == 5 and merged.meta["num_skipped"] == 2
    for name in ("tokens.bin", "offsets.npy", "index.jsonl", "skipped.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    with pytest.raises(InputError, match="written by rank 1 of 2, not rank 1 of 3"):
        tokenize_manifest(entries, tmp_path / "two", codec, rank=1, world_size=3, progress=False)
    with pytest.raises(InputError, match="from another manifest: item 1 is"):
        tokenize_manifest(entries[::-1], tmp_path / "two", codec, rank=1, world_size=2, progress=False)
    assert len(merge_parts(tmp_path / "two", 2)) == 5  # the refusals left the parts complete and untouched


def test_non_causal_codec_encodes_offline(clips, reference, tmp_path):
    config = json.loads((reference / "codec_tiny_causal" / "config.json").read_text())
    for part in ("encoder_config", "compressor_config", "decompressor_config", "decoder_config"):
        config[part]["causal"] = False
    offline = Codec(from_dict(CodecConfig, config, "test")).eval()
    tokenize_manifest(clips[:2], tmp_path / "tok", offline, progress=False)
    shards = TokenShards(tmp_path / "tok")
    for i in range(2):
        sig, _ = load_audio(clips[i]["path"], 16000, mono=True)
        assert torch.equal(shards[i], offline.encode(sig)[0])
