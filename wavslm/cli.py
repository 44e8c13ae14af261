"""The `wavslm` command: one entry point, each verb a thin wrapper over library functions.

Bad input (a missing file, unreadable audio, an unloadable model) prints one line and exits with 2.
"""

import argparse
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .audio import WavStreamWriter, load_audio, save_audio
from .errors import InputError, Terminated, describe_os_error
from .generation import generate_steps, prompt_tokens
from .generation.prompts import MAX_PROMPT_SECONDS
from .io import AUDIO_EXTENSIONS, write_json, write_npy
from .pretrained import BUNDLED_CODEC, OPTIMIZE, load_codec, load_lm
from .serve import command as serve

OPTIMIZE_HELP = ("convert the model for inference (default: none): float32 = the same numbers with weights in "
                 "oneDNN's packed layout (faster at paper size on a CPU); bfloat16 / int8 = faster still, with the "
                 "deviation the README states")

log = logging.getLogger("wavslm")


def _progress(total: int, desc: str, unit: str) -> tqdm:
    # Shown only when stderr is a terminal and the work lasts long enough to want one.
    return tqdm(total=total, desc=desc, unit=unit, delay=1.0, leave=False, disable=None)


def cmd_encode(args: argparse.Namespace) -> None:
    codec = load_codec(args.codec, args.device)
    sig, _ = load_audio(args.input, sample_rate=codec.sample_rate_input)
    toks = codec.encode(sig.to(args.device))  # long inputs in pieces, memory linear
    write_npy(args.output, toks.cpu().numpy().astype(np.int64))
    print(f"{args.output}: {toks.shape[1]} tokens x {toks.shape[0]} channel(s) at {codec.frame_rate:g} tokens/s")


MAX_TOKEN_ROWS = 16  # channels of a token file `wavslm decode` takes (each is decoded to one audio channel)


def _load_tokens(path: Path, vocab: int) -> torch.Tensor:
    if not path.is_file():
        raise InputError(f"token file '{path}' does not exist")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"cannot read tokens from '{path}': not a .npy array") from error
    if array.dtype.kind not in "iu" or array.ndim not in (1, 2) or array.size == 0:
        raise InputError(f"tokens in '{path}' must be a non-empty integer array (T,) or (C, T)")
    if array.ndim == 2 and array.shape[0] > MAX_TOKEN_ROWS:
        raise InputError(f"tokens in '{path}' have {array.shape[0]} rows (channels); at most {MAX_TOKEN_ROWS} are "
                         f"decoded at once")
    if array.min() < 0 or array.max() >= vocab:
        raise InputError(f"tokens in '{path}' must lie in [0, {vocab}) for this codec")
    return torch.from_numpy(array.astype(np.int64)).reshape(-1, array.shape[-1])


def cmd_decode(args: argparse.Namespace) -> None:
    codec = load_codec(args.codec, args.device)
    toks = _load_tokens(args.input, codec.vocab_size).to(args.device)
    sig = codec.decode(toks)
    save_audio(args.output, sig.cpu(), codec.sample_rate_output)
    print(f"{args.output}: {sig.shape[1] / codec.sample_rate_output:.2f} s at {codec.sample_rate_output} Hz")


def cmd_resynth(args: argparse.Namespace) -> None:
    codec = load_codec(args.codec, args.device)
    sig, _ = load_audio(args.input, sample_rate=codec.sample_rate_input)
    rec = codec.decode(codec.encode(sig.to(args.device)))
    save_audio(args.output, rec.cpu(), codec.sample_rate_output)
    print(f"{args.output}: {rec.shape[1] / codec.sample_rate_output:.2f} s at {codec.sample_rate_output} Hz")


# Limits of `wavslm generate` (the whole continuation is held in memory unless --stream).
MAX_GENERATE_SECONDS = 3600.0  # seconds of audio per run, all --num continuations together


def _check_generate(args: argparse.Namespace) -> None:
    if args.top_k is not None and args.top_p is not None:
        raise InputError("give --top-p or --top-k, not both")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise InputError(f"--seconds must be a positive number of seconds, got {args.seconds}")
    if args.seconds * args.num > MAX_GENERATE_SECONDS:
        raise InputError(f"--seconds x --num asks for {args.seconds * args.num:g} s of audio; at most "
                         f"{MAX_GENERATE_SECONDS:g} s per run")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise InputError(f"--seed must be in [0, 2^63), got {args.seed}")
    if not (math.isfinite(args.temp) and args.temp > 0):
        raise InputError(f"--temp must be a positive number, got {args.temp}")


