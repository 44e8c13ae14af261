// The WavSLM page: a prompt (microphone or file), settings, and a continuation that plays as it
// arrives over the WebSocket protocol described in docs/serve.md. No libraries, no build step.
"use strict";

// Counters for tests and the curious: window.wavslm.chunksPlayed etc.
const W = (window.wavslm = {
  chunksReceived: 0, chunksStarted: 0, chunksPlayed: 0, samplesReceived: 0,
  spectrogramColumns: 0, underruns: 0, done: false, downloadsReady: false, error: null, header: null, end: null,
});

const $ = (id) => document.getElementById(id);
// A server that needs a token prints the page's address with it (?token=...): pass it on to the API.
const TOKEN = new URLSearchParams(location.search).get("token");
const withToken = (path) => (TOKEN ? `${path}?token=${encodeURIComponent(TOKEN)}` : path);
const PROMPT_RATE = 16000;       // microphone prompts are sent as 16 kHz PCM16
const FFT_SIZE = 512, HOP = 240;  // spectrogram: ~21 ms windows every 10 ms at 24 kHz
const COLUMN_PX = 2;

let ctx = null;          // one AudioContext for recording, decoding and playback
let prompt = null;       // {kind: "file" | "pcm16", bytes: ArrayBuffer, audio: AudioBuffer}
let limits = null;
let ws = null;
let chunks = [];         // Float32Arrays of the continuation, in order
let nextTime = 0;        // when the next chunk starts playing (AudioContext time)
let playing = new Set(); // scheduled AudioBufferSourceNodes, stopped when a new generation starts
let workletLoaded = false;

function audioContext() {
  if (!ctx) ctx = new AudioContext();
  return ctx;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// ---- server info and sliders --------------------------------------------------------------------

async function loadHealth() {
  try {
    const info = await (await fetch(withToken("/health"))).json();
    limits = info.limits;
    $("model").textContent = `Model: ${info.model} · ${info.sample_rate_input / 1000} kHz in, ` +
      `${info.sample_rate_output / 1000} kHz out · prompts up to ${limits.max_prompt_secs} s`;
    $("seconds").max = String(limits.max_gen_secs);
  } catch (err) {
    $("model").textContent = "The server does not answer /health.";
  }
}

for (const id of ["temperature", "top-p", "seconds"]) {
  const show = () => { $(`${id}-value`).textContent = $(id).value; };
  $(id).addEventListener("input", show);
  show();
}

// ---- prompt: file upload ------------------------------------------------------------------------

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  if (!file) return;
  const bytes = await file.arrayBuffer();
  let audio = null;
  try {
    audio = await audioContext().decodeAudioData(bytes.slice(0));  // decodeAudioData detaches its input
  } catch (err) {
    // The server decides what it can read; the preview and the joined download just go without.
  }
  setPrompt({ kind: "file", bytes, audio }, `${file.name}` + (audio ? ` · ${audio.duration.toFixed(2)} s` : ""));
  $("prompt-player").src = URL.createObjectURL(file);
});

function setPrompt(p, description) {
  prompt = p;
  $("prompt-info").textContent = `Prompt: ${description}`;
  $("prompt-info").classList.remove("error");
  $("prompt-player").hidden = false;
  $("generate").disabled = false;
  setStatus("Ready.");
}

// ---- prompt: microphone (AudioWorklet -> Float32 blocks -> 16 kHz PCM16) -------------------------

let recording = null;  // {stream, source, node, sink, blocks}

$("record").addEventListener("click", async () => {
  try {
    const ac = audioContext();
    await ac.resume();
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    if (!workletLoaded) await ac.audioWorklet.addModule("/recorder.js");  // a name registers once
    workletLoaded = true;
    const source = ac.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ac, "recorder");
    const sink = ac.createGain();  // silent path to the output so the worklet is pulled
    sink.gain.value = 0;
    const blocks = [];
    node.port.onmessage = (e) => blocks.push(e.data);
    source.connect(node).connect(sink).connect(ac.destination);
    recording = { stream, source, node, sink, blocks, started: performance.now() };
    $("record").classList.add("recording");
    $("record").disabled = true;
    $("stop-record").disabled = false;
    $("prompt-info").textContent = "Recording… press Stop when done.";
  } catch (err) {
    $("prompt-info").textContent = `Cannot record: ${err.message}`;
    $("prompt-info").classList.add("error");
  }
});

$("stop-record").addEventListener("click", async () => {
  if (!recording) return;
  const r = recording;
  recording = null;
  r.node.port.postMessage("flush");
  await new Promise((resolve) => setTimeout(resolve, 100));  // let the last block arrive
  r.source.disconnect(); r.node.disconnect(); r.sink.disconnect();
  r.stream.getTracks().forEach((t) => t.stop());
  $("record").classList.remove("recording");
  $("record").disabled = false;
  $("stop-record").disabled = true;
  const samples = concat(r.blocks);
  const audio = await resampleMono(samples, ctx.sampleRate, PROMPT_RATE);
  const pcm = toPcm16(audio.getChannelData(0));
  setPrompt({ kind: "pcm16", bytes: pcm.buffer, audio }, `microphone · ${audio.duration.toFixed(2)} s`);
  $("prompt-player").src = URL.createObjectURL(wavBlob(audio.getChannelData(0), PROMPT_RATE));
});

