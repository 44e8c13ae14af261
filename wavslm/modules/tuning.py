"""Sizes up to which a layer computes the same sums its own way, each with the device it was measured on.

A streaming step sends a handful of frames through layers built for long inputs, and on a CPU some of
PyTorch's kernels are then far slower than the work needs: below a measured size, a few layers take
another path to the same result (equal up to float32 summation order). Every such threshold lives here
with what was measured, on which device, and the figure. `Tuned.admits(size, x)` holds only for a
tensor on the device the threshold was measured on: everywhere else (CUDA, MPS, ...) the layers run
PyTorch's plain path, since nothing was measured there.

Figures are from this project's 2-core CPU machine (float32, MKL and oneDNN as PyTorch ships them),
at paper size (WavLM-Large width: 1024 channels, FFN 4096).
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tuned:
    """Take the tuned path for sizes up to `limit`, on tensors of device type `device` only."""

    limit: int
    device: str = "cpu"

    def admits(self, size: int, x: Tensor) -> bool:
        """Whether an input `x` of this `size` (rows, frames or queries, as the caller counts them) takes it.
        Never while a graph is exported: its sizes are symbols, and the graph must hold for every size."""
        return not torch.compiler.is_exporting() and x.device.type == self.device and size <= self.limit


# `linear.linear`: a float32 product with at most this many rows is computed as `W @ x^T` instead of
# `F.linear`'s `x @ W^T`. Measured: 1024 x 4096 weights, 4-32 rows: 1.2-1.9x faster.
LINEAR_ROWS = Tuned(32)

# `conv.StreamingConv1d` (dense causal): at most this many output frames (batch x time) are computed as
# windows times the flattened weight, through `linear.linear`, instead of oneDNN's convolution, which
# is slow on short inputs. Not measured on its own: the limit is `LINEAR_ROWS`'s, whose path it takes.
CONV_FRAMES = Tuned(LINEAR_ROWS.limit)

# `transformer.ConvPositionalEmbedding` (causal): at most this many output rows (batch x time) of the
# grouped positional convolution are computed as one matmul per group. Measured: 1024 channels,
# 16 groups, kernel 128, a 4-frame step: oneDNN's grouped convolution 18-21 ms, the matmuls 1-2 ms;
# from about 64 rows on, the convolution is the faster.
POSITIONAL_CONV_ROWS = Tuned(32)

# `wavlm.ConvBlock`: the conv front end's strided convolutions run on CPU as 2-D convolutions in the
# channels-last layout its `(B, time, channels)` features already have, so neither the convolution's
# input nor the LayerNorm after it needs a transposed copy. Measured: the bundled tiny codec's front end
# (7 layers, 128 channels), 8 prompts of 3 s, one thread: 350 ms as `Conv1d` with transposes, 181 ms
# channels-last (the same sums up to float32 rounding: 3e-6 at most). `limit` counts nothing: any size.
CHANNELS_LAST_FRONT_END = Tuned(2**62)

# `wavlm.FeatureExtractor` (causal): when the first conv layer's output would exceed 3 x `limit` bytes,
# the input goes through the front end in pieces of about `limit` bytes of that output each, carrying
# each layer's causal context (the streaming path: the same sums, bitwise here), so that the seven
# layers' outputs stay in cache and no large buffer is allocated, faulted in and freed per layer.
# Measured (`python bench/front_end.py`: the front end alone, best of 5, 2 threads, Intel Xeon):
# the tiny codec's (128 channels), 8 prompts of 3 s, 105 ms whole and 50 ms in 0.6-s pieces (8 MiB);
# 16 prompts 216 and 104 ms; WavLM-Large's (512 channels), 4 prompts of 3 s, 347 and 279-302 ms.
# Below 3 x the limit the whole input was as fast or faster (one 3-s prompt at 512 channels: 66 ms
# whole, 75 ms in pieces).
FRONT_END_PIECE_BYTES = Tuned(8 * 2**20)

# `attention.MultiHeadAttention` (not training): at most this many queries per call attend through two
# matmuls and a softmax instead of `F.scaled_dot_product_attention`. Measured: streaming steps (4 queries
# a row, 16 at batch 4), where the fused CPU kernel was the slower; the figure was not recorded apart
# from the whole step's.
ATTENTION_QUERIES = Tuned(16)
