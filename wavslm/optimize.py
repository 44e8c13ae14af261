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

A model can also be converted while it loads, so that its float32 weights are never in memory whole:
built inside `parameters_on_meta()`, filled part by part by `fill_converted`, then `own_tensors`
(`pretrained.load_int8` does this for int8).
"""

from contextlib import contextmanager

import torch
from torch import nn

from .hub import LazyWeights, check_finite, check_fit
from .modules.linear import Int8Linear, PackedLinear

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUANTIZE = ("none", "int8")
CODEC_PARTS = ("encoder", "compressor", "decompressor", "decoder")


def pack_one(parent: nn.Module, name: str, child: nn.Module, make) -> bool:
    """Convert `child` (`parent`'s child `name`) if it is a linear map worth packing (see `pack_linears`);
    True if it was converted. Maps already converted, or not yet filled (on the meta device), are left."""
    if any(p.is_meta for p in child.parameters()):
        return False
    if isinstance(child, nn.Linear):
        if child.in_features < 64:
            return False
        setattr(parent, name, make(child.weight, child.bias))
        return True
    if getattr(child, "packed", None) is not None or not hasattr(child, "linear_weight"):
        return False
    as_linear = child.linear_weight()
    if as_linear is None or as_linear[0].shape[1] < 64:
        return False
    child.packed = make(*as_linear)
    return True


def pack_linears(module: nn.Module, make) -> int:
    """Swap `module`'s linear maps for `make(weight, bias)` (a packed form): `nn.Linear` children are
    replaced; modules whose map is a view of another layout (`linear_weight()`: 1x1 and few-frame
    convolutions, a transposed convolution) get it as their `packed` module. The tiny gate projections
    (under 64 inputs) stay as they are."""
    count = 0
    for name, child in module.named_children():
        if pack_one(module, name, child, make):
            count += 1
            if isinstance(child, nn.Linear):
                continue
        count += pack_linears(child, make)
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
        convert_lm(lm, lm_make)
    if codec_make is not None and lm.codec is not None:
        convert_codec(lm.codec, codec_make)
    if compile:
        lm.encoder.forward = torch.compile(lm.encoder.forward, dynamic=True)
    return lm


# The key prefixes of what `convert_lm` and `convert_codec` convert (the LM's head is converted whole).
LM_CONVERTED = ("encoder.",)
CODEC_CONVERTED = tuple(f"{part}." for part in CODEC_PARTS)


def convert_lm(lm, make) -> None:
    """Pack the linear maps of `lm`'s transformer and its head with `make` (those already packed are left)."""
    if pack_linears(lm.encoder, make) == 0 and not any(isinstance(m, make) for m in lm.encoder.modules()):
        raise ValueError("no linear layers to convert")
    if not isinstance(lm.head, make):
        lm.head = make(lm.head.weight, lm.head.bias)


def convert_codec(codec, make) -> None:
    """Pack the linear maps of every per-step part of `codec` (a live prompt is encoded step by step too)."""
    for part in CODEC_PARTS:
        pack_linears(getattr(codec, part), make)


@contextmanager
def parameters_on_meta():
    """Build modules inside this block with their parameters on the meta device (shapes only, no memory) and
    everything else as usual: buffers computed at construction (a noise table) stay real, which a whole
    `torch.device("meta")` block would lose. Each parameter is moved as it is registered, so at most one
    is ever allocated. Fill them with `fill_converted`."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


# While a model is filled straight into int8, the float32 weights of one part at most are held at once.
PART_BYTES = 64 * 2**20


def fill_converted(module: nn.Module, weights: LazyWeights, converted: tuple[str, ...], make) -> None:
    """Give `module`, built with its parameters on the meta device (`parameters_on_meta`), its tensors from
    `weights` part by part, and convert (`pack_linears` with `make`) the linear maps of each filled part
    under the key prefixes `converted` before the next part is read: the float32 model never exists whole.
    The checkpoint's shapes are checked first, in one sentence. The caller then converts what straddles
    parts (`convert_lm`, `convert_codec`) and takes its own copies of what stays (`own_tensors`; see
    `pretrained.load_int8`): the result is what filling the whole model, then converting it, gives."""
    source = str(weights.path)
    check_fit({k: v.shape for k, v in module.state_dict(keep_vars=True).items()}, weights.shapes, source)

    def fill_own(part: nn.Module, prefix: str) -> None:
        for name, param in list(part._parameters.items()):
            if param is not None:
                tensor = weights[prefix + name].to(param.dtype)
                check_finite({prefix + name: tensor}, source)
                part._parameters[name] = nn.Parameter(tensor, requires_grad=False)
        for name, buffer in list(part._buffers.items()):
            if name in part._non_persistent_buffers_set or buffer is None:
                if buffer is not None and buffer.is_meta:
                    raise ValueError(f"{type(part).__name__}.{name} is not saved and was built on the meta device: "
                                     "build the model inside parameters_on_meta()")
                continue
            part._buffers[name] = weights[prefix + name].to(buffer.dtype)

    def visit(parent: nn.Module | None, name: str, part: nn.Module, prefix: str) -> None:
        if sum(p.numel() * p.element_size() for p in part.parameters()) > PART_BYTES:
            fill_own(part, prefix)
            for child_name, child in list(part.named_children()):
                visit(part, child_name, child, f"{prefix}{child_name}.")
            return
        for sub_prefix, sub in part.named_modules(prefix=prefix.rstrip(".")):
            fill_own(sub, f"{sub_prefix}." if sub_prefix else "")
        if parent is not None and prefix.startswith(converted):
            if not (pack_one(parent, name, part, make) and isinstance(part, nn.Linear)):
                pack_linears(part, make)

    visit(None, "", module, "")


def own_tensors(module: nn.Module) -> None:
    """Replace every parameter and buffer of `module` by a copy of its own, one at a time: tensors read from a
    memory-mapped file (`hub.LazyWeights`) then no longer share the file's read-only pages."""
    for part in module.modules():
        for name, param in list(part._parameters.items()):
            if param is not None:
                part._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
        for name, buffer in list(part._buffers.items()):
            if buffer is not None:
                part._buffers[name] = buffer.clone()