function concat(arrays) {
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let offset = 0;
  for (const a of arrays) { out.set(a, offset); offset += a.length; }
  return out;
}

// The browser's own resampler (an OfflineAudioContext renders the signal at the new rate).
async function resampleMono(samples, fromRate, toRate) {
  const length = Math.max(1, Math.round((samples.length * toRate) / fromRate));
  const off = new OfflineAudioContext(1, length, toRate);
  const buf = off.createBuffer(1, Math.max(1, samples.length), fromRate);
  buf.copyToChannel(samples, 0);
  const src = off.createBufferSource();
  src.buffer = buf;
  src.connect(off.destination);
  src.start();
  return off.startRendering();
}

function toPcm16(f32) {
  const out = new Int16Array(f32.length);
  for (let i = 0; i < f32.length; i++) out[i] = Math.max(-1, Math.min(1, f32[i])) * 32767;
  return out;
}

// ---- generation over the WebSocket ----------------------------------------------------------------

$("generate").addEventListener("click", async () => {
  if (!prompt) return;
  const ac = audioContext();
  await ac.resume();
  resetOutput();
  const seed = $("seed").value === "" ? null : Number($("seed").value);
  const start = {
    type: "start", prompt_format: prompt.kind, output_format: "f32",
    temperature: Number($("temperature").value), top_p: Number($("top-p").value),
    seconds: Number($("seconds").value), seed,
  };
  if (prompt.kind === "pcm16") start.sample_rate = PROMPT_RATE;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}${withToken("/ws")}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    ws.send(JSON.stringify(start));
    for (let i = 0; i < prompt.bytes.byteLength; i += 65536) ws.send(prompt.bytes.slice(i, i + 65536));
    ws.send(JSON.stringify({ type: "end_prompt" }));
    setStatus("Sending the prompt…");
  };
  ws.onmessage = (e) => (typeof e.data === "string" ? onMessage(JSON.parse(e.data)) : onChunk(e.data));
  ws.onclose = (e) => {
    $("generate").disabled = false;
    $("cancel").disabled = true;
    if (!W.done && !W.error) setStatus(`Connection closed (${e.code}${e.reason ? " " + e.reason : ""}).`, true);
  };
  $("generate").disabled = true;
  $("cancel").disabled = false;
});

$("cancel").addEventListener("click", () => {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "cancel" }));
});

function resetOutput() {
  Object.assign(W, { chunksReceived: 0, chunksStarted: 0, chunksPlayed: 0, samplesReceived: 0,
    spectrogramColumns: 0, underruns: 0, done: false, downloadsReady: false, error: null, header: null, end: null });
  const old = playing;
  playing = new Set();
  old.forEach((src) => src.stop());  // their "ended" events no longer count: they belong to the old set
  chunks = [];
  nextTime = 0;
  spec.reset();
  $("stats").textContent = "";
  for (const id of ["download-continuation", "download-both"]) $(id).classList.add("disabled");
}

function onMessage(msg) {
  if (msg.type === "header") {
    W.header = msg;
    setStatus(`Generating ${msg.seconds.toFixed(2)} s (seed ${msg.seed})…`);
  } else if (msg.type === "end") {
    W.end = msg;
    W.done = true;
    const rtf = msg.rtf === null ? "–" : msg.rtf.toFixed(2);
    setStatus(msg.cancelled ? "Stopped." : "Done.");
    $("stats").textContent = `${msg.chunks} chunks · ${msg.audio_seconds.toFixed(2)} s of audio in ` +
      `${msg.elapsed_seconds.toFixed(2)} s (real-time factor ${rtf}) · first chunk after ` +
      `${msg.first_chunk_ms} ms · ${msg.tokens} tokens · prompt ${msg.prompt_seconds.toFixed(2)} s`;
    offerDownloads();
  } else if (msg.type === "error") {
    W.error = msg;
    setStatus(`Refused: ${msg.message} (${msg.code})`, true);
  }
}

function onChunk(data) {
  const samples = W.header.format === "s16le" ? Float32Array.from(new Int16Array(data), (v) => v / 32768)
    : new Float32Array(data);
  chunks.push(samples);
  W.chunksReceived += 1;
  W.samplesReceived += samples.length;
  play(samples, W.header.sample_rate);
  spec.push(samples, W.header.sample_rate);
}

