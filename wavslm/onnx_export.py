"""`wavslm export onnx`: a WavSLM's codec and its next-chunk step as ONNX graphs that ONNX Runtime runs
without PyTorch.

The codec's two graphs, each with a dynamic batch and length:

- `codec_encode.onnx`: `sig (batch, samples)` float32 at the codec's input rate -> `toks (batch, frames)`
  int64, `frames = (samples - 1) // hop + 1`;
- `codec_decode.onnx`: `toks (batch, frames)` int64 -> `sig (batch, frames * output hop)` float32 at the
  output rate.

They compute `Codec.encode` and `Codec.decode` of a whole signal: a causal codec's streaming state does not
cross the graph's boundary, so each call starts from silence as `encode` and `decode` do. The encoder's
attention is taken over the whole input with the causal chunk mask (PyTorch's `encode` reads a long input
in pieces with a key/value cache: the same result, with memory linear in the length), so the exported
encoder's memory grows with the square of the length: give it utterances, not hours. `export.json`
beside the graphs records the codec's rates and vocabulary, the opset and the versions that made them.

A WavSLM adds the streaming graphs, each with its state as inputs and outputs and a dynamic batch:
`dequantize_start.onnx` / `dequantize_step.onnx` (`DequantizeStep`: one chunk of tokens to the features
the LM reads, the decompressor's stream, fresh or continuing), `synthesize_start.onnx` /
`synthesize_step.onnx` (`SynthesizeStep`: one chunk of features to audio, the waveform decoder's stream)
`lm_step.onnx` (`LMStep`: one chunk of features in, its logits out, the key/value window and a
position per row, so rows at different positions step together) and `lm_prefill.onnx` (`LMPrefill`: a
whole prompt read from nothing in one call, to the state `lm_step` continues). `onnx_runtime.OnnxWavSLM`
runs them.
"""

import argparse
import contextlib
import io
import json
import logging
import platform
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .codec import Codec
from .errors import InputError
from .io import write_atomic, write_folder

OPSET = 18
CODEC_GRAPHS = ("codec_encode", "codec_decode")
# The graphs `--quantize int8` converts: the LM's (its step, and its prefill, so that a prompt read in one call
# continues with the same numbers). The LM's step reads most of the weights a streaming step reads, and
# ONNX Runtime's dynamic int8 takes it from 63.3 to 39.8 ms at paper size (bench/onnx_lm_step.py, 2 cores
# of an Intel Xeon); the codec's graphs stay float32, as PyTorch's int8 mode leaves their numbers alone.
INT8_GRAPHS = ("lm_step", "lm_prefill")


class CodecEncode(nn.Module):
    """`sig (B, N) -> toks (B, T)`: `Codec.encode` of a whole signal as one traceable graph."""

    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, sig: Tensor) -> Tensor:
        encoder = self.codec.encoder
        feats, _ = encoder.extract(sig)
        feats, _ = encoder.encoder(encoder.feature_proj(feats), use_cache=False)
        lats, _ = self.codec.compressor(feats)
        return self.codec.quantizer.lats_to_toks(lats)


class CodecDecode(nn.Module):
    """`toks (B, T) -> sig (B, T * hop)`: `Codec.decode` of a whole token sequence as one traceable graph."""

    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, toks: Tensor) -> Tensor:
        qfeats, _ = self.codec.decompressor(self.codec.quantizer.toks_to_codes(toks))
        sig, _ = self.codec.decoder(qfeats)
        return sig


class SlidingKV:
    """A layer's last `window` keys and values as plain tensors `(B, H, window, Dh)`: `append` drops the
    oldest `T` and adds the new ones (what `MultiHeadAttention` calls on its cache)."""

    def __init__(self, k: Tensor, v: Tensor):
        self.k, self.v = k, v

    def append(self, k: Tensor, v: Tensor, keep_from: int) -> tuple[Tensor, Tensor]:
        T = k.shape[2]
        self.k = torch.cat([self.k[:, :, T:], k], dim=2)
        self.v = torch.cat([self.v[:, :, T:], v], dim=2)
        return self.k, self.v


