"""The server's model side: request settings, prompt decoding, the model thread and its generations.

Nothing here knows about HTTP or WebSockets (that is `app` and `ws`); everything here is plain Python that
the tests can call directly. One `Engine` owns the model and the thread that runs it; each `Generation`
is one continuation.

Concurrency: every model call runs on one model thread, in the order asked. PyTorch is never entered
from two threads at once (no oversubscription of its intra-op pool, predictable step latency), and one
thread allocates from one malloc arena, so the memory of finished sessions is reused instead of
stranded in per-thread arenas. Prompts that arrive while the thread is busy are read together
(`generation.open_sessions`: one batch per prompt length), and a prompt that arrives while other
sessions are still sending theirs waits for them, `gather_s` at most, so that prompts sent together are
read in one batch rather than the first alone and the rest behind it. Every generating session is a member of one
`LiveBatch`, stepped as a whole: one step job advances all of them by 80 ms with no copy of their
caches, then queues the next, so prompts and closes that arrived meanwhile are served between two
steps. Each generation's chunks wait in its own queue until its client takes them.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile as sf
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..audio import check_signal, resample
from ..errors import InputError
from ..generation import LiveBatch, LiveSession, Sampling, open_sessions, prompt_tokens
from ..generation.sampling import DEFAULT_TOP_P
from ..lm import WavSLM
from .limits import Limits

if TYPE_CHECKING:
    from ..onnx_runtime import OnnxLive, OnnxWavSLM

log = logging.getLogger("wavslm.serve")

# Rates outside this range are either a corrupt header or nothing a microphone produces; soxr would
# spend a long time (or fail) on absurd ratios.
MIN_RATE, MAX_RATE = 4_000, 384_000

# How long a queued prompt waits for sessions still sending theirs. Measured (`bench/serve_load.py
# --sessions 8`, 2-core Intel Xeon): 8 prompts sent at once arrive within ~30 ms; read as the first alone
# and 7 behind it, the first waited 87 ms for its own reading and the others behind it.
GATHER_S = 0.05


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

    def sampling(self) -> Sampling:
        """The generation's sampling: top_p defaults to 0.3 unless top_k is given."""
        return Sampling(self.temperature, self.top_p, self.top_k)


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


