"""`wavslm serve`: the HTTP and WebSocket API, every limit, bad input, and clients that vanish.

Most tests drive the app in process with Starlette's TestClient; the disconnect tests run a real uvicorn
on a free loopback port, since only a real socket can be cut mid-stream. The model is the reference
fixture (random weights: the audio is noise, which is all the server needs).
"""

import io
import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import REFERENCE, SPEECH, chunks_of, open_together
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from wavslm.serve import Limits, create_app

RATE_OUT, CHUNK = 24000, 1920


@pytest.fixture(scope="module")
def lm():
    from wavslm import WavSLM

    return WavSLM.from_pretrained(REFERENCE / "wavslm_tiny")


@pytest.fixture(scope="module")
def wav() -> bytes:
    """The first 2 s of a real utterance, as 16-bit WAV bytes."""
    audio, sr = sf.read(SPEECH / "librispeech-dev-clean" / "84" / "84-121123-0001.wav", dtype="float32")
    out = io.BytesIO()
    sf.write(out, audio[: 2 * sr], sr, format="WAV", subtype="PCM_16")
    return out.getvalue()


def client(lm, **limits) -> TestClient:
    return TestClient(create_app(lm, Limits(**limits)))


def start(ws, prompt: bytes, **fields):
    ws.send_json({"type": "start", **fields})
    ws.send_bytes(prompt)
    ws.send_json({"type": "end_prompt"})


def stream(ws) -> tuple[dict, list[bytes], dict]:
    """Read a whole answer: the header, the chunks, the end message (the socket then closes with 1000)."""
    header = ws.receive_json()
    assert header["type"] == "header", header
    chunks = []
    while True:
        message = ws.receive()
        if message.get("bytes") is not None:
            chunks.append(message["bytes"])
            continue
        end = json.loads(message["text"])
        assert end["type"] == "end", end
        closed = ws.receive()
        assert closed["type"] == "websocket.close" and closed["code"] == 1000
        return header, chunks, end


def refused(ws, code: str, close: int) -> str:
    message = ws.receive_json()
    assert message["type"] == "error" and message["code"] == code, message
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert closed.value.code == close
    return message["message"]


def still_serves(c: TestClient, wav: bytes) -> None:
    """The follow-up check after any refusal: no session is left open and a new request works."""
    assert c.get("/health").json()["active_sessions"] == 0
    r = c.post("/generate", params={"seconds": 0.16, "seed": 0}, content=wav)
    assert r.status_code == 200 and len(sf.read(io.BytesIO(r.content))[0]) == round(0.16 * RATE_OUT)


# ---- the API --------------------------------------------------------------------------------------


def test_health_openapi_and_page(lm):
    c = client(lm)
    health = c.get("/health").json()
    assert health["status"] == "ok" and health["sample_rate_output"] == RATE_OUT and health["chunk_samples"] == CHUNK
    assert health["active_sessions"] == 0 and health["limits"]["max_sessions"] == 4
    api = c.get("/openapi.json").json()
    assert {"/generate", "/health"} <= set(api["paths"])
    params = {p["name"] for p in api["paths"]["/generate"]["post"]["parameters"]}
    assert params == {"temperature", "top_p", "top_k", "seconds", "seed"}
    assert c.get("/docs").status_code == 404  # Swagger UI needs a CDN: switched off
    for path, kind in [("/", "text/html"), ("/app.js", "javascript"), ("/recorder.js", "javascript"), ("/style.css", "css")]:
        r = c.get(path)
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text  # nothing from the internet
    assert c.get("/static/../serve.py").status_code == 404


def test_http_generate_returns_wav_of_requested_length(lm, wav):
    c = client(lm)
    r = c.post("/generate", params={"seconds": 1.01, "seed": 5, "temperature": 1.2, "top_k": 8}, content=wav)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    info = sf.info(io.BytesIO(r.content))
    assert rate == RATE_OUT and info.channels == 1 and info.subtype == "PCM_16"
    assert len(audio) == round(1.01 * RATE_OUT) and np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert r.headers["x-wavslm-tokens"] == str(4 * 13) and r.headers["x-wavslm-seed"] == "5"
    again = c.post("/generate", params={"seconds": 1.01, "seed": 5, "temperature": 1.2, "top_k": 8}, content=wav)
    assert again.content == r.content  # a seed reproduces the continuation