class _CodecStep(nn.Module):
    """A causal codec's streaming verb as a graph: `start` for a fresh stream (no state in), else continuing."""

    def __init__(self, codec: Codec, start: bool):
        super().__init__()
        if not codec.causal:
            raise InputError("only a causal codec streams; this one is not causal")
        self.codec, self.start = codec, start


class DequantizeStep(_CodecStep):
    """One chunk of tokens through a causal codec's decompressor with its state as tensors, for a graph:
    `CodecStream.dequantize`. `start=True`: a fresh stream, `toks (B, C) -> (qfeats (B, C, D), *contexts)`;
    otherwise a continuing one, `(toks, *contexts) -> (qfeats, *contexts')`. `contexts` are the
    decompressor's convolution contexts, flattened (`context_shapes`: each one's `(channels, frames)`). A
    fresh stream pads its convolutions with copies of its first frame, which is why it has its own graph.
    """

    def __init__(self, codec: Codec, start: bool = False):
        super().__init__(codec, start)
        with torch.no_grad():
            _, state = codec.decompressor(codec.quantizer.toks_to_codes(torch.zeros(1, 4, dtype=torch.long)))
        self.layout = [len(layer) for layer in state.contexts]
        self.context_shapes = [tuple(c.shape[1:]) for layer in state.contexts for c in layer]

    def forward(self, toks: Tensor, *contexts: Tensor) -> tuple[Tensor, ...]:
        from .modules.focal import FocalDecompressorState

        state = None
        if not self.start:
            nested, i = [], 0
            for n in self.layout:
                nested.append(tuple(contexts[i : i + n]))
                i += n
            state = FocalDecompressorState(tuple(nested), 0)
        qfeats, state = self.codec.decompressor(self.codec.quantizer.toks_to_codes(toks), state)
        return (qfeats, *(c for layer in state.contexts for c in layer))