class TorchModel:
    """The engine's view of a `WavSLM`: its rates, prompts read together, live sessions and their batch.
    `onnx_runtime.OnnxWavSLM` offers the same for graphs exported with `wavslm export onnx`."""

    def __init__(self, lm: WavSLM):
        codec = lm.require_codec()
        self.lm = lm
        self.sample_rate_input, self.sample_rate_output = codec.sample_rate_input, codec.sample_rate_output
        self.frame_rate, self.toks_per_step = codec.frame_rate, lm.toks_per_step

    def prompt_rows(self, sigs: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        return prompt_tokens(self.lm, sigs, sample_rate, None)

    def open_sessions(self, rows: list[torch.Tensor], samplings: list[Sampling], seeds: list[int | None]):
        return open_sessions(self.lm, rows, samplings, seeds)

    def batch(self) -> LiveBatch:
        return LiveBatch(self.lm)


class Engine:
    """The shared model, the thread that runs it, the batch of generating sessions, and the session count."""

    def __init__(self, lm: WavSLM | OnnxWavSLM, limits: Limits, name: str = "model", prompt_threads: int | None = None):
        self.model = TorchModel(lm) if isinstance(lm, WavSLM) else lm
        # Torch threads while prompts are read (a batch of whole prompts: more cores pay); steps keep the
        # process's setting (one 80 ms chunk per session: spinning workers would cost more than they give).
        self.prompt_threads = prompt_threads
        self.limits, self.name = limits, name
        self.sample_rate_input = self.model.sample_rate_input
        self.sample_rate_output = self.model.sample_rate_output
        self.toks_per_step = self.model.toks_per_step
        self.step_seconds = self.toks_per_step / self.model.frame_rate
        self.chunk_samples = round(self.step_seconds * self.sample_rate_output)
        # The one thread for model calls (see the module docstring); its jobs run in FIFO order.
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wavslm-model")
        self._count_lock = threading.Lock()
        self.active = 0
        # Prompts waiting to be read, taken together by the next `_open_queued` job.
        self._opening: list[tuple[tuple, asyncio.Future]] = []
        self._open_lock = threading.Lock()
        # Event loop only: sessions sending their prompt, and the timer of queued prompts waiting for them.
        self.gather_s = GATHER_S
        self._uploading = 0
        self._open_timer: asyncio.TimerHandle | None = None
        # Model thread only: the batch, its generations by session, and generations waiting to join it.
        self.batch = self.model.batch()
        self._members: dict[int, Generation] = {}
        self._joining: list[Generation] = []
        self._step_queued = False
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

    def check_seconds(self, seconds: float) -> None:
        if round(seconds * self.sample_rate_output) < 1:
            raise ServeError("invalid_settings", f"seconds={seconds:g} is shorter than one sample", 422)
        if seconds > self.limits.max_gen_secs:
            raise ServeError(
                "continuation_too_long",
                f"seconds={seconds:g} exceeds this server's limit of {self.limits.max_gen_secs:g} s",
                422,
            )

    # ---- opening: prompts read together --------------------------------------------------------------

    @contextmanager
    def uploading(self):
        """On the event loop, from a session's connection until its prompt is queued: yields an `Upload`
        to hand to `open`. While any session is in such a block, a queued prompt waits for it (`gather_s`
        at most)."""
        upload = Upload(self)
        self._uploading += 1
        try:
            yield upload
        finally:
            upload.done()

    def _upload_done(self) -> None:
        self._uploading -= 1
        if not self._uploading and self._open_timer is not None:
            self._submit_opening()

    async def open(self, sig: torch.Tensor, sample_rate: int, settings: Settings, upload: Upload | None = None
                   ) -> Generation:
        """Read the prompt `sig (1, N)` and start its continuation, together with every prompt that arrives
        while the model thread is busy or while the queue waits for sessions still sending theirs (see
        `uploading`; `upload`: this session's, which ends here); its chunks then come from `step`."""
        self.check_seconds(settings.seconds)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._open_lock:
            self._opening.append(((sig, sample_rate, settings, loop), future))
            first = len(self._opening) == 1
        if upload is not None:
            upload.done()  # after queueing: if it was the last one sending, the queue goes now, with it
        if first and self._uploading and self.gather_s > 0:
            self._open_timer = loop.call_later(self.gather_s, self._submit_opening)
        elif first:
            self._submit_opening()
        return await future

    def _submit_opening(self) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        self.model_thread.submit(self._open_queued)

    def _open_queued(self) -> None:
        """On the model thread: read every queued prompt, then let the new generations join the batch."""
        with self._open_lock:
            queued, self._opening = self._opening, []
        queued = [(request, future) for request, future in queued if not future.cancelled()]
        try:
            with _torch_threads(self.prompt_threads):
                outcomes = self._open_all([request for request, _ in queued])
        except Exception as error:  # every request of the batch hears of it; the server keeps serving
            outcomes = [error] * len(queued)
        for (_, future), outcome in zip(queued, outcomes, strict=True):
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the requester's loop is closed: nobody will take this generation
                if isinstance(outcome, Generation):
                    outcome.live.close()
                continue
            if isinstance(outcome, Generation):
                self._joining.append(outcome)
        if self._joining:
            self._schedule_step()

    def _open_all(self, requests: list[tuple]) -> list[Generation | Exception]:
        rate = self.sample_rate_input
        sigs = [resample(sig, sr, rate) for sig, sr, _, _ in requests]
        try:
            rows: list = self.model.prompt_rows(sigs, rate)
        except InputError:  # one prompt too short: find which, the others go on
            rows = []
            for sig in sigs:
                try:
                    rows.extend(self.model.prompt_rows([sig], rate))
                except InputError as err:
                    rows.append(_bad_audio(str(err)))
        ok = [i for i, row in enumerate(rows) if isinstance(row, torch.Tensor)]
        seeds = {i: requests[i][2].seed if requests[i][2].seed is not None else secrets.randbits(31) for i in ok}
        samplings = [requests[i][2].sampling() for i in ok]
        lives = self.model.open_sessions([rows[i] for i in ok], samplings, [seeds[i] for i in ok])
        outcomes: list[Generation | Exception] = list(rows)
        for i, live in zip(ok, lives, strict=True):
            sig, sr, settings, loop = requests[i]
            outcomes[i] = Generation(self, live, loop, settings, seeds[i], sig.shape[-1] / sr, len(rows[i]))
        return outcomes

    # ---- stepping: every generating session in one batch ---------------------------------------------

    async def step(self, gen: Generation) -> np.ndarray | None:
        """`gen`'s next chunk (float32 at the output rate), as soon as the batch has made it; None once its
        requested length is out. The caller counts what reaches its client with `gen.sent(chunk)`."""
        if gen.finished:
            return None
        await asyncio.sleep(0)  # a chunk may be waiting already: let the client's other tasks run first
        item = await gen.chunks.get()
        if isinstance(item, Exception):
            gen.finished = True
            raise item
        if item is None:
            gen.finished = True
            return None
        return item

    def _schedule_step(self) -> None:
        if not self._step_queued:
            self._step_queued = True
            self.model_thread.submit(self._step)

    def _step(self) -> None:
        """On the model thread: one step of the whole batch (after taking finished or abandoned sessions
        out and the newly opened ones in), then the next step behind whatever was queued meanwhile."""
        self._step_queued = False
        joining = [gen for gen in self._joining if not gen.closed]
        self._joining = []
        try:
            self._leave([gen for gen in self._members.values() if gen.done or gen.closed])
            if joining:
                self.batch.join([gen.live for gen in joining])
                self._members.update({id(gen.live): gen for gen in joining})
            if not len(self.batch):
                return
            members = [self._members[id(live)] for live in self.batch.members]
            chunks = self.batch.step()
        except Exception as error:  # every session of the batch hears of it; the server keeps serving
            log.exception("a batched step failed; its %d sessions end with an internal error",
                          len(self._members) + len(joining))
            for gen in {id(g): g for g in [*self._members.values(), *joining]}.values():
                gen.put(error)
                gen.closed = True
                gen.live.drop_state()
            self.batch, self._members = self.model.batch(), {}
            return
        for gen, (_, audio) in zip(members, chunks, strict=True):
            gen.deliver(audio)
        self.steps_run += 1
        self.rows_stepped += len(members)
        self._schedule_step()

    def _leave(self, gens: list[Generation]) -> None:
        gens = [gen for gen in gens if id(gen.live) in self._members]
        if gens:
            self.batch.leave([gen.live for gen in gens], keep_state=False)
            for gen in gens:
                del self._members[id(gen.live)]

    def close(self, gen: Generation) -> None:
        """On the model thread: stop `gen` and free its state; safe to call twice."""
        gen.closed = True
        if id(gen.live) in self._members:
            del self._members[id(gen.live)]
            self.batch.leave([gen.live], keep_state=False)
        gen.live.close()

    def shutdown(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)


class Upload:
    """One session's prompt upload, counted by its engine until `done` (once, whatever calls it)."""

    def __init__(self, engine: Engine):
        self.engine, self.finished = engine, False

    def done(self) -> None:
        if not self.finished:
            self.finished = True
            self.engine._upload_done()


class Generation:
    """One continuation: a single-row `LiveSession` (`OnnxLive` on ONNX Runtime) that has read the prompt,
    stepped in the engine's batch.
    Its chunks wait in `chunks` (an asyncio queue of the requester's loop) until its client takes them."""

    def __init__(self, engine: Engine, live: LiveSession | OnnxLive, loop: asyncio.AbstractEventLoop, settings: Settings,
                 seed: int, prompt_seconds: float, prompt_tokens: int):
        self.engine, self.live, self.loop, self.seed = engine, live, loop, seed
        # Enough whole steps to cover the request; the last chunk is trimmed to the exact length.
        self.total_samples = round(settings.seconds * engine.sample_rate_output)
        self.prompt_seconds, self.prompt_tokens = prompt_seconds, prompt_tokens
        self.chunks: asyncio.Queue = asyncio.Queue()
        self.produced = 0  # samples made (model thread)
        self.closed = False  # model thread
        self.finished = False  # the client has had the last chunk (event loop)
        self.samples = self.sent_chunks = self.tokens = 0  # what the client took
        self.started = time.perf_counter()
        self.first_chunk: float | None = None

    @property
    def done(self) -> bool:
        return self.produced >= self.total_samples

    def deliver(self, audio: torch.Tensor) -> None:
        """On the model thread: queue a step's chunk (trimmed to the requested length), then the end."""
        # A copy: a view would keep the whole batch's audio of the step alive while the chunk waits.
        chunk = audio[0].float().cpu().numpy()[: self.total_samples - self.produced].copy()
        self.produced += len(chunk)
        self.put(chunk)
        if self.done:
            self.put(None)

    def put(self, item) -> None:
        """On the model thread: hand `item` to the requester's loop; if that loop is gone (its client with
        it), the generation is abandoned and leaves the batch at the next step."""
        try:
            self.loop.call_soon_threadsafe(self.chunks.put_nowait, item)
        except RuntimeError:  # the loop is closed
            self.closed = True

    def sent(self, chunk: np.ndarray) -> None:
        """Count a chunk that reached the client (the statistics report what the client got)."""
        self.samples += len(chunk)
        self.sent_chunks += 1
        self.tokens += self.engine.toks_per_step
        self.first_chunk = self.first_chunk or time.perf_counter() - self.started

    def stats(self, cancelled: bool = False) -> dict:
        elapsed = time.perf_counter() - self.started
        seconds = self.samples / self.engine.sample_rate_output
        return {
            "chunks": self.sent_chunks,
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


@contextmanager
def _torch_threads(count: int | None):
    """PyTorch's intra-op threads set to `count` (None: unchanged) for the block."""
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _settle(future: asyncio.Future, outcome: object) -> None:
    """On the event loop: hand a model-thread result to the request awaiting it (unless it gave up: then a
    generation opened for it is closed)."""
    if future.done():
        if isinstance(outcome, Generation):
            outcome.engine.model_thread.submit(outcome.engine.close, outcome)
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


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
