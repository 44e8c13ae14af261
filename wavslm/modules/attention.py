"""WavLM self-attention: bucketed relative positions, a gated bias, the chunked causal mask, a key/value cache.

One copy, shared by the codec's WavLM encoder, the Hugging Face WavLM import and the language model.

Positions are absolute frame indices. A query at position q belongs to the chunk `[c, c + chunk)` with
`c = q - q % chunk`; in causal mode it sees the keys in `[c + chunk - window, c + chunk)` that exist when it
is computed. Because chunks are aligned to absolute multiples of `chunk`, feeding a sequence in any pieces
gives the one-pass result for every query whose chunk is complete within its call.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import Linear
from .tuning import ATTENTION_QUERIES


def relative_position_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Map signed distances `key - query` to WavLM's buckets (T5-style, half the buckets per sign).

    Distances below `num_buckets // 4` get a bucket each; larger ones share log-spaced buckets up to
    `max_distance`, beyond which they saturate.
    """
    half = num_buckets // 2
    max_exact = half // 2
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    # The float32 ops in this order reproduce the released and Hugging Face bucket boundaries bit for bit.
    scaled = (dist.float() / max_exact).log()
    scaled = scaled / math.log(max_distance / max_exact)
    scaled = scaled * (half - max_exact)
    scaled = scaled + max_exact
    large = scaled.long().clamp(max=half - 1)
    return bucket + torch.where(dist < max_exact, dist, large)


def position_bias(embedding: nn.Embedding, q_pos: Tensor, k_pos: Tensor, max_distance: int) -> Tensor:
    """Relative position bias `(H, Tq, Tk)` for absolute query and key positions.

    Only the distinct distances are embedded, so memory is `H * Tq * Tk` for the result and nothing more
    (no precomputed `max_steps x max_steps` table).
    """
    lo = int(k_pos[0] - q_pos[-1])
    hi = int(k_pos[-1] - q_pos[0])
    dists = torch.arange(lo, hi + 1, device=embedding.weight.device)
    table = embedding(relative_position_bucket(dists, embedding.num_embeddings, max_distance)).t()  # (H, R)
    index = (k_pos[None, :] - q_pos[:, None] - lo).to(embedding.weight.device)  # (Tq, Tk)
    return table[:, index]


def chunk_mask(q_pos: Tensor, k_pos: Tensor, chunk: int, window: int) -> Tensor:
    """Boolean `(Tq, Tk)`: True where query q may attend key k (its chunk and `window` keys back)."""
    end = (q_pos.div(chunk, rounding_mode="floor") + 1) * chunk
    return (k_pos[None, :] < end[:, None]) & (k_pos[None, :] >= end[:, None] - window)