// Each chunk becomes an AudioBuffer scheduled right after the previous one; a small lead absorbs jitter.
function play(samples, rate) {
  const buf = ctx.createBuffer(1, samples.length, rate);
  buf.copyToChannel(samples, 0);
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  if (nextTime < ctx.currentTime + 0.01) {
    if (W.chunksStarted > 0) W.underruns += 1;  // the stream fell behind playback
    nextTime = ctx.currentTime + 0.1;
  }
  const mine = playing;
  mine.add(src);
  src.onended = () => { if (mine.delete(src) && mine === playing) W.chunksPlayed += 1; };
  src.start(nextTime);
  W.chunksStarted += 1;
  nextTime += buf.duration;
}

// ---- live spectrogram: Hann window + radix-2 FFT per hop, one column per frame -------------------

const spec = (() => {
  const canvas = $("spectrogram");
  const g = canvas.getContext("2d");
  const window_ = Float32Array.from({ length: FFT_SIZE }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / FFT_SIZE));
  const re = new Float32Array(FFT_SIZE), im = new Float32Array(FFT_SIZE);
  // dB relative to a full-scale sine (its peak bin has power (sum of the window / 2)^2); black at FLOOR_DB.
  const FULL_SCALE = (window_.reduce((a, b) => a + b, 0) / 2) ** 2, FLOOR_DB = -100;
  let tail = new Float32Array(0);  // samples not yet covered by a full window
  let x = 0;

  function reset() {
    g.fillStyle = "#000";
    g.fillRect(0, 0, canvas.width, canvas.height);
    tail = new Float32Array(0);
    x = 0;
  }

  function push(samples) {
    const buf = new Float32Array(tail.length + samples.length);
    buf.set(tail);
    buf.set(samples, tail.length);
    let start = 0;
    for (; start + FFT_SIZE <= buf.length; start += HOP) column(buf.subarray(start, start + FFT_SIZE));
    tail = buf.slice(start);
  }

  function column(frame) {
    for (let i = 0; i < FFT_SIZE; i++) { re[i] = frame[i] * window_[i]; im[i] = 0; }
    fft(re, im);
    if (x + COLUMN_PX > canvas.width) {  // full: scroll left by one column
      g.drawImage(canvas, -COLUMN_PX, 0);
      x = canvas.width - COLUMN_PX;
    }
    const bins = FFT_SIZE / 2, h = canvas.height;
    for (let y = 0; y < h; y++) {
      const k = Math.floor(((h - 1 - y) * bins) / h);  // low frequencies at the bottom
      const db = 10 * Math.log10((re[k] * re[k] + im[k] * im[k]) / FULL_SCALE + 1e-12);
      g.fillStyle = colour((db - FLOOR_DB) / -FLOOR_DB);
      g.fillRect(x, y, COLUMN_PX, 1);
    }
    x += COLUMN_PX;
    W.spectrogramColumns += 1;
  }

  return { reset, push };
})();

// In-place iterative radix-2 FFT of (re, im); the length must be a power of two.
function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) { [re[i], re[j]] = [re[j], re[i]]; [im[i], im[j]] = [im[j], im[i]]; }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = (-2 * Math.PI) / len, wr = Math.cos(ang), wi = Math.sin(ang);
    for (let i = 0; i < n; i += len) {
      let cr = 1, ci = 0;
      for (let k = 0; k < len / 2; k++) {
        const a = i + k, b = a + len / 2;
        const tr = re[b] * cr - im[b] * ci, ti = re[b] * ci + im[b] * cr;
        re[b] = re[a] - tr; im[b] = im[a] - ti;
        re[a] += tr; im[a] += ti;
        [cr, ci] = [cr * wr - ci * wi, cr * wi + ci * wr];
      }
    }
  }
}

// A dark-to-bright "inferno"-like colour map on [0, 1].
const STOPS = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];
function colour(v) {
  const t = Math.min(1, Math.max(0, v)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i;
  const c = STOPS[i].map((a, j) => Math.round(a + f * (STOPS[i + 1][j] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// ---- downloads: 16-bit WAV files made in the page -------------------------------------------------

async function offerDownloads() {
  const rate = W.header.sample_rate;
  const continuation = concat(chunks);
  link("download-continuation", wavBlob(continuation, rate));
  if (prompt.audio) {
    const data = prompt.audio;
    const mono = new Float32Array(data.length);
    for (let c = 0; c < data.numberOfChannels; c++) {
      data.getChannelData(c).forEach((v, i) => { mono[i] += v / data.numberOfChannels; });
    }
    const head = (await resampleMono(mono, data.sampleRate, rate)).getChannelData(0);
    link("download-both", wavBlob(concat([head, continuation]), rate));
  }
  W.downloadsReady = true;
}

function link(id, blob) {
  const a = $(id);
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(blob);
  a.classList.remove("disabled");
}

function wavBlob(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, samples[i])) * 32767, true);
  return new Blob([view], { type: "audio/wav" });
}

spec.reset();
loadHealth();
