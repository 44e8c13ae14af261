"""Model references and loading: every bad input gets one sentence naming the file and the problem."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from wavslm import Codec, InputError, WavSLM
from wavslm.codec import CodecConfig
from wavslm.config import from_dict
from wavslm.hub import resolve


@pytest.fixture
def lm_copy(reference, tmp_path):
    """A writable copy of the reference LM and codec, side by side as released."""
    shutil.copytree(reference / "wavslm_tiny", tmp_path / "wavslm_tiny")
    shutil.copytree(reference / "codec_tiny_causal", tmp_path / "codec_tiny_causal")
    return tmp_path / "wavslm_tiny"


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_reference_forms(lm_copy, tmp_path):
    folder = resolve(lm_copy)
    assert folder.config.name == "config.json" and folder.weights.name == "model.safetensors"
    # X.json beside X.safetensors, with or without the suffix.
    shutil.copy(lm_copy / "config.json", tmp_path / "mine.json")
    shutil.copy(lm_copy / "model.safetensors", tmp_path / "mine.safetensors")
    for ref in (tmp_path / "mine.json", tmp_path / "mine"):
        assert resolve(ref).weights == tmp_path / "mine.safetensors"
    edit_config(lm_copy, codec_config="../codec_tiny_causal/config.json")
    assert WavSLM.from_pretrained(lm_copy).codec.vocab_size == 64


def test_missing_model(tmp_path):
    with pytest.raises(InputError, match="not found: not a folder, a .json file, or a Hugging Face Hub id"):
        WavSLM.from_pretrained(tmp_path / "nothing")
    with pytest.raises(InputError, match="has no config.json"):
        WavSLM.from_pretrained(tmp_path)


def test_hub_id_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="Hugging Face Hub is unreachable \\(offline\\?\\) and it is not cached"):
        WavSLM.from_pretrained("lucadellalib/wavslm_4k")


def test_unknown_and_mistyped_config_keys(lm_copy):
    edit_config(lm_copy, colour="blue")
    with pytest.raises(InputError, match=r"config\.json' has unknown keys \['colour'\]"):
        WavSLM.from_pretrained(lm_copy)
    edit_config(lm_copy, colour=None)
    config = json.loads((lm_copy / "config.json").read_text())
    del config["colour"]
    config["num_layers"] = "two"
    (lm_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="'num_layers' must be int, got 'two'"):
        WavSLM.from_pretrained(lm_copy)


def test_config_not_json(lm_copy):
    (lm_copy / "config.json").write_text("{vocab_size: 64")
    with pytest.raises(InputError, match="config.json' is not valid JSON"):
        WavSLM.from_pretrained(lm_copy)


def test_missing_weights(lm_copy):
    (lm_copy / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"has no weights \(model.safetensors\) beside config.json"):
        WavSLM.from_pretrained(lm_copy)


def test_corrupt_weights(lm_copy):
    (lm_copy / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="model.safetensors': the file is corrupt or not a checkpoint"):
        WavSLM.from_pretrained(lm_copy)


def test_weights_that_do_not_fit(lm_copy):
    state = load_file(lm_copy / "model.safetensors")
    state["head.weight"] = torch.zeros(32, 64)
    del state["encoder.norm.bias"]
    save_file(state, lm_copy / "model.safetensors")
    with pytest.raises(InputError, match=r"do not fit the model: missing encoder.norm.bias; shape mismatch for head.weight"):
        WavSLM.from_pretrained(lm_copy)


def test_weights_holding_nan_or_inf_are_refused_at_load(lm_copy):
    state = load_file(lm_copy / "model.safetensors")
    state["head.weight"][3, 5] = float("nan")
    state["encoder.norm.bias"][0] = float("inf")
    save_file(state, lm_copy / "model.safetensors")
    with pytest.raises(InputError, match=r"hold NaN or infinite values \(in encoder.norm.bias, head.weight\)"):
        WavSLM.from_pretrained(lm_copy)


def test_sizes_that_cannot_make_a_model_are_one_sentence():
    from wavslm.wavlm import WavLM, WavLMConfig

    with pytest.raises(InputError, match=r"this WavLM config cannot be built: dim \(192\) must be divisible by "
                                         r"num_heads \(5\)"):
        WavLM(WavLMConfig(hidden_dims=[64] * 7, num_layers=1, dim=192, ffn_dim=64, num_heads=5))
    with pytest.raises(InputError, match="must have one entry per conv layer, got 2, 7 and 7"):
        WavLM(WavLMConfig(hidden_dims=[64, 64], num_layers=1, dim=192, ffn_dim=64, num_heads=4))


def test_codec_not_found(lm_copy):
    edit_config(lm_copy, codec_config="../no_such_codec")
    with pytest.raises(InputError, match="cannot load the codec '../no_such_codec' named by .*config.json"):
        WavSLM.from_pretrained(lm_copy)
    assert WavSLM.from_pretrained(lm_copy, load_codec=False).codec is None


def test_codec_passed_in_and_mismatched_vocabulary(lm_copy, reference):
    codec = Codec.from_pretrained(reference / "codec_tiny_causal")
    edit_config(lm_copy, codec_config="nobody/nothing")  # never looked up when a codec is given
    assert WavSLM.from_pretrained(lm_copy, codec=codec).codec is codec
    config = json.loads((reference / "codec_tiny_causal" / "config.json").read_text())
    config["quantizer_config"]["codebook_size"] = 32
    config["compressor_config"]["output_dim"] = 5
    config["decompressor_config"]["input_dim"] = 5
    codec = Codec(from_dict(CodecConfig, config, "test"))
    with pytest.raises(InputError, match="the codec has 32 codes but the language model predicts 64"):
        WavSLM.from_pretrained(lm_copy, codec=codec)


def test_a_folder_with_only_model_pt_loads_tensors_only_and_says_so_once(lm_copy, caplog):
    state = load_file(lm_copy / "model.safetensors")
    torch.save(state, lm_copy / "model.pt")
    (lm_copy / "model.safetensors").unlink()
    with caplog.at_level("WARNING", logger="wavslm.hub"):
        lm = WavSLM.from_pretrained(lm_copy)
        WavSLM.from_pretrained(lm_copy)
    assert torch.equal(lm.head.weight, state["head.weight"])
    said = [r.getMessage() for r in caplog.records if "weights_only=True" in r.getMessage()]
    assert len(said) == 1 and "model.pt" in said[0]
    # weights_only=True: a pickle that would run code is refused.
    torch.save({"head.weight": print}, lm_copy / "model.pt")
    with pytest.raises(InputError, match="model.pt' hold Python objects besides tensors; refusing to unpickle them"):
        WavSLM.from_pretrained(lm_copy)
    for damaged in (b"", b"not a pickle at all"):  # empty or foreign: corrupt, not "Python objects"
        (lm_copy / "model.pt").write_bytes(damaged)
        with pytest.raises(InputError, match="model.pt': the file is corrupt or not a checkpoint"):
            WavSLM.from_pretrained(lm_copy)
    (lm_copy / "model.pt").unlink()
    with pytest.raises(InputError, match="has no weights"):
        WavSLM.from_pretrained(lm_copy)


def test_save_leaves_no_partial_files(lm_copy, tmp_path):
    lm = WavSLM.from_pretrained(lm_copy)
    target = tmp_path / "out"
    lm.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    lm.head.weight.data = lm.head.weight.data.t()  # non-contiguous, still saved correctly
    lm.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
