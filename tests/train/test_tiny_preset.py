"""The tiny preset (wavslm/configs/tiny.yaml) at its real sizes: every stage runs a few steps on real speech, chained as the recipe
chains them (ssl -> the six codec sub-stages -> tokenize -> lm), and each one's loss falls."""

import json

import pytest
import torch

from wavslm import Codec, WavSLM
from wavslm.data.manifest import build_manifest
from wavslm.recipe import CODEC_SUBSTAGES, Recipe

# A few steps each on fixed crops at a constant rate: enough to see every loss fall, seconds per stage.
FEW = ["train.schedule=constant", "train.warmup_steps=0", "train.log_every=1", "train.valid_batches=1"]
MICRO = [
    *(f"ssl.{o}" for o in FEW), "ssl.train.steps=25", "ssl.train.batch_size=4", "ssl.train.valid_every=25",
    "ssl.data.random_crop=false", "ssl.data.segment_seconds=1.0", "ssl.targets.iters=10",
    *(f"codec.{o}" for o in FEW), "codec.train.batch_size=4", "codec.data.random_crop=false",
    "codec.data.max_seconds=4.0", "codec.data.segment_seconds=0.5", "codec.data.context_seconds=0.0",
    *(f"lm.{o}" for o in FEW), "lm.train.steps=40", "lm.train.batch_size=4", "lm.train.valid_every=40",
    "lm.data.random_crop=false", "lm.data.crop_tokens=64",
]
STEPS = {"decoder": 20, "posemb": 15, "encoder": 15, "quantizer": 20, "joint": 15, "finetune": 15}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import SPEECH

    root = tmp_path_factory.mktemp("tiny")
    clips = root / "clips"
    clips.mkdir()
    for clip in sorted((SPEECH / "librispeech-dev-clean" / "84").glob("*.wav"))[:6]:
        (clips / clip.name).symlink_to(clip)
    for split in ("train", "valid", "test"):
        build_manifest(clips, root / f"{split}.jsonl", max_duration=8.0, progress=False)
    steps = [f"recipe.codec_substages.{s}=[train.steps={n},train.valid_every={n},train.save_every={n}]"
             for s, n in STEPS.items()]
    recipe = Recipe("tiny", root / "run", [*MICRO, *steps], corpus=str(root))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread costs more in contention than it gains
    try:
        recipe.train_ssl()
        for substage in CODEC_SUBSTAGES:
            recipe.train_codec(substage)
        recipe.tokenize()
        recipe.train_lm()
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def curve(folder, key="loss"):
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if r["split"] == "train"]


def falls(values, ratio):
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    return last < ratio * first


@pytest.mark.parametrize(("stage", "key", "ratio"), [
    # measured on tests/assets/speech: 0.57, 0.51, 0.34, 0.14, 0.17, 0.51, 0.23 (last three steps' mean over the
    # first three's; the codec batches alternate between clips of different loudness, so these are noisy)
    ("ssl", "loss", 0.9), ("codec_decoder", "mel", 0.9), ("codec_posemb", "loss", 0.6),
    ("codec_encoder", "loss", 0.7), ("codec_quantizer", "mse", 0.4), ("codec_joint", "mse", 0.75),
    ("lm", "loss", 0.5),
])
def test_each_stage_of_the_tiny_preset_learns(run, stage, key, ratio):
    values = curve(run / stage, key)
    assert falls(values, ratio), values


def test_the_chain_exports_the_tiny_model_at_its_preset_sizes(run):
    codec = Codec.from_pretrained(run / "codec_finetune" / "export" / "codec")
    assert (codec.frame_rate, codec.vocab_size, codec.sample_rate_output) == (50, 256, 16000)
    assert codec.chunk_size == 1280  # 80 ms: 4 tokens per streaming step
    lm = WavSLM.from_pretrained(run / "lm" / "export" / "lm")
    assert (lm.config.num_layers, lm.config.dim, lm.toks_per_step) == (3, 192, 4)
    sig, toks = lm.generate(bos_toks=torch.randint(0, 256, (1, 16)), max_gen_toks=8, seed=0)
    assert toks.shape == (1, 8) and sig.shape == (1, 8 * 320)
