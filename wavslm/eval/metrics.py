"""Speech quality metrics: small pure functions on one signal (or a pair) and its sample rate.

Every function takes 1-D float signals (numpy arrays or tensors; a `(1, N)` row is accepted) with
samples nominally in [-1, 1] and a sample rate, resamples to the rate its model wants (16 kHz for all
of them) and returns plain Python numbers, so results serialise to JSON as they are.

- `pesq_wb`:            wide-band PESQ (ITU-T P.862.2), MOS-LQO in [1.04, 4.64]; higher is better.
- `stoi`:               short-time objective intelligibility, a mean correlation, in [-1, 1] (speech: ~[0.3, 1]).
- `mel_distance`:       mean L1 distance of log-mel spectrograms (`MEL_SETTINGS`); 0 for identical signals.
- `voiced_share`:       the share of a signal's pYIN frames that are voiced.
- `pitch`:              pYIN tracks of both (`pitch.PYIN_SETTINGS`): voicing decision error, gross pitch error,
                        F0 RMSE in cents, and the voiced share of each.
- `dnsmos`:             DNSMOS P.835 (sig, bak, ovrl) and P.808 MOS, non-intrusive, roughly [1, 5].
- `speaker_similarity`: cosine of resemblyzer utterance embeddings, in [-1, 1].
- `transcribe`, `transcribe_words`: pocketsphinx (US English acoustic model and LM shipped in its wheel).
- `wer`:                word error rate after lowercasing and stripping punctuation (jiwer).
- `codebook_usage`, `bitrate`: token statistics of a codec.

The models (DNSMOS ONNX, resemblyzer, pocketsphinx) ship inside their wheels: nothing is downloaded. Each
is loaded on first use and cached (`functools.lru_cache`), so the first call pays the start-up cost.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections import Counter

import numpy as np
import torch

from ..audio import resample
from ..errors import InputError
from ..pitch import PYIN_SETTINGS, track
from ..pitch import errors as pitch_errors

RATE = 16000  # every metric model here works at 16 kHz

# PESQ and STOI score a signal pair frame by frame and need a few hundred milliseconds of speech:
# PESQ's utterance detector and STOI's 30-frame (384 ms at 10 kHz) analysis window both give up below.
MIN_PAIR_SECONDS = 0.5
# DNSMOS, resemblyzer and pocketsphinx cope with short audio, but a few frames say nothing useful.
MIN_SECONDS = 0.1

# Log-mel settings of `mel_distance`: 64 ms Hann windows every 16 ms at 16 kHz, 80 Slaney-scaled mel bands
# from 0 to 8 kHz over the magnitude (not power) spectrum, log10 with a floor of 1e-5.
MEL_SETTINGS = {"sample_rate": RATE, "n_fft": 1024, "hop_length": 256, "n_mels": 80, "fmin": 0.0, "fmax": 8000.0,
                "power": 1.0, "log_floor": 1e-5}

_DNSMOS_WINDOW = 9.01  # seconds of audio per DNSMOS window

_FILLERS = re.compile(r"^(<.*>|\[.*\])$")  # <s>, </s>, <sil>, [NOISE], ...: not words
_ALTERNATE = re.compile(r"\(\d+\)$")  # "the(2)": the second pronunciation of "the"


# ---- input handling ---------------------------------------------------------------------------------

def _mono16k(sig, sr: int, what: str, minimum: float = MIN_SECONDS) -> np.ndarray:
    """`sig (N,)` or `(1, N)` at `sr` -> float32 numpy `(M,)` at 16 kHz, checked for emptiness, NaN and length."""
    if isinstance(sig, np.ndarray):
        sig = torch.from_numpy(np.ascontiguousarray(sig))
    if not isinstance(sig, torch.Tensor) or not sig.is_floating_point():
        raise InputError(f"the {what} must be a float signal (numpy array or tensor)")
    sig = sig.detach().cpu().float()
    if sig.ndim == 2 and sig.shape[0] == 1:
        sig = sig[0]
    if sig.ndim != 1:
        raise InputError(f"the {what} must be one channel (N,) or (1, N), got shape {tuple(sig.shape)}")
    if sig.numel() == 0:
        raise InputError(f"the {what} is empty (0 samples)")
    if not torch.isfinite(sig).all():
        raise InputError(f"the {what} contains NaN or infinite samples")
    out = resample(sig, sr, RATE).numpy()
    if len(out) < minimum * RATE:
        raise InputError(f"the {what} lasts {len(out) / RATE:.3f} s; this metric needs at least {minimum:g} s")
    return out


def _check_not_silent(x: np.ndarray, what: str) -> None:
    if not np.abs(x).max() > 0:
        raise InputError(f"the {what} is silent (all samples are 0)")


def _pair16k(ref, deg, sr: int, minimum: float) -> tuple[np.ndarray, np.ndarray]:
    """Both signals at 16 kHz, trimmed to the shorter one (codecs may add or drop a few samples at the end)."""
    ref = _mono16k(ref, sr, "reference signal", 0.0)
    deg = _mono16k(deg, sr, "degraded signal", 0.0)
    n = min(len(ref), len(deg))
    if n < minimum * RATE:
        raise InputError(f"the signal pair overlaps for {n / RATE:.3f} s; this metric needs at least {minimum:g} s")
    return ref[:n], deg[:n]


# ---- intrusive metrics (a reference and a degraded signal) ------------------------------------------

def pesq_wb(ref, deg, sr: int) -> float:
    """Wide-band PESQ MOS-LQO of `deg` against `ref` (both at `sr`), in [1.04, 4.64]."""
    from pesq import PesqError, pesq

    ref, deg = _pair16k(ref, deg, sr, MIN_PAIR_SECONDS)
    _check_not_silent(ref, "reference signal")
    try:
        return float(pesq(RATE, ref, deg, "wb"))
    except (PesqError, ValueError) as err:  # "No utterances detected", or NaN inside it for near-silence
        reason = err.args[0] if err.args else str(err)
        reason = reason.decode() if isinstance(reason, bytes) else reason
        raise InputError(f"PESQ cannot score this pair: {reason}") from err


def stoi(ref, deg, sr: int) -> float:
    """STOI of `deg` against `ref` (both at `sr`; trimmed to the shorter), in [-1, 1]."""
    from pystoi import stoi as _stoi

    ref, deg = _pair16k(ref, deg, sr, MIN_PAIR_SECONDS)
    _check_not_silent(ref, "reference signal")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = float(_stoi(ref, deg, RATE, extended=False))
    # pystoi warns and returns 1e-5 when too little remains after dropping the reference's silent frames.
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise InputError("STOI cannot score this pair: the reference holds under 384 ms of non-silent audio")
    return score


def log_mel(sig, sr: int) -> np.ndarray:
    """The log10 magnitude mel spectrogram `(n_mels, frames)` of `sig` with `MEL_SETTINGS`."""
    import librosa

    s = MEL_SETTINGS
    x = _mono16k(sig, sr, "signal", 0.0)
    mel = librosa.feature.melspectrogram(
        y=x, sr=RATE, n_fft=s["n_fft"], hop_length=s["hop_length"], n_mels=s["n_mels"],
        fmin=s["fmin"], fmax=s["fmax"], power=s["power"], center=True, window="hann",
    )
    return np.log10(np.maximum(mel, s["log_floor"]))


def mel_distance(ref, deg, sr: int) -> float:
    """Mean absolute difference of the `log_mel` spectrograms of `ref` and `deg` (trimmed to the shorter)."""
    ref, deg = _pair16k(ref, deg, sr, MIN_SECONDS)
    return float(np.abs(log_mel(ref, RATE) - log_mel(deg, RATE)).mean())


def voiced_share(sig, sr: int) -> float:
    """The share of `sig`'s pYIN frames (`PYIN_SETTINGS`) that are voiced: 0 for a whisper or noise."""
    settings = {k: v for k, v in PYIN_SETTINGS.items() if k != "sample_rate"}
    return float(track(_mono16k(sig, sr, "signal"), RATE, **settings)[1].mean())