def test_websocket_streams_header_chunks_and_end(lm, wav):
    c = client(lm)
    with c.websocket_connect("/ws") as ws:
        start(ws, wav, seconds=0.5, seed=1, top_p=0.0)
        header, chunks, end = stream(ws)
    assert header["sample_rate"] == RATE_OUT and header["format"] == "f32le" and header["chunks"] == 7
    assert header["samples"] == 12000 and header["seed"] == 1 and abs(header["prompt_seconds"] - 2.0) < 1e-3
    assert [len(b) for b in chunks] == [CHUNK * 4] * 6 + [(12000 - 6 * CHUNK) * 4]
    assert end["chunks"] == 7 and end["samples"] == 12000 and end["tokens"] == 28 and not end["cancelled"]
    assert end["rtf"] > 0 and end["first_chunk_ms"] > 0 and end["prompt_tokens"] == 100
    # The streamed float32 samples equal the HTTP answer (16-bit) for the same seed.
    streamed = np.frombuffer(b"".join(chunks), "<f4")
    whole, _ = sf.read(io.BytesIO(c.post("/generate", params={"seconds": 0.5, "seed": 1, "top_p": 0.0}, content=wav).content))
    assert np.abs(np.clip(streamed, -1, 1) - whole).max() < 1e-4


def test_websocket_pcm16_prompt_and_int16_output(lm, wav):
    audio, sr = sf.read(io.BytesIO(wav), dtype="int16")
    with client(lm).websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "prompt_format": "pcm16", "sample_rate": sr, "output_format": "s16", "seconds": 0.24})
        for part in np.array_split(audio, 5):  # frames of any size, even odd byte counts across frames
            ws.send_bytes(part.astype("<i2").tobytes())
        ws.send_json({"type": "end_prompt"})
        header, chunks, end = stream(ws)
    assert header["format"] == "s16le" and sum(len(b) for b in chunks) == 2 * round(0.24 * RATE_OUT)
    assert end["prompt_tokens"] == 100


def test_cancel_ends_early(lm, wav):
    c = client(lm)
    with c.websocket_connect("/ws") as ws:
        start(ws, wav, seconds=20.0)
        assert ws.receive_json()["type"] == "header"
        ws.receive_bytes()
        ws.send_json({"type": "cancel"})
        received = 1
        while (message := ws.receive()).get("bytes") is not None:
            received += 1
        end = json.loads(message["text"])
    assert end["type"] == "end" and end["cancelled"] and end["chunks"] < 250
    assert end["chunks"] == received and end["samples"] == received * CHUNK  # what the client got, no more
    still_serves(c, wav)


# ---- limits ---------------------------------------------------------------------------------------


def test_prompt_too_long(lm, wav):
    c = client(lm, max_prompt_secs=1.0)
    with c.websocket_connect("/ws") as ws:
        start(ws, wav)
        assert "at most 1 s" in refused(ws, "prompt_too_long", 4413)
    # pcm16 is refused as soon as the samples received pass the limit, before end_prompt
    with c.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "prompt_format": "pcm16", "sample_rate": 16000})
        ws.send_bytes(bytes(2 * 16000 * 2))
        refused(ws, "prompt_too_long", 4413)
    r = c.post("/generate", content=wav)
    assert r.status_code == 413 and r.json()["error"]["code"] == "prompt_too_long"
    still_serves(client(lm), wav)


def test_continuation_too_long(lm, wav):
    c = client(lm, max_gen_secs=2.0)
    with c.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "seconds": 2.5})  # refused before any upload
        assert "limit of 2 s" in refused(ws, "continuation_too_long", 4422)
    r = c.post("/generate", params={"seconds": 2.5}, content=wav)
    assert r.status_code == 422 and r.json()["error"]["code"] == "continuation_too_long"
    still_serves(c, wav)


def test_upload_too_big(lm, wav):
    c = client(lm, max_upload_bytes=20_000)
    with c.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start"})
        for i in range(0, len(wav), 8192):
            ws.send_bytes(wav[i : i + 8192])
        refused(ws, "upload_too_big", 4413)
    r = c.post("/generate", content=wav)
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_big"
    still_serves(client(lm), wav)


