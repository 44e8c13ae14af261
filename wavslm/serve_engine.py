"""The server's model side: limits, request settings, prompt decoding and generation sessions.

Nothing here knows about HTTP or WebSockets (that is `serve.py`); everything here is plain Python that
the tests can call directly. One `Engine` owns the model and the thread that runs it; each `Generation`
is one continuation, advanced 80 ms at a time on that thread.

Concurrency: every model call (prompt encoding, generation steps, closing a stream) runs on one model
thread, in the order asked. PyTorch is never entered from two threads at once (no oversubscription of
its intra-op pool, predictable step latency), and one thread allocates from one malloc arena, so the
memory of finished sessions is reused instead of stranded in per-thread arenas (measured: RSS back
within ~5 MiB of its baseline after 8 sessions, against +20 MiB with a pool of 8 threads and a lock).
Sessions that are generating are stepped together: `Engine.step` queues a session's request for its
next chunk, and the model thread advances every queued session with one batched step
(`batch_step.step_together`), so N sessions cost one step of a batch of N rather than N steps.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile as sf
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .audio import check_signal
from .batch_step import step_together
from .errors import InputError
from .generation import prompt_tokens
from .serve import Limits

if TYPE_CHECKING:
    from .lm import WavSLM

# Rates outside this range are either a corrupt header or nothing a microphone produces; soxr would
# spend a long time (or fail) on absurd ratios.
MIN_RATE, MAX_RATE = 4_000, 384_000
DEFAULT_TOP_P = 0.3


class ServeError(Exception):
    """A refusal the client should see: a stable `code`, one sentence, and the HTTP status it maps to."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def payload(self) -> dict:
        return {"code": self.code, "message": self.message}


class Settings(BaseModel):
    """Sampling settings; unknown fields are refused. Query strings (HTTP) are parsed leniently."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperature: float = Field(0.8, gt=0, le=10, description="softmax temperature")
    top_p: float | None = Field(None, ge=0, le=1, description=f"nucleus mass (default {DEFAULT_TOP_P}); 0 = greedy")
    top_k: int | None = Field(None, ge=1, description="sample among the k most likely tokens instead of top_p")
    seconds: float = Field(3.0, gt=0, description="continuation length in seconds")
    seed: int | None = Field(None, ge=0, lt=2**63, description="random seed (default: a fresh one, reported back)")

    @model_validator(mode="after")
    def _one_filter(self) -> Settings:
        if self.top_p is not None and self.top_k is not None:
            raise ValueError("give top_p or top_k, not both")
        return self

    def sampling(self) -> tuple[float | None, int | None]:
        """`(top_p, top_k)` as `generate_steps` takes them: top_p defaults to 0.3 unless top_k is given."""
        if self.top_k is not None:
            return None, self.top_k
        return (DEFAULT_TOP_P if self.top_p is None else self.top_p), None


class StartMessage(Settings):
    """The WebSocket's first message. Strict: JSON types must match exactly ("3" is not a number)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    type: Literal["start"]
    prompt_format: Literal["file", "pcm16"] = "file"
    sample_rate: int | None = Field(None, ge=MIN_RATE, le=MAX_RATE, description="rate of pcm16 prompts")
    output_format: Literal["f32", "s16"] = "f32"

    @model_validator(mode="after")
    def _rate_for_pcm(self) -> StartMessage:
        if self.prompt_format == "pcm16" and self.sample_rate is None:
            raise ValueError("a pcm16 prompt needs its sample_rate")
        return self


def validation_message(errors: list[dict]) -> str:
    """One sentence from pydantic's error list, e.g. "field 'seconds': Input should be greater than 0"."""
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
        parts.append(f"field '{loc}': {e['msg']}" if loc else e["msg"].removeprefix("Value error, "))
    return "; ".join(parts)


def _bad_audio(message: str) -> ServeError:
    return ServeError("bad_audio", message, 422)


def _too_long(seconds: float, limits: Limits) -> ServeError:
    return ServeError(
        "prompt_too_long", f"the prompt lasts {seconds:.1f} s; this server accepts at most {limits.max_prompt_secs:g} s", 413
    )


def timeout_error(limits: Limits, idle: bool) -> ServeError:
    if idle:
        return ServeError("idle_timeout", f"no data from the client for {limits.idle_timeout:g} s", 408)
    return ServeError("session_timeout", f"the session exceeded {limits.session_timeout:g} s", 408)


def check_upload_size(size: int, limits: Limits) -> None:
    if size > limits.max_upload_bytes:
        raise ServeError(
            "upload_too_big", f"the upload exceeds {limits.max_upload_bytes} bytes, this server's limit", 413
        )


