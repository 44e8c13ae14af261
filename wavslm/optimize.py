"""Inference-time conversions of a loaded WavSLM: packed float32, bfloat16 or int8 weights, torch.compile.

The linear maps converted are every one of the LM's transformer and head and of the codec (encoder,
compressor, decompressor, waveform decoder: a live prompt is encoded step by step too), including
those held as convolution weights (the focal blocks' 1x1 projections, the decoder's dense embedding
convolution, the upscaling transposed convolution). Depthwise convolutions, norms and the tiny gate
projections stay as they are. The LM's inputs and logits stay float32 at its boundary.

float32 (the default): the weights are packed in oneDNN's layout (`PackedLinear`): the same float32
sums in another order, so exact to the original implementation within float32 rounding, and faster.
bfloat16: the LM's transformer and head (the codec stays float32, packed as above).
int8: int8 weights (per output channel) with activations quantised per call (fbgemm kernels): on a
CPU, decoding reads the weights once per step, and a quarter of the bytes is most of the gain.
The last two trade a measured deviation for speed or memory (README, "Speed on a CPU").
"""

import torch
from torch import nn

from .modules.linear import Int8Linear, PackedLinear

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUANTIZE = ("none", "int8")
CODEC_PARTS = ("encoder", "compressor", "decompressor", "decoder")


def _pack_linears(module: nn.Module, make) -> int:
    """Swap `module`'s linear maps for `make(weight, bias)` (a packed form): `nn.Linear` children are
    replaced; modules whose map is a view of another layout (`linear_weight()`: 1x1 and few-frame
    convolutions, a transposed convolution) get it as their `packed` module. The tiny gate projections
    (under 64 inputs) stay as they are."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.in_features >= 64:
            setattr(module, name, make(child.weight, child.bias))
            count += 1
            continue
        as_linear = child.linear_weight() if hasattr(child, "linear_weight") else None
        if as_linear is not None and as_linear[0].shape[1] >= 64:
            child.packed = make(*as_linear)
            count += 1
        count += _pack_linears(child, make)
    return count


def optimize_for_inference(lm, dtype: str = "float32", quantize: str = "none", compile: bool = False):
    """Convert `lm` (a WavSLM, in eval mode) in place for inference; returns it."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {list(QUANTIZE)}, got {quantize!r}")
    if quantize != "none" and dtype != "float32":
        raise ValueError("int8 layers compute in float32 around their int8 matmuls; use dtype float32 with them")
    lm.eval().requires_grad_(False)
    if dtype != "float32":
        lm.encoder.to(DTYPES[dtype])
        lm.head.to(DTYPES[dtype])
    on_cpu = next(lm.parameters()).device.type == "cpu"
    if quantize == "int8" and not on_cpu:
        raise ValueError("int8 layers run on the CPU (fbgemm); move the model to the CPU or use dtype bfloat16")
    packable = on_cpu and PackedLinear.available()  # oneDNN's layout is a CPU one
    # The codec stays float32 under bfloat16, so it is packed then too (its numbers do not change).
    codec_make = Int8Linear if quantize == "int8" else PackedLinear if packable else None
    lm_make = codec_make if dtype == "float32" else None  # bfloat16: packing measured no faster than F.linear
    if lm_make is not None:
        if _pack_linears(lm.encoder, lm_make) == 0:
            raise ValueError("no linear layers to convert")
        lm.head = lm_make(lm.head.weight, lm.head.bias)
    if codec_make is not None and lm.codec is not None:
        # Every per-step part of the codec: a live prompt is encoded step by step too.
        for part in CODEC_PARTS:
            _pack_linears(getattr(lm.codec, part), codec_make)
    if compile:
        lm.encoder.forward = torch.compile(lm.encoder.forward, dynamic=True)
    return lm