def test_too_many_sessions_refused_while_others_work(lm, wav):
    c = client(lm, max_sessions=2)
    with c.websocket_connect("/ws") as first, c.websocket_connect("/ws") as second:
        start(first, wav, seconds=0.4, seed=0)
        with c.websocket_connect("/ws") as third:
            assert "busy" in refused(third, "busy", 4503)
        r = c.post("/generate", content=wav)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "busy"
        start(second, wav, seconds=0.4, seed=0)
        for ws in (first, second):
            assert stream(ws)[2]["samples"] == round(0.4 * RATE_OUT)
    still_serves(c, wav)


def test_idle_and_session_timeouts(lm, wav):
    c = client(lm, idle_timeout=0.3)
    with c.websocket_connect("/ws") as ws:
        refused(ws, "idle_timeout", 4408)
    with c.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start"})
        refused(ws, "idle_timeout", 4408)  # silence while sending the prompt counts too
    c = client(lm, idle_timeout=0.3, session_timeout=0.5)
    with c.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start"})
        for _ in range(4):
            time.sleep(0.2)
            ws.send_bytes(wav[:100])  # never idle, but too long in all
        refused(ws, "session_timeout", 4408)
    r = c.post("/generate", params={"seconds": 30}, content=wav)  # generating 30 s takes longer than 0.5 s
    assert r.status_code == 408 and r.json()["error"]["code"] == "session_timeout"
    still_serves(c, wav)


# ---- bad messages and bad audio -------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, code, close",
    [
        ("{not json", "bad_request", 4400),
        ("[1, 2]", "bad_request", 4400),
        (b"RIFF....", "bad_request", 4400),  # audio before the start message
        ({"type": "hello"}, "bad_request", 4400),
        ({"type": "start", "colour": "blue"}, "invalid_settings", 4422),
        ({"type": "start", "seconds": "3"}, "invalid_settings", 4422),
        ({"type": "start", "top_k": 2.5}, "invalid_settings", 4422),
        ({"type": "start", "seconds": -1}, "invalid_settings", 4422),
        ({"type": "start", "seconds": 1e-9}, "invalid_settings", 4422),
        ({"type": "start", "seconds": 1e999}, "invalid_settings", 4422),  # sent as Infinity, which json.loads accepts
        ({"type": "start", "temperature": 0}, "invalid_settings", 4422),
        ({"type": "start", "top_p": 0.5, "top_k": 5}, "invalid_settings", 4422),
        ({"type": "start", "prompt_format": "pcm16"}, "invalid_settings", 4422),  # no sample_rate
        ({"type": "start", "prompt_format": "mp3"}, "invalid_settings", 4422),
    ],
)
def test_malformed_first_message(lm, wav, first, code, close):
    c = client(lm)
    with c.websocket_connect("/ws") as ws:
        if isinstance(first, bytes):
            ws.send_bytes(first)
        else:
            ws.send_text(first if isinstance(first, str) else json.dumps(first))
        refused(ws, code, close)
    still_serves(c, wav)


def test_malformed_later_messages(lm, wav):
    c = client(lm)
    with c.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start"})
        ws.send_text("{oops")
        refused(ws, "bad_request", 4400)
    with c.websocket_connect("/ws") as ws:
        start(ws, wav, seconds=20.0)
        assert ws.receive_json()["type"] == "header"
        ws.send_json({"type": "start"})  # only "cancel" is allowed while generating
        while (message := ws.receive()).get("bytes") is not None:
            pass
        assert json.loads(message["text"])["code"] == "bad_request"
    r = c.post("/generate", params={"seconds": "abc"}, content=wav)
    assert r.status_code == 422 and "seconds" in r.json()["error"]["message"]
    r = c.post("/generate", params={"voice": "x"}, content=wav)
    assert r.status_code == 422 and "voice" in r.json()["error"]["message"]
    still_serves(c, wav)