def check_prompt_length(samples: int, sample_rate: int, limits: Limits) -> None:
    if samples / sample_rate > limits.max_prompt_secs:
        raise _too_long(samples / sample_rate, limits)


def decode_file(data: bytes, limits: Limits) -> tuple[torch.Tensor, int]:
    """An uploaded WAV/FLAC/OGG file's bytes -> mono `sig (1, N)` float32 and its rate.

    Decoded in memory from the bytes (never through a path); the duration is checked from the header
    before the samples are decoded, so a long file is refused without decoding it.
    """
    check_upload_size(len(data), limits)
    if not data:
        raise _bad_audio("the prompt is empty (0 bytes)")
    try:
        info = sf.info(io.BytesIO(data))
        if not MIN_RATE <= info.samplerate <= MAX_RATE:
            raise _bad_audio(f"the prompt's sample rate {info.samplerate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        check_prompt_length(info.frames, info.samplerate, limits)
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        reason = err.error_string.rstrip(".")
        raise _bad_audio(f"the prompt is not a readable WAV/FLAC/OGG file ({reason})") from err
    except (RuntimeError, TypeError, ValueError) as err:  # soundfile's other complaints about odd headers
        raise _bad_audio(f"the prompt is not a readable WAV/FLAC/OGG file ({err})") from err
    return _finish(audio.mean(axis=1, dtype=np.float32), sr, limits)


def decode_pcm16(data: bytes, sample_rate: int, limits: Limits) -> tuple[torch.Tensor, int]:
    """Raw mono 16-bit little-endian PCM at `sample_rate` -> `sig (1, N)` float32 in [-1, 1)."""
    if len(data) % 2:
        raise _bad_audio("the pcm16 prompt has an odd number of bytes (16-bit samples are 2 bytes each)")
    audio = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return _finish(audio, sample_rate, limits)


def _finish(audio: np.ndarray, sr: int, limits: Limits) -> tuple[torch.Tensor, int]:
    try:
        check_signal(audio, "the prompt")
    except InputError as err:
        raise _bad_audio(str(err)) from err
    check_prompt_length(audio.shape[-1], sr, limits)
    return torch.from_numpy(np.ascontiguousarray(audio)).reshape(1, -1), int(sr)


class Engine:
    """The shared model, the thread that runs it, and the count of open sessions."""

    def __init__(self, lm: WavSLM, limits: Limits, name: str = "model"):
        codec = lm._require_codec()
        self.lm, self.limits, self.name = lm, limits, name
        self.sample_rate_input = codec.sample_rate_input
        self.sample_rate_output = codec.sample_rate_output
        self.toks_per_step = lm.toks_per_step
        self.step_seconds = lm.toks_per_step / codec.frame_rate
        self.chunk_samples = round(self.step_seconds * codec.sample_rate_output)
        # The one thread for model calls (see the module docstring); sessions queue on it in FIFO order.
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wavslm-model")
        self._count_lock = threading.Lock()
        self.active = 0
        # Sessions waiting for their next chunk, stepped together by the next `_step_queued` job.
        self._queued: list[tuple[Generation, asyncio.Future]] = []
        self._queue_lock = threading.Lock()
        self.steps_run = self.rows_stepped = 0  # batched steps, and sessions advanced by them (GET /health)

    def acquire(self) -> None:
        """Take a session slot or raise `busy` (HTTP 503)."""
        with self._count_lock:
            if self.active >= self.limits.max_sessions:
                raise ServeError(
                    "busy", f"the server is busy ({self.limits.max_sessions} sessions running); try again shortly", 503
                )
            self.active += 1

    def release(self) -> None:
        with self._count_lock:
            self.active -= 1
            idle = self.active == 0
        if idle:  # behind any queued model work: give the freed activations back to the OS
            self.model_thread.submit(_return_free_memory)

    async def call(self, fn, *args):
        """Run `fn(*args)` on the model thread, behind the calls already queued, and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def step(self, gen: Generation) -> np.ndarray | None:
        """`gen`'s next chunk, computed on the model thread in one batch with every other session that
        asks before the batch starts; None once its requested length is out."""
        future = asyncio.get_running_loop().create_future()
        with self._queue_lock:
            self._queued.append((gen, future))
            first = len(self._queued) == 1
        if first:
            self.model_thread.submit(self._step_queued)
        return await future

    def _step_queued(self) -> None:
        """On the model thread: one batched step for every queued session."""
        with self._queue_lock:
            queued, self._queued = self._queued, []
        running = [(gen, fut) for gen, fut in queued if not fut.cancelled()]
        going = [(gen, fut) for gen, fut in running if not gen.done]
        try:
            chunks = Generation.step_all([gen for gen, _ in going])
            outcome = [(fut, chunk, None) for (_, fut), chunk in zip(going, chunks, strict=True)]
        except Exception as error:  # every session of the batch hears of it; the server keeps serving
            outcome = [(fut, None, error) for _, fut in going]
        outcome += [(fut, None, None) for gen, fut in running if gen.done]
        self.steps_run += bool(going)
        self.rows_stepped += len(going)
        for fut, chunk, error in outcome:
            fut.get_loop().call_soon_threadsafe(_settle, fut, chunk, error)

    def check_seconds(self, seconds: float) -> None:
        if round(seconds * self.sample_rate_output) < 1:
            raise ServeError("invalid_settings", f"seconds={seconds:g} is shorter than one sample", 422)
        if seconds > self.limits.max_gen_secs:
            raise ServeError(
                "continuation_too_long",
                f"seconds={seconds:g} exceeds this server's limit of {self.limits.max_gen_secs:g} s",
                422,
            )

    def open(self, sig: torch.Tensor, sample_rate: int, settings: Settings) -> Generation:
        """Encode the prompt and prepare a continuation (on `model_thread`: it runs the codec)."""
        self.check_seconds(settings.seconds)
        try:
            rows = prompt_tokens(self.lm, sig, sample_rate, None)
        except InputError as err:
            raise _bad_audio(str(err)) from err
        return Generation(self, rows, settings, sig.shape[-1] / sample_rate)

    def shutdown(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)


class Generation:
    """One continuation: a single-row `LiveSession` that has read the prompt, advanced one step per
    `step_all` call (with the other sessions of its batch), on the engine's model thread."""

    def __init__(self, engine: Engine, rows: list[torch.Tensor], settings: Settings, prompt_seconds: float):
        self.engine = engine
        self.seed = settings.seed if settings.seed is not None else secrets.randbits(31)
        # Enough whole steps to cover the request; the last chunk is trimmed to the exact length.
        self.total_samples = round(settings.seconds * engine.sample_rate_output)
        top_p, top_k = settings.sampling()
        self.live = engine.lm.live(1, top_p=top_p, top_k=top_k, temp=settings.temperature, seed=self.seed)
        self.live.feed_tokens(rows[0][None])
        self.prompt_seconds = prompt_seconds
        self.prompt_tokens = len(rows[0])
        self.samples = self.chunks = self.tokens = 0
        self.started = time.perf_counter()
        self.first_chunk: float | None = None

    @property
    def done(self) -> bool:
        return self.samples >= self.total_samples

    @staticmethod
    def step_all(gens: list[Generation]) -> list[np.ndarray]:
        """The next chunk `(n,)` float32 at the output rate of each of `gens` (none done), as one batch."""
        out = []
        for gen, (toks, audio) in zip(gens, step_together([g.live for g in gens]), strict=True):
            out.append(gen._account(toks, audio))
        return out

    def _account(self, toks: torch.Tensor, audio: torch.Tensor) -> np.ndarray:
        chunk = audio[0].float().cpu().numpy()[: self.total_samples - self.samples]
        self.samples += len(chunk)
        self.chunks += 1
        self.tokens += toks.shape[1]
        self.first_chunk = self.first_chunk or time.perf_counter() - self.started
        return chunk

    def close(self) -> None:
        """Release the session's stream state; safe to call twice."""
        self.live.close()

    def stats(self, cancelled: bool = False) -> dict:
        elapsed = time.perf_counter() - self.started
        seconds = self.samples / self.engine.sample_rate_output
        return {
            "chunks": self.chunks,
            "samples": self.samples,
            "tokens": self.tokens,
            "audio_seconds": round(seconds, 4),
            "elapsed_seconds": round(elapsed, 4),
            "rtf": round(elapsed / seconds, 4) if seconds else None,
            "first_chunk_ms": None if self.first_chunk is None else round(1000 * self.first_chunk, 1),
            "prompt_seconds": round(self.prompt_seconds, 4),
            "prompt_tokens": self.prompt_tokens,
            "seed": self.seed,
            "cancelled": cancelled,
        }


def _settle(future: asyncio.Future, chunk: np.ndarray | None, error: Exception | None) -> None:
    """On the event loop: hand a batched step's result to the session awaiting it (unless it gave up)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(chunk)


def to_bytes(chunk: np.ndarray, output_format: str) -> bytes:
    """A chunk as little-endian float32 (`f32`) or 16-bit PCM (`s16`) bytes."""
    if output_format == "s16":
        return (np.clip(chunk, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return chunk.astype("<f4").tobytes()


def _return_free_memory() -> None:
    """glibc keeps freed heap in its arenas; `malloc_trim` hands it back, so an idle server returns to its
    baseline memory. A no-op where the C library has no such call."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
