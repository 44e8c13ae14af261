"""Audio I/O: real speech clips, generated files in every format, resampling and every bad-input path."""

import numpy as np
import pytest
import soundfile as sf
import torch

from wavslm import audio
from wavslm.audio import check_signal, load_audio, resample, save_audio
from wavslm.errors import InputError

LIBRI = "librispeech-dev-clean/84/84-121123-0000.wav"  # 16-bit PCM, 16 kHz
VOICEBANK_PCM16 = "voicebank-noisy-testset/p287_007.wav"  # 16-bit PCM, 48 kHz


def sines(freqs, sr=16000, secs=0.25, amp=0.5):
    """float32 (len(freqs), samples): one sine per channel."""
    t = np.arange(int(sr * secs)) / sr
    return np.stack([amp * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


def peak_hz(x: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(x.double() * torch.hann_window(x.shape[-1], dtype=torch.float64)).abs()
    return float(spec.argmax()) * sr / x.shape[-1]


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# --- real speech ---------------------------------------------------------------------------------


def test_load_librispeech_as_16_bit_and_float_wav(speech, tmp_path):
    pcm16, _ = sf.read(speech / LIBRI, dtype="float32")
    path = tmp_path / "float.wav"  # LibriSpeech as distributed in WAV form: 32-bit float samples
    sf.write(path, pcm16, 16000, subtype="FLOAT")
    torch.testing.assert_close(load_audio(speech / LIBRI)[0][0], torch.from_numpy(pcm16))
    sig, sr = load_audio(path)
    assert sr == 16000 and sig.dtype == torch.float32
    assert sig.shape == (1, sf.info(path).frames)
    ref, _ = sf.read(path, dtype="float32")
    torch.testing.assert_close(sig[0], torch.from_numpy(ref))


def test_load_voicebank_pcm16_48k_and_resample(speech):
    path = speech / VOICEBANK_PCM16
    sig, sr = load_audio(str(path))
    n = sf.info(path).frames
    assert sr == 48000 and sig.shape == (1, n) and sig.dtype == torch.float32
    assert 0 < sig.abs().max() < 1
    # 16-bit PCM is scaled by 1/32768: every sample is a whole number of steps.
    steps = sig * 32768
    torch.testing.assert_close(steps, steps.round())

    sig16, sr16 = load_audio(path, sample_rate=16000, mono=True)
    assert sr16 == 16000 and sig16.dtype == torch.float32
    assert sig16.shape[0] == 1 and abs(sig16.shape[1] - n / 3) <= 1
    torch.testing.assert_close(sig16, resample(sig, 48000, 16000))


# --- round trips through files written by soundfile ------------------------------------------------

# (suffix, subtype, absolute tolerance after the round trip)
FORMATS = [
    (".wav", "PCM_U8", 1 / 64),
    (".wav", "PCM_16", 1 / 16384),
    (".wav", "PCM_24", 1e-6),
    (".wav", "PCM_32", 1e-7),
    (".wav", "FLOAT", 0.0),
    (".wav", "DOUBLE", 0.0),
    (".flac", "PCM_16", 1 / 16384),
    (".flac", "PCM_24", 1e-6),
    (".ogg", "VORBIS", None),  # lossy: compared by spectrum below
]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(("suffix", "subtype", "atol"), FORMATS, ids=[f"{s[1:]}-{t}" for s, t, _ in FORMATS])
def test_load_generated_formats(tmp_path, suffix, subtype, atol, channels):
    ref = sines([440, 1000][:channels], sr=16000)
    path = tmp_path / f"x{suffix}"
    sf.write(path, ref.T, 16000, subtype=subtype)
    sig, sr = load_audio(path)
    assert sr == 16000 and sig.dtype == torch.float32 and sig.shape == ref.shape
    if atol is None:
        for c, f in enumerate([440, 1000][:channels]):
            assert abs(peak_hz(sig[c], sr) - f) <= 8
    else:
        torch.testing.assert_close(sig, torch.from_numpy(ref), atol=atol, rtol=0)


@pytest.mark.parametrize(("suffix", "subtype", "atol"), FORMATS, ids=[f"{s[1:]}-{t}" for s, t, _ in FORMATS])
def test_save_load_round_trip(tmp_path, suffix, subtype, atol):
    ref = torch.from_numpy(sines([300, 2000], sr=24000))
    path = tmp_path / f"y{suffix}"
    save_audio(path, ref, 24000, subtype=subtype)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (24000, 2, subtype)
    sig, sr = load_audio(path)
    assert sr == 24000 and sig.shape == ref.shape
    if atol is not None:
        torch.testing.assert_close(sig, ref, atol=atol, rtol=0)


def test_save_defaults_shapes_and_clipping(tmp_path):
    path = tmp_path / "new" / "deeper" / "z.wav"  # parent folders are created
    mono = np.array([0.0, 0.5, 2.0, -3.0], dtype=np.float64)  # (samples,) numpy, out of range
    save_audio(path, mono, 16000)
    assert sf.info(path).subtype == "PCM_16"
    sig, _ = load_audio(path)
    assert sig.shape == (1, 4)
    torch.testing.assert_close(sig[0], torch.tensor([0.0, 0.5, 32767 / 32768, -1.0]))
    assert listing(path.parent) == ["z.wav"]  # no temporary file left

    # bfloat16 tensor with a grad, overwriting the existing file
    bf = torch.full((2, 8), 0.25, dtype=torch.bfloat16, requires_grad=True)
    save_audio(str(path), bf, 8000)
    sig, sr = load_audio(path)
    assert sr == 8000 and sig.shape == (2, 8)
    torch.testing.assert_close(sig, torch.full((2, 8), 0.25))
    assert listing(path.parent) == ["z.wav"]


def test_mono_averages_channels(tmp_path):
    ref = sines([440, 1000])
    path = tmp_path / "stereo.flac"
    sf.write(path, ref.T, 16000, subtype="PCM_24")
    stereo, _ = load_audio(path)
    mono, sr = load_audio(path, mono=True)
    assert stereo.shape == (2, ref.shape[1]) and mono.shape == (1, ref.shape[1]) and sr == 16000
    torch.testing.assert_close(mono, stereo.mean(0, keepdim=True))
    # Already mono: unchanged.
    one, _ = load_audio(path, mono=True, sample_rate=16000)
    torch.testing.assert_close(one, mono)


# --- resampling --------------------------------------------------------------------------------------


def test_resample_keeps_frequency_and_length():
    x = torch.from_numpy(sines([1000], sr=48000, secs=0.5))[0]  # (N,)
    y = resample(x, 48000, 16000)
    assert y.dtype == torch.float32 and y.shape == (8000,)
    assert peak_hz(y, 16000) == pytest.approx(1000, abs=2)
    # Amplitude is kept in the pass band (edges aside, where the filter ramps in).
    assert y[1000:-1000].abs().max() == pytest.approx(0.5, abs=0.01)
    up = resample(y, 16000, 24000)
    assert up.shape == (12000,) and peak_hz(up, 24000) == pytest.approx(1000, abs=2)


def test_resample_batch_dtypes_and_identity():
    x = torch.randn(2, 3, 4800)
    y = resample(x, 48000, 16000)
    assert y.shape == (2, 3, 1600) and y.dtype == torch.float32
    torch.testing.assert_close(y[1, 2], resample(x[1, 2], 48000, 16000))
    assert resample(x, 16000, 16000) is x
    assert resample(x.double(), 48000, 16000).dtype == torch.float64
    assert resample(x.to(torch.bfloat16), 48000, 16000).dtype == torch.bfloat16
    assert resample(torch.zeros(3, 0), 48000, 16000).shape == (3, 0)


# --- bad input ---------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match=r"^audio file '.*nope\.wav' does not exist$"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(InputError, match=r"cannot read audio from '.*d\.wav': it is a directory"):
        load_audio(tmp_path / "d.wav")


def test_empty_files(tmp_path):
    (tmp_path / "zero_bytes.wav").write_bytes(b"")
    with pytest.raises(InputError, match=r"^audio file '.*zero_bytes\.wav' is empty \(0 bytes\)$"):
        load_audio(tmp_path / "zero_bytes.wav")
    sf.write(tmp_path / "no_samples.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(InputError, match=r"^audio file '.*no_samples\.wav' is empty \(0 samples\)$"):
        load_audio(tmp_path / "no_samples.wav")


def test_corrupt_and_non_audio_files(tmp_path):
    (tmp_path / "notes.wav").write_text("these are meeting notes, not audio\n" * 20)
    with pytest.raises(
        InputError, match=r"^cannot read audio from '.*notes\.wav': not a readable WAV/FLAC/OGG"
    ) as e:
        load_audio(tmp_path / "notes.wav")
    assert isinstance(e.value.__cause__, sf.LibsndfileError)  # chained, not swallowed

    sf.write(tmp_path / "good.wav", sines([440]).T, 16000)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "good.wav").read_bytes()[:20])  # header cut mid-'fmt '
    with pytest.raises(InputError, match=r"cannot read audio from '.*cut\.wav': not a readable .*fmt"):
        load_audio(tmp_path / "cut.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_samples(tmp_path, bad):
    x = sines([440]).T.copy()
    x[100, 0] = bad
    sf.write(tmp_path / "bad.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(InputError, match=r"^audio file '.*bad\.wav' contains NaN or infinite samples$"):
        load_audio(tmp_path / "bad.wav", sample_rate=8000)
    with pytest.raises(InputError, match=r"signal to save to '.*out\.wav' contains NaN or infinite samples"):
        save_audio(tmp_path / "out.wav", x.T, 16000)
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("rate", [0, -16000, float("nan"), True, "16k"])
def test_bad_sample_rates(speech, rate):
    x = torch.zeros(1, 160)
    with pytest.raises(InputError, match=r"^original sample rate must be a positive number, got "):
        resample(x, rate, 16000)
    with pytest.raises(InputError, match=r"^new sample rate must be a positive number, got "):
        resample(x, 16000, rate)
    with pytest.raises(InputError, match=r"target sample rate for '.*' must be a positive number"):
        load_audio(speech / LIBRI, sample_rate=rate)


def test_resample_rejects_non_float():
    with pytest.raises(InputError, match="floating-point tensor"):
        resample(torch.zeros(10, dtype=torch.int16), 16000, 8000)


Z = np.zeros(10, np.float32)


@pytest.mark.parametrize(
    ("name", "sig", "sr", "message"),
    [
        ("a.mp3", Z, 16000, r"unsupported format '\.mp3' \(use \.wav, \.flac or \.ogg\)"),
        ("noext", Z, 16000, r"unsupported format ''"),
        ("a.wav", Z.astype(np.int16), 16000, r"expected floating-point samples, got int16"),
        ("a.wav", torch.zeros(10, dtype=torch.int64), 16000, r"floating-point samples, got torch\.int64"),
        ("a.wav", np.zeros((1, 2, 10)), 16000, r"expected shape .* got \(1, 2, 10\)"),
        ("a.wav", np.zeros((1000, 2)), 16000, r"pass \(channels, samples\), not \(samples, channels\)"),
        ("a.wav", np.zeros((2, 0)), 16000, r"^signal to save to '.*a\.wav' is empty \(0 samples\)$"),
        ("a.wav", Z, 0, r"^sample rate for '.*a\.wav' must be a positive number, got 0$"),
        ("a.wav", Z, 16000.5, r"16000\.5 is not a whole number of Hz"),
        ("a.ogg", Z, 300000, r"OGG supports sample rates up to 200000 Hz"),  # libvorbis would segfault
        ("a.flac", np.zeros((9, 10)), 16000, r"FLAC holds at most 8 channels"),
    ],
)
def test_save_rejects_bad_input_and_writes_nothing(tmp_path, name, sig, sr, message):
    with pytest.raises(InputError, match=message) as e:
        save_audio(tmp_path / name, sig, sr)
    assert f"{name}'" in str(e.value)  # names the file
    assert listing(tmp_path) == []


def test_save_bad_subtype(tmp_path):
    with pytest.raises(InputError, match=r"subtype VORBIS is not valid for WAV"):
        save_audio(tmp_path / "a.wav", np.zeros(10, np.float32), 16000, subtype="vorbis")


def test_atomic_save_cleans_up_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.wav"
    save_audio(target, np.full(100, 0.1, np.float32), 16000)
    before = target.read_bytes()

    def half_write(file, data, samplerate, **kwargs):
        with open(file, "wb") as f:
            f.write(b"RIFF\x00\x00")  # the beginning of a file, then the disk "fills up"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio.sf, "write", half_write)
    with pytest.raises(OSError, match="No space left on device") as e:  # not bad input: an OSError naming the file
        save_audio(target, np.zeros(100, np.float32), 16000)
    assert e.value.filename == str(target) and e.value.errno == 28
    assert listing(tmp_path) == ["keep.wav"] and target.read_bytes() == before

    # Anything else (here a Ctrl-C mid-write) propagates unchanged but still removes the temporary file.
    def interrupted(file, *args, **kwargs):
        open(file, "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(audio.sf, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_audio(tmp_path / "new.wav", np.zeros(100, np.float32), 16000)
    assert listing(tmp_path) == ["keep.wav"]


def test_check_signal_on_tensors():
    check_signal(torch.zeros(2, 3), "x")
    with pytest.raises(InputError, match=r"^prompt is empty \(0 samples\)$"):
        check_signal(torch.zeros(1, 0), "prompt")
    with pytest.raises(InputError, match=r"^prompt contains NaN or infinite samples$"):
        check_signal(torch.tensor([0.0, float("nan")]), "prompt")
