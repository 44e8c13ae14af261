"""`wavslm bench` runs end to end on the tiny size (CI keeps it from rotting); the inference conversions
keep their stated deviations."""

import json

import pytest
import torch
from conftest import REFERENCE

from wavslm import WavSLM
from wavslm.benchmark import build, run_bench
from wavslm.cli import main
from wavslm.optimize import optimize_for_inference


def test_bench_cli_reports_every_figure(tmp_path, capsys):
    assert main(["bench", "--size", "tiny", "--seconds", "1", "--steps", "3", "--batch", "1", "2",
                 "-o", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert [r["batch"] for r in report["runs"]] == [1, 2]
    for row in report["runs"]:
        for key in ("prefill_s", "decode_tok_s", "codec_encode_rtf", "codec_decode_rtf", "prompt_rtf", "stream_rtf",
                    "first_audio_ms"):
            assert row[key] > 0, key
    assert report["peak_rss_mb"] > report["lm_weight_mb"] > 0
    assert "decode_tok_s" in capsys.readouterr().out


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_the_bench_runs_each_conversion(quantize):
    report = run_bench("tiny", (1,), quantize=quantize, steps=2, seconds=0.5)
    assert report["runs"][0]["decode_tok_s"] > 0


@pytest.mark.slow
def test_the_bench_times_torch_and_onnxruntime_side_by_side(tmp_path, capsys):
    """`--backend torch onnxruntime --quantize int8`: one row per backend and batch, every figure measured,
    the CPU named; ONNX Runtime runs the same weights exported with its int8 LM step (an export: slow)."""
    pytest.importorskip("onnxruntime")
    assert main(["bench", "--size", "tiny", "--seconds", "0.5", "--steps", "2", "--batch", "1", "2", "--rounds", "1",
                 "--quantize", "int8", "--backend", "torch", "onnxruntime", "-o", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime | 2 |" in out and "torch | 1 |" in out
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["cpu"] and report["quantize"] == "int8"
    assert [(r["backend"], r["batch"]) for r in report["runs"]] == [
        ("torch", 1), ("onnxruntime", 1), ("torch", 2), ("onnxruntime", 2)]
    for row in report["runs"]:
        for key in ("prefill_s", "decode_tok_s", "codec_encode_rtf", "codec_decode_rtf", "prompt_rtf", "stream_rtf",
                    "first_audio_ms"):
            assert row[key] > 0, key


def test_the_onnxruntime_backend_refuses_bfloat16():
    from wavslm.errors import InputError

    with pytest.raises(InputError, match="runs float32 graphs"):
        run_bench("tiny", (1,), dtype="bfloat16", backends=("onnxruntime",))


def fixture_lm():
    from conftest import REFERENCE

    return WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")


@pytest.mark.parametrize(("dtype", "quantize", "max_diff", "agree"), [
    ("float32", "none", 1e-4, 1.0), ("bfloat16", "none", 0.1, 0.9), ("float32", "int8", 0.2, 0.9),
])
def test_conversions_deviate_by_at_most_what_the_readme_states(dtype, quantize, max_diff, agree):
    lm = fixture_lm()
    toks = torch.randint(0, lm.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        exact, _ = lm(lm.codec.dequantize(toks))
        optimize_for_inference(lm, dtype=dtype, quantize=quantize)
        got, _ = lm(lm.codec.dequantize(toks))
    assert got.dtype == torch.float32
    assert (got - exact).abs().max().item() <= max_diff
    assert (got.argmax(-1) == exact.argmax(-1)).float().mean().item() >= agree
    sig, gen = lm.generate(bos_toks=toks[:1, :16], max_gen_toks=8, top_p=0.0)  # the loops run converted
    assert gen.shape == (1, 8)


def test_bad_conversion_settings_are_refused():
    lm = build("tiny")
    with pytest.raises(ValueError, match="quantize must be one of"):
        optimize_for_inference(lm, quantize="int4")
    with pytest.raises(ValueError, match="use dtype float32"):
        optimize_for_inference(lm, dtype="bfloat16", quantize="int8")


def test_weight_bytes_count_the_packed_int8_weights():
    from wavslm.benchmark import weight_bytes

    lm = build("tiny")
    before = weight_bytes(lm.encoder)
    optimize_for_inference(lm, quantize="int8")
    after = weight_bytes(lm.encoder)
    assert 0.2 * before < after < 0.5 * before, (before, after)  # int8 linears, float norms and biases


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_at_tiny_size(tmp_path):
    """`bench/gpu_check.py --device cpu --size tiny`: every stage trains, streaming runs, the report says
    so; then a lent GPU meets a script known to work."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--size", "tiny", "--steps", "4",
                           "--compile", "off", "--stream-batches", "1", "2", "-o", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["stage"] for r in report["training"]] == ["ssl", "codec decoder", "codec quantizer", "lm"]
    for row in report["training"]:
        assert "error" not in row and row["throughput"] > 0 and row["unit"] in ("tokens_per_s", "audio_seconds_per_s")
    assert [r["batch"] for r in report["streaming"]] == [1, 2] and all(r["stream_rtf"] > 0 for r in report["streaming"])
    assert report["equality"] is None and "train lm" in done.stdout


def _random_checkpoint(folder):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "random_checkpoint.py"
    subprocess.run([sys.executable, str(script), "--size", "tiny", "-o", str(folder)], check=True, capture_output=True)
    return folder / "lm"


@pytest.mark.parametrize("ref", ["bundled", "reference", "random"])
def test_int8_straight_from_the_files_is_the_model_converted_after_loading(ref, tmp_path):
    """`load_lm(optimize="int8")` fills and converts part by part (the float32 model never whole); the result
    is exactly the float32 model converted after loading: logits, encoding and decoding."""
    from wavslm.modules.linear import Int8Linear
    from wavslm.pretrained import BUNDLED_LM, load_lm

    path = {"bundled": lambda: BUNDLED_LM, "reference": lambda: REFERENCE / "wavslm_tiny",
            "random": lambda: _random_checkpoint(tmp_path)}[ref]()
    straight = load_lm(str(path), optimize="int8")
    after = optimize_for_inference(WavSLM.from_pretrained(path), quantize="int8")
    count = [sum(isinstance(m, Int8Linear) for m in model.modules()) for model in (straight, after)]
    assert count[0] == count[1] > 0 and not any(p.is_meta for p in straight.parameters())
    toks = torch.randint(0, straight.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    sig = torch.randn(1, straight.codec.chunk_size * 6, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.inference_mode():
        feats = [model.codec.dequantize(toks) for model in (straight, after)]
        assert torch.equal(feats[0], feats[1])
        assert torch.equal(straight(feats[0])[0], after(feats[1])[0])
        assert torch.equal(straight.codec.encode(sig), after.codec.encode(sig))
        assert torch.equal(straight.codec.decode(toks[:1]), after.codec.decode(toks[:1]))


def test_int8_straight_from_misfitting_files_is_one_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from wavslm.errors import InputError
    from wavslm.pretrained import load_lm

    lm = _random_checkpoint(tmp_path)
    state = load_file(lm / "model.safetensors")
    state["head.weight"] = state["head.weight"][:-1]
    save_file(state, lm / "model.safetensors")
    with pytest.raises(InputError, match=r"do not fit the model: shape mismatch for head.weight"):
        load_lm(str(lm), optimize="int8")


def test_the_bench_reads_a_saved_model_straight_into_int8(tmp_path):
    report = run_bench(batches=(1,), quantize="int8", steps=2, seconds=0.5, model=str(_random_checkpoint(tmp_path)))
    assert report["model"].endswith("lm") and report["size"] is None and report["runs"][0]["decode_tok_s"] > 0
    from wavslm.errors import InputError

    with pytest.raises(InputError, match="use --dtype float32"):
        run_bench(batches=(1,), dtype="bfloat16", quantize="int8", model=str(tmp_path / "lm"))