@dataclass
class KVCache:
    """Preallocated keys and values of one attention layer, written in place.

    `k`, `v`: `(B, H, capacity, Dh)`; slots `[0, length)` hold positions `[start, start + length)`.
    When a write would overflow, the still-needed tail is moved to the front once (amortised over
    many steps), never rolled per step.
    """

    k: Tensor
    v: Tensor
    start: int = 0
    length: int = 0

    @classmethod
    def empty(cls, batch: int, heads: int, head_dim: int, capacity: int, like: Tensor) -> "KVCache":
        shape = (batch, heads, capacity, head_dim)
        return cls(like.new_zeros(shape), like.new_zeros(shape))

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def first_kept(self, keep_from: int) -> int:
        """Position of the first stored key at or after `keep_from` (what `append` will return first)."""
        return self.start + max(0, min(keep_from - self.start, self.length))

    def append(self, k: Tensor, v: Tensor, keep_from: int) -> tuple[Tensor, Tensor]:
        """Store new `(B, H, T, Dh)` keys/values; return views of the keys/values from `keep_from` on.

        Keys before `keep_from` are no longer needed by this call or any later one; they are dropped
        only when the buffer is full (one copy of the tail to the front, amortised over many steps).
        """
        T = k.shape[2]
        drop = self.first_kept(keep_from) - self.start
        if self.length + T > self.capacity:
            keep = self.length - drop
            if keep + T > self.capacity:
                self.k, self.v = _grow(self.k, keep + T), _grow(self.v, keep + T)
            self.k[:, :, :keep] = self.k[:, :, drop : drop + keep].clone()
            self.v[:, :, :keep] = self.v[:, :, drop : drop + keep].clone()
            self.start += drop
            self.length = keep
            drop = 0
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, drop : self.length], self.v[:, :, drop : self.length]

    def rows(self, index: Tensor | list[int]) -> "KVCache":
        """A copy holding only the rows `index` (same slots, same positions); indexing by a list copies."""
        index = list(index) if not isinstance(index, Tensor) else index
        return KVCache(self.k[index], self.v[index], self.start, self.length)

    def last(self, count: int, row: int) -> tuple[Tensor, Tensor]:
        """Views `(H, count, Dh)` of row `row`'s last `count` stored keys and values."""
        return self.k[row, :, self.length - count : self.length], self.v[row, :, self.length - count : self.length]

    def place(self, row: int, k: Tensor, v: Tensor) -> None:
        """Write `(H, n, Dh)` keys and values as row `row`'s last `n` stored ones (the slots before stay as
        they are: masked by the caller)."""
        n = k.shape[1]
        self.k[row, :, self.length - n : self.length] = k
        self.v[row, :, self.length - n : self.length] = v


def _grow(buf: Tensor, size: int) -> Tensor:
    new = buf.new_zeros(buf.shape[:2] + (size,) + buf.shape[3:])
    new[:, :, : buf.shape[2]] = buf
    return new


class MultiHeadAttention(nn.Module):
    """WavLM attention with a gated relative position bias (fused q/k/v projection as released).

    The gate is computed per head and query from the layer's (normalised) input, then scales the shared
    relative position bias: `gate = a * (b * const - 1) + 2` with `a, b` sigmoids of a tiny projection.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv_proj = Linear(dim, 3 * dim)
        self.out_proj = Linear(dim, dim)
        self.gru_rel_pos_linear = Linear(self.head_dim, 8)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def gate(self, x: Tensor) -> Tensor:
        """Per-head, per-query bias gate `(B, H, T, 1)` from input `(B, T, D)`."""
        B, T, _ = x.shape
        proj = self.gru_rel_pos_linear(x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2))
        a, b = proj.view(B, self.num_heads, T, 2, 4).sum(-1).sigmoid().chunk(2, dim=-1)
        return a * (b * self.gru_rel_pos_const - 1.0) + 2.0

    def forward(
        self,
        x: Tensor,
        bias: Tensor,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        keep_from: int = 0,
    ) -> Tensor:
        """Attend `(B, T, D)` queries to the cached and new keys.

        `bias`: `(H, T, S)` relative position bias over the keys the call sees (cached keys first);
        `mask`: boolean `(T, S)` or `(B, 1|H, T, S)`, or None when every key is visible. With a cache,
        the new keys are appended and the keys from `cache.first_kept(keep_from)` on are attended.
        Returns `(B, T, D)`.
        """
        B, T, D = x.shape
        q, k, v = self.qkv_proj(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(k, v, keep_from)
        attn_bias = self.gate(x) * bias
        if mask is not None:
            attn_bias = attn_bias.masked_fill(~mask, float("-inf"))
        if not self.training and (ATTENTION_QUERIES.admits(T, x) or torch.compiler.is_exporting()):
            # A streaming step on a CPU: plain matmuls beat the fused kernel for a handful of queries. An
            # exported graph takes them too: the ONNX exporter's decomposition of the fused CPU kernel
            # gives its output other strides than the traced ones, and the graph fails to convert.
            weights = (q @ k.transpose(-1, -2)).mul_(self.head_dim**-0.5).add_(attn_bias).softmax(dim=-1)
            out = weights.to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0
            )
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """Position-wise MLP: Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.in_proj = Linear(dim, ffn_dim)
        self.out_proj = Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.out_proj(self.dropout(F.gelu(self.in_proj(x)))))
