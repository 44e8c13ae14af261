"""`wavslm bench`: inference speed and memory at paper size (random weights), optionally side by side with
the original implementation on the same weights.

What it measures, for each batch size: LM prefill of a 3 s prompt, LM decode tokens/s (4 tokens per step
with the key/value cache), codec encode and decode real-time factors (offline, 10 s), and end-to-end
streaming generation (the prompt encoded 80 ms at a time, then the LM and the codec's decoder step by
step, as a `LiveSession` does it: the LM reads the prompt as it arrives): the prompt's real-time factor,
the continuation's, and the time from the prompt's last chunk to the first audio. Peak memory is
the process's resident high-water mark, next to the bytes of the weights.

The machine's noise is met by repetition: every timed figure is the best of `rounds` runs, and with a
reference the two implementations take turns round by round.

`--backend onnxruntime` (with `torch`, side by side) exports the same weights with `wavslm export onnx`
(`--quantize int8`: its LM step in ONNX Runtime's dynamic int8) and times the graphs in the same rounds:
the LM step graph's decode, the codec's whole-signal graphs, and streaming through `OnnxWavSLM`, which has
no streaming encode graph: its prompt is encoded whole, then read (`prompt_rtf` covers both), and its first
audio is timed from the end of that read.

`--reference DIR` points at a checkout of the original sources (DIR holds `wavslm.py` from
lucadellalib/wavslm, or a `wavslm/` clone of it); this project never contains them. Their LM encoder is
built with the same weights and timed in the same rounds; the maximum logit difference is reported.
"""

import contextlib
import copy
import dataclasses
import importlib.util
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .codec import Codec
from .errors import InputError
from .lm import WavSLM
from .modules.linear import Int8Linear, PackedLinear
from .optimize import optimize_for_inference
from .presets import focalcodec_stream, wavslm_paper
from .pretrained import load_int8


def build(size: str = "paper", seed: int = 0) -> WavSLM:
    """A WavSLM and its codec with random weights: `paper` (wavslm_4k + FocalCodec-Stream) or `tiny`."""
    torch.manual_seed(seed)
    if size == "paper":
        codec_cfg, lm_cfg = focalcodec_stream(4096), wavslm_paper()
    elif size == "tiny":  # seconds on a laptop; the bench's code paths without the cost (CI runs it)
        codec_cfg = focalcodec_stream(256)
        small = {"dim": 64, "ffn_dim": 128, "num_heads": 4, "window_size": 64}
        codec_cfg.encoder_config.update(num_layers=2, hidden_dims=[32] * 7, conv_pos=16, conv_pos_groups=4, **small)
        focal = {"hidden_dims": [64, 64], "window_size": 64}
        codec_cfg.compressor_config.update(input_dim=64, downscale_factors=[1, 1], **focal)
        codec_cfg.decompressor_config.update(output_dim=64, upscale_factors=[1, 1], last_window_size=64, **focal)
        codec_cfg.decoder_config.update(input_dim=64, num_layers=2, dim=64, ffn_dim=128)
        lm_cfg = dataclasses.replace(wavslm_paper(256), num_layers=2, **small)
    else:
        raise ValueError(f"size must be paper or tiny, got {size!r}")
    codec = Codec(codec_cfg).eval()
    return WavSLM(lm_cfg, codec).eval()


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one): speeds differ between CPU families."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _clock(fn, repeat: int = 1) -> float:
    """Best of `repeat` wall times of `fn()` in seconds (the minimum is the least noisy on a shared machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.inference_mode()
def lm_speeds(models: dict, qfeats: dict, steps: int, rounds: int = 3) -> dict:
    """Prefill then `steps` decode steps of 4 frames for each model, the models taking turns for `rounds`
    rounds so that the machine's noise falls on all of them alike; the best round of each.

    `models`: name -> `(prefill_fn, step_fn)`; `qfeats`: name -> its prompt features `(B, T, D)`.
    Returns name -> seconds of prefill, milliseconds per step and tokens/s per sequence.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    best = {name: {"prefill_s": float("inf"), "decode_s": float("inf")} for name in models}
    for round_ in range(rounds + 1):  # round 0 warms up (allocations, oneDNN primitive caches)
        for name, (prefill_fn, step_fn) in models.items():
            q = qfeats[name]
            new = torch.randn(q.shape[0], 4, q.shape[-1], generator=torch.Generator().manual_seed(1)).to(q.dtype)
            state = None  # the last round's cache goes first: a user never holds two
            start = time.perf_counter()
            state = prefill_fn(q)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(steps):
                state = step_fn(new, state)
            decode = time.perf_counter() - start
            if round_ > 0:
                best[name]["prefill_s"] = min(best[name]["prefill_s"], prefill)
                best[name]["decode_s"] = min(best[name]["decode_s"], decode)
    return {name: {"prefill_s": b["prefill_s"], "decode_step_ms": b["decode_s"] / steps * 1000,
                   "decode_tok_s": 4 * steps / b["decode_s"]} for name, b in best.items()}