def cmd_generate(args: argparse.Namespace) -> None:
    _check_generate(args)
    top_p = args.top_p
    outputs = [args.output] if args.num == 1 else [
        args.output.with_name(f"{args.output.stem}_{i}{args.output.suffix}") for i in range(args.num)
    ]
    for path in outputs:
        _check_output(path, args.input)
    sig, sr = load_audio(args.input, mono=True, max_seconds=MAX_PROMPT_SECONDS)
    if args.backend == "onnxruntime":
        from .onnx_runtime import OnnxWavSLM

        if args.model is None or args.optimize != "none" or args.device != "cpu":
            raise InputError("--backend onnxruntime runs an exported folder on the CPU: give --model DIR from "
                             "`wavslm export onnx`, and no --optimize or --device")
        model = OnnxWavSLM(args.model)
        toks = model.prompt_tokens(sig, sr) * args.num
        frame_rate, per_step, rate = model.frame_rate, model.chunk, model.sample_rate_output
        steps = max(1, int(args.seconds * frame_rate) // per_step)
        parts = model.generate_steps(toks, steps, top_p, args.top_k, args.temp, args.seed)
    else:
        lm = load_lm(args.model, args.device, args.optimize)
        toks = prompt_tokens(lm, sig, sr, None) * args.num  # one encoding, N independent continuations
        frame_rate, per_step, rate = lm.codec.frame_rate, lm.toks_per_step, lm.codec.sample_rate_output
        steps = max(1, int(args.seconds * frame_rate) // per_step)
        parts = generate_steps(lm, toks, steps, top_p, args.top_k, args.temp, args.seed)
    writers = WavStreamWriter(outputs, rate) if args.stream else None
    chunks, start, first = [], time.perf_counter(), None
    try:
        bar = _progress(steps * per_step / frame_rate, "generate", "s")
        for _, audio in parts:
            first = first or time.perf_counter() - start
            if writers:
                writers.write(audio.cpu())
            else:
                chunks.append(audio.cpu())
            bar.update(per_step / frame_rate)
        bar.close()
        if writers:
            writers.close()
        else:
            audio = torch.cat(chunks, dim=1)
            for i, path in enumerate(outputs):
                save_audio(path, audio[i], rate)
    finally:
        if writers:
            writers.abort()
    elapsed = time.perf_counter() - start
    seconds = steps * per_step / frame_rate
    for path in outputs:
        print(f"{path}: {seconds:.2f} s at {rate} Hz")
    print(f"generated in {elapsed:.2f} s (real-time factor {elapsed / seconds:.2f}); first audio after {first * 1000:.0f} ms")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    report = run_demo(args.output, args.model, args.seconds, args.seed, device=args.device)
    for name, r in report["prompts"].items():
        scores = "" if r["dnsmos"] is None else f", DNSMOS {r['dnsmos']['ovrl']:.2f}"
        if r["speaker_similarity_prompt_continuation"] is not None:
            scores += f", speaker similarity {r['speaker_similarity_prompt_continuation']:.2f}"
        print(f"{name}: {r['prompt_seconds']:.1f} s prompt -> {r['continuation_seconds']:.1f} s continuation, "
              f"real-time factor {r['real_time_factor']:.2f}, first audio after {r['first_audio_ms']:.0f} ms{scores}")
    look = "" if "left_out" in report else ", look at */*.png"
    print(f"wrote {args.output.resolve()}/: listen to */prompt_continuation.wav{look}, read report.md")
    if "left_out" in report:
        print(f"left out: {report['left_out']}")


def cmd_bench(args: argparse.Namespace) -> None:
    from .benchmark import format_report, run_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_bench(args.size, tuple(args.batch), args.dtype, args.quantize, args.reference, args.steps,
                       args.seconds, args.compile, args.rounds, tuple(args.backend), args.model)
    print(format_report(report))
    if args.output:
        write_json(args.output, report)


def cmd_train(args: argparse.Namespace) -> None:
    from .train.run import train

    if args.resume and args.config:
        raise InputError("--resume continues the run's own config.yaml; drop --config (use --set to change keys)")
    metrics = train(args.stage, args.output, args.config, args.set, resume=args.resume, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if not k.startswith("grad"))
        print(f"{args.stage}: done ({shown}); run folder {args.output}, exported models in {args.output / 'export'}")


def cmd_recipe(args: argparse.Namespace) -> None:
    from .recipe import Recipe

    recipe = Recipe(args.preset, args.output, args.set, corpus=args.corpus, device=args.device)
    report = recipe.run()
    print(f"recipe: done in {report['total_seconds'] / 60:.1f} min; report in {args.output / 'report.json'}, "
          f"models in {args.output / 'lm' / 'export'}")
    if args.compare:
        print(f"recipe: evaluating {args.compare} on the same held-out data and suite (--compare)", flush=True)
        recipe.compare(args.compare)
        print(f"recipe: {args.compare} evaluated the same way, in {args.output / 'compare.json'}")
    if args.bundle:
        from .recipe import bundle

        command = " ".join(["wavslm", "recipe", args.preset, "-o", str(args.output),
                            *(f"--set {o}" for o in args.set), *(["--corpus", args.corpus] if args.corpus else [])])
        print(f"bundled into {bundle(args.output, args.bundle, command)} with its model card")


def cmd_manifest(args: argparse.Namespace) -> None:
    from .data.manifest import build_manifest

    if not args.input.is_dir():
        raise InputError(f"audio folder '{args.input}' does not exist")
    _check_output(args.output)
    if args.output.suffix.lower() in AUDIO_EXTENSIONS:
        raise InputError(f"the manifest '{args.output}' has an audio file's name; manifests are .jsonl files")
    summary = build_manifest(args.input, args.output, min_duration=args.min_duration,
                             max_duration=args.max_duration, relative_paths=args.relative)
    print(summary.describe())


def cmd_tokenize(args: argparse.Namespace) -> None:
    from .data.tokenize import merge_parts, tokenize_manifest
    from .train import dist as distributed

    d = distributed.setup(args.device)
    try:
        codec = load_codec(args.codec, str(d.device))
        ref = args.codec or str(BUNDLED_CODEC)
        summary = tokenize_manifest(args.input, args.output, codec, rank=d.rank, world_size=d.world,
                                    codec_ref=ref, merge=not d.active, workers=args.workers)
        distributed.barrier(d)
        if d.active and d.main:
            merge_parts(args.output, d.world)
        print(summary.describe() if d.main or d.active else "")
    finally:
        distributed.teardown(d)


def _existing_file(value: str) -> Path:
    path = Path(value)
    if path.is_dir():
        raise InputError(f"input '{value}' is a folder, not a file")
    if not path.is_file():
        raise InputError(f"input file '{value}' does not exist")
    return path


def _check_output(output: Path, *inputs: str | Path) -> None:
    """Refuse, before any work, an output that would replace an input or cannot be written."""
    output = Path(output)
    for given in inputs:
        if Path(given).exists() and output.exists() and output.resolve() == Path(given).resolve():
            raise InputError(f"the output '{output}' is the input file; choose another name")
    if output.is_dir():
        raise InputError(f"the output '{output}' is a folder; give a file name")
    folder = output.parent
    while not folder.exists():  # the folders still to create are made under the nearest existing one
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"cannot write '{output}': '{folder}' is not a writable folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavslm", description="WavSLM: a single-stream speech language model.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verb(name: str, func: Callable, help: str, device: str = "cpu") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--device", default=device, help=f"torch device (default: {device})")
        return p

    p = verb("demo", cmd_demo, "Continue the bundled prompts with the bundled model; write audio, images, a report.")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--model", help="WavSLM folder, .json or Hub id (default: the bundled model)")
    p.add_argument("--seconds", type=float, default=5.0, help="continuation length (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    p = verb("encode", cmd_encode, "Encode speech into tokens (.npy, int64, (channels, T)).")
    p.add_argument("input", help="audio file (WAV/FLAC/OGG, any rate)")
    p.add_argument("-o", "--output", type=Path, required=True, help="tokens file (.npy)")
    p.add_argument("--codec", help="codec folder, .json or Hub id (default: the bundled model)")

    p = verb("decode", cmd_decode, "Decode tokens (.npy) into speech.")
    p.add_argument("input", type=Path, help="tokens file (.npy, (T,) or (channels, T))")
    p.add_argument("-o", "--output", type=Path, required=True, help="audio file (.wav/.flac/.ogg)")
    p.add_argument("--codec", help="codec folder, .json or Hub id (default: the bundled model)")

    p = verb("resynth", cmd_resynth, "Encode then decode speech (hear what the codec keeps).")
    p.add_argument("input", help="audio file")
    p.add_argument("-o", "--output", type=Path, required=True, help="audio file")
    p.add_argument("--codec", help="codec folder, .json or Hub id (default: the bundled model)")

    p = verb("generate", cmd_generate, "Continue a spoken prompt.")
    p.add_argument("input", help="prompt audio file (at least 80 ms)")
    p.add_argument("-o", "--output", type=Path, required=True, help="audio file for the continuation")
    p.add_argument("--model", help="WavSLM folder, .json or Hub id (default: the bundled model)")
    p.add_argument("--seconds", type=float, default=3.0, help="continuation length (default: 3)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass; 0 is greedy (default: 0.3 unless --top-k)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens instead; 1 is greedy")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (default: 0.8)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--num", type=int, default=1, help="number of continuations (OUT_0.wav, OUT_1.wav, ...)")
    p.add_argument("--stream", action="store_true", help="write audio to disk as it is generated")
    p.add_argument("--optimize", choices=list(OPTIMIZE), default="none", help=OPTIMIZE_HELP)
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="torch (default), or onnxruntime: --model is then a folder from `wavslm export onnx`")

    p = verb("train", cmd_train, "Train a stage (ssl, codec, lm); under torchrun it runs data-parallel.", "auto")
    p.add_argument("stage", help="ssl | codec | lm")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder (checkpoints, logs, export/)")
    p.add_argument("--config", help="YAML preset with a section per stage (a preset name such as tiny, or a file)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key, e.g. train.lr=3e-4")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")

    p = verb("recipe", cmd_recipe, "Train the whole stack from nothing (corpus, ssl, codec, tokenize, lm, eval); "
             "run it again to continue after a stop.", "auto")
    p.add_argument("preset", help="a packaged preset (tiny, paper_4k) or a .yaml file with ssl/codec/lm/recipe sections")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder (one sub-folder per stage)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key, e.g. lm.train.steps=500 or recipe.corpus.hours=0.5")
    p.add_argument("--corpus", help="use this folder's train/valid/test.jsonl instead of a synthetic corpus")
    p.add_argument("--bundle", type=Path, help="then copy the models with a model card here (e.g. wavslm/assets/tiny)")
    p.add_argument("--compare", type=Path, help="also evaluate this LM folder (e.g. wavslm/assets/tiny/lm, before it is "
                   "replaced) on the run's held-out data; the model card shows both")

    def group(name: str, help: str, members: dict[str, tuple[str, str]], device: bool = True) -> None:
        """A verb with sub-verbs, each configured by `configure(parser)` in its own module (imported lazily
        enough: the modules import their heavy dependencies inside their functions); `device`: the
        sub-verbs run models and take `--device`."""
        import importlib

        p = sub.add_parser(name, help=help, description=help)
        inner = p.add_subparsers(dest="what", required=True, metavar="WHAT")
        for member, (target, text) in members.items():
            module, _, function = target.partition(":")
            q = inner.add_parser(member, help=text, description=text)
            if device:
                q.add_argument("--device", default="cpu", help="torch device (default: cpu)")
            getattr(importlib.import_module(module, __package__), function or "configure")(q)

    group("eval", "Evaluate a model: zero-shot benchmarks, codec resynthesis, generation.", {
        "zeroshot": (".eval.zeroshot", "Pairwise accuracy on sWUGGY, sBLIMP, SALMon or spoken StoryCloze (folders, "
                     "parquet or Hub ids); ZeroSpeech 2021 submission files."),
        "paper": (".eval.paper", "The WavSLM paper's likelihood tasks (SALMon, sWUGGY, sBLIMP, tSC) beside its "
                  "WavSLM-4k row."),
        "codec": (".eval.codec_eval", "Resynthesise a folder of speech: PESQ, STOI, mel distance, DNSMOS, speaker "
                  "similarity, WER, bitrate, codebook usage."),
        "generation": (".eval.generation_eval", "Continue 3 s prompts: DNSMOS, speaker similarity, intelligibility."),
    })

    group("export", "Export a model for other runtimes.", {
        "onnx": (".onnx_export", "The codec's encoder and decoder as ONNX graphs with a dynamic batch and length, "
                 "run by ONNX Runtime without PyTorch."),
    }, device=False)

    p = verb("serve", serve.run, "Serve the page, a WebSocket stream and an HTTP API of continuations (127.0.0.1:8998).")
    serve.configure(p)

    p = verb("bench", cmd_bench, "Inference speed and memory at paper size (random weights), optionally side by side "
             "with the original implementation.")
    p.add_argument("--size", choices=["paper", "tiny"], default="paper", help="model size (default: paper)")
    p.add_argument("--model", help="a saved WavSLM (folder, .json or Hub id) instead of random weights of --size; "
                   "with --quantize int8 alone it is read straight into int8, as `generate --optimize int8` does")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default: 1 4)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="LM weights' dtype")
    p.add_argument("--quantize", choices=["none", "int8"], default="none", help="int8 linear layers (the LM and every part of the codec)")
    p.add_argument("--compile", action="store_true", help="torch.compile the LM's transformer")
    p.add_argument("--backend", nargs="+", choices=["torch", "onnxruntime"], default=["torch"],
                   help="backends timed side by side (default: torch); onnxruntime exports the same weights "
                        "(pip install 'wavslm[onnx]')")
    p.add_argument("--reference", help="a checkout of the original wavslm.py, timed on the same weights")
    p.add_argument("--steps", type=int, default=25, help="decode steps timed per round (default: 25)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds, ours and the original taking turns; the best of each (default: 3)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds for codec and streaming (default: 10)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("-o", "--output", type=Path, help="also write the report as JSON")

    group("synth", "Synthetic spoken language made offline with espeak-ng: a corpus, and a benchmark suite.", {
        "corpus": (".data.synth:configure_corpus", "Sentences from a grammar over ~1000 words, many voices, 16 kHz, "
                   "train/valid/test manifests (test voices held out)."),
        "bench": (".eval.synth_bench:configure_bench", "Lexical, syntactic, topic-story and speaker-consistency pairs "
                  "in the sWUGGY/sBLIMP/StoryCloze/SALMon layouts, held-out voices only."),
    }, device=False)

    p = verb("manifest", cmd_manifest, "List the audio files of a folder as a JSONL manifest.")
    p.add_argument("input", type=Path, help="folder of audio files (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True, help="manifest file (.jsonl)")
    p.add_argument("--min-duration", type=float, help="leave out shorter files (seconds)")
    p.add_argument("--max-duration", type=float, help="leave out longer files (seconds)")
    p.add_argument("--relative", action="store_true", help="store paths relative to the manifest's folder")

    p = verb("tokenize", cmd_tokenize, "Encode a manifest's audio into token shards (split across torchrun ranks).", "auto")
    p.add_argument("input", type=Path, help="manifest (.jsonl)")
    p.add_argument("-o", "--output", type=Path, required=True, help="shards folder")
    p.add_argument("--codec", help="codec folder, .json or Hub id (default: the bundled model)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes reading and resampling the audio ahead of the encoder, per rank (default: 0)")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate" and args.num < 1:
        parser.error("--num must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _terminate)  # so that the cleanups run (a server sets its own)
    try:
        if hasattr(args, "input") and args.command in ("encode", "resynth", "generate", "tokenize", "decode"):
            _existing_file(args.input)
            if args.command in ("encode", "resynth", "decode"):  # generate checks each of its --num outputs
                _check_output(args.output, args.input)
        if args.command in ("eval", "bench") and args.output is not None:  # results written at the very end
            _check_output(args.output)
        args.func(args)
    except InputError as error:
        print(f"wavslm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"wavslm {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"wavslm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"wavslm {args.command}: stopped (SIGTERM); no half-written file was kept", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
