"""The FastAPI app of `wavslm serve`: the page, /health, POST /generate and the WebSocket route.

The protocol and the routes are documented in `wavslm.serve` and docs/serve.md; the WebSocket session is
in `ws`, the model side in `engine`.
"""

from __future__ import annotations

import asyncio
import io
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Annotated
from urllib.parse import parse_qsl

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .. import __version__
from .access import refusal
from .engine import (
    Engine,
    ServeError,
    Settings,
    check_upload_size,
    decode_file,
    timeout_error,
    validation_message,
)
from .limits import Access, Limits
from .ws import websocket_session

if TYPE_CHECKING:
    from ..lm import WavSLM
    from ..onnx_runtime import OnnxWavSLM


# The page: a fixed table of names, so a URL never becomes a path.
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/recorder.js": ("recorder.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def create_app(lm: WavSLM | OnnxWavSLM, limits: Limits | None = None, name: str = "model", prompt_threads: int | None = None,
               access: Access | None = None) -> FastAPI:
    """The server for `lm` (a `WavSLM`, which must hold its codec, or an `OnnxWavSLM`); `limits` default to `Limits()`; `prompt_threads`:
    PyTorch threads while prompts are read (None: the process's setting, as for steps); `access`: which
    hosts and token it accepts (default: any host, no token; pages of another origin are always refused)."""
    access = access or Access()
    engine = Engine(lm, limits or Limits(), name, prompt_threads)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        engine.shutdown()

    app = FastAPI(title="wavslm", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Continue speech with WavSLM. The WebSocket protocol is described in docs/serve.md.")
    app.state.engine = engine
    pages = {route: (resources.files("wavslm").joinpath("static", file).read_bytes(), kind)
             for route, (file, kind) in STATIC.items()}

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, err: ServeError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse({"error": err.payload()}, status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": {"code": "invalid_settings", "message": validation_message(err.errors())}}, 422)

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception) -> JSONResponse:  # logged by Starlette, the server goes on
        return JSONResponse({"error": {"code": "internal", "message": "the server failed on this request; see its log"}}, 500)

    app.add_middleware(_OwnClientsOnly, access=access)

    for route, (body, kind) in pages.items():
        app.add_api_route(route, _page(body, kind), methods=["GET"], include_in_schema=False)

    @app.get("/health", summary="Model, rates, limits and open sessions")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": engine.name,
            "sample_rate_input": engine.sample_rate_input,
            "sample_rate_output": engine.sample_rate_output,
            "chunk_samples": engine.chunk_samples,
            "active_sessions": engine.active,
            "batched_steps": engine.steps_run,
            "sessions_stepped": engine.rows_stepped,
            "limits": engine.limits.as_dict(),
        }

    @app.post(
        "/generate",
        summary="Continue an uploaded prompt; answer the whole continuation as 16-bit WAV",
        response_class=Response,
        responses={200: {"content": {"audio/wav": {}}, "description": "16-bit mono WAV at the codec's output rate"},
                   408: {"description": "idle_timeout, session_timeout"},
                   413: {"description": "prompt_too_long, upload_too_big"},
                   422: {"description": "invalid_settings, continuation_too_long, bad_audio"},
                   503: {"description": "busy: every session slot is in use (Retry-After: 1)"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            t: {"schema": {"type": "string", "format": "binary"}} for t in ("audio/wav", "audio/flac", "audio/ogg")}}},
    )
    async def generate(request: Request, settings: Annotated[Settings, Query()]) -> Response:
        engine.check_seconds(settings.seconds)
        declared = request.headers.get("content-length", "")
        if declared.isdigit():
            check_upload_size(int(declared), engine.limits)
        engine.acquire()
        try:
            deadline = asyncio.get_running_loop().time() + engine.limits.session_timeout
            body = await _read_body(request, engine.limits, deadline)
            return await _generate_wav(request, engine, body, settings, deadline)
        finally:
            engine.release()

    @app.websocket("/ws")
    async def websocket(ws: WebSocket) -> None:
        refused = refusal("/ws", ws.headers, ws.query_params, access)
        if refused is not None:  # before accepting: a browser's page sees the handshake fail
            await ws.close(code=1008, reason=refused[1][:120])
            return
        await websocket_session(ws, engine)

    return app


class _OwnClientsOnly:
    """Refuse HTTP requests that `access.refusal` refuses (plain ASGI: the routes still see a client leave)."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            refused = refusal(scope["path"], headers, query, self.access)
            if refused is not None:
                status, message = refused
                await JSONResponse({"error": {"code": "forbidden", "message": message}}, status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _page(body: bytes, kind: str):
    async def page() -> Response:
        return Response(body, media_type=kind, headers={"Cache-Control": "no-cache"})

    return page


async def _read_body(request: Request, limits: Limits, deadline: float) -> bytes:
    """The request body, refused as soon as it passes the upload limit or a timeout."""
    data, parts = bytearray(), request.stream().__aiter__()
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            part = await asyncio.wait_for(parts.__anext__(), max(0.0, min(limits.idle_timeout, remaining)))
        except StopAsyncIteration:
            return bytes(data)
        except asyncio.TimeoutError as err:
            raise timeout_error(limits, idle=remaining > limits.idle_timeout) from err
        data += part
        check_upload_size(len(data), limits)


async def _next_chunk(engine: Engine, gen, deadline: float):
    """The generation's next chunk, or the session timeout when the deadline passes first."""
    try:
        return await asyncio.wait_for(engine.step(gen), max(0.0, deadline - asyncio.get_running_loop().time()))
    except asyncio.TimeoutError as err:
        raise timeout_error(engine.limits, idle=False) from err


async def _generate_wav(request: Request, engine: Engine, body: bytes, settings: Settings, deadline: float) -> Response:
    sig, sr = await asyncio.to_thread(decode_file, body, engine.limits)
    gen = await engine.open(sig, sr, settings)
    chunks = []
    try:
        while (chunk := await _next_chunk(engine, gen, deadline)) is not None:
            chunks.append(chunk)
            gen.sent(chunk)
            if await request.is_disconnected():  # nobody to answer: free the session now
                return Response(status_code=499)
            if asyncio.get_running_loop().time() > deadline:
                raise timeout_error(engine.limits, idle=False)
    finally:
        await engine.call(engine.close, gen)
    out = io.BytesIO()
    sf.write(out, np.concatenate(chunks), engine.sample_rate_output, format="WAV", subtype="PCM_16")
    stats = gen.stats()
    headers = {"X-WavSLM-RTF": str(stats["rtf"]), "X-WavSLM-Tokens": str(stats["tokens"]),
               "X-WavSLM-Seed": str(stats["seed"])}
    return Response(out.getvalue(), media_type="audio/wav", headers=headers)