class SynthesizeStep(_CodecStep):
    """One chunk of features through a causal codec's waveform decoder with its state as tensors, for a
    graph: `CodecStream.synthesize`. `start=True`: a fresh stream, `qfeats (B, C, D) -> (sig (B, C * hop),
    *state)`; otherwise `(qfeats, *state) -> (sig, *state')`. `state` is the decoder's state tree
    flattened (`state_shapes`, `state_dtypes`: each leaf's shape without the batch, and its dtype)."""

    def __init__(self, codec: Codec, start: bool = False):
        super().__init__(codec, start)
        with torch.no_grad():
            _, state = codec.decoder(codec.dequantize(torch.zeros(1, 4, dtype=torch.long)))
        leaves, self.spec = torch.utils._pytree.tree_flatten(state)
        self.state_shapes = [tuple(leaf.shape[1:]) for leaf in leaves]
        self.state_dtypes = [leaf.dtype for leaf in leaves]

    def forward(self, qfeats: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        tree = None if self.start else torch.utils._pytree.tree_unflatten(list(state), self.spec)
        sig, tree = self.codec.decoder(qfeats, tree)
        return (sig, *torch.utils._pytree.tree_leaves(tree))


class _LMGraph(nn.Module):
    """A WavSLM's LM in a graph: its chunk and window (a convolutional position embedding is refused)."""

    def __init__(self, lm):
        super().__init__()
        enc = lm.encoder
        if hasattr(enc, "positional_embedding"):
            raise InputError("a WavSLM with a convolutional position embedding cannot be exported as a step yet")
        self.lm, self.chunk, self.window = lm, enc.chunk_size, enc.window_size


class LMStep(_LMGraph):
    """One next-chunk step of a WavSLM with its whole state as tensors, for a graph:
    `(qfeats (B, C, D), pos (B,), keys, values) -> (logits (B, C, V), keys', values')`, where `C` is the
    LM's chunk, `pos` each row's position (a multiple of `C`: steps read whole chunks), and `keys` /
    `values` `(layers, B, heads, window, Dh)` every layer's last `window` keys and values (zeros, and
    masked, before position 0).

    Causal attention sees the query's chunk and `window` keys back, so the keys a chunk attends are
    exactly the buffer after the chunk's own are appended, and their distances to the queries do not
    depend on `pos`: the relative position bias is one constant `(heads, C, window)`.
    """

    def __init__(self, lm):
        super().__init__(lm)
        from .modules.attention import position_bias

        enc, C, W = lm.encoder, self.chunk, self.window
        with torch.no_grad():  # queries at W - C .. W - 1, keys at 0 .. W - 1: the distances of every step
            bias = position_bias(enc.relative_embedding, torch.arange(W - C, W), torch.arange(W), enc.max_distance)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, qfeats: Tensor, pos: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        enc, C, W = self.lm.encoder, self.chunk, self.window
        x = qfeats.to(enc.layers[0].attention_norm.weight.dtype)
        k_pos = pos[:, None] + (C - W) + torch.arange(W, device=x.device)  # (B, W), after this chunk's
        mask = (k_pos >= 0)[:, None, None, :].expand(-1, 1, C, -1)  # (B, 1, C, W)
        new_keys, new_values = [], []
        for i, layer in enumerate(enc.layers):
            cache = SlidingKV(keys[i], values[i])
            x = layer(x, self.bias.to(x.dtype), mask, cache, 0)
            new_keys.append(cache.k)
            new_values.append(cache.v)
        if hasattr(enc, "norm"):
            x = enc.norm(x)
        return self.lm.logits(x), torch.stack(new_keys), torch.stack(new_values)

    def empty_state(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """`(pos, keys, values)` before the first chunk."""
        enc = self.lm.encoder
        shape = (len(enc.layers), batch, enc.num_heads, self.window, enc.head_dim)
        return torch.zeros(batch, dtype=torch.long), torch.zeros(shape), torch.zeros(shape)


class _Recorded:
    """A layer's keys and values of one call, kept (what `MultiHeadAttention` calls on its cache)."""

    def append(self, k: Tensor, v: Tensor, keep_from: int) -> tuple[Tensor, Tensor]:
        self.k, self.v = k, v
        return k, v


class LMPrefill(_LMGraph):
    """A WavSLM reading a whole prompt from nothing, for a graph: `qfeats (B, T, D) -> (logits (B, C, V),
    keys, values)` with `T` a multiple of the chunk `C`: the last chunk's logits and the state `LMStep`
    continues from at position `T` (every layer's last `window` keys and values, zeros before position
    0). One call where `LMStep` takes `T / C`."""

    def forward(self, qfeats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from .modules.attention import chunk_mask, position_bias

        enc, C, W = self.lm.encoder, self.chunk, self.window
        x = qfeats.to(enc.layers[0].attention_norm.weight.dtype)
        pos = torch.arange(x.shape[1], device=x.device)
        mask = chunk_mask(pos, pos, C, W)
        bias = position_bias(enc.relative_embedding, pos, pos, enc.max_distance).to(x.dtype)
        keys, values = [], []
        for layer in enc.layers:
            cache = _Recorded()
            x = layer(x, bias, mask, cache, 0)
            for kept, new in ((keys, cache.k), (values, cache.v)):
                kept.append(torch.cat([new.new_zeros(*new.shape[:2], W, new.shape[3]), new], dim=2)[:, :, -W:])
        if hasattr(enc, "norm"):
            x = enc.norm(x)
        return self.lm.logits(x[:, -C:]), torch.stack(keys), torch.stack(values)


def export_onnx(model, folder: str | Path, opset: int = OPSET, quantize: str = "none") -> list[str]:
    """Write the graphs of `model` (a `WavSLM` with its codec, or a `Codec`) and `export.json` into
    `folder` (replaced whole, or left as it was on an error); returns the graphs' names.

    `quantize="int8"`: the LM's graphs are ONNX Runtime's dynamic int8 (`INT8_GRAPHS`)."""
    if quantize not in ("none", "int8"):
        raise InputError(f"quantize must be none or int8, got {quantize!r}")
    if quantize == "int8" and isinstance(model, Codec):
        raise InputError("int8 export quantises the LM's step: give a WavSLM, not a codec alone")
    try:
        import onnx
        import onnxscript
        if quantize == "int8":
            import onnxruntime  # noqa: F401
    except ImportError as err:
        raise InputError(f"ONNX export needs the 'onnx' extra ({err.name} is missing): pip install 'wavslm[onnx]'") from err
    from . import __version__

    lm = None if isinstance(model, Codec) else model.cpu().float().eval()
    codec = model if lm is None else lm.require_codec()
    codec = codec.cpu().float().eval()
    seconds = 2  # the examples' length; the graphs take any
    sig = 0.1 * torch.randn(2, seconds * codec.sample_rate_input, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        toks = codec.encode(sig)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    graphs = {"codec_encode": (CodecEncode(codec).eval(), (sig,), ["sig"], ["toks"], ({0: batch, 1: length},)),
              "codec_decode": (CodecDecode(codec).eval(), (toks,), ["toks"], ["sig"], ({0: batch, 1: length},))}
    meta = {"codec": {"sample_rate_input": codec.sample_rate_input, "sample_rate_output": codec.sample_rate_output,
                      "frame_rate": codec.frame_rate, "vocab_size": codec.vocab_size, "causal": codec.causal}}
    if lm is not None:
        with torch.no_grad():
            qfeats = codec.dequantize(toks[:, :8])
        # A fresh stream reads any whole number of chunks at once (a prompt); a continuing one, one chunk.
        chunks = 4 * torch.export.Dim("chunks")
        for name, step_class, example, inp, out in (
                ("dequantize", DequantizeStep, toks[:, :8], "toks", "qfeats"),
                ("synthesize", SynthesizeStep, qfeats, "qfeats", "sig")):
            start, going = step_class(codec, start=True).eval(), step_class(codec).eval()
            with torch.no_grad():
                _, *state = start(example)
            n = len(state)
            graphs[f"{name}_start"] = (start, (example,), [inp], [out, *(f"state_{i}_out" for i in range(n))],
                                       ({0: batch, 1: chunks},))
            example = example[:, :4]
            graphs[f"{name}_step"] = (going, (example, *state), [inp, *(f"state_{i}" for i in range(n))],
                                      [out, *(f"state_{i}_out" for i in range(n))],
                                      ({0: batch}, tuple({0: batch} for _ in range(n))))
        synthesize = SynthesizeStep(codec)
        meta["synthesize"] = {"samples_per_chunk": 4 * codec.decoder.hop_length,
                              "state_dtypes": [str(d).removeprefix("torch.") for d in synthesize.state_dtypes]}
        step = LMStep(lm).eval()
        with torch.no_grad():
            qfeats = codec.dequantize(toks[:, : step.chunk])
        graphs["lm_step"] = (step, (qfeats, *step.empty_state(2)), ["qfeats", "pos", "keys", "values"],
                             ["logits", "keys_out", "values_out"], ({0: batch}, {0: batch}, {1: batch}, {1: batch}))
        with torch.no_grad():
            prompt = codec.dequantize(toks[:, : 2 * step.chunk])
        graphs["lm_prefill"] = (LMPrefill(lm).eval(), (prompt,), ["qfeats"], ["logits", "keys_out", "values_out"],
                                ({0: batch, 1: chunks},))
        enc = lm.encoder
        meta["lm"] = {"chunk": step.chunk, "window": step.window, "layers": len(enc.layers), "heads": enc.num_heads,
                      "head_dim": enc.head_dim, "feature_dim": qfeats.shape[-1], "vocab_size": lm.config.vocab_size}
    with write_folder(folder) as tmp, torch.no_grad(), _quiet_exporter():
        for name, (module, args, inputs, outputs, dynamic) in graphs.items():
            torch.onnx.export(module, args, tmp / f"{name}.onnx", dynamo=True, opset_version=opset,
                              input_names=inputs, output_names=outputs, dynamic_shapes=dynamic,
                              external_data=False, verbose=False)
        meta = {"graphs": {name: {"file": f"{name}.onnx", "inputs": g[2], "outputs": g[3]} for name, g in graphs.items()},
                **meta, "opset": opset,
                "versions": {"wavslm": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                             "onnxscript": onnxscript.__version__, "python": platform.python_version()}}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
        if quantize == "int8":
            quantize_graphs(tmp)
    return list(graphs)


def quantize_graphs(folder: str | Path) -> None:
    """Convert the `INT8_GRAPHS` of an exported WavSLM folder in place to ONNX Runtime's dynamic int8 (int8
    weights, activations quantised per call) and record it in `export.json`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    meta = json.loads((folder / "export.json").read_text())
    if "lm" not in meta:
        raise InputError(f"'{folder}' holds a codec only; int8 export quantises the LM's step")
    if meta.get("quantize"):
        raise InputError(f"'{folder}' is quantised already ({', '.join(meta['quantize']['graphs'])})")
    for name in INT8_GRAPHS:
        path = folder / f"{name}.onnx"
        converted = path.with_suffix(".int8.onnx")
        try:
            with _quiet_exporter():
                quantize_dynamic(path, converted, weight_type=QuantType.QInt8)
            converted.replace(path)
        finally:
            converted.unlink(missing_ok=True)
    meta["quantize"] = {"graphs": list(INT8_GRAPHS), "method": "onnxruntime.quantization.quantize_dynamic",
                        "weights": "int8", "activations": "uint8, quantised per call", "onnxruntime": _version("onnxruntime")}
    write_atomic(folder / "export.json", json.dumps(meta, indent=2) + "\n")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's and the quantiser's advice held back for the block: the exporter prints a whole traced
    graph to stderr when its first capture strategy meets a data-dependent value (the next one handles
    it), notes that torchvision's ops are not installed and that two dynamic axes are one; the quantiser
    suggests pre-processing it does not need. A failure still raises its error."""
    loggers = [logging.getLogger(name) for name in ("torch.fx.experimental.symbolic_shapes",
                                                    "torch.onnx._internal.exporter._registration")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    logging.disable(logging.WARNING)  # the quantiser logs to the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        logging.disable(logging.NOTSET)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def load_model(ref: str | None):
    """`ref` as a WavSLM with its codec, or else as a codec (folder, .json or Hub id; None: the bundled WavSLM)."""
    from .pretrained import load_codec, load_lm

    try:
        return load_lm(ref)
    except InputError as lm_error:
        if ref is None:
            raise
        try:
            return load_codec(ref)
        except InputError:
            raise lm_error from None


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of `wavslm export onnx` (the caller adds --device)."""
    parser.add_argument("model", nargs="?", help="WavSLM or codec folder, .json or Hub id (default: the bundled model)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the graphs and export.json")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default: {OPSET})")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: the LM's step graph in ONNX Runtime's dynamic int8 (weights int8)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> None:
    names = export_onnx(load_model(args.model), args.output, args.opset, args.quantize)
    sizes = ", ".join(f"{name}.onnx {(args.output / f'{name}.onnx').stat().st_size / 2**20:.1f} MiB" for name in names)
    int8 = f"; {', '.join(INT8_GRAPHS)} int8" if args.quantize == "int8" else ""
    print(f"{args.output}: {sizes}, export.json (opset {args.opset}{int8}); run them with onnxruntime")
