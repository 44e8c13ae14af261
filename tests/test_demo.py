"""The bundled default model (wavslm/assets/tiny) and `wavslm demo` on it, as `make demo` runs it."""

import json

import pytest

from wavslm.cli import main
from wavslm.pretrained import BUNDLED_CODEC, BUNDLED_LM, package_path

ASSETS = package_path("assets")


def test_the_bundled_model_is_in_the_released_layout_and_small():
    for folder in (BUNDLED_LM, BUNDLED_CODEC):
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert json.loads((BUNDLED_LM / "config.json").read_text())["codec_config"] == "../codec"
    size = sum(p.stat().st_size for p in (ASSETS / "tiny").rglob("*") if p.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MB"
    card = (ASSETS / "tiny" / "README.md").read_text()
    assert "wavslm recipe tiny -o runs/tiny" in card and "lexical accuracy" in card


def test_demo_on_the_bundled_model_writes_every_file(tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "-o", str(out), "--seconds", "2"]) == 0
    for name in ("synthetic", "real"):
        for stem in ("prompt", "continuation", "prompt_continuation"):
            assert (out / name / f"{stem}.wav").stat().st_size > 1000
            assert (out / name / f"{stem}.png").stat().st_size > 1000
    report = json.loads((out / "report.json").read_text())
    assert report["model"].startswith("bundled")
    for r in report["prompts"].values():
        assert r["continuation_seconds"] == pytest.approx(2.0) and r["real_time_factor"] > 0
        # DNSMOS maps its network's output through a fitted polynomial, which falls below 1 for the poorest
        # audio (0.93 measured on a 2 s continuation of the bundled model).
        assert 0.0 < r["dnsmos"]["ovrl"] <= 5.0 and -1.0 <= r["speaker_similarity_prompt_continuation"] <= 1.0
    assert (out / "report.md").is_file()
    assert str(out.resolve()) in capsys.readouterr().out
