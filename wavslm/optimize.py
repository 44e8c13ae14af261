"""Inference-time conversions of a loaded WavSLM: bfloat16 weights, int8 linear layers, torch.compile.

Float32 (the default) is exact to the original implementation; the others trade a measured deviation
for speed or memory (README, "Speed on a CPU"). The LM's inputs and logits stay float32 at its boundary.

bfloat16: the LM's transformer and head (the codec stays float32).
int8: every linear map of the LM's transformer and head and of the codec (encoder, compressor,
decompressor, waveform decoder: a live prompt is encoded step by step too), including those held as
convolution weights (the focal blocks' 1x1 projections, the decoder's dense embedding convolution, the
upscaling transposed convolution), runs on int8 weights (per output channel) with activations quantised
per call (fbgemm kernels): on a CPU, decoding reads the weights once per step, and a quarter of the
bytes is most of the gain. Depthwise convolutions, norms and the tiny gate projections stay float32.
"""

import torch
from torch import nn

from .modules.linear import Int8Linear

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUANTIZE = ("none", "int8")


def _replace_linears(module: nn.Module) -> int:
    """Make `module`'s linear maps int8: `nn.Linear` children are replaced; modules whose map is a view
    of another layout (`linear_weight()`: 1x1 and few-frame convolutions, a transposed convolution)
    get a `packed` int8 copy that they use in its place. The tiny gate projections stay float."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.in_features >= 64:
            setattr(module, name, Int8Linear.from_linear(child))
            count += 1
            continue
        as_linear = child.linear_weight() if hasattr(child, "linear_weight") else None
        if as_linear is not None and as_linear[0].shape[1] >= 64:
            child.packed = Int8Linear(*as_linear)
            count += 1
        count += _replace_linears(child)
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
    if quantize == "int8":
        if _replace_linears(lm.encoder) == 0:
            raise ValueError("no linear layers to quantise")
        lm.head = Int8Linear.from_linear(lm.head)
        if lm.codec is not None:  # every per-step part of the codec: a live prompt is encoded step by step too
            for part in (lm.codec.encoder, lm.codec.compressor, lm.codec.decompressor, lm.codec.decoder):
                _replace_linears(part)
    if compile:
        lm.encoder.forward = torch.compile(lm.encoder.forward, dynamic=True)
    return lm
