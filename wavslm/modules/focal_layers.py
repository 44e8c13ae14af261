"""Frame-local layers of the focal compressor / decompressor (`focal.py`): norm, activation, rescaling.

DynamicTanh and Snake act on each frame alone. DownScale, UpScale and ChunkRefiner touch only frames of
the same window (of `factor` or `group` frames), never a window's neighbours, so the only streaming state
here is DownScale's incomplete window.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import Linear, linear


class DynamicTanh(nn.Module):
    """`tanh(alpha * x)` with one learned scalar `alpha` (https://arxiv.org/abs/2503.10622).

    A stand-in for LayerNorm that needs no statistics over the features. FocalCodec's variant has no
    affine weight or bias, only `alpha` `(1,)`. Any shape in, same shape out.
    """

    def __init__(self, dim: int, alpha_init: float = 0.5) -> None:
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.full((1,), alpha_init))

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.alpha * x)

    def extra_repr(self) -> str:
        return f"{self.dim}"


class Snake(nn.Module):
    """Snake activation `x + sin(alpha * x)^2 / alpha`, one `alpha` per channel (https://arxiv.org/abs/2006.08195).

    Channels-first: `(B, C, T) -> (B, C, T)`; `alpha` is stored as `(C, 1)` (the released layout), which
    broadcasts over time directly.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        # The tiny epsilon keeps a zero alpha finite, as in the released models.
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x) ** 2

    def extra_repr(self) -> str:
        return f"{self.alpha.shape[0]}"


class DownScale(nn.Module):
    """Strided conv (kernel = stride = `factor`) then Snake: `(B, C_in, T) -> (B, C_out, ~T / factor)`.

    Non-causal: zero-pads the end by `(T - factor) % factor` frames (the released rule). Causal: the first
    call prepends `factor - 1` copies of the first frame, giving `ceil(T / factor)` outputs offline; the
    inputs not yet covering a whole window are carried as `pending (B, C_in, P < factor)`, so any piece
    sizes give the one-pass output.
    """

    def __init__(self, in_dim: int, out_dim: int, factor: int, causal: bool) -> None:
        super().__init__()
        self.factor, self.causal = factor, causal
        self.downscale = nn.Conv1d(in_dim, out_dim, factor, stride=factor)
        self.activation = Snake(out_dim)

    def forward(self, x: Tensor, pending: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        k = self.factor
        if not self.causal:
            x = F.pad(x, (0, (x.shape[-1] - k) % k))
        else:
            if pending is None:
                pending = x[..., :1].expand(-1, -1, k - 1)
            x = torch.cat([pending, x], dim=-1)
            used = x.shape[-1] // k * k
            x, pending = x[..., :used], x[..., used:]
            if used == 0:
                return x.new_zeros(x.shape[0], self.downscale.out_channels, 0), pending
        return self.activation(self.downscale(x)), pending


class UpScale(nn.Module):
    """Snake then transposed conv (kernel = stride = `factor`): `(B, C_in, T) -> (B, C_out, T * factor)`.

    Kernel equal to stride means no overlap between input frames, so it is the same causal or not and
    needs no streaming state (the released causal variant pads on the left and crops that away again).
    """

    def __init__(self, in_dim: int, out_dim: int, factor: int) -> None:
        super().__init__()
        self.activation = Snake(in_dim)
        self.upscale = nn.ConvTranspose1d(in_dim, out_dim, factor, stride=factor)
        self.packed: nn.Module | None = None  # an inference form of `linear_weight()`

    def linear_weight(self) -> tuple[Tensor, Tensor]:
        """The transposed conv as a linear map over frames: `(C_in) -> (C_out * f)`, output `o * f + j`.

        A kernel equal to the stride means one matmul per input frame:
        `y[:, o, t * f + j] = sum_c x[:, c, t] * W[c, o, j] + b[o]` (much faster than the conv on a CPU).
        """
        W = self.upscale.weight  # (C_in, C_out, f)
        f = W.shape[2]
        return W.permute(1, 2, 0).reshape(-1, W.shape[0]), self.upscale.bias.repeat_interleave(f)

    def forward(self, x: Tensor) -> Tensor:
        x = self.activation(x).transpose(1, 2)  # (B, T, C_in)
        y = linear(x, *self.linear_weight()) if self.packed is None else self.packed(x)  # (B, T, C_out * f)
        B, T, _ = y.shape
        out, f = self.upscale.out_channels, self.upscale.kernel_size[0]
        return y.view(B, T, out, f).permute(0, 2, 1, 3).reshape(B, out, T * f)


class ChunkRefiner(nn.Module):
    """Residual MLP over each group of `group` consecutive frames flattened: `(B, T, D) -> (B, T, D)`.

    Groups start at frame 0; a trailing partial group is zero-padded and the padding dropped after.
    """

    def __init__(self, group: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.group = group
        self.in_proj = Linear(group * dim, group * dim)
        self.out_proj = Linear(group * dim, group * dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        groups = F.pad(x, (0, 0, 0, -T % self.group)).reshape(B, -1, self.group * D)
        h = self.dropout(self.out_proj(self.dropout(F.gelu(self.in_proj(groups)))))
        return x + h.reshape(B, -1, D)[:, :T]
