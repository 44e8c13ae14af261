"""Linear maps for streaming steps: few rows multiplied as `W @ x^T`, and their int8 form.

A generation step multiplies 4 frames (16 at batch 4) by every weight matrix once, so on a CPU its time
is the time to stream the weights through the cores. For such skinny inputs MKL's float32 `x @ W^T`
runs well below the memory bandwidth; the same dot products as `W @ x^T` ran 1.2-1.9x faster on this
project's 2-core machine (1024x4096 weights, 4-32 rows), so `linear` takes that path for CPU tensors of
at most `tuning.LINEAR_ROWS` rows, and `F.linear` on any other device. Float32 results differ from
`F.linear` only by summation order (~1e-6).

For inference, `optimize_for_inference` swaps these maps for packed forms: `PackedLinear` (float32
in oneDNN's layout: the same sums, read faster) or `Int8Linear` (int8 weights, symmetric per output
channel, activations quantised per call by fbgemm: a quarter of the bytes). Modules whose linear map
is a view of another layout (1x1 and few-frame convolutions, a transposed convolution) expose it as
`linear_weight()` and use an attached `packed` module in its place when they are given one.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tuning import LINEAR_ROWS


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x (..., in), weight (out, in), bias) -> (..., out)`; few float32 rows on a CPU as `W @ x^T`."""
    rows = x.numel() // max(x.shape[-1], 1)
    if rows == 0 or not LINEAR_ROWS.admits(rows, x) or x.dtype != torch.float32 or weight.dtype != torch.float32 or (
        torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    ):  # training keeps PyTorch's own path
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1]).t()
    y = weight @ flat if bias is None else torch.addmm(bias[:, None], weight, flat)
    return y.t().reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state-dict keys) computed by `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class Int8Linear(nn.Module):
    """A linear map with int8 weights (symmetric, per output channel) and per-call int8 activations.

    `(..., in) -> (..., out)` in float32. Holds no parameters or buffers: the packed weight is fbgemm's.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        weight = weight.detach().float().contiguous()
        # max |w| per row as one reduction: no weight-sized temporary (a model converted while it loads)
        scales = (torch.linalg.vector_norm(weight, float("inf"), dim=1) / 127.0).clamp_min(1e-12).double()
        zeros = torch.zeros_like(scales, dtype=torch.int64)
        bias = None if bias is None else bias.detach().float().contiguous()
        with warnings.catch_warnings():  # the quantised-tensor constructors warn of a future move to torchao
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.out_features, self.in_features = weight.shape
        # What the packed weight holds: int8 values, scales, float bias.
        self.weight_bytes = weight.numel() + scales.numel() * scales.element_size() + (0 if bias is None else 4 * bias.numel())

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "Int8Linear":
        return cls(layer.weight, layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(), self._packed, True)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class PackedLinear(nn.Module):
    """A float32 linear map with its weight held in oneDNN's own layout (`to_mkldnn`).

    The same float32 sums as `Linear` in another order (differences ~1e-6); oneDNN streams a packed
    weight much closer to the memory bandwidth: the paper-size LM step went from 107-112 ms to 68 ms on
    this project's 2-core machine. `(..., in) -> (..., out)`; no parameters or buffers (inference only).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        self._weight = weight.detach().float().contiguous().to_mkldnn()
        self._bias = None if bias is None else bias.detach().float().contiguous()
        self.out_features, self.in_features = weight.shape
        self.weight_bytes = 4 * (weight.numel() + (0 if bias is None else bias.numel()))

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "PackedLinear":
        return cls(layer.weight, layer.bias)

    @staticmethod
    def available() -> bool:
        return torch.backends.mkldnn.is_available()

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float().contiguous()
        y = torch.ops.mkldnn._linear_pointwise(flat, self._weight, self._bias, "none", [], "")
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float32 packed"


class PointwiseConv1d(nn.Conv1d):
    """A kernel-1 `nn.Conv1d` (weight `(out, in, 1)`, the released layout) applied to channels-last
    frames `(B, T, in) -> (B, T, out)` as the linear map it is (oneDNN's conv is slow on short inputs)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)
        self.packed: nn.Module | None = None

    def linear_weight(self) -> tuple[Tensor, Tensor | None]:
        return self.weight[:, :, 0], self.bias

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, *self.linear_weight()) if self.packed is None else self.packed(x)