def _wav(samples: np.ndarray, rate: int = 16000, subtype: str = "FLOAT") -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype=subtype)
    return out.getvalue()


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        (np.random.default_rng(0).bytes(5000), "not a readable WAV/FLAC/OGG"),
        (b"This is a text file, not audio.\n" * 20, "not a readable WAV/FLAC/OGG"),
        (b"", "empty"),
        (_wav(np.full(16000, np.nan, np.float32)), "NaN"),
        (_wav(np.zeros(800, np.float32)), "shorter than one chunk"),
        (_wav(np.zeros(100, np.float32), rate=1000), "sample rate"),
    ],
    ids=["random", "text", "empty", "nan", "short", "rate"],
)
def test_non_audio_uploads(lm, wav, prompt, fragment):
    c = client(lm)
    with c.websocket_connect("/ws") as ws:
        start(ws, prompt)
        assert fragment in refused(ws, "bad_audio", 4422)
    r = c.post("/generate", content=prompt)
    assert r.status_code == 422 and fragment in r.json()["error"]["message"]
    still_serves(c, wav)


def test_flac_and_ogg_uploads(lm, wav):
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    c = client(lm)
    for fmt in ("FLAC", "OGG"):
        out = io.BytesIO()
        sf.write(out, np.stack([audio, audio], 1), sr, format=fmt)  # stereo is mixed down
        r = c.post("/generate", params={"seconds": 0.08}, content=out.getvalue())
        assert r.status_code == 200 and len(sf.read(io.BytesIO(r.content))[0]) == CHUNK