def ours(lm: WavSLM):
    def prefill(q):
        return lm(q)[1]

    def step(q, state):
        return lm(q, state)[1]

    return prefill, step


def onnx_lm(ort):
    """`(prefill, step)` of ONNX Runtime's `lm_prefill` and `lm_step` graphs for `lm_speeds`; the prefill
    reads the prompt's whole chunks."""
    C = ort.chunk

    def prefill(q):
        q = np.ascontiguousarray(q.float().numpy()[:, : q.shape[1] - q.shape[1] % C])
        _, keys, values = ort.sessions["lm_prefill"].run(None, {"qfeats": q})
        return np.full(q.shape[0], q.shape[1], np.int64), keys, values

    def step(q, state):
        pos, keys, values = state
        _, keys, values = ort.lm_step(q.float().numpy(), pos, keys, values)
        return pos + C, keys, values

    return prefill, step


def load_reference(folder: str | Path):
    """The original `wavslm.py` as a module (imported under another name: ours is `wavslm`)."""
    folder = Path(folder)
    for path in (folder / "wavslm.py", folder / "wavslm" / "wavslm.py"):
        if path.is_file():
            spec = importlib.util.spec_from_file_location("wavslm_reference", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["wavslm_reference"] = module
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError(f"no wavslm.py in '{folder}' or '{folder}/wavslm' (a checkout of lucadellalib/wavslm)")


def reference_lm(module, lm: WavSLM):
    """The original encoder and head with our weights (the same state-dict names: the released layout)."""
    c = lm.config
    encoder = module.TransformerEncoderAbsolute(c.num_layers, c.dim, c.ffn_dim, c.num_heads, c.num_buckets,
                                                c.max_distance, 2048, 0.0, True, c.window_size, c.lookahead_size)
    state = {k.removeprefix("encoder."): v for k, v in lm.state_dict().items() if k.startswith("encoder.")}
    encoder.load_state_dict(state)
    encoder.eval()
    head = copy.deepcopy(lm.head)  # its own: converting ours (bfloat16 in place) must not touch the original's

    def prefill(q):
        feats, pos, caches = encoder(q)
        return pos, caches, head(feats)

    def step(q, state):
        pos, caches, _ = state
        feats, pos, caches = encoder(q, pos, caches)
        return pos, caches, head(feats)

    return prefill, step


@torch.inference_mode()
def codec_speed(codec: Codec, batch: int, seconds: float = 10.0) -> dict:
    sig = torch.randn(batch, int(seconds * codec.sample_rate_input), generator=torch.Generator().manual_seed(2)) * 0.1
    toks = codec.encode(sig[:, : codec.sample_rate_input])  # warm-up
    codec.decode(toks)
    encode = _clock(lambda: codec.encode(sig), 2)
    toks = codec.encode(sig)
    decode = _clock(lambda: codec.decode(toks), 2)
    return {"codec_encode_rtf": encode / seconds, "codec_decode_rtf": decode / seconds}


def _prompt(codec_rate: int, batch: int, prompt_seconds: float) -> torch.Tensor:
    return torch.randn(batch, int(prompt_seconds * codec_rate), generator=torch.Generator().manual_seed(3))


def streaming_round(lm: WavSLM, batch: int, prompt_seconds: float = 3.0, seconds: float = 10.0) -> dict:
    """One live streaming run: the prompt fed 80 ms at a time to a `LiveSession` (encoded, decompressed and
    read by the LM as it arrives), then the continuation with audio out every step (seeded sampling).

    `prompt_rtf`: seconds spent per second of prompt fed (below 1, a live speaker is kept up with);
    `first_audio_ms`: from the prompt's last chunk being fed to the continuation's first audio;
    `stream_rtf`: the continuation's wall time per second of audio.
    """
    codec = lm.codec
    sig, chunk = _prompt(codec.sample_rate_input, batch, prompt_seconds), codec.chunk_size
    steps = int(seconds * codec.frame_rate) // lm.toks_per_step
    with lm.live(batch_size=batch, top_p=0.3, temp=0.8, seed=0) as live:
        start = time.perf_counter()
        for i in range(0, sig.shape[1], chunk):
            live.feed(sig[:, i : i + chunk])
        fed = time.perf_counter()
        first = None
        for _ in live.generate(steps):
            first = first if first is not None else time.perf_counter() - fed
        elapsed = time.perf_counter() - fed
    return {"prompt_rtf": (fed - start) / prompt_seconds, "stream_rtf": elapsed / seconds, "first_audio_ms": first * 1000}


def onnx_streaming_round(ort, batch: int, prompt_seconds: float = 3.0, seconds: float = 10.0) -> dict:
    """`streaming_round` through ONNX Runtime: the prompt encoded whole and read (`prompt_rtf`), then the
    continuation; `first_audio_ms` from the end of the read."""
    rate = ort.meta["codec"]["sample_rate_input"]
    sig = _prompt(rate, batch, prompt_seconds).numpy()
    steps = int(seconds * ort.frame_rate) // ort.chunk
    start = time.perf_counter()
    toks = ort.encode(sig)
    streams = ort.start([torch.from_numpy(row[len(row) % ort.chunk :]) for row in toks])
    fed = time.perf_counter()
    first = None
    for _ in ort.steps(streams, steps, top_p=0.3, temp=0.8, seed=0):
        first = first if first is not None else time.perf_counter() - fed
    elapsed = time.perf_counter() - fed
    return {"prompt_rtf": (fed - start) / prompt_seconds, "stream_rtf": elapsed / seconds, "first_audio_ms": first * 1000}


def streaming_speeds(runs: dict, rounds: int = 1) -> dict:
    """name -> the best of `rounds` of each figure of `runs[name]()`, the runs taking turns round by round."""
    best = {}
    for _round in range(rounds):
        for name, run in runs.items():
            row = run()
            best[name] = {k: min(v, best.get(name, row)[k]) for k, v in row.items()}
    return best


def streaming_speed(lm: WavSLM, batch: int, prompt_seconds: float = 3.0, seconds: float = 10.0,
                    rounds: int = 1) -> dict:
    """`streaming_round`, the best of `rounds` runs for each figure."""
    return streaming_speeds({"torch": lambda: streaming_round(lm, batch, prompt_seconds, seconds)}, rounds)["torch"]


@torch.inference_mode()
def onnx_codec_speed(ort, batch: int, seconds: float = 10.0) -> dict:
    """`codec_speed` of the exported whole-signal graphs."""
    rate = ort.meta["codec"]["sample_rate_input"]
    sig = (torch.randn(batch, int(seconds * rate), generator=torch.Generator().manual_seed(2)) * 0.1).numpy()
    ort.decode(ort.encode(sig[:, :rate]))  # warm-up
    encode = _clock(lambda: ort.encode(sig), 2)
    toks = ort.encode(sig)
    decode = _clock(lambda: ort.decode(toks), 2)
    return {"codec_encode_rtf": encode / seconds, "codec_decode_rtf": decode / seconds}


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of `module`'s parameters and buffers, plus the packed weights of its converted linear maps."""
    packed = sum(getattr(m, "weight_bytes", 0) for m in module.modules() if isinstance(m, (Int8Linear, PackedLinear)))
    return packed + sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


BACKENDS = ("torch", "onnxruntime")


def run_bench(size: str = "paper", batches: tuple[int, ...] = (1, 4), dtype: str = "float32",
              quantize: str = "none", reference: str | None = None, steps: int = 25, seconds: float = 10.0,
              compile: bool = False, rounds: int = 3, backends: tuple[str, ...] = ("torch",),
              model: str | None = None) -> dict:
    """The report described above; `model`: a saved WavSLM (folder, .json or Hub id) instead of random
    weights of `size`. Given one, int8 on torch alone loads it straight into int8 (`pretrained.load_int8`),
    so the peak memory is what a user loading it meets."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise InputError(f"backends must be some of {list(BACKENDS)}, got {list(backends)}")
    if "onnxruntime" in backends and dtype != "float32":
        raise InputError("the onnxruntime backend runs float32 graphs (int8 with --quantize int8); use --dtype float32")
    if quantize != "none" and dtype != "float32":
        raise InputError("int8 layers compute in float32 around their int8 matmuls; use --dtype float32 with them")
    straight = model is not None and quantize == "int8" and tuple(backends) == ("torch",) and not reference
    if straight:
        lm = load_int8(model)
    else:
        lm = build(size) if model is None else WavSLM.from_pretrained(model)
    qfeats_full = lm.codec.dequantize(torch.randint(0, lm.config.vocab_size, (max(batches), 148),
                                                    generator=torch.Generator().manual_seed(4)))
    ref = None
    if reference:
        ref = reference_lm(load_reference(reference), lm)
        with torch.inference_mode():  # before any conversion: the reference runs float32
            exact, _ = lm(qfeats_full[:1])
            theirs = ref[0](qfeats_full[:1])[2]
        max_diff = (exact - theirs).abs().max().item()
    with contextlib.ExitStack() as stack:
        ort = None
        if "onnxruntime" in backends:  # exported before any conversion of the torch model: float32 weights
            from .onnx_export import export_onnx
            from .onnx_runtime import OnnxWavSLM

            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="wavslm-bench-onnx-"))
            export_onnx(lm, folder, quantize=quantize)
            ort = OnnxWavSLM(folder, threads=torch.get_num_threads())
        if "torch" in backends and not straight:
            optimize_for_inference(lm, dtype=dtype, quantize=quantize, compile=compile)
        elif compile:
            lm.encoder.forward = torch.compile(lm.encoder.forward, dynamic=True)
        report = {"size": size if model is None else None, "model": model, "dtype": dtype, "quantize": quantize, "threads": torch.get_num_threads(),
                  "cpu": cpu_name(), "backends": list(backends),
                  "lm_weight_mb": (weight_bytes(lm) - weight_bytes(lm.codec)) / 2**20,  # the codec is a submodule
                  "codec_weight_mb": weight_bytes(lm.codec) / 2**20, "runs": []}
        if ref is not None:
            with torch.inference_mode():
                report["max_logit_diff_vs_reference"] = (lm(qfeats_full[:1])[0].float() - theirs).abs().max().item()
                report["max_logit_diff_vs_reference_float32"] = max_diff
        for batch in batches:
            qfeats = qfeats_full[:batch].to(next(lm.parameters()).dtype)
            models, inputs, streams = {}, {}, {}
            if "torch" in backends:
                models["torch"], inputs["torch"] = ours(lm), qfeats
                streams["torch"] = lambda b=batch: streaming_round(lm, b, seconds=seconds)
            if ort is not None:
                models["onnxruntime"], inputs["onnxruntime"] = onnx_lm(ort), qfeats_full[:batch]
                streams["onnxruntime"] = lambda b=batch: onnx_streaming_round(ort, b, seconds=seconds)
            if ref is not None:
                models["reference"], inputs["reference"] = ref, qfeats_full[:batch]
            speeds = lm_speeds(models, inputs, steps, rounds)
            streamed = streaming_speeds(streams, rounds)
            for backend in backends:
                row = {"backend": backend, "batch": batch, **speeds[backend]}
                if ref is not None:
                    row.update({f"reference_{k}": v for k, v in speeds["reference"].items()})
                    row["decode_speedup"] = row["decode_tok_s"] / speeds["reference"]["decode_tok_s"]
                row.update(codec_speed(lm.codec, batch, seconds) if backend == "torch"
                           else onnx_codec_speed(ort, batch, seconds))
                row.update(streamed[backend])
                report["runs"].append(row)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def format_report(report: dict) -> str:
    head = (f"{'model ' + report['model'] if report.get('model') else 'size ' + report['size']}, dtype {report['dtype']}, quantize {report['quantize']}, "
            f"{report['threads']} threads of {report.get('cpu', 'an unnamed CPU')}; weights: LM {report['lm_weight_mb']:.0f} MB, codec "
            f"{report['codec_weight_mb']:.0f} MB; peak RSS {report['peak_rss_mb']:.0f} MB")
    if "max_logit_diff_vs_reference" in report:
        head += (f"\nmax |logit - original's|: {report['max_logit_diff_vs_reference']:.2e} "
                 f"(float32 before conversion: {report['max_logit_diff_vs_reference_float32']:.2e})")
    cols = ["backend", "batch", "prefill_s", "decode_tok_s", "reference_decode_tok_s", "decode_speedup", "codec_encode_rtf",
            "codec_decode_rtf", "prompt_rtf", "stream_rtf", "first_audio_ms"]
    cols = [c for c in cols if any(c in r for r in report["runs"])]
    lines = [head, " | ".join(cols)]
    for r in report["runs"]:
        lines.append(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return "\n".join(lines)


def main_json(report: dict) -> str:
    return json.dumps(report, indent=2)