def pitch(ref, deg, sr: int) -> dict[str, float | None]:
    """Pitch and voicing of `deg` against `ref` (trimmed to the shorter), from pYIN tracks with
    `PYIN_SETTINGS`: `{"vde", "gpe", "f0_rmse_cents", "voiced_ref", "voiced_deg"}` (see `wavslm.pitch`)."""
    ref, deg = _pair16k(ref, deg, sr, MIN_SECONDS)
    settings = {k: v for k, v in PYIN_SETTINGS.items() if k != "sample_rate"}
    return pitch_errors(*track(ref, RATE, **settings), *track(deg, RATE, **settings))


# ---- non-intrusive metrics ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _dnsmos_model():
    import os

    import onnxruntime as ort
    import speechmos
    from speechmos.dnsmos import DNSMOS

    class _DNSMOS(DNSMOS):
        """speechmos' DNSMOS with CPU sessions whose idle threads sleep instead of spinning: spinning
        threads starve everything else on a busy or shared machine and make it several times slower."""

        def __init__(self, primary_model_path: str, p808_model_path: str):
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            self.primary_model_path = primary_model_path
            self.onnx_sess = ort.InferenceSession(primary_model_path, options, providers=["CPUExecutionProvider"])
            self.p808_onnx_sess = ort.InferenceSession(p808_model_path, options, providers=["CPUExecutionProvider"])

    folder = os.path.join(os.path.dirname(speechmos.__file__), "dnsmos_models")
    return _DNSMOS(os.path.join(folder, "sig_bak_ovr.onnx"), os.path.join(folder, "model_v8.onnx"))


