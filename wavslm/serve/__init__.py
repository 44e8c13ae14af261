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

Layout, imports pointing one way (each module imports only those above it):

    limits    the per-server limits and who may connect (plain data)
    access    which requests are answered: Host, Origin (never a page of another origin), token
    engine    the model side: settings, prompt decoding, the model thread, generations stepped together
    ws        the WebSocket session (the protocol above)
    app       the FastAPI app: the page, /health, POST /generate, the WebSocket route; `create_app`
    command   `wavslm serve` / `python -m wavslm.serve`: arguments, loading the model, uvicorn

Only `ws` and `app` import FastAPI; this package's `__init__` imports nothing heavy (the CLI builds its
parser from `command.configure` without loading FastAPI) and gives `create_app` on first use.
"""

from .limits import Limits

__all__ = ["Limits", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # FastAPI is imported on first use, not with the package
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'wavslm.serve' has no attribute {name!r}")
