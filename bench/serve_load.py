"""Load test of `wavslm serve`: N concurrent WebSocket sessions on loopback, bounded in time and size.

    python bench/serve_load.py [--model REF] [--sessions 8] [--seconds 10] [--prompt-seconds 3]
                               [--rounds 3] [--threads N] [--prompt-threads N] [--backend onnxruntime]

Starts `python -m wavslm.serve` in a subprocess (the bundled tiny model unless --model; with `--backend
onnxruntime`, --model is a folder from `wavslm export onnx`), runs one warm-up
round (every session at once, 1 s each), then `--rounds` rounds of `--sessions` sessions at once, each continuing a different
real speech clip. Per session it reports the real-time factor (wall time from connecting to the last
chunk / audio seconds), the time to first chunk (from the end of the prompt upload), playback underruns
(chunks later than a player that starts `--lead-ms` after the first chunk, like the page, needs them)
and the worst lateness of a chunk for a player with no lead at all.
It checks that no chunk or sample is lost and that the server's resident memory (VmRSS from /proc)
stops growing: after the last round it is back within `--rss-tolerance-mib` of the highest idle RSS
before that round (the post-warm-up baseline or an earlier round's). The first rounds may add memory
that stays: oneDNN caches a primitive per new convolution shape (bounded, 1024 by default), and how
the prompts of a round happen to be batched decides which shapes it meets (measured, 16 sessions x 5
rounds: idle RSS 362, 389, 395, 394, 395 MiB; with ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 it stayed within
10 MiB); a leak grows with every round. Exit status 1 if any check fails.
"""

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import soundfile as sf
import websockets

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BUNDLED_LM = ROOT / "wavslm" / "assets" / "tiny" / "lm"
REFERENCE_LM = ROOT / "tests" / "assets" / "reference" / "wavslm_tiny"
SPEECH = Path(os.environ.get("WAVSLM_SPEECH", SHARED / "data" / "speech"))
STEP = 0.08  # seconds of audio per chunk


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def prompts(n: int, seconds: float) -> list[bytes]:
    """`n` different clips cut to `seconds`, as 16-bit WAV bytes."""
    clips = sorted(SPEECH.glob("librispeech-dev-clean/**/*.wav"))
    if not clips:
        sys.exit(f"no speech clips under {SPEECH}; set WAVSLM_SPEECH")
    out = []
    for i in range(n):
        audio, sr = sf.read(clips[i % len(clips)], dtype="float32")
        buf = io.BytesIO()
        sf.write(buf, audio[: int(seconds * sr)], sr, format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


async def session(url: str, prompt: bytes, seconds: float, seed: int, lead: float = 0.1) -> dict:
    t0 = time.perf_counter()
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "seconds": seconds, "seed": seed, "output_format": "f32"}))
        await ws.send(prompt)
        await ws.send(json.dumps({"type": "end_prompt"}))
        sent = time.perf_counter()
        header, arrivals, samples, end = None, [], 0, None
        async for message in ws:
            if isinstance(message, bytes):
                arrivals.append(time.perf_counter())
                samples += len(message) // 4
            else:
                data = json.loads(message)
                if data["type"] == "header":
                    header = data
                elif data["type"] == "end":
                    end = data
                else:
                    return {"error": data}
    audio = samples / header["sample_rate"]
    # A player that starts `lead` after the first chunk needs chunk k by first + lead + k * STEP.
    late = [t - (arrivals[0] + k * STEP) for k, t in enumerate(arrivals)]
    return {
        "chunks": len(arrivals), "expected_chunks": header["chunks"], "samples": samples,
        "expected_samples": header["samples"], "audio": audio, "rtf": (arrivals[-1] - t0) / audio,
        "ttfc_ms": 1000 * (arrivals[0] - sent), "underruns": sum(d > lead for d in late),
        "max_late_ms": 1000 * max(0.0, *late), "server_rtf": end["rtf"] if end else None, "end": end is not None,
    }


async def round_(url, clips, seconds, pid, seed0, lead) -> tuple[list[dict], float, float]:
    peak = rss_mib(pid)

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    start = time.perf_counter()
    results = await asyncio.gather(*(session(url, c, seconds, seed0 + i, lead) for i, c in enumerate(clips)))
    wall = time.perf_counter() - start
    watcher.cancel()
    return results, wall, peak