def dnsmos(sig, sr: int) -> dict[str, float]:
    """DNSMOS of `sig`: `{"ovrl", "sig", "bak", "p808"}` mean opinion scores (about 1 = bad to 5 = excellent).

    Microsoft's reference procedure, as in speechmos: a clip shorter than the 9.01 s window is doubled
    until it fills it, windows start every second, and the scores are averaged over windows.
    """
    x = np.clip(_mono16k(sig, sr, "signal"), -1.0, 1.0)  # the models were trained on [-1, 1] audio
    model = _dnsmos_model()
    window, period = int(_DNSMOS_WINDOW * RATE), len(x)
    while len(x) < window:
        x = np.concatenate([x, x])
    hops = int(np.floor(len(x) / RATE) - _DNSMOS_WINDOW) + 1
    # Doubled audio repeats every `period` samples, so windows whose starts agree modulo the period are
    # identical: score each distinct window once and weight it by its count (same result, up to 4x faster).
    starts = Counter(h * RATE % period if period < window else h * RATE for h in range(hops))
    totals = np.zeros(4)
    for start, count in starts.items():
        seg = x[start : start + window].astype(np.float32)
        mel = model.audio_melspec(audio=seg[:-160]).astype(np.float32)[None]
        p808 = model.p808_onnx_sess.run(None, {"input_1": mel})[0][0][0]
        raw = model.onnx_sess.run(None, {"input_1": seg[None]})[0][0]
        sig_mos, bak_mos, ovrl_mos = model.get_polyfit_val(*raw, False)
        totals += count * np.array([ovrl_mos, sig_mos, bak_mos, p808], dtype=np.float64)
    ovrl, sig_, bak, p808 = (totals / hops).tolist()
    return {"ovrl": ovrl, "sig": sig_, "bak": bak, "p808": p808}


@functools.lru_cache(maxsize=1)
def _voice_encoder():
    with warnings.catch_warnings():  # resemblyzer and webrtcvad import deprecated scipy/setuptools names
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from resemblyzer import VoiceEncoder

        return VoiceEncoder("cpu", verbose=False)


def speaker_embedding(sig, sr: int) -> np.ndarray:
    """The resemblyzer utterance embedding `(256,)` (unit norm) of `sig`."""
    encoder = _voice_encoder()
    from resemblyzer.audio import normalize_volume, trim_long_silences
    from resemblyzer.hparams import audio_norm_target_dBFS

    x = _mono16k(sig, sr, "signal")
    _check_not_silent(x, "signal")  # a voice embedding of silence is undefined (resemblyzer divides by 0)
    x = normalize_volume(x, audio_norm_target_dBFS, increase_only=True)
    trimmed = trim_long_silences(x)
    # The voice activity detector may find no voice at all in generated audio: embed the whole signal then.
    return encoder.embed_utterance(trimmed if len(trimmed) >= MIN_SECONDS * RATE else x)


