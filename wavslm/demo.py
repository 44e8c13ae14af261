"""`wavslm demo`: continue the bundled prompts with the bundled model, streaming to disk, and show the result.

For each prompt (a synthetic utterance in a voice the model never heard, and a real LibriSpeech utterance)
it writes into `OUT/<prompt>/`: `prompt.wav`, `continuation.wav` (written 80 ms at a time as it is
generated), `prompt_continuation.wav`, a spectrogram image of each, and in `OUT/`: `report.json` and
`report.md` (durations, real-time factor, time to first audio, DNSMOS, speaker similarity prompt vs
continuation). Everything is written to a hidden temporary folder beside `OUT` and moved into place at
the end. The images and the two scores need the `eval` extra; without it the demo writes the audio and
the timings and says what it left out.
"""

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from .audio import WavStreamWriter, load_audio, resample, save_audio
from .errors import InputError
from .eval.metrics import dnsmos, speaker_similarity
from .generation import generate_steps, prompt_tokens
from .io import write_folder
from .pretrained import PROMPTS, load_lm

log = logging.getLogger("wavslm.demo")

# What the demo shows only with the `eval` extra installed: module -> what it gives.
WITH_EVAL_EXTRA = {"matplotlib": "spectrogram images", "speechmos": "DNSMOS", "resemblyzer": "speaker similarity"}
DEMO_PROMPTS = {  # name -> (file, what it is)
    "synthetic": ("synthetic.wav", "synthetic speech (espeak-ng) in a voice held out from the training corpus"),
    "real": ("real.wav", "a real LibriSpeech dev-clean utterance (speaker 84), CC BY 4.0"),
}


def spectrogram_png(path: Path, sig: np.ndarray, sample_rate: int, title: str) -> None:
    """A log-magnitude spectrogram (25 ms Hann windows, 5 ms hop, 0 to 8 kHz) as a PNG image."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    n_fft, hop = int(0.025 * sample_rate), int(0.005 * sample_rate)
    padded = np.pad(sig.astype(np.float64), (0, max(0, n_fft - len(sig))))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    db = 10 * np.log10(power + 1e-10)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    keep = freqs <= 8000
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    ax.imshow(db[:, keep].T, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
              extent=(0, len(sig) / sample_rate, 0, freqs[keep][-1] / 1000))
    ax.set(xlabel="time (s)", ylabel="kHz", title=title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def continue_prompt(lm, sig: torch.Tensor, sample_rate: int, out: Path, seconds: float, seed: int,
                    top_p: float, temp: float) -> dict:
    """Stream a continuation of `sig (1, N)` into `out/continuation.wav`; return its timings."""
    rate, C = lm.codec.sample_rate_output, lm.toks_per_step
    steps = max(1, int(seconds * lm.codec.frame_rate) // C)
    start = time.perf_counter()
    toks = prompt_tokens(lm, sig, sample_rate, None)
    encoded = time.perf_counter()
    writer, chunks, first = WavStreamWriter([out / "continuation.wav"], rate), [], None
    try:
        for _, audio in generate_steps(lm, toks, steps, top_p, None, temp, seed):
            first = first if first is not None else time.perf_counter() - encoded
            writer.write(audio)
            chunks.append(audio[0].cpu())
        writer.close()
    finally:
        writer.abort()
    elapsed = time.perf_counter() - encoded
    audio_seconds = steps * C / lm.codec.frame_rate
    return {"continuation": torch.cat(chunks), "encode_seconds": encoded - start, "generate_seconds": elapsed,
            "continuation_seconds": audio_seconds, "real_time_factor": elapsed / audio_seconds,
            "first_audio_ms": first * 1000}


def run_demo(out_dir: str | os.PathLike = "demo_out", model: str | None = None, seconds: float = 5.0,
             seed: int = 0, top_p: float = 0.8, temp: float = 0.9, device: str = "cpu") -> dict:
    lm = load_lm(model, device)
    rate = lm.codec.sample_rate_output
    missing = {module: what for module, what in WITH_EVAL_EXTRA.items() if importlib.util.find_spec(module) is None}
    report = {"model": model or "bundled (wavslm/assets/tiny/lm)", "seed": seed, "top_p": top_p, "temp": temp,
              "sample_rate": rate, "prompts": {}}
    if missing:
        report["left_out"] = f"{', '.join(missing.values())}: install the eval extra, pip install 'wavslm[eval]'"
        log.warning("the demo leaves out %s", report["left_out"])
    with write_folder(out_dir) as tmp:
        for name, (filename, what) in DEMO_PROMPTS.items():
            path = PROMPTS / filename
            if not path.is_file():
                raise InputError(f"the bundled prompt '{path}' is missing; reinstall from a full clone")
            sig, sr = load_audio(path, mono=True)
            folder = tmp / name
            folder.mkdir(parents=True)
            result = continue_prompt(lm, sig, sr, folder, seconds, seed, top_p, temp)
            cont = result.pop("continuation").numpy()
            prompt = resample(sig, sr, rate)[0].numpy()
            save_audio(folder / "prompt.wav", prompt[None], rate)
            full = np.concatenate([prompt, cont])
            save_audio(folder / "prompt_continuation.wav", full[None], rate)
            for stem, audio, title in (("prompt", prompt, f"{name} prompt"), ("continuation", cont, "continuation"),
                                       ("prompt_continuation", full, "prompt | continuation")):
                if "matplotlib" not in missing:
                    spectrogram_png(folder / f"{stem}.png", audio, rate, title)
            report["prompts"][name] = {
                "what": what, "prompt_seconds": len(prompt) / rate, **result,
                "dnsmos": None if "speechmos" in missing else dnsmos(cont, rate),
                "speaker_similarity_prompt_continuation":
                    None if "resemblyzer" in missing else speaker_similarity(prompt, cont, rate),
            }
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(_markdown(report))
    return report


def _markdown(report: dict) -> str:
    lines = [f"# wavslm demo\n\nModel: {report['model']}; sampling: top-p {report['top_p']}, temperature "
             f"{report['temp']}, seed {report['seed']}; audio at {report['sample_rate']} Hz.\n",
             "| prompt | prompt s | continuation s | real-time factor | first audio ms | DNSMOS ovrl | "
             "speaker similarity |", "|---|---|---|---|---|---|---|"]
    for name, r in report["prompts"].items():
        lines.append(f"| {name} | {r['prompt_seconds']:.2f} | {r['continuation_seconds']:.2f} | "
                     f"{r['real_time_factor']:.3f} | {r['first_audio_ms']:.0f} | {_score(r['dnsmos'], 'ovrl')} | "
                     f"{_score(r['speaker_similarity_prompt_continuation'])} |")
    lines.append("\nListen: `<prompt>/prompt_continuation.wav` (the prompt, then the model's continuation); "
                 "look: `<prompt>/*.png`.\n")
    if "left_out" in report:
        lines.append(f"Left out: {report['left_out']}.\n")
    return "\n".join(lines)


def _score(value: dict | float | None, key: str | None = None) -> str:
    """A score for the report, or a dash when the eval extra that computes it is not installed."""
    if value is None:
        return "—"
    return f"{value[key] if key else value:.2f}"