def batching(port: int) -> tuple[int, int]:
    """The server's batched steps so far and the session steps they made (GET /health)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
        health = json.load(answer)
    return health["batched_steps"], health["sessions_stepped"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUNDLED_LM),
                        help=f"WavSLM folder/.json/hub id (default: the bundled tiny model; {REFERENCE_LM} also works)")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="continuation per session")
    parser.add_argument("--prompt-seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (at least 2 for the memory check)")
    parser.add_argument("--threads", type=int, help="the server's PyTorch threads (default: the server's, 1)")
    parser.add_argument("--prompt-threads", type=int,
                        help="the server's PyTorch threads while it reads prompts (default: the server's, every core)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="the server's backend (onnxruntime: --model is a folder from `wavslm export onnx`)")
    parser.add_argument("--lead-ms", type=float, default=100.0,
                        help="player's lead before the first chunk plays, as in the page (default 100)")
    parser.add_argument("--rss-tolerance-mib", type=float, default=8.0, help="allowed growth of the last round's idle RSS over the highest before it")
    args = parser.parse_args()

    port = free_port()
    cmd = [sys.executable, "-m", "wavslm.serve", "--model", args.model, "--port", str(port), "--device", args.device,
           "--max-sessions", str(args.sessions), "--max-gen-secs", str(max(30.0, args.seconds)), "--log-level", "warning",
           "--backend", args.backend]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.prompt_threads:
        cmd += ["--prompt-threads", str(args.prompt_threads)]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        for _ in range(600):  # up to 60 s to load the model
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("the server exited; run its command by hand to see why: " + " ".join(cmd))
                time.sleep(0.1)
        clips = prompts(args.sessions, args.prompt_seconds)
        # Warm-up: every session at once for 1 s, so the first use of each batch size (oneDNN primitives,
        # allocator pools) is in the baseline; what a round adds after that is what it keeps.
        asyncio.run(round_(url, clips, 1.0, server.pid, 10_000, args.lead_ms / 1000))
        time.sleep(0.5)
        baseline = rss_mib(server.pid)
        ok, idle = True, [baseline]
        print(f"model {args.model} ({args.backend}); {args.sessions} sessions x {args.seconds:g} s, prompts {args.prompt_seconds:g} s, "
              f"{args.rounds} rounds; server RSS baseline {baseline:.1f} MiB (after warm-up)")
        print(f"{os.cpu_count()} CPUs, load average before: {load_average()} (other processes compete for the CPU)")
        print(f"{'round':>5} {'sess':>4} {'chunks':>9} {'samples':>15} {'RTF':>6} {'TTFC ms':>8} "
              f"{'underruns':>9} {'max late ms':>11} {'server RTF':>10}")
        print(f"(underruns: chunks later than a player starting {args.lead_ms:g} ms after the first one needs them; "
              "max late: the worst lateness with no lead)")
        for r in range(args.rounds):
            steps0, rows0 = batching(port)
            results, wall, peak = asyncio.run(round_(url, clips, args.seconds, server.pid, 100 * r, args.lead_ms / 1000))
            steps1, rows1 = batching(port)
            for i, s in enumerate(results):
                if "error" in s:
                    print(f"{r:>5} {i:>4} refused: {s['error']}")
                    ok = False
                    continue
                complete = s["end"] and s["chunks"] == s["expected_chunks"] and s["samples"] == s["expected_samples"]
                ok &= complete and s["rtf"] < 1.0
                print(f"{r:>5} {i:>4} {s['chunks']:>4}/{s['expected_chunks']:<4} {s['samples']:>7}/{s['expected_samples']:<7} "
                      f"{s['rtf']:>6.3f} {s['ttfc_ms']:>8.1f} {s['underruns']:>9} {s['max_late_ms']:>11.1f} "
                      f"{s['server_rtf']:>10.3f}{'' if complete else '  LOST'}")
            audio = sum(s.get("audio", 0) for s in results)
            time.sleep(0.5)
            idle.append(rss_mib(server.pid))
            print(f"round {r}: {audio:.1f} s of audio in {wall:.2f} s wall (aggregate RTF {wall / audio:.3f}); "
                  f"peak RSS {peak:.1f} MiB, idle after {idle[-1]:.1f} MiB; "
                  f"{steps1 - steps0} batched steps, {(rows1 - rows0) / max(1, steps1 - steps0):.2f} sessions each")
        before = max(idle[:-1])  # the baseline and every round but the last
        settled = rss_mib(server.pid)
        for _ in range(50):  # up to 5 s for freed memory to go back
            if settled <= before + args.rss_tolerance_mib:
                break
            time.sleep(0.1)
            settled = rss_mib(server.pid)
        back = settled <= before + args.rss_tolerance_mib
        ok &= back
        print(f"RSS after the load: {settled:.1f} MiB ({settled - baseline:+.1f} MiB vs the baseline, "
              f"{settled - before:+.1f} MiB vs the highest idle RSS before the last round: "
              f"{'no growth' if back else 'STILL GROWING'} beyond {args.rss_tolerance_mib:g} MiB)")
        print(f"load average after: {load_average()}")
        print("all sessions complete and faster than real time" if ok else "FAILED")
    finally:
        server.terminate()
        server.wait(10)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
