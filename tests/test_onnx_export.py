"""`wavslm export onnx`: the codec's graphs and the LM's step, run by ONNX Runtime, against PyTorch."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REFERENCE, SPEECH, chunks_of, open_together

from wavslm import WavSLM
from wavslm.cli import main
from wavslm.codec import Codec

ort = pytest.importorskip("onnxruntime")


def _export(ref, folder) -> dict:
    args = ["export", "onnx", "-o", str(folder)] + ([str(ref)] if ref is not None else [])
    assert main(args) == 0
    return {path.stem: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for path in folder.glob("*.onnx")}


def _speech(seconds: float, batch: int) -> torch.Tensor:
    """`batch` real utterances cut to `seconds` (16 kHz)."""
    clips = [c for c in sorted(SPEECH.glob("librispeech-dev-clean/**/*.wav")) if sf.info(c).duration >= seconds]
    return torch.stack([torch.from_numpy(sf.read(c, dtype="float32")[0][: round(seconds * 16000)])
                        for c in clips[:batch]])


@pytest.fixture(scope="module")
def fixture_graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / "wavslm"
    return folder, _export(REFERENCE / "wavslm_tiny", folder)


@pytest.mark.parametrize("batch,seconds", [(1, 0.08), (1, 0.19), (2, 1.0), (3, 2.0)])
def test_fixture_codec_graphs_equal_pytorch(fixture_graphs, batch, seconds):
    """Any batch and length, also one chunk and lengths that end mid-chunk: the same tokens, and the
    decoded audio within 1e-4."""
    _, graphs = fixture_graphs
    codec = Codec.from_pretrained(REFERENCE / "codec_tiny_causal")
    sig = _speech(seconds, batch)
    toks = codec.encode(sig)
    (onnx_toks,) = graphs["codec_encode"].run(None, {"sig": sig.numpy()})
    assert onnx_toks.dtype == np.int64 and np.array_equal(onnx_toks, toks.numpy())
    (audio,) = graphs["codec_decode"].run(None, {"toks": toks.numpy()})
    expected = codec.decode(toks).numpy()
    assert audio.shape == expected.shape and np.abs(audio - expected).max() < 1e-4


def test_export_records_the_codec_and_the_versions(fixture_graphs):
    folder, _ = fixture_graphs
    meta = json.loads((folder / "export.json").read_text())
    codec = Codec.from_pretrained(REFERENCE / "codec_tiny_causal")
    assert meta["codec"]["vocab_size"] == codec.vocab_size and meta["codec"]["frame_rate"] == codec.frame_rate
    assert meta["opset"] == 18 and {"torch", "onnx", "onnxscript", "wavslm"} <= set(meta["versions"])
    assert meta["graphs"]["codec_encode"] == {"file": "codec_encode.onnx", "inputs": ["sig"], "outputs": ["toks"]}
    assert meta["lm"]["chunk"] == 4 and meta["lm"]["window"] == 16
    assert sorted(p.name for p in folder.iterdir()) == [
        "codec_decode.onnx", "codec_encode.onnx", "dequantize_start.onnx", "dequantize_step.onnx", "export.json",
        "lm_prefill.onnx", "lm_step.onnx", "synthesize_start.onnx", "synthesize_step.onnx"]


def _run_steps(session, qfeats, pos, keys, values, chunk):
    outs = []
    for t in range(0, qfeats.shape[1], chunk):
        logits, keys, values = session.run(None, {"qfeats": qfeats[:, t : t + chunk].numpy(), "pos": pos,
                                                  "keys": keys, "values": values})
        pos = pos + chunk
        outs.append(logits)
    return np.concatenate(outs, axis=1), pos, keys, values


def test_lm_step_graph_continues_like_pytorch_past_the_window(fixture_graphs):
    """30 chunks, one at a time through the step graph (the window is 4 chunks), give the logits of
    PyTorch's LM over the whole sequence; and a batch whose rows stand at different positions gives each
    row what it gets alone."""
    from wavslm.onnx_export import LMStep

    _, graphs = fixture_graphs
    lm = WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")
    codec, step = lm.require_codec(), LMStep(lm)
    toks = torch.randint(0, codec.vocab_size, (2, 120), generator=torch.Generator().manual_seed(0))
    qfeats = codec.dequantize(toks)
    with torch.no_grad():
        expected = lm(qfeats)[0].numpy()
    pos, keys, values = (t.numpy() for t in step.empty_state(2))
    logits, *_ = _run_steps(graphs["lm_step"], qfeats, pos, keys, values, 4)
    assert np.abs(logits - expected).max() < 1e-4

    # row 0 reads 3 chunks alone, then steps beside row 1, which starts from nothing
    pos, keys, values = (t.numpy() for t in step.empty_state(1))
    _, pos, keys, values = _run_steps(graphs["lm_step"], qfeats[:1, :12], pos, keys, values, 4)
    pos1, keys1, values1 = (t.numpy() for t in step.empty_state(1))
    both = (np.concatenate([pos, pos1]), np.concatenate([keys, keys1], axis=1), np.concatenate([values, values1], axis=1))
    rows = torch.stack([qfeats[0, 12:72], qfeats[1, :60]])
    logits, *_ = _run_steps(graphs["lm_step"], rows, *both, 4)
    assert np.abs(logits[0] - expected[0, 12:72]).max() < 1e-4
    assert np.abs(logits[1] - expected[1, :60]).max() < 1e-4


@pytest.mark.parametrize("chunks", [1, 3, 12])
def test_prefill_graph_reads_a_prompt_as_the_step_graph_does_chunk_by_chunk(fixture_graphs, chunks):
    """`lm_prefill` on 1, 3 and 12 chunks (the window is 4): the last chunk's logits and the key/value
    windows that `lm_step` reaches one chunk at a time, and `lm_step` continues from them alike."""
    from wavslm.onnx_export import LMStep

    _, graphs = fixture_graphs
    lm = WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")
    codec = lm.require_codec()
    qfeats = codec.dequantize(torch.randint(0, codec.vocab_size, (2, 4 * chunks + 4), generator=torch.Generator().manual_seed(2)))
    prompt, then = qfeats[:, : 4 * chunks], qfeats[:, 4 * chunks :]
    logits, pos, keys, values = _run_steps(graphs["lm_step"], prompt, *(t.numpy() for t in LMStep(lm).empty_state(2)), 4)
    got, got_keys, got_values = graphs["lm_prefill"].run(None, {"qfeats": prompt.numpy()})
    assert np.abs(got - logits[:, -4:]).max() < 1e-4
    assert np.abs(got_keys - keys).max() < 1e-4 and np.abs(got_values - values).max() < 1e-4
    after, *_ = _run_steps(graphs["lm_step"], then, pos, got_keys, got_values, 4)
    expected, *_ = _run_steps(graphs["lm_step"], then, pos, keys, values, 4)
    assert np.abs(after - expected).max() < 1e-4


def test_int8_lm_step_stays_near_float32_and_generates(fixture_graphs, tmp_path):
    """`quantize_graphs` (what `export onnx --quantize int8` runs): the LM step in ONNX Runtime's dynamic
    int8, recorded in export.json; its logits over 30 chunks stay near the float32 graph's (as PyTorch's
    int8 stays near its float32: tests/test_bench.py) and generation runs on it. A second call is refused."""
    import shutil

    import onnx

    from wavslm.errors import InputError
    from wavslm.onnx_export import LMStep, quantize_graphs
    from wavslm.onnx_runtime import OnnxWavSLM

    folder, graphs = fixture_graphs
    shutil.copytree(folder, tmp_path / "int8")
    quantize_graphs(tmp_path / "int8")
    meta = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert meta["quantize"]["graphs"] == ["lm_step", "lm_prefill"] and meta["quantize"]["weights"] == "int8"
    assert "MatMulInteger" in {node.op_type for node in onnx.load(tmp_path / "int8" / "lm_step.onnx").graph.node}
    lm = WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")
    codec, step = lm.require_codec(), LMStep(lm)
    qfeats = codec.dequantize(torch.randint(0, codec.vocab_size, (2, 120), generator=torch.Generator().manual_seed(0)))
    state = [t.numpy() for t in step.empty_state(2)]
    exact, *_ = _run_steps(graphs["lm_step"], qfeats, *state, 4)
    int8 = ort.InferenceSession(str(tmp_path / "int8" / "lm_step.onnx"), providers=["CPUExecutionProvider"])
    got, *_ = _run_steps(int8, qfeats, *state, 4)
    assert np.abs(got - exact).max() <= 0.2
    assert (got.argmax(-1) == exact.argmax(-1)).mean() >= 0.9
    model = OnnxWavSLM(tmp_path / "int8")
    assert model.quantize == "int8"
    toks, audio = model.generate([torch.randint(0, 64, (24,), generator=torch.Generator().manual_seed(1))], 5, top_k=1)
    assert toks.shape == (1, 20) and audio.shape[1] == 5 * meta["synthesize"]["samples_per_chunk"]
    with pytest.raises(InputError, match="quantised already"):
        quantize_graphs(tmp_path / "int8")


def test_codec_step_graphs_continue_the_codecs_streams(fixture_graphs):
    """Chunk after chunk through the start graph then the step graph: the features of `Codec.dequantize`
    and the audio of `Codec.synthesize` over the whole sequence."""
    _, graphs = fixture_graphs
    codec = Codec.from_pretrained(REFERENCE / "codec_tiny_causal")
    toks = torch.randint(0, codec.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    qfeats = codec.dequantize(toks)
    for name, x, expected in (("dequantize", toks.numpy(), qfeats.numpy()),
                              ("synthesize", qfeats.numpy(), codec.synthesize(qfeats).numpy())):
        out, *state = graphs[f"{name}_start"].run(None, {graphs[f"{name}_start"].get_inputs()[0].name: x[:, :4]})
        parts = [out]
        for t in range(4, 40, 4):
            names = [i.name for i in graphs[f"{name}_step"].get_inputs()]
            out, *state = graphs[f"{name}_step"].run(None, dict(zip(names, [x[:, t : t + 4], *state], strict=True)))
            parts.append(out)
        assert np.abs(np.concatenate(parts, axis=1) - expected).max() < 1e-4, name


@pytest.mark.parametrize("sampling", [{"top_k": 1}, {"top_p": 0.8, "temp": 1.0, "seed": 5}, {"top_p": 0.3, "seed": 1}])
def test_generation_on_onnx_runtime_gives_pytorchs_tokens(fixture_graphs, sampling):
    """Prompts of different lengths continued for 20 steps by `OnnxWavSLM` (graphs only, sampling with
    the same seeded generators): the tokens of `generate_steps`, greedy and sampled, and its audio."""
    from wavslm.generation import generate_steps
    from wavslm.onnx_runtime import OnnxWavSLM

    folder, _ = fixture_graphs
    lm = WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 64, (24,), generator=g), torch.randint(0, 64, (40,), generator=g)]
    steps = list(generate_steps(lm, prompts, 20, **sampling))
    toks, audio = OnnxWavSLM(folder).generate(prompts, 20, **sampling)
    assert torch.equal(toks, torch.cat([t for t, _ in steps], dim=1))
    expected = torch.cat([a for _, a in steps], dim=1)
    assert audio.shape == expected.shape and (audio - expected).abs().max() < 1e-4


def test_a_codec_alone_exports_its_two_graphs_and_says_one_line(tmp_path, capsys):
    """The exporter's own chatter (a traced graph printed to stderr, notes, warnings) is held back."""
    graphs = _export(REFERENCE / "codec_tiny_causal", tmp_path / "codec")
    assert sorted(graphs) == ["codec_decode", "codec_encode"]
    out, err = capsys.readouterr()
    assert err == "" and len(out.strip().splitlines()) == 1


