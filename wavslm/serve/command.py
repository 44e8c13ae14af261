"""`wavslm serve` and `python -m wavslm.serve`: the arguments, the model, and uvicorn."""

import argparse
import logging
import os
import secrets
from pathlib import Path

import torch

from ..errors import InputError
from ..pretrained import OPTIMIZE, load_lm
from .limits import Access, Limits

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add `wavslm serve`'s arguments (all but --device, which the CLI adds to every verb)."""
    d = Limits()
    parser.add_argument("--model", help="WavSLM folder, .json or Hub id (default: the bundled model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; "
                        "any other needs --allow-remote)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other machines can reach; every API request must then carry the token")
    parser.add_argument("--token", help="the secret API requests must carry (?token= or Authorization: Bearer); "
                        "default: none on loopback, a fresh random one with --allow-remote (printed)")
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
    parser.add_argument("--prompt-threads", type=int, default=None,
                        help="PyTorch CPU threads while prompts are read, a batch of whole prompts at a time "
                             "(default: every core of this machine)")
    parser.add_argument("--optimize", choices=list(OPTIMIZE), default="none",
                        help="convert the model for inference (see `wavslm generate --help`; default: none)")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="onnxruntime: serve a folder from `wavslm export onnx` (--model DIR) with ONNX Runtime "
                             "(--threads are its threads; pip install 'wavslm[onnx]')")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Load the model and serve until interrupted."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as err:
        raise InputError(f"wavslm serve needs the 'serve' extra ({err.name} is missing): pip install 'wavslm[serve]'") from err

    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1-65535, got {args.port}")
    loopback = args.host in LOOPBACK
    if not loopback and not args.allow_remote:
        raise InputError(f"--host {args.host} would serve other machines with no authentication; bind 127.0.0.1, "
                         "or pass --allow-remote (API requests then need a token)")
    token = args.token or (secrets.token_urlsafe(18) if args.allow_remote else None)
    # On loopback, only the loopback names are answered (a DNS-rebinding site's name is not); a remote bind
    # answers whatever name reaches it, and the token guards it.
    access = Access.loopback(args.port, token) if loopback else Access(None, token)
    limits = Limits(args.max_prompt_secs, args.max_gen_secs, args.max_upload_bytes, args.max_sessions,
                    args.idle_timeout, args.session_timeout)
    if min(limits.as_dict().values()) <= 0:
        raise InputError("every --max-* and --*-timeout value must be positive")
    prompt_threads = args.prompt_threads if args.prompt_threads is not None else os.cpu_count() or 1
    if args.threads < 1 or prompt_threads < 1:
        raise InputError("--threads and --prompt-threads must be at least 1")
    torch.set_num_threads(args.threads)
    if args.backend == "onnxruntime":
        from ..onnx_runtime import OnnxWavSLM

        if args.model is None or args.optimize != "none" or getattr(args, "device", "cpu") != "cpu":
            raise InputError("--backend onnxruntime serves an exported folder on the CPU: give --model DIR from "
                             "`wavslm export onnx` (--quantize int8 there for its int8), and no --optimize or --device")
        lm = OnnxWavSLM(args.model, threads=args.threads)
    else:
        lm = load_lm(args.model, getattr(args, "device", "cpu"), args.optimize)
    name = Path(args.model).name if args.model else "bundled tiny"
    where = f"http://{args.host}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"wavslm serve: {name} on {where} (API: /openapi.json)", flush=True)
    # Frames above the upload limit are refused by uvicorn itself (close 1009) before reaching us.
    uvicorn.run(create_app(lm, limits, name, prompt_threads, access), host=args.host, port=args.port, log_level=args.log_level,
                ws_max_size=limits.max_upload_bytes + 65536)


def main(argv: list[str] | None = None) -> int:
    """`python -m wavslm.serve`: the same as `wavslm serve`."""
    parser = argparse.ArgumentParser(prog="wavslm serve", description="Speak, and hear the continuation as it is "
                                     "generated: the page, a WebSocket stream and an HTTP API of continuations.")
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

