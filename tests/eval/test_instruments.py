"""The opt-in instruments of `eval generation` on real (tiny, randomly initialised) checkpoints in the
Hugging Face layout, built here with `transformers` itself: Whisper, a GPT-2 text LM and a WavLM x-vector
verifier; and UTMOS through torch.hub from a local repository with SpeechMOS's entry point and call
signature (`utmos22_strong(pretrained=False)`, `model(wave (B, T), sr) -> (B,)`), since SpeechMOS itself
is not a package on the registries. The random models' outputs mean nothing; the tests check that each
instrument is called as its users call it and that its results land under its own name."""

import argparse
import json

import numpy as np
import pytest
import torch
from conftest import REFERENCE, SPEECH

transformers = pytest.importorskip("transformers")

from wavslm.errors import InputError  # noqa: E402
from wavslm.eval import generation_eval, instruments  # noqa: E402
from wavslm.eval.transcripts import auto_bleu_gslm, words  # noqa: E402

CLEAN = SPEECH / "librispeech-dev-clean/84/84-121123-0007.wav"


def _bytes_to_unicode():
    """GPT-2's byte-level alphabet (printable stand-ins for the 256 byte values)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_whisper(folder):
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode())}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    vocab.update({s: len(vocab) + i for i, s in enumerate(specials)})
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    end = vocab["<|endoftext|>"]
    tokenizer = transformers.WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=specials[0],
                                              bos_token=specials[0], eos_token=specials[0], pad_token=specials[0])
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    config = transformers.WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=80, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, d_model=32, max_target_positions=64,
        pad_token_id=end, bos_token_id=end, eos_token_id=end, decoder_start_token_id=vocab["<|startoftranscript|>"])
    model = transformers.WhisperForConditionalGeneration(config)
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=vocab["<|startoftranscript|>"], eos_token_id=end, pad_token_id=end, max_length=12,
        lang_to_id={"<|en|>": vocab["<|en|>"]}, no_timestamps_token_id=vocab["<|notimestamps|>"], is_multilingual=True,
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]})
    model.save_pretrained(folder)
    transformers.WhisperProcessor(transformers.WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(folder)
    return folder


def make_text_lm(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<s>", "<unk>", "the", "cat", "sat", "on", "mat", "what", "do", "you", "mean", "sir"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>")
    config = transformers.GPT2Config(vocab_size=len(words), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_verifier(folder):
    config = transformers.WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                      conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                      num_conv_pos_embedding_groups=4, tdnn_dim=(32, 32), tdnn_kernel=(3, 1),
                                      tdnn_dilation=(1, 1), xvector_output_dim=16)
    transformers.WavLMForXVector(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                          return_attention_mask=True).save_pretrained(folder)
    return folder


HUBCONF = '''
import torch

class Stand(torch.nn.Module):
    """SpeechMOS's UTMOS22 strong interface: forward(wave (B, T), sr) -> (B,)."""
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(1))
    def forward(self, wave, sr):
        assert sr == 16000
        return 3.0 + self.scale * wave.abs().mean(dim=1)

def utmos22_strong(progress=True, pretrained=True):
    return Stand()
'''


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruments")
    torch.manual_seed(0)
    (root / "speechmos").mkdir()
    (root / "speechmos" / "hubconf.py").write_text(HUBCONF)
    torch.save({"scale": torch.tensor([4.0])}, root / "utmos.pt")
    return {"whisper": make_whisper(root / "whisper"), "text_lm": make_text_lm(root / "lm"),
            "verifier": make_verifier(root / "sv"), "utmos": (root / "speechmos", root / "utmos.pt")}


@pytest.mark.slow
def test_each_instrument_as_its_users_call_it(checkpoints):
    from wavslm import load_audio

    sig = load_audio(CLEAN, sample_rate=16000, mono=True)[0][0].numpy()
    other = np.roll(sig, 8000) * 0.5
    whisper = instruments.Whisper(checkpoints["whisper"])
    text = whisper(sig)
    assert isinstance(text, str) and text == whisper(sig)  # greedy: the same text twice

    lm = instruments.TextLM(checkpoints["text_lm"])
    ids = torch.tensor([[0, 2, 3, 4]])  # <s> the cat sat
    with torch.inference_mode():
        logits = lm.model(ids).logits[0, :-1]
    assert lm.nll("the cat sat") == pytest.approx(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:])), abs=1e-6)
    assert lm.nll("") is None

    sv = instruments.SpeakerVerifier(checkpoints["verifier"])
    assert sv.similarity(sig, sig) == pytest.approx(1.0, abs=1e-5)
    # The model card's recipe: both in one padded batch, x-vector embeddings, cosine.
    inputs = sv.features([sig, other], sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.inference_mode():
        emb = sv.model(**inputs).embeddings
    card = float(torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=-1))
    assert sv.similarity(sig, other) == pytest.approx(card, abs=1e-4)

    utmos = instruments.UTMOS(*checkpoints["utmos"])
    assert utmos(sig) == pytest.approx(3.0 + 4.0 * float(np.abs(sig).mean()), rel=1e-5)  # its weights were loaded


@pytest.mark.slow
def test_eval_generation_names_every_result_after_its_instrument(checkpoints, tmp_path):
    out = tmp_path / "gen.json"
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    generation_eval.configure(parser)
    repo, weights = checkpoints["utmos"]
    args = parser.parse_args(["--model", str(REFERENCE / "wavslm_tiny"), "--prompts", str(CLEAN.parent), "--limit", "1",
                              "--prompt-seconds", "1", "--seconds", "0.64", "-o", str(out),
                              "--whisper", str(checkpoints["whisper"]), "--text-lm", str(checkpoints["text_lm"]),
                              "--speaker-verifier", str(checkpoints["verifier"]), "--utmos", str(repo),
                              "--utmos-weights", str(weights)])
    args.func(args)
    results = json.loads(out.read_text())
    row = results["continuations"][0]
    for key in ("transcript_full_whisper", "auto_bleu2_gslm_whisper", "auto_bleu2_slamkit_whisper", "nll_trigram_whisper",
                "nll_lm-lm_whisper", "nll_lm-lm_pocketsphinx", "speaker_similarity_wavlm_sv", "speaker_similarity_resemblyzer",
                "utmos", "dnsmos_ovrl"):
        assert key in row, key
    assert row["auto_bleu2_gslm_whisper"] == auto_bleu_gslm(words(row["transcript_full_whisper"]), 2)
    assert set(results["genppl"]) >= {"trigram_pocketsphinx", "lm-lm_pocketsphinx", "trigram_whisper", "lm-lm_whisper"}
    assert results["settings"]["instruments"]["whisper"] == str(checkpoints["whisper"])


def test_instrument_paths_fail_in_one_sentence(tmp_path):
    with pytest.raises(InputError, match="is not a folder with a config.json"):
        instruments.TextLM(tmp_path)
    with pytest.raises(InputError, match="is not a clone of SpeechMOS"):
        instruments.UTMOS(tmp_path, tmp_path / "w.pt")
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    generation_eval.configure(parser)
    args = parser.parse_args(["--prompts", str(tmp_path), "--utmos", str(tmp_path)])
    with pytest.raises(InputError, match="--utmos and --utmos-weights go together"):
        generation_eval.load_instruments(args)