@pytest.mark.slow
def test_bundled_codec_graphs_equal_pytorch(tmp_path):
    """The bundled codec (harmonic-plus-noise decoder): the same tokens, and audio within 1e-3 (peaks
    ~0.45). Its oscillator integrates the predicted F0 into the phase, which amplifies float32 rounding:
    in PyTorch alone, its input features times (1 + 1e-7 noise) move the audio by 4e-5 over 1 s and
    6e-5 over 3 s; ONNX Runtime's other summation order, through every layer, by 1.4e-4 over 1 s."""
    from wavslm.pretrained import load_codec

    graphs = _export(None, tmp_path / "bundled")
    codec = load_codec(None)
    for seconds in (1.0, 3.0):
        sig = _speech(seconds, 2)
        toks = codec.encode(sig)
        (onnx_toks,) = graphs["codec_encode"].run(None, {"sig": sig.numpy()})
        assert np.array_equal(onnx_toks, toks.numpy())
        (audio,) = graphs["codec_decode"].run(None, {"toks": toks.numpy()})
        assert np.abs(audio - codec.decode(toks).numpy()).max() < 1e-3


def test_int8_export_of_a_codec_alone_is_one_clear_error(tmp_path, capsys):
    assert main(["export", "onnx", str(REFERENCE / "codec_tiny_causal"), "-o", str(tmp_path / "out"),
                 "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "quantises the LM's step" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_model_that_does_not_exist_is_one_clear_error(tmp_path, capsys):
    assert main(["export", "onnx", str(tmp_path / "nothing"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wavslm export: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_generate_command_on_onnx_runtime_writes_pytorchs_continuation(fixture_graphs, tmp_path, capsys):
    """`wavslm generate --backend onnxruntime --model EXPORT`: the same continuation as the torch backend
    on the model it was exported from (a real prompt, seeded sampling)."""
    folder, _ = fixture_graphs
    prompt = sorted(SPEECH.glob("librispeech-dev-clean/**/*.wav"))[0]
    common = [str(prompt), "--seconds", "1", "--seed", "3", "--top-p", "0.8"]
    assert main(["generate", *common, "-o", str(tmp_path / "torch.wav"), "--model", str(REFERENCE / "wavslm_tiny")]) == 0
    assert main(["generate", *common, "-o", str(tmp_path / "ort.wav"), "--model", str(folder),
                 "--backend", "onnxruntime"]) == 0
    torch_audio, rate = sf.read(tmp_path / "torch.wav", dtype="float32")
    ort_audio, ort_rate = sf.read(tmp_path / "ort.wav", dtype="float32")
    assert rate == ort_rate and torch_audio.shape == ort_audio.shape
    assert np.abs(torch_audio - ort_audio).max() <= 2 / 32768  # 16-bit files: at most a step apart
    assert main(["generate", *common, "-o", str(tmp_path / "x.wav"), "--backend", "onnxruntime"]) == 2
    assert "--model DIR" in capsys.readouterr().err


def _prompt_wav(seconds: float = 2.0) -> bytes:
    import io

    out = io.BytesIO()
    sf.write(out, _speech(seconds, 1)[0].numpy(), 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_serving_on_onnx_runtime_gives_the_torch_servers_continuation(fixture_graphs):
    """`wavslm serve --backend onnxruntime`: POST /generate on the exported folder returns the torch server's
    continuation of the same real prompt with the same seed (16-bit WAV), and /health the same rates."""
    import io

    from fastapi.testclient import TestClient

    from wavslm.onnx_runtime import OnnxWavSLM
    from wavslm.serve import create_app

    folder, _ = fixture_graphs
    wav, params = _prompt_wav(), {"seconds": 0.8, "seed": 7, "top_p": 0.8}
    answers = {}
    for name, model in (("torch", WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")), ("onnxruntime", OnnxWavSLM(folder))):
        c = TestClient(create_app(model))
        health = c.get("/health").json()
        r = c.post("/generate", params=params, content=wav)
        assert r.status_code == 200, r.text
        answers[name] = (health["sample_rate_output"], health["chunk_samples"], r.headers["x-wavslm-tokens"],
                         sf.read(io.BytesIO(r.content), dtype="float32")[0])
    (rate, chunk, toks, torch_audio), (rate2, chunk2, toks2, ort_audio) = answers["torch"], answers["onnxruntime"]
    assert (rate, chunk, toks) == (rate2, chunk2, toks2) and torch_audio.shape == ort_audio.shape
    assert np.abs(torch_audio).max() > 0 and np.abs(torch_audio - ort_audio).max() < 2e-4


def test_onnx_sessions_arriving_together_are_stepped_as_one_batch(fixture_graphs):
    """On ONNX Runtime too, prompts read together join one batch (one step advances both) and each
    continues as it does alone; a session leaving the batch early leaves the other's continuation alone."""
    import asyncio

    from wavslm.onnx_runtime import OnnxWavSLM
    from wavslm.serve import create_app
    from wavslm.serve.engine import Settings, decode_file

    folder, _ = fixture_graphs
    engine = create_app(OnnxWavSLM(folder)).state.engine

    async def scenario():
        sig, sr = decode_file(_prompt_wav(), engine.limits)
        alone = [await chunks_of(engine, await engine.open(sig, sr, Settings(seconds=0.4, seed=seed))) for seed in (5, 6)]
        steps, rows = engine.steps_run, engine.rows_stepped
        gens = await open_together(engine, sig, sr, [Settings(seconds=0.4, seed=seed) for seed in (5, 6)])
        together = await asyncio.gather(chunks_of(engine, gens[0], keep=2), chunks_of(engine, gens[1]))
        return alone, together, engine.steps_run - steps, engine.rows_stepped - rows

    alone, together, steps, rows = asyncio.run(scenario())
    assert 5 <= steps < rows < 2 * steps  # both stepped together at first, then one went on alone
    assert len(together[0]) == 2 and len(together[1]) == 5
    for one, two in zip(alone, together, strict=True):
        for a, b in zip(one, two, strict=False):  # the first was closed after 2 of its 5
            assert a.shape == b.shape and np.abs(a - b).max() < 1e-5


def test_serving_onnx_runtime_without_an_exported_folder_is_one_clear_error(capsys):
    from wavslm.serve.command import main as serve_main

    assert serve_main(["--backend", "onnxruntime"]) == 2
    out = capsys.readouterr().out.strip()
    assert "serves an exported folder" in out and len(out.splitlines()) == 1