def speaker_similarity(a, b, sr: int) -> float:
    """Cosine similarity of the resemblyzer embeddings of `a` and `b` (both at `sr`), in [-1, 1]."""
    return cosine(speaker_embedding(a, sr), speaker_embedding(b, sr))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


# ---- speech recognition -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _decoder():
    from pocketsphinx import Decoder

    return Decoder(loglevel="FATAL")  # the default US English model; quiet


def transcribe_words(sig, sr: int) -> list[tuple[str, float]]:
    """Recognise `sig` as one utterance: `[(word, posterior), ...]`, fillers and silences left out.

    The posterior (0-1) is pocketsphinx's lattice posterior of the word, a confidence.
    """
    x = _mono16k(sig, sr, "signal")
    pcm = (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(pcm, no_search=False, full_utt=True)
    decoder.end_utt()
    words = []
    for seg in decoder.seg():
        if not _FILLERS.match(seg.word):
            words.append((_ALTERNATE.sub("", seg.word), float(seg.prob)))
    return words


def transcribe(sig, sr: int) -> str:
    """The pocketsphinx transcript of `sig` (lower case, words separated by single spaces; "" for silence)."""
    return " ".join(word for word, _ in transcribe_words(sig, sr))


def normalise_text(text: str) -> str:
    """Lowercase, drop punctuation (apostrophes inside words stay: "don't"), collapse spaces."""
    text = re.sub(r"[^\w\s']", " ", text.lower())
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes
    return " ".join(text.replace("_", " ").split())


def wer(reference_text: str, hypothesis_text: str) -> float:
    """Word error rate of `hypothesis_text` against `reference_text` after `normalise_text` (>= 0, may exceed 1)."""
    import jiwer

    ref, hyp = normalise_text(reference_text), normalise_text(hypothesis_text)
    if not ref:
        raise InputError("WER needs a reference with at least one word")
    if not hyp:
        return 1.0  # every reference word deleted
    return float(jiwer.wer(ref, hyp))


# ---- token statistics --------------------------------------------------------------------------------

def codebook_usage(toks, vocab_size: int) -> dict[str, float]:
    """Statistics of the token histogram of `toks` (any shape, ints in [0, vocab_size)).

    Returns `entropy_bits` (of the empirical token distribution), `normalised_entropy` (divided by
    log2(vocab_size): 1 when every code is equally used) and `used_share` (codes seen at least once / vocab_size).
    """
    if isinstance(toks, torch.Tensor):
        toks = toks.detach().cpu().numpy()
    toks = np.asarray(toks).reshape(-1)
    if vocab_size < 2:
        raise InputError(f"vocab_size must be at least 2, got {vocab_size}")
    if toks.size == 0:
        raise InputError("codebook usage needs at least one token")
    if toks.dtype.kind not in "iu" or toks.min() < 0 or toks.max() >= vocab_size:
        raise InputError(f"tokens must be integers in [0, {vocab_size})")
    counts = np.bincount(toks, minlength=vocab_size)
    p = counts[counts > 0] / toks.size
    entropy = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0
    return {
        "entropy_bits": entropy,
        "normalised_entropy": entropy / math.log2(vocab_size),
        "used_share": float((counts > 0).sum() / vocab_size),
    }


def bitrate(frame_rate: float, vocab_size: int) -> float:
    """Bits per second of one token stream: `frame_rate * log2(vocab_size)` (50 Hz x 16 bits = 800 b/s)."""
    if frame_rate <= 0 or vocab_size < 2:
        raise InputError(f"bitrate needs a positive frame rate and vocab_size >= 2, got {frame_rate}, {vocab_size}")
    return float(frame_rate * math.log2(vocab_size))
