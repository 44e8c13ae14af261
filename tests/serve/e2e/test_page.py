"""The page end to end: a prompt in, a continuation streamed, played, drawn and downloadable."""

import io

import pytest
import soundfile as sf

from .conftest import ARTIFACTS

pytestmark = pytest.mark.e2e

# Pixels of the spectrogram canvas that are not its black background, and a checksum of all of them.
CANVAS = """() => {
  const c = document.getElementById('spectrogram');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0, sum = 0;
  for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i + 1] + d[i + 2] > 0) lit++; sum = (sum + d[i] * 7 + d[i + 1] * 3 + d[i + 2]) % 1e9; }
  return {lit, sum, total: d.length / 4};
}"""


def set_slider(page, selector: str, value: float) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def generate_and_wait(page, seconds: float) -> dict:
    set_slider(page, "#seconds", seconds)
    before = page.evaluate(CANVAS)
    page.click("#generate")
    # Every chunk must not only arrive but finish playing (its AudioBufferSourceNode's "ended").
    page.wait_for_function("() => window.wavslm.error || (window.wavslm.done && "
                           "window.wavslm.chunksPlayed >= window.wavslm.end.chunks)", timeout=60_000)
    state = page.evaluate("() => window.wavslm")
    assert state["error"] is None, state["error"]
    after = page.evaluate(CANVAS)
    header, end = state["header"], state["end"]
    assert header["sample_rate"] == 24000 and header["samples"] == round(seconds * 24000)
    assert state["chunksReceived"] == header["chunks"] == end["chunks"] == state["chunksStarted"] == state["chunksPlayed"]
    assert state["samplesReceived"] == header["samples"] and not end["cancelled"]
    assert state["spectrogramColumns"] >= header["chunks"] * 7  # ~8 columns per 80 ms chunk
    # The canvas changed, and the new columns cover a good part of it (2 px per 10 ms of audio).
    assert after["sum"] != before["sum"] and after["lit"] > 0.1 * after["total"]
    return state


def download(page, selector: str):
    with page.expect_download() as info:
        page.click(selector)
    return sf.read(io.BytesIO(open(info.value.path(), "rb").read()), dtype="float32")


def test_upload_generate_play_and_download(page, speech):
    clip = speech / "librispeech-dev-clean" / "84" / "84-121123-0001.wav"
    page.wait_for_function("() => document.getElementById('model').textContent.startsWith('Model:')")
    page.set_input_files("#file", str(clip))
    page.wait_for_function("() => !document.getElementById('generate').disabled")
    assert "84-121123-0001.wav" in page.inner_text("#prompt-info")
    set_slider(page, "#temperature", 1.0)
    assert page.evaluate(CANVAS)["lit"] == 0  # a black canvas before the first generation
    state = generate_and_wait(page, 2.0)
    assert state["end"]["prompt_seconds"] == pytest.approx(sf.info(clip).duration, abs=1e-3)
    assert "real-time factor" in page.inner_text("#stats")

    page.wait_for_function("() => window.wavslm.downloadsReady")
    continuation, rate = download(page, "#download-continuation")
    assert rate == 24000 and len(continuation) == 48000
    both, rate = download(page, "#download-both")
    assert rate == 24000 and abs(len(both) - 48000 - sf.info(clip).duration * 24000) < 24

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page_upload.png"), full_page=True)
    generate_and_wait(page, 1.0)  # again on the same page: the counters and the player start afresh


def test_microphone_prompt(page):
    # Chromium's fake device: a beep, granted without a permission prompt.
    page.click("#record")
    page.wait_for_function("() => !document.getElementById('stop-record').disabled")
    page.wait_for_timeout(1200)
    page.click("#stop-record")
    page.wait_for_function("() => !document.getElementById('generate').disabled")
    assert "microphone" in page.inner_text("#prompt-info")
    state = generate_and_wait(page, 1.0)
    assert state["end"]["prompt_seconds"] > 0.8  # PCM16 at 16 kHz, as recorded
    page.screenshot(path=str(ARTIFACTS / "page_microphone.png"), full_page=True)


def test_spectrogram_fft_finds_a_sine(page):
    # The page's own FFT: a 3 kHz sine at 24 kHz in a 512-point frame peaks in bin 3000 / 24000 * 512 = 64.
    peak = page.evaluate("""() => {
      const n = 512, re = new Float32Array(n), im = new Float32Array(n);
      for (let i = 0; i < n; i++) re[i] = Math.sin(2 * Math.PI * 3000 * i / 24000);
      fft(re, im);
      let best = 0;
      for (let k = 1; k < n / 2; k++) if (re[k] ** 2 + im[k] ** 2 > re[best] ** 2 + im[best] ** 2) best = k;
      return best;
    }""")
    assert peak == 64


def test_a_page_of_another_origin_can_neither_open_the_websocket_nor_post(browser, server_url, speech, tmp_path):
    """The classic hole of a service on localhost: any site the user visits talks to it. A page served from
    another origin (another port) tries both; the server must start no generation."""
    import functools
    import http.server
    import threading

    import httpx

    wav = sorted(speech.rglob("*.wav"))[0]
    (tmp_path / "prompt.wav").write_bytes(wav.read_bytes())
    ws_url = server_url.replace("http://", "ws://")
    (tmp_path / "index.html").write_text(f"""<!doctype html><script>
window.results = {{}};
const ws = new WebSocket("{ws_url}/ws");
ws.onopen = () => {{ window.results.ws = "open"; ws.send(JSON.stringify({{type: "start", seconds: 0.08}})); }};
ws.onerror = () => {{ window.results.ws = window.results.ws || "refused"; }};
fetch("prompt.wav").then(r => r.arrayBuffer()).then(body =>
  fetch("{server_url}/generate?seconds=0.08", {{method: "POST", body, mode: "no-cors"}}))
  .then(() => {{ window.results.post = "sent"; }}, () => {{ window.results.post = "failed"; }});
</script>""")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    before = httpx.get(f"{server_url}/health").json()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{other.server_address[1]}/index.html")
        page.wait_for_function("() => window.results.ws && window.results.post", timeout=30_000)
        results = page.evaluate("() => window.results")
    finally:
        context.close()
        other.shutdown()
    after = httpx.get(f"{server_url}/health").json()
    assert results["ws"] == "refused", results
    assert after["sessions_stepped"] == before["sessions_stepped"] and after["active_sessions"] == 0
