"""`wavslm serve`: speak, and hear the continuation as it is generated.

A FastAPI app (run by uvicorn, bound to 127.0.0.1 unless told otherwise) with:

- `GET /`                the page (microphone or file prompt, sliders, live player and spectrogram)
- `GET /health`          model, rates, limits and open sessions, as JSON
- `POST /generate`       body: a WAV/FLAC/OGG file; query: the settings below; answer: the continuation as WAV
- `WS /ws`               the streaming protocol below
- `GET /openapi.json`    the API description. `/docs` and `/redoc` are switched off: they load their
                         JavaScript from a CDN, and this server must work offline.

Settings (JSON fields on the WebSocket, query parameters on POST): `temperature` (0.8), `top_p` (0.3;
0 is greedy), `top_k` (instead of top_p), `seconds` (3.0; the length of the continuation, exact to the
sample), `seed` (default: a fresh one, reported back). Unknown fields are refused.

WebSocket protocol (one continuation per connection; text frames are JSON, binary frames are audio):

    client: {"type": "start", "prompt_format": "file" | "pcm16", "sample_rate": 16000 (pcm16 only),
             "output_format": "f32" | "s16", ...settings}
    client: binary frames: the prompt (the file's bytes, or mono 16-bit little-endian PCM), any split
    client: {"type": "end_prompt"}
    server: {"type": "header", "sample_rate": 24000, "channels": 1, "format": "f32le" | "s16le",
             "chunk_samples": 1920, "chunk_seconds": 0.08, "chunks": N, "samples": S, "seconds": s,
             "prompt_seconds": p, "prompt_tokens": t, "seed": k}
    server: N binary frames, one per 80 ms step as soon as it is decoded (the last one may be shorter)
    server: {"type": "end", "chunks", "samples", "tokens", "audio_seconds", "elapsed_seconds", "rtf",
             "first_chunk_ms", "prompt_seconds", "prompt_tokens", "seed", "cancelled"}; then close 1000
    client (any time during generation): {"type": "cancel"} -> the server stops and sends "end" with
             "cancelled": true. Closing the socket also stops generation within one step.

Any refusal is `{"type": "error", "code": CODE, "message": "one sentence"}` then a close with code
4000 + the HTTP status that POST /generate answers with (a JSON body `{"error": {"code", "message"}}`):
`bad_request` 400 (not JSON, unknown type, messages out of order), `invalid_settings` 422 (unknown
fields, wrong types, out of range), `continuation_too_long` 422, `bad_audio` 422 (not audio, empty,
NaN, shorter than 80 ms), `prompt_too_long` 413, `upload_too_big` 413, `busy` 503 (all sessions in use),
`idle_timeout` / `session_timeout` 408, `internal` 500 (close 1011).

No client input is ever used as a file-system path: uploads are decoded from memory and the page's
files are served from a fixed table.

Layout: this module holds the limits and the command line, and imports nothing heavy (the CLI builds
its parser from `configure` without loading FastAPI); `serve_app` the FastAPI app and HTTP routes;
`serve_ws` the WebSocket session; `serve_engine` the model side (settings, decoding, the model thread).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .lm import WavSLM


@dataclass(frozen=True)
class Limits:
    """Per-server limits; every one is a `wavslm serve` flag."""

    max_prompt_secs: float = 30.0
    max_gen_secs: float = 30.0
    max_upload_bytes: int = 16 * 2**20
    max_sessions: int = 4
    idle_timeout: float = 30.0  # seconds without a client message while the prompt is being sent
    session_timeout: float = 300.0  # seconds from connection to the last chunk

    def as_dict(self) -> dict:
        return asdict(self)


def create_app(lm: WavSLM, limits: Limits | None = None, name: str = "model") -> FastAPI:
    """The FastAPI app serving `lm` (which must hold its codec); `limits` default to `Limits()`."""
    from .serve_app import build_app

    return build_app(lm, limits, name)


# ---- command line -------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add `wavslm serve`'s arguments (all but --device, which the CLI adds to every verb)."""
    d = Limits()
    parser.add_argument("--model", help="WavSLM folder, .json or Hub id (default: the bundled model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8998, help="port (default: 8998)")
    parser.add_argument("--max-prompt-secs", type=float, default=d.max_prompt_secs,
                        help=f"longest prompt accepted, in seconds (default {d.max_prompt_secs:g})")
    parser.add_argument("--max-gen-secs", type=float, default=d.max_gen_secs,
                        help=f"longest continuation, in seconds (default {d.max_gen_secs:g})")
    parser.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes,
                        help=f"largest prompt upload (default {d.max_upload_bytes}, 16 MiB)")
    parser.add_argument("--max-sessions", type=int, default=d.max_sessions,
                        help=f"concurrent sessions; more are refused (default {d.max_sessions})")
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                        help=f"seconds a client may stay silent while sending its prompt (default {d.idle_timeout:g})")
    parser.add_argument("--session-timeout", type=float, default=d.session_timeout,
                        help=f"seconds a session may last in all (default {d.session_timeout:g})")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch CPU threads of the model thread (default: 1; more only pays for big models: "
                             "with several, its spinning workers compete with the server for the cores)")
    parser.add_argument("--optimize", choices=["none", "float32", "bfloat16", "int8"], default="none",
                        help="convert the model for inference (see `wavslm generate --help`; default: none)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Load the model and serve until interrupted."""
    import torch

    from .errors import InputError
    from .pretrained import load_lm

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise InputError(f"wavslm serve needs the 'serve' extra ({err.name} is missing): pip install 'wavslm[serve]'") from err

    limits = Limits(args.max_prompt_secs, args.max_gen_secs, args.max_upload_bytes, args.max_sessions,
                    args.idle_timeout, args.session_timeout)
    if min(limits.as_dict().values()) <= 0:
        raise InputError("every --max-* and --*-timeout value must be positive")
    if args.threads < 1:
        raise InputError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    lm = load_lm(args.model, getattr(args, "device", "cpu"), args.optimize)
    name = Path(args.model).name if args.model else "bundled tiny"
    print(f"wavslm serve: {name} on http://{args.host}:{args.port}/ (API: /openapi.json)", flush=True)
    # Frames above the upload limit are refused by uvicorn itself (close 1009) before reaching us.
    uvicorn.run(create_app(lm, limits, name), host=args.host, port=args.port, log_level=args.log_level,
                ws_max_size=limits.max_upload_bytes + 65536)


def main(argv: list[str] | None = None) -> int:
    """`python -m wavslm.serve`: the same as `wavslm serve`."""
    from .errors import InputError

    parser = argparse.ArgumentParser(prog="wavslm serve", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    configure(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        args.func(args)
    except InputError as error:
        print(f"wavslm serve: error: {error}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    # Through the package's module, not this `__main__` copy, so `Limits` is one class for everyone.
    from wavslm.serve import main as _main

    raise SystemExit(_main())
