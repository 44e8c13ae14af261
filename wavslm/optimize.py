"""Inference-time conversions of a loaded WavSLM: bfloat16 weights, int8 linear layers, torch.compile.

Float32 (the default) is exact to the original implementation; the others trade a measured deviation
for speed or memory (README, "Speed on a CPU"). The LM's inputs and logits stay float32 at its boundary.

bfloat16: the LM's transformer and head (the codec stays float32).
int8: every linear layer of the LM's transformer and head, and of the codec's decompressor and waveform
decoder (the work of each generation step), becomes a dynamically quantised int8 layer (weights per
output channel, activations per call, fbgemm kernels): on a CPU, decoding reads the weights once per
step, and a quarter of the bytes is most of the gain. The codec's encoder (the prompt) stays float32.
"""

import warnings

import torch
from torch import Tensor, nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUANTIZE = ("none", "int8")


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights (symmetric, per output channel) and per-call int8 activations."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zeros = torch.zeros_like(scales, dtype=torch.int64)
        bias = None if linear.bias is None else linear.bias.detach().float()
        with warnings.catch_warnings():  # the quantised-tensor constructors warn of a future move to torchao
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # What the packed weight holds (it is not a parameter or buffer): int8 values, scales, float bias.
        self.weight_bytes = weight.numel() + scales.numel() * scales.element_size() + (0 if bias is None else 4 * bias.numel())

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(), self._packed, True)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _replace_linears(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.in_features >= 64:  # the tiny gate projections stay float
            setattr(module, name, Int8Linear(child))
            count += 1
        else:
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
        lm.head = Int8Linear(lm.head)
        if lm.codec is not None:  # every per-step part of the codec: a live prompt is encoded step by step too
            for part in (lm.codec.encoder, lm.codec.compressor, lm.codec.decompressor, lm.codec.decoder):
                _replace_linears(part)
    if compile:
        lm.encoder.forward = torch.compile(lm.encoder.forward, dynamic=True)
    return lm
