"""A small ctypes binding to the espeak-ng library shipped in the `espeakng-loader` wheel.

Only what the synthetic corpus needs: set a voice (language voice + `!v` variant), rate, pitch and pitch
range, and synthesize text to a float32 16 kHz mono numpy array; and the IPA phones of a text. Fully offline: the library and its data
come from `espeakng_loader.get_library_path()` / `get_data_path()`.

espeak-ng is a process-wide singleton with global voice and parameter state, so every call takes one
lock; parallelism comes from processes, not threads. Each utterance runs on a freshly loaded instance
with a seeded noise generator (see `_Espeak`), so the same text and voice always give the same samples,
whatever was said before.

    sig = synthesize("The dog runs.", language="en-us", variant="m3", rate=170)   # float32 (N,) at 16 kHz
"""

from __future__ import annotations

import _ctypes
import ctypes
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from ..errors import InputError

SAMPLE_RATE = 16_000

# espeak_AUDIO_OUTPUT: SYNCHRONOUS makes espeak_Synth return only once all audio went to the callback.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER and the espeakCHARS_UTF8 flag, from speak_lib.h.
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_CHARS_UTF8 = 1
# espeak_TextToPhonemes' phonememode: IPA (bit 1), phones separated by the character in bits 8-23.
_IPA_SPACED = 0x02 | (ord(" ") << 8)
_STRESS = str.maketrans("", "", "ˈˌ")
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# espeak-ng's own limits for these parameters (words per minute, 0-100 scales).
_MIN_RATE, _MAX_RATE = 80, 450

# espeak writes exact digital zeros between words and in stop closures. Log-spectral features of such
# frames are -inf-like outliers that wreck cepstral mean normalisation: with a faint noise floor
# pocketsphinx's WER on en-us+klatt4 falls from 47% to 21% (12 sentences), and codec / SSL features see
# a realistic input.
NOISE_DB = -54.0

_lock = threading.Lock()


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak language voice, a variant and prosody settings.

    `pitch` and `range` are espeak's 0-100 scales (50 = the variant's own base pitch and range);
    `rate` is in words per minute (espeak's default is 175).
    """

    name: str
    language: str = "en-us"
    variant: str | None = None
    pitch: int = 50
    range: int = 50
    rate: int = 175

    @property
    def espeak_name(self) -> str:
        return self.language if not self.variant else f"{self.language}+{self.variant}"


def _unload(lib: ctypes.CDLL) -> None:
    # dlclose drops the library's last reference, so the next dlopen maps its statics afresh.
    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if close is not None:
        close(lib._handle)


class _Espeak:
    """Where the library and its data are; `speak` runs one utterance on a freshly loaded instance.

    espeak-ng keeps state in statics that no call resets: the position in its pitch-flutter table, the
    glottal-cycle count that times its roughness, the Klatt synthesizer's leftover samples and filter
    memories. With one long-lived instance the same text and voice come out slightly different (a few
    samples longer, another waveform) depending on everything the process said before, and no corpus
    could be regenerated exactly. Loading the library afresh for each utterance (dlopen + initialise,
    about 4 ms) resets all of it; its noise generator, seeded from the clock, is seeded from the text.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise InputError("synthetic speech needs the espeakng-loader package: pip install 'wavslm[eval]'") from err
        self.library = espeakng_loader.get_library_path()
        self.data_path = espeakng_loader.get_data_path()
        self.variants = {p.name for p in (Path(self.data_path) / "voices" / "!v").iterdir() if p.is_file()}
        self.chunks: list[np.ndarray] = []
        # Kept alive here: ctypes frees the trampoline with the Python object, and espeak calls into it.
        self.callback = _SYNTH_CALLBACK(self._collect)

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = keep going

    def _load(self) -> tuple[ctypes.CDLL, int]:
        lib = ctypes.CDLL(self.library)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if sample_rate <= 0:
            _unload(lib)
            raise RuntimeError(f"espeak-ng failed to initialise with data from {self.data_path}")
        lib.espeak_SetSynthCallback(self.callback)
        return lib, sample_rate

    def phones(self, text: str, language: str) -> list[str]:
        """The IPA phones espeak would say for `text` in `language`, stress marks left out."""
        lib, _ = self._load()
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        try:
            if lib.espeak_SetVoiceByName(language.encode()) != 0:
                raise InputError(f"espeak-ng has no voice '{language}' in {self.data_path}")
            # It reads one clause per call and moves the pointer on; NULL once the text is used up.
            cursor, out = ctypes.c_char_p(text.encode("utf-8") + b"\0"), []
            while cursor.value:
                clause = lib.espeak_TextToPhonemes(ctypes.byref(cursor), _CHARS_UTF8, _IPA_SPACED)
                out += (clause or b"").decode("utf-8").translate(_STRESS).split()
        finally:
            lib.espeak_Terminate()
            _unload(lib)
        return out

    def speak(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        """`(int16 samples, sample rate)`: 22050 Hz for the bundled data."""
        # espeak silently ignores an unknown variant, so check for its file first.
        if voice.variant and voice.variant not in self.variants:
            raise InputError(f"espeak-ng has no voice variant '{voice.variant}' in {self.data_path}")
        lib, sample_rate = self._load()
        try:
            if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
                raise InputError(f"espeak-ng has no voice '{voice.language}' in {self.data_path}")
            # Set after the voice: these are relative to the voice's own base pitch and range.
            lib.espeak_SetParameter(_RATE, int(np.clip(voice.rate, _MIN_RATE, _MAX_RATE)), 0)
            lib.espeak_SetParameter(_PITCH, int(np.clip(voice.pitch, 0, 100)), 0)
            lib.espeak_SetParameter(_RANGE, int(np.clip(voice.range, 0, 100)), 0)
            lib.espeak_SetParameter(_VOLUME, 100, 0)
            data = text.encode("utf-8") + b"\0"
            lib.espeak_ng_SetRandSeed(zlib.crc32(data))  # aspiration/breath noise, else seeded by the clock
            self.chunks = []
            status = lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"espeak-ng failed to synthesize {text!r} (error {status})")
        finally:
            lib.espeak_Terminate()
            _unload(lib)
        chunks, self.chunks = self.chunks, []
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), sample_rate


