"""`wavslm eval generation`: continue the first seconds of real recordings and score the continuations.

For each audio file the first `prompt_seconds` (3 s) are the prompt; the model continues it `num` times
for `seconds` (5 s) with nucleus sampling, continuation k of file i seeded `seed + i * num + k`, so every
run with the same settings gives the same audio. Every result is named after its instrument. Each
continuation (the new audio only, resampled to 16 kHz) gets:

    dnsmos_{ovrl,sig,bak,p808}      DNSMOS naturalness/quality, non-intrusive
    speaker_similarity_resemblyzer  prompt vs continuation: does the voice persist?
    voiced_share                    share of pYIN frames voiced (60-400 Hz), of the continuation and of the
                                    prompt: a whispered or noisy continuation has few
    pocketsphinx_*                  transcript, recognised words per second, and the mean word posterior
                                    (confidence) of those words
    *_full                          on the prompt + continuation, as the papers transcribe it:
                                    transcript_full_pocketsphinx, auto_bleu2_gslm_pocketsphinx and
                                    auto_bleu2_slamkit_pocketsphinx (two definitions of Auto-BLEU, see
                                    `eval.transcripts`), nll_trigram_pocketsphinx (the transcript's mean word
                                    NLL under pocketsphinx's trigram model); `genppl` aggregates the NLLs as
                                    SlamKit does

With the opt-in instruments (`eval.instruments`, local checkpoints): whisper transcripts and their
Auto-BLEU and NLLs (`*_whisper`), a text LM's NLL of each transcript (`nll_<lm>_<asr>`, GenPPL in
`genppl`), `speaker_similarity_wavlm_sv` and `utmos`. Comparable with published figures only where the
same instrument and protocol are used (README, Evaluation).

Why not WER: a continuation has no reference text. Why not "share of in-vocabulary words": pocketsphinx
decodes with a closed vocabulary, so every word it emits is in vocabulary and that share is always 1.
Its word posteriors fall when the audio is babble (the lattice holds many competing words), and words/s
falls when it hears no speech at all; the same two numbers on the prompts are given for calibration.
They are a proxy: compare systems on the same prompts and settings, never against WERs.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..audio import load_audio, resample, save_audio
from ..errors import InputError
from ..io import find_audio, write_json
from ..pretrained import BUNDLED_LM, load_lm
from . import metrics, transcripts
from .codec_eval import jsonable, means

INTELLIGIBILITY = (
    "no reference text: pocketsphinx_words_per_second is the number of words pocketsphinx recognises per "
    "second of continuation, pocketsphinx_confidence the mean lattice posterior of those words (None when "
    "none); the prompt_* values are the same measures on the real prompts, for calibration"
)


@dataclass
class Instruments:
    """The opt-in instruments (`eval.instruments`) to run besides the built-in ones; None = not run."""

    whisper: Any = None
    text_lm: Any = None
    speaker_verifier: Any = None
    utmos: Any = None


def _asr(sig: np.ndarray, seconds: float) -> dict:
    words = metrics.transcribe_words(sig, metrics.RATE)
    return {
        "pocketsphinx_transcript": " ".join(w for w, _ in words),
        "pocketsphinx_words_per_second": len(words) / seconds,
        "pocketsphinx_confidence": float(np.mean([p for _, p in words])) if words else None,
    }


def _full(prompt: np.ndarray, cont: np.ndarray, tools: Instruments) -> dict:
    """Transcript measures of prompt + continuation, per transcriber (pocketsphinx, and Whisper if given)."""
    full = np.concatenate([prompt, cont])
    found = {"pocketsphinx": metrics.transcribe(full, metrics.RATE)}
    if tools.whisper is not None:
        found["whisper"] = tools.whisper(full)
    out: dict[str, Any] = {}
    for asr, text in found.items():
        tokens = transcripts.words(text)
        out[f"transcript_full_{asr}"] = text
        out[f"auto_bleu2_gslm_{asr}"] = transcripts.auto_bleu_gslm(tokens, 2)
        out[f"auto_bleu2_slamkit_{asr}"] = transcripts.auto_bleu_slamkit(tokens, 2)
        out[f"nll_trigram_{asr}"] = transcripts.trigram_lm().score(tokens)["nll"]
        if tools.text_lm is not None:  # the raw transcript, as SlamKit gives it to its LM; None when empty
            out[f"nll_{tools.text_lm.name}_{asr}"] = tools.text_lm.nll(text) if tokens else None
    return out


def _prompt(lm, path: Path, prompt_seconds: float) -> tuple[torch.Tensor, np.ndarray]:
    """The first `prompt_seconds` of `path`: its tokens `(1, T)` and its audio at 16 kHz `(N,)`."""
    codec = lm.codec
    sig, _ = load_audio(path, sample_rate=codec.sample_rate_input, mono=True)
    sig = sig[:, : round(prompt_seconds * codec.sample_rate_input)]  # a shorter file is used whole
    toks = codec.encode(sig.to(next(lm.parameters()).device))
    return toks, resample(sig[0], codec.sample_rate_input, metrics.RATE).numpy()


def evaluate_generation(
    lm,
    files: Sequence[str | os.PathLike],
    prompt_seconds: float = 3.0,
    seconds: float = 5.0,
    seed: int = 0,
    num: int = 1,
    top_p: float = 0.3,
    temp: float = 0.8,
    save_audio_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    instruments: Instruments | None = None,
) -> dict:
    """Continue the first `prompt_seconds` of each of `files` `num` times and score the continuations.

    Returns `{"settings", "continuations": [records], "mean", "codebook_usage", ...}`. With `save_audio_dir`,
    continuation k of file i is written there as `<i>_<stem>_<k>.wav` at the codec's output rate.
    `progress=None` shows a bar only on a terminal.
    """
    files = [Path(f) for f in files]
    if not files:
        raise InputError("no prompt files to continue")
    if prompt_seconds <= 0 or seconds <= 0 or num < 1:
        raise InputError("prompt seconds and continuation seconds must be positive, and num at least 1")
    codec = lm.require_codec()
    tools = instruments or Instruments()
    rate_out, sr = codec.sample_rate_output, metrics.RATE
    records, all_toks = [], []
    bar = tqdm(total=len(files) * num, desc="eval generation", unit="sample", leave=False,
               disable=None if progress is None else not progress)
    with bar:
        for i, path in enumerate(files):
            try:
                toks, prompt = _prompt(lm, path, prompt_seconds)
                voice = metrics.speaker_embedding(prompt, sr)  # once per prompt, not per continuation
                reference = {
                    "prompt_seconds": len(prompt) / sr,
                    "prompt_voiced_share": metrics.voiced_share(prompt, sr),
                    **{f"prompt_dnsmos_{k}": v for k, v in metrics.dnsmos(prompt, sr).items()},
                    **{f"prompt_{k}": v for k, v in _asr(prompt, len(prompt) / sr).items()},
                }
                # One batch of `num` rows: row k samples with its own generator seeded `seed + i*num + k`.
                gen_sig, gen_toks = lm.generate(bos_toks=toks.expand(num, -1), max_gen_secs=seconds,
                                                top_p=top_p, temp=temp, seed=seed + i * num)
            except InputError as err:
                raise InputError(f"'{path}': {err}") from err
            for k in range(num):
                audio = gen_sig[k].float().cpu()
                cont = resample(audio, rate_out, sr).numpy()
                record = {"path": str(path), "seed": seed + i * num + k, "seconds": len(cont) / sr}
                if save_audio_dir is not None:
                    record["audio"] = str(Path(save_audio_dir) / f"{i:04d}_{path.stem}_{k}.wav")
                    save_audio(record["audio"], audio, rate_out)
                record.update({f"dnsmos_{key}": v for key, v in metrics.dnsmos(cont, sr).items()})
                record["speaker_similarity_resemblyzer"] = metrics.cosine(voice, metrics.speaker_embedding(cont, sr))
                if tools.speaker_verifier is not None:
                    record["speaker_similarity_wavlm_sv"] = tools.speaker_verifier.similarity(prompt, cont)
                if tools.utmos is not None:
                    record["utmos"] = tools.utmos(cont)
                record["voiced_share"] = metrics.voiced_share(cont, sr)
                record.update(_asr(cont, len(cont) / sr))
                record.update(_full(prompt, cont, tools))
                record.update(reference)
                records.append(record)
                all_toks.append(gen_toks[k].cpu())
                bar.update(1)
    return {
        "settings": {"prompt_seconds": prompt_seconds, "seconds": seconds, "seed": seed, "num": num,
                     "top_p": top_p, "temp": temp},
        "num_prompts": len(files),
        "num_continuations": len(records),
        "sample_rate_output": rate_out,
        "metric_sample_rate": sr,
        "intelligibility": INTELLIGIBILITY,
        "codebook_usage": metrics.codebook_usage(torch.cat(all_toks), codec.vocab_size),
        "mean": means(records, skip=("seed",)),
        "genppl": {key[len("nll_"):]: transcripts.genppl([r[key] for r in records])
                   for key in records[0] if key.startswith("nll_")},
        "continuations": records,
    }


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of `wavslm eval generation` (the caller adds --device)."""
    parser.add_argument("--model", help="WavSLM folder, .json or Hub id (default: the bundled model)")
    parser.add_argument("--prompts", type=Path, required=True, help="folder of audio files (.wav/.flac/.ogg, recursive)")
    parser.add_argument("--prompt-seconds", type=float, default=3.0, help="prompt length from each file's start (default: 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="continuation length (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="continuation k of file i uses seed + i * num + k (default: 0)")
    parser.add_argument("--num", type=int, default=1, help="continuations per prompt (default: 1)")
    parser.add_argument("--top-p", type=float, default=0.3, help="nucleus sampling mass; 0 is greedy (default: 0.3)")
    parser.add_argument("--temp", type=float, default=0.8, help="temperature (default: 0.8)")
    parser.add_argument("--limit", type=int, help="use only the first N files (sorted by path)")
    parser.add_argument("-o", "--output", type=Path, help="results file (.json; default: print to stdout)")
    parser.add_argument("--save-audio", type=Path, metavar="DIR", help="also write the continuations here")
    hooks = parser.add_argument_group("opt-in instruments, from local checkpoints (pip install 'wavslm[instruments]')")
    hooks.add_argument("--whisper", metavar="DIR", help="a Whisper checkpoint (Hugging Face layout): transcripts, "
                       "Auto-BLEU and NLLs of prompt + continuation beside pocketsphinx's")
    hooks.add_argument("--text-lm", metavar="DIR", help="a causal text LM (GPT-2, Llama; Hugging Face layout): "
                       "GenPPL of every transcript")
    hooks.add_argument("--speaker-verifier", metavar="DIR", help="a WavLM x-vector model (microsoft/wavlm-base-plus-sv): "
                       "speaker_similarity_wavlm_sv")
    hooks.add_argument("--utmos", metavar="DIR", help="a clone of SpeechMOS (tarepan/SpeechMOS) for UTMOS22 strong")
    hooks.add_argument("--utmos-weights", metavar="FILE", help="its state dict (utmos22_strong_step7459_v1.pt)")
    parser.set_defaults(func=run)
    return parser


def load_instruments(args: argparse.Namespace) -> Instruments:
    """The opt-in instruments named on the command line, loaded (each fails in one sentence)."""
    from . import instruments as inst

    if (args.utmos is None) != (args.utmos_weights is None):
        raise InputError("--utmos and --utmos-weights go together: the SpeechMOS clone and its state dict")
    return Instruments(
        whisper=inst.Whisper(args.whisper, args.device) if args.whisper else None,
        text_lm=inst.TextLM(args.text_lm, args.device) if args.text_lm else None,
        speaker_verifier=inst.SpeakerVerifier(args.speaker_verifier, args.device) if args.speaker_verifier else None,
        utmos=inst.UTMOS(args.utmos, args.utmos_weights, args.device) if args.utmos else None,
    )


def run(args: argparse.Namespace) -> dict:
    files = find_audio(args.prompts, args.limit)
    tools = load_instruments(args)  # before the model: a bad path fails fast
    lm = load_lm(args.model, args.device)
    results = evaluate_generation(lm, files, args.prompt_seconds, args.seconds, args.seed, args.num,
                                  args.top_p, args.temp, args.save_audio, instruments=tools)
    results = {"model": args.model or str(BUNDLED_LM), "prompts": str(args.prompts), **results}
    results["settings"]["device"] = args.device
    results["settings"]["instruments"] = {  # which checkpoints made the opt-in results
        "whisper": args.whisper, "text_lm": args.text_lm, "speaker_verifier": args.speaker_verifier,
        "utmos": args.utmos, "utmos_weights": args.utmos_weights}
    if args.output is None:
        print(json.dumps(jsonable(results), indent=2))
    else:
        write_json(args.output, jsonable(results))
        m = results["mean"]
        conf = "n/a" if m["pocketsphinx_confidence"] is None else f"{m['pocketsphinx_confidence']:.2f}"
        ppl = results["genppl"].get("trigram_pocketsphinx", {}).get("value")
        print(f"{args.output}: {results['num_continuations']} continuations; DNSMOS {m['dnsmos_ovrl']:.2f}, "
              f"speaker similarity (resemblyzer) {m['speaker_similarity_resemblyzer']:.3f}, pocketsphinx "
              f"{m['pocketsphinx_words_per_second']:.2f} words/s (confidence {conf}); prompt + continuation: "
              f"Auto-BLEU-2 (GSLM) {m['auto_bleu2_gslm_pocketsphinx']:.3f}, trigram perplexity "
              f"{'n/a' if ppl is None else f'{ppl:.0f}'}")
    return results
