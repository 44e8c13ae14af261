"""1-D convolution that runs offline ("same" padding) or causally in a stream with carried left context.

A causal convolution of kernel `k` (dilation `d`) needs the `d * (k - 1)` inputs just before the current
piece. The stream state is exactly those inputs, `(B, C_in, context)`, so feeding a sequence in any
pieces (including single frames) gives the one-pass output.
"""

from typing import Literal

import torch
from torch import Tensor, nn

from .linear import linear
from .tuning import CONV_FRAMES

PadMode = Literal["zeros", "replicate"]


def with_left_context(
    x: Tensor, context: Tensor | None, size: int, pad_mode: PadMode = "zeros"
) -> tuple[Tensor, Tensor | None]:
    """Prepend `size` past frames to `x (B, C, T)`; return `(B, C, size + T)` and the next context.

    On the first call (`context` None) the past is zeros or copies of the first frame (`pad_mode`).
    The next context is `(B, C, size)`. An empty first piece is returned as is and keeps the stream
    fresh (context None), since "replicate" needs a first frame.
    """
    if context is None:
        if x.shape[-1] == 0:
            return x, None
        if pad_mode == "zeros":
            context = x.new_zeros(*x.shape[:-1], size)
        elif pad_mode == "replicate":
            context = x[..., :1].expand(*x.shape[:-1], size)
        else:
            raise ValueError(f"unknown pad_mode {pad_mode!r}; expected 'zeros' or 'replicate'")
    full = torch.cat([context, x], dim=-1)
    # Slice by start index: `full[..., -0:]` would keep everything when size is 0.
    return full, full[..., full.shape[-1] - size :]


class StreamingConv1d(nn.Conv1d):
    """`nn.Conv1d` (stride 1) with either symmetric "same" padding or causal padding and stream state.

    x `(B, C_in, T)` -> y `(B, C_out, T)`. Parameters are the plain `weight` / `bias` of `nn.Conv1d`,
    so checkpoints of either variant load unchanged.

    State (causal only): a Tensor `(B, C_in, dilation * (kernel_size - 1))`, the inputs just before `x`.
    Non-causal modules look ahead, cannot stream and return state None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        causal: bool = False,
        pad_mode: PadMode = "zeros",
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding=0 if causal else "same",
        )
        if pad_mode not in ("zeros", "replicate"):
            raise ValueError(f"unknown pad_mode {pad_mode!r}; expected 'zeros' or 'replicate'")
        self.causal = causal
        self.pad_mode: PadMode = pad_mode
        self.context_size = dilation * (kernel_size - 1)
        self.packed: nn.Module | None = None  # an inference form of `linear_weight()`

    def linear_weight(self) -> tuple[Tensor, Tensor | None] | None:
        """A dense causal convolution as a linear map over windows `(C_in * K) -> (C_out)`; None otherwise."""
        if not self.causal or self.groups != 1 or self.dilation[0] != 1:
            return None
        return self.weight.view(self.out_channels, -1), self.bias

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if not self.causal:
            if state is not None:
                raise ValueError("a non-causal convolution cannot stream; call it with state=None")
            return super().forward(x), None
        if x.shape[-1] == 0:  # nothing new: the output is empty and the past is unchanged
            return x.new_zeros(x.shape[0], self.out_channels, 0), state
        full, state = with_left_context(x, state, self.context_size, self.pad_mode)
        as_linear = self.linear_weight()
        if as_linear is None or (self.packed is None and not CONV_FRAMES.admits(x.shape[0] * x.shape[-1], x)):
            return super().forward(full), state
        # Few frames on a CPU (a streaming step), or a packed form: each output is one window times the
        # flattened weight.
        windows = full.unfold(2, self.kernel_size[0], 1).transpose(1, 2).flatten(2)  # (B, T, C_in * K)
        y = linear(windows, *as_linear) if self.packed is None else self.packed(windows)
        return y.transpose(1, 2), state

    def extra_repr(self) -> str:
        return super().extra_repr() + f", causal={self.causal}, pad_mode={self.pad_mode}"