_espeak: _Espeak | None = None


def _get() -> _Espeak:
    global _espeak
    if _espeak is None:
        _espeak = _Espeak()
    return _espeak


def data_path() -> Path:
    """The espeak-ng-data folder in use."""
    with _lock:
        return Path(_get().data_path)


def phones(text: str, language: str = "en-us") -> list[str]:
    """The IPA phones of `text` as espeak-ng says it in `language`, without stress marks:
    `phones("basket") -> ['b', 'æ', 's', 'k', 'ɪ', 't']`."""
    with _lock:
        return _get().phones(text, language)


def english_languages() -> list[str]:
    """Identifiers of the English language voices in the bundled data, sorted (e.g. 'en-us', 'en-029').

    The Shavian-alphabet voice is left out: it reads a different script.
    """
    folder = data_path() / "lang" / "gmw"
    names = {p.name.lower() for p in folder.iterdir() if p.name.lower().startswith("en")}
    return sorted(names - {"en-shaw"})


def variants() -> list[str]:
    """Names of every `!v` variant file in the bundled data, sorted."""
    with _lock:
        return sorted(_get().variants)


def trim_silence(sig: np.ndarray, pad: float = 0.1, threshold: float = 1e-3) -> np.ndarray:
    """Cut leading/trailing samples quieter than `threshold`, keeping `pad` seconds of each at 16 kHz."""
    loud = np.flatnonzero(np.abs(sig) > threshold)
    if loud.size == 0:
        return sig
    margin = int(pad * SAMPLE_RATE)
    return sig[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def normalize(sig: np.ndarray, rms_db: float = -20.0, peak: float = 0.95) -> np.ndarray:
    """Scale `sig` to an RMS of `rms_db` dBFS, lowered if needed so the peak stays below `peak`."""
    rms = float(np.sqrt(np.mean(sig.astype(np.float64) ** 2))) if sig.size else 0.0
    if rms == 0.0:
        return sig
    gain = min(10 ** (rms_db / 20) / rms, peak / float(np.abs(sig).max()))
    return (sig * gain).astype(np.float32)


def noise_floor(num_samples: int, seed: int, db: float = NOISE_DB) -> np.ndarray:
    """Deterministic white noise, float32 `(num_samples,)` at `db` dBFS RMS."""
    rng = np.random.default_rng(seed)
    return (10 ** (db / 20) * rng.standard_normal(num_samples)).astype(np.float32)


def synthesize(text: str, voice: Voice | None = None, noise_db: float | None = NOISE_DB,
               **settings) -> np.ndarray:
    """Speak `text` with `voice` (or `Voice(name="", **settings)`) as float32 `(N,)` at 16 kHz.

    The output is trimmed to 0.1 s of silence at each end, normalised to -20 dBFS RMS (so loudness does
    not tell voices apart) and given a faint noise floor at `noise_db` dBFS (None: none). Deterministic:
    the same text and voice give the same samples (the noise is seeded by both).

    Raises:
        InputError: empty text or an unknown language voice / variant.
    """
    if not text.strip():
        raise InputError("cannot synthesize empty text")
    voice = voice if voice is not None else Voice(name="", **settings)
    with _lock:
        pcm, sr = _get().speak(text, voice)
    if pcm.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice '{voice.espeak_name}'")
    sig = pcm.astype(np.float32) / 32768.0
    sig = soxr.resample(sig, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    sig = normalize(trim_silence(sig))
    if noise_db is not None:
        sig += noise_floor(sig.size, zlib.crc32(f"{voice}|{text}".encode()), noise_db)
    return sig