def test_a_bug_is_answered_and_the_server_goes_on(lm, wav, monkeypatch):
    app = create_app(lm)
    c = TestClient(app, raise_server_exceptions=False)
    engine, open_ = app.state.engine, app.state.engine.open
    monkeypatch.setattr(engine, "open", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with c.websocket_connect("/ws") as ws:
        start(ws, wav)
        refused(ws, "internal", 1011)
    r = c.post("/generate", content=wav)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
    monkeypatch.setattr(engine, "open", open_)
    still_serves(c, wav)


# ---- clients that vanish (a real server) ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(lm):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(lm, Limits(max_sessions=2, idle_timeout=0.5))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    yield f"127.0.0.1:{port}", app.state.engine
    srv.should_exit = True
    thread.join(10)


def _freed(engine, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.active == 0


def test_abrupt_disconnect_frees_the_session(server, wav):
    from websockets.sync.client import connect

    address, engine = server
    with connect(f"ws://{address}/ws") as ws:
        ws.send(json.dumps({"type": "start", "seconds": 30.0}))
        ws.send(wav)
        ws.send(json.dumps({"type": "end_prompt"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "header"
        assert isinstance(ws.recv(timeout=10), bytes)
        # A reset, no close frame: the client just vanished (SO_LINGER 0 makes close() send RST).
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.socket.close()
    started = time.monotonic()
    assert _freed(engine), "the session was not freed"
    assert time.monotonic() - started < 1.0
    with connect(f"ws://{address}/ws") as ws:  # and the next client is served
        ws.send(json.dumps({"type": "start", "seconds": 0.16}))
        ws.send(wav)
        ws.send(json.dumps({"type": "end_prompt"}))
        messages = [ws.recv(timeout=10) for _ in range(4)]
    assert json.loads(messages[-1])["samples"] == round(0.16 * RATE_OUT)


def test_http_client_that_leaves_frees_the_session(server, wav):
    import httpx

    address, engine = server
    with socket.create_connection(tuple(address.split(":"))) as s:
        s.sendall(f"POST /generate?seconds=30 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(wav)}\r\n\r\n".encode() + wav)
        deadline = time.monotonic() + 5
        while not engine.active and time.monotonic() < deadline:
            time.sleep(0.005)
    assert _freed(engine)
    r = httpx.post(f"http://{address}/generate", params={"seconds": 0.08}, content=wav, timeout=10)
    assert r.status_code == 200


def test_http_body_that_stalls_times_out(server, wav):
    address, engine = server
    with socket.create_connection(tuple(address.split(":"))) as s:
        s.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(wav)}\r\n\r\n".encode() + wav[:1000])
        s.settimeout(5)
        answer = b""  # the rest of the body never comes
        while not answer.endswith(b"}") and (part := s.recv(4096)):
            answer += part
    answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408") and "idle_timeout" in answer
    assert _freed(engine)



def test_prompts_arriving_together_are_read_and_stepped_as_one_batch(lm, wav):
    import asyncio

    from wavslm.serve.engine import Settings, decode_file

    engine = create_app(lm).state.engine

    async def scenario():
        sig, sr = decode_file(wav, engine.limits)
        alone = []
        for seed in (5, 6):
            alone.append(await chunks_of(engine, await engine.open(sig, sr, Settings(seconds=0.4, seed=seed))))
        steps, rows = engine.steps_run, engine.rows_stepped
        gens = await open_together(engine, sig, sr, [Settings(seconds=0.4, seed=seed) for seed in (5, 6)])
        together = await asyncio.gather(*[chunks_of(engine, gen) for gen in gens])
        return alone, together, engine.steps_run - steps, engine.rows_stepped - rows

    alone, together, steps, rows = asyncio.run(scenario())
    assert (steps, rows) == (5, 10)  # 0.4 s = 5 chunks; each step advanced both sessions at once
    for one, two in zip(alone, together, strict=True):
        assert len(one) == len(two) == 5
        for a, b in zip(one, two, strict=True):
            assert a.shape == b.shape == (CHUNK,) and np.abs(a - b).max() < 1e-4  # each its own continuation


def test_a_prompt_waits_for_sessions_still_sending_theirs_at_most_gather_s(lm, wav):
    """While another session is sending its prompt, a queued prompt waits for it and both are read in one
    job; a session that keeps sending holds the queue for `gather_s` only."""
    import asyncio
    import time

    from wavslm.serve.engine import Settings, decode_file

    engine = create_app(lm).state.engine
    engine.gather_s = 0.3
    jobs, read = [], engine._open_all
    engine._open_all = lambda requests: (jobs.append((len(requests), time.monotonic())), read(requests))[1]

    async def scenario():
        sig, sr = decode_file(wav, engine.limits)
        settings = Settings(seconds=0.08, seed=1)
        with engine.uploading() as first, engine.uploading() as second:
            queued = time.monotonic()
            one = asyncio.ensure_future(engine.open(sig, sr, settings, first))
            await asyncio.sleep(0.1)  # the second session is still sending: nothing is read yet
            assert jobs == []
            two = asyncio.ensure_future(engine.open(sig, sr, settings, second))  # the last one: the queue goes
            gens = await asyncio.gather(one, two)
        assert [n for n, _ in jobs] == [2] and jobs[0][1] - queued < 0.3
        with engine.uploading():  # a session that never sends its prompt
            queued = time.monotonic()
            gens.append(await engine.open(sig, sr, settings))
        assert [n for n, _ in jobs] == [2, 1] and 0.25 < jobs[1][1] - queued < 5
        for gen in gens:
            await engine.call(engine.close, gen)

    asyncio.run(scenario())
    assert engine._uploading == 0 and engine._open_timer is None


def test_prompts_are_read_with_the_prompt_threads_and_steps_with_the_process_setting(lm, wav):
    import asyncio

    import torch

    from wavslm.serve.engine import Settings, decode_file

    want = torch.get_num_threads() + 1
    engine = create_app(lm, prompt_threads=want).state.engine
    before = engine.model_thread.submit(torch.get_num_threads).result()
    seen, read = [], engine._open_all
    engine._open_all = lambda requests: (seen.append(torch.get_num_threads()), read(requests))[1]

    async def scenario():
        gen = await engine.open(*decode_file(wav, engine.limits), Settings(seconds=0.16, seed=0))
        while await engine.step(gen) is not None:
            seen.append(engine.model_thread.submit(torch.get_num_threads).result())
        await engine.call(engine.close, gen)

    asyncio.run(scenario())
    assert seen[0] == want and set(seen[1:]) == {before} and before != want


def test_a_failing_batched_step_ends_its_sessions_and_the_server_goes_on(lm, wav):
    import asyncio

    from wavslm.serve.engine import Settings, decode_file

    engine = create_app(lm).state.engine
    forward = lm.encoder.forward

    def fails_in_batches(x, *args, **kwargs):  # a fault of the batched step only (as running out of memory)
        if x.shape[0] > 1 and x.shape[1] == lm.toks_per_step:
            raise RuntimeError("injected fault")
        return forward(x, *args, **kwargs)

    async def scenario():
        sig, sr = decode_file(wav, engine.limits)
        gate = threading.Event()
        engine.model_thread.submit(gate.wait)
        opening = [asyncio.ensure_future(engine.open(sig, sr, Settings(seconds=0.4, seed=s))) for s in (1, 2)]
        await asyncio.sleep(0.01)
        gate.set()
        gens = await asyncio.gather(*opening)

        async def until_it_fails(gen):  # the first chunk is out before the LM reads it, then the read fails
            while await asyncio.wait_for(engine.step(gen), 10) is not None:
                pass

        errors = await asyncio.gather(*(until_it_fails(gen) for gen in gens), return_exceptions=True)
        for gen in gens:
            await engine.call(engine.close, gen)
        lm.encoder.forward = forward
        alone = await engine.open(sig, sr, Settings(seconds=0.4, seed=3))
        chunks = []
        while (chunk := await asyncio.wait_for(engine.step(alone), 10)) is not None:
            chunks.append(chunk)
        await engine.call(engine.close, alone)
        return errors, chunks

    lm.encoder.forward = fails_in_batches
    try:
        errors, chunks = asyncio.run(scenario())
    finally:
        lm.encoder.forward = forward
    assert all(isinstance(e, RuntimeError) and "injected fault" in str(e) for e in errors), errors
    assert len(chunks) == 5 and len(engine.batch) == 0


# ---- who may use the server -------------------------------------------------------------------------


def test_pages_of_another_origin_are_refused_on_every_route(lm, wav):
    c = client(lm)
    evil = {"Origin": "http://evil.example"}
    answer = c.post("/generate?seconds=0.08", content=wav, headers=evil)
    assert answer.status_code == 403 and "another origin ('http://evil.example')" in answer.json()["error"]["message"]
    assert c.get("/health", headers={"Origin": "null"}).status_code == 403
    with pytest.raises(WebSocketDisconnect) as closed, c.websocket_connect("/ws", headers=evil) as ws:
        ws.receive_json()
    assert closed.value.code == 1008
    # The server's own page (same origin) and clients that send no Origin are served.
    assert c.post("/generate?seconds=0.08", content=wav, headers={"Origin": "http://testserver"}).status_code == 200
    assert c.get("/health").status_code == 200


def test_only_the_hosts_and_token_the_server_was_given_are_answered(lm, wav):
    from wavslm.serve.limits import Access

    app = create_app(lm, access=Access.loopback(8998, token="s3cret"))
    rebound = TestClient(app, base_url="http://evil.example:8998")  # a DNS-rebinding site's own name
    assert rebound.get("/health?token=s3cret").status_code == 403
    own = TestClient(app, base_url="http://127.0.0.1:8998")
    assert own.get("/").status_code == 200  # the page itself needs no token
    assert own.get("/health").status_code == 401 and "needs its token" in own.get("/health").json()["error"]["message"]
    assert own.get("/health?token=wrong").status_code == 401
    assert own.get("/health?token=s3cret").status_code == 200
    assert own.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    with pytest.raises(WebSocketDisconnect) as closed, own.websocket_connect("ws://127.0.0.1:8998/ws") as ws:
        ws.receive_json()
    assert closed.value.code == 1008
    with own.websocket_connect("ws://127.0.0.1:8998/ws?token=s3cret") as ws:
        ws.send_json({"type": "start", "seconds": 0.08})
        ws.send_bytes(wav)
        ws.send_json({"type": "end_prompt"})
        assert ws.receive_json()["type"] == "header"


@pytest.mark.parametrize("flags, message", [
    (["--host", "0.0.0.0"], "would serve other machines with no authentication"),
    (["--port", "99999"], "--port must be in 1-65535"),
])
def test_the_command_refuses_an_open_host_and_a_bad_port(flags, message, capsys):
    from wavslm.serve.command import main

    assert main(["--model", str(REFERENCE / "wavslm_tiny"), *flags]) == 2
    assert message in capsys.readouterr().out


def test_deeply_nested_json_is_a_bad_request_not_a_server_error(lm):
    c = client(lm)
    with c.websocket_connect("/ws") as ws:
        ws.send_text("[" * 100_000 + "]" * 100_000)
        assert "nests JSON too deeply" in refused(ws, "bad_request", 4400)

