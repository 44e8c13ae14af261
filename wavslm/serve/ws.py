"""The WebSocket session of `wavslm serve`: one prompt in, a continuation streamed out.

The protocol is documented in `wavslm.serve` and docs/serve.md. Model calls go through the engine (its
model thread); this module only moves messages and enforces the protocol and its limits.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from .engine import (
    Engine,
    Generation,
    ServeError,
    StartMessage,
    Upload,
    check_prompt_length,
    check_upload_size,
    decode_file,
    decode_pcm16,
    timeout_error,
    to_bytes,
    validation_message,
)
from .limits import Limits

log = logging.getLogger("wavslm.serve")
# What a send or receive on a socket the client has left may raise, depending on the server.
_LEFT = (WebSocketDisconnect, RuntimeError, OSError)


class _Gone(Exception):
    """The client closed the connection; nothing more can be sent."""


async def websocket_session(ws: WebSocket, engine: Engine) -> None:
    """Serve one connection: take a session slot or refuse, run the protocol, always free the slot."""
    await ws.accept()
    try:
        engine.acquire()
    except ServeError as err:
        await _refuse(ws, err)
        return
    try:
        # From its connection to its prompt's queueing, a session counts as sending one: prompts queued
        # meanwhile wait a moment for it (`Engine.uploading`).
        with engine.uploading() as upload:
            await _session(ws, engine, upload)
    except ServeError as err:
        await _refuse(ws, err)
    except (_Gone, WebSocketDisconnect):
        log.info("client left")
    except Exception:
        log.exception("session failed")
        await _refuse(ws, ServeError("internal", "the server failed on this request; see its log", 500))
    finally:
        engine.release()


async def _refuse(ws: WebSocket, err: ServeError) -> None:
    """Send the error message and close with 4000 + status (1011 for internal errors)."""
    try:
        await ws.send_json({"type": "error", **err.payload()})
        await ws.close(code=1011 if err.code == "internal" else 4000 + err.status, reason=err.code)
    except _LEFT:
        pass  # the client is gone already


async def _receive(ws: WebSocket, limits: Limits, deadline: float) -> dict:
    """The next message, within the idle timeout and the session's deadline."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        message = await asyncio.wait_for(ws.receive(), max(0.0, min(limits.idle_timeout, remaining)))
    except asyncio.TimeoutError as err:
        raise timeout_error(limits, idle=remaining > limits.idle_timeout) from err
    if message["type"] == "websocket.disconnect":
        raise _Gone
    return message


def _parse(text: str) -> dict:
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        raise ServeError("bad_request", f"a text message is not valid JSON ({err.msg})", 400) from err
    except RecursionError as err:
        raise ServeError("bad_request", "a text message nests JSON too deeply", 400) from err
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ServeError("bad_request", 'a text message must be a JSON object with a "type"', 400)
    return message


async def _session(ws: WebSocket, engine: Engine, upload: Upload) -> None:
    loop, limits = asyncio.get_running_loop(), engine.limits
    deadline = loop.time() + limits.session_timeout
    message = await _receive(ws, limits, deadline)
    if message.get("text") is None:
        raise ServeError("bad_request", 'send {"type": "start", ...} before any audio', 400)
    first = _parse(message["text"])
    if first["type"] != "start":
        raise ServeError("bad_request", f'the first message must have type "start", not "{first["type"]}"', 400)
    try:
        start = StartMessage.model_validate(first)
    except ValidationError as err:
        raise ServeError("invalid_settings", validation_message(err.errors()), 422) from err
    engine.check_seconds(start.seconds)  # refuse before the upload, not after

    prompt = bytearray()
    while True:
        message = await _receive(ws, limits, deadline)
        if message.get("bytes") is not None:
            prompt += message["bytes"]
            check_upload_size(len(prompt), limits)
            if start.prompt_format == "pcm16":
                check_prompt_length(len(prompt) // 2, start.sample_rate, limits)
            continue
        kind = _parse(message["text"])["type"]
        if kind == "end_prompt":
            break
        if kind == "cancel":
            return await _close(ws)
        raise ServeError("bad_request", f'expected audio or {{"type": "end_prompt"}}, got type "{kind}"', 400)

    if start.prompt_format == "pcm16":
        sig, sr = await asyncio.to_thread(decode_pcm16, bytes(prompt), start.sample_rate, limits)
    else:
        sig, sr = await asyncio.to_thread(decode_file, bytes(prompt), limits)
    del prompt
    gen = await engine.open(sig, sr, start, upload)
    try:
        await _stream(ws, engine, gen, start.output_format, deadline)
    finally:
        await engine.call(engine.close, gen)  # it touches the model's stream state


async def _stream(ws: WebSocket, engine: Engine, gen: Generation, output_format: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    await _send(ws, {"type": "header", "sample_rate": engine.sample_rate_output, "channels": 1,
                     "format": f"{output_format}le", "chunk_samples": engine.chunk_samples,
                     "chunk_seconds": engine.step_seconds,
                     "chunks": -(-gen.total_samples // engine.chunk_samples), "samples": gen.total_samples,
                     "seconds": gen.total_samples / engine.sample_rate_output,
                     "prompt_seconds": round(gen.prompt_seconds, 4), "prompt_tokens": gen.prompt_tokens,
                     "seed": gen.seed})
    # The client may cancel, misbehave or vanish while we generate: a watcher reads its messages.
    stop: dict = {}
    watcher = asyncio.create_task(_watch(ws, stop))
    try:
        while not stop:
            if loop.time() > deadline:
                raise timeout_error(engine.limits, idle=False)
            try:  # a stuck engine never holds the session past its deadline
                chunk = await asyncio.wait_for(engine.step(gen), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError as err:
                raise timeout_error(engine.limits, idle=False) from err
            if chunk is None or stop:
                break
            await _send(ws, to_bytes(chunk, output_format))
            gen.sent(chunk)
    finally:
        watcher.cancel()
    if "gone" in stop:
        raise _Gone
    if "error" in stop:
        raise stop["error"]
    await _send(ws, {"type": "end", **gen.stats(cancelled="cancel" in stop)})
    await _close(ws)


async def _watch(ws: WebSocket, stop: dict) -> None:
    """Wait for the client's next message and record in `stop` why generation must end."""
    try:
        message = await ws.receive()
    except _LEFT:
        message = {"type": "websocket.disconnect"}
    if message["type"] == "websocket.disconnect":
        stop["gone"] = True
        return
    try:
        if message.get("text") is None or _parse(message["text"])["type"] != "cancel":
            raise ServeError("bad_request", 'only {"type": "cancel"} may be sent during generation', 400)
        stop["cancel"] = True
    except ServeError as err:
        stop["error"] = err


async def _send(ws: WebSocket, data: dict | bytes) -> None:
    try:
        if isinstance(data, bytes):
            await ws.send_bytes(data)
        else:
            await ws.send_json(data)
    except _LEFT as err:
        raise _Gone from err


async def _close(ws: WebSocket) -> None:
    try:
        await ws.close(code=1000)
    except _LEFT as err:
        raise _Gone from err
