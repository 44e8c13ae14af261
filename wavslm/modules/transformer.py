"""The WavLM transformer stack (pre-LN layers sharing one relative position bias), bidirectional or causal.

Used three ways: the LM backbone (causal, final LayerNorm), the codec's WavLM encoder (causal or not,
convolutional positional embedding, no final norm) and the Hugging Face WavLM import (bidirectional,
convolutional positional embedding, final LayerNorm).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import FeedForward, KVCache, MultiHeadAttention, chunk_mask, position_bias
from .tuning import POSITIONAL_CONV_ROWS


class TransformerLayer(nn.Module):
    """Pre-LN WavLM layer: `x + attn(LN(x))`, then `x + ffn(LN(x))`."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, num_heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, ffn_dim, dropout)

    def forward(
        self, x: Tensor, bias: Tensor, mask: Tensor | None, cache: KVCache | None = None, keep_from: int = 0
    ) -> Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), bias, mask, cache, keep_from))
        return x + self.feed_forward(self.feed_forward_norm(x))


@dataclass
class ConvPosState:
    """Last `kernel_size - 1` input frames `(B, K - 1, D)` of the causal positional convolution."""

    context: Tensor


def _grouped_conv_as_matmul(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """`conv(x)` (stride 1, no padding) for `x (B, C, L)` with few outputs, as one matmul per group.

    Each group's output rows are the `(C_in/G * K)`-long windows of its input times its weight viewed as
    `(C_out/G, C_in/G * K)` (no copy of the weight); the batch's windows share one matmul.
    """
    B, C, L = x.shape
    G, K = conv.groups, conv.kernel_size[0]
    T = L - K + 1
    windows = x.reshape(B, G, C // G, L).unfold(3, K, 1)  # (B, G, C_in/G, T, K)
    windows = windows.permute(1, 0, 3, 2, 4).reshape(G, B * T, (C // G) * K)
    weight = conv.weight.view(G, -1, (C // G) * K).transpose(1, 2)  # (G, C_in/G * K, C_out/G)
    if conv.bias is None:
        y = torch.bmm(windows, weight)
    else:
        y = torch.baddbmm(conv.bias.view(G, 1, -1), windows, weight)
    return y.view(G, B, T, -1).permute(1, 0, 3, 2).reshape(B, -1, T)


class ConvPositionalEmbedding(nn.Module):
    """Grouped convolution over time added to the features (WavLM's absolute position signal).

    Bidirectional: centred ('same') padding, dropping the extra frame of an even kernel. Causal: left
    context only; the first call pads by repeating the first frame.
    """

    def __init__(self, dim: int, kernel_size: int, groups: int, causal: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.causal = causal
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=groups)

    def forward(self, x: Tensor, state: ConvPosState | None = None) -> tuple[Tensor, ConvPosState | None]:
        """`(B, T, D) -> (B, T, D)` positional embeddings (not yet added)."""
        x = x.transpose(1, 2)
        K = self.kernel_size
        if self.causal:
            left = x[:, :, :1].expand(-1, -1, K - 1) if state is None else state.context.transpose(1, 2)
            x = torch.cat([left, x], dim=-1)
            state = ConvPosState(x[:, :, x.shape[-1] - (K - 1) :].transpose(1, 2))
            # A streaming step on a CPU: the same sums as one matmul per group, far faster than oneDNN's.
            few = POSITIONAL_CONV_ROWS.admits(x.shape[0] * (x.shape[-1] - K + 1), x)
            y = _grouped_conv_as_matmul(x, self.conv) if few else self.conv(x)
        else:
            y = self.conv(F.pad(x, (K // 2, K // 2)))
            if K % 2 == 0:
                y = y[..., :-1]
        return F.gelu(y).transpose(1, 2), state


@dataclass
class TransformerState:
    """Streaming state of a causal stack: the position of the next frame, per-layer caches, conv context.

    `valid_from (B,)`: the first key position each row may attend (left padding, or rows lined up from
    different positions by `align`); None: every stored key. `row_pos (B,)`: each row's own position when
    the rows stand at different ones; None: every row is at `pos`. A lined-up batch shares one grid of
    positions in which each row's keys end at `pos`: the grid keeps each row's chunk boundaries and the
    distances between its queries and keys, which is all the stack sees of positions (relative bias and
    chunk mask), so every row computes what it would alone.
    """

    pos: int = 0
    caches: list[KVCache] = field(default_factory=list)
    conv: ConvPosState | None = None
    valid_from: Tensor | None = None
    row_pos: Tensor | None = None

    def positions(self) -> Tensor:
        """Each row's own position `(B,)`."""
        if self.row_pos is not None:
            return self.row_pos
        return torch.full((self.caches[0].k.shape[0],), self.pos, dtype=torch.long)

    def advanced(self, frames: int, caches: list[KVCache], conv: "ConvPosState | None") -> "TransformerState":
        """The state after `frames` more frames (with the caches and conv context they left)."""
        row_pos = None if self.row_pos is None else self.row_pos + frames
        return TransformerState(self.pos + frames, caches, conv, self.valid_from, row_pos)

    def _attended(self, chunk: int, window: int) -> list[int]:
        """Per row, how many of its stored keys the next chunk can attend."""
        first = self.caches[0].first_kept(max(0, self.pos + chunk - window))
        rows = range(self.caches[0].k.shape[0])
        starts = [first if self.valid_from is None else max(first, int(self.valid_from[r])) for r in rows]
        return [self.pos - f for f in starts]

    @classmethod
    def align(cls, states: "list[TransformerState]", chunk: int, window: int) -> "TransformerState":
        """One batch continuing every row of `states`, each at its own position (at a chunk boundary).

        The keys each row can still attend are copied once, right-aligned so that they end at the batch's
        `pos`; the slots before a row's first key are masked (`valid_from`). Stepping the batch then
        appends in place, with no further copies: every row advances by the same frames.
        """
        if any(s.conv is not None or s.pos % chunk or not s.caches for s in states):
            raise ValueError("align takes cached states at chunk boundaries, without a positional convolution")
        rows = [(s, r, n) for s in states for r, n in enumerate(s._attended(chunk, window))]
        pos = -(-max(n for *_, n in rows) // chunk) * chunk  # a multiple of the chunk: each row's grid
        cache0 = states[0].caches[0]
        heads, head_dim = cache0.k.shape[1], cache0.k.shape[3]
        caches = []
        for layer in range(len(states[0].caches)):
            cache = KVCache.empty(len(rows), heads, head_dim, max(window + 16 * chunk, pos + chunk), cache0.k)
            cache.length = pos
            for b, (s, r, n) in enumerate(rows):
                cache.place(b, *s.caches[layer].last(n, r))
            caches.append(cache)
        device = cache0.k.device
        valid_from = torch.tensor([pos - n for *_, n in rows], device=device)
        row_pos = torch.stack([s.positions()[r].cpu() for s, r, _ in rows])
        return cls(pos, caches, None, valid_from, row_pos)

    def rows(self, index: list[int]) -> "TransformerState":
        """A copy of the rows `index`, on the same grid."""
        conv = None if self.conv is None else ConvPosState(self.conv.context[index])
        valid_from = None if self.valid_from is None else self.valid_from[index]
        row_pos = None if self.row_pos is None else self.row_pos[index]
        return TransformerState(self.pos, [c.rows(index) for c in self.caches], conv, valid_from, row_pos)

    def row(self, index: int, chunk: int, window: int) -> "TransformerState":
        """Row `index` alone, at its own position: a copy of the keys it can still attend."""
        if self.conv is not None:
            raise ValueError("row takes states without a positional convolution")
        n = self._attended(chunk, window)[index]
        own = int(self.positions()[index])
        caches = []
        for cache in self.caches:
            single = KVCache.empty(1, cache.k.shape[1], cache.k.shape[3], max(window + 16 * chunk, n + chunk), cache.k)
            single.start, single.length = own - n, n
            single.place(0, *cache.last(n, index))
            caches.append(single)
        return TransformerState(own, caches)


class TransformerEncoder(nn.Module):
    """A stack of WavLM layers with one relative position embedding shared by all layers.

    Causal mode attends within aligned chunks of `chunk_size` frames and `window_size` frames back
    (see `modules.attention`); it streams with a `TransformerState`. Bidirectional mode sees everything.
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        num_buckets: int = 320,
        max_distance: int = 800,
        dropout: float = 0.0,
        causal: bool = False,
        window_size: int = 512,
        chunk_size: int = 4,
        conv_pos: int = 0,
        conv_pos_groups: int = 16,
        final_norm: bool = False,
    ):
        super().__init__()
        if causal and window_size < chunk_size:
            raise ValueError(f"window_size ({window_size}) must be at least the chunk size ({chunk_size})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.max_distance = max_distance
        self.causal = causal
        self.window_size = window_size
        self.chunk_size = chunk_size
        if conv_pos:
            self.positional_embedding = ConvPositionalEmbedding(dim, conv_pos, conv_pos_groups, causal)
        self.relative_embedding = nn.Embedding(num_buckets, num_heads)
        self.layers = nn.ModuleList(TransformerLayer(dim, ffn_dim, num_heads, dropout) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        if final_norm:
            self.norm = nn.LayerNorm(dim)

    @property
    def piece_size(self) -> int:
        """Frames read per call when a long input is read with a cache: whole chunks, at least the window
        and 64 frames."""
        C = self.chunk_size
        return -(-max(self.window_size, 64) // C) * C

    def forward(
        self,
        x: Tensor,
        state: TransformerState | None = None,
        use_cache: bool = True,
        hidden: list[Tensor] | None = None,
        valid_from: Tensor | None = None,
    ) -> tuple[Tensor, TransformerState | None]:
        """`(B, T, D) -> (B, T, D)`, continuing from `state` (causal only).

        `valid_from (B,)` marks left padding on the first call: keys before it are never attended (a
        padded query attends to itself only, so nothing becomes NaN). Later calls take it from the state.

        `use_cache=False` skips building a key/value cache (training); the returned state is then None.
        If `hidden` is a list, every layer's input and the last layer's output (before the final norm)
        are appended to it, as Hugging Face's `hidden_states`.

        A causal stack with a cache reads a long input in pieces of `piece_size` frames (whole chunks,
        at least the window): each query sees at most the window anyway, so memory stays linear in the
        length and the result is the one-pass result.
        """
        B, T, _ = x.shape
        if self.causal and use_cache and hidden is None and T > self.piece_size:
            outs = []
            for start in range(0, T, self.piece_size):
                y, state = self(x[:, start : start + self.piece_size], state, valid_from=valid_from if start == 0 else None)
                outs.append(y)
            return torch.cat(outs, dim=1), state
        if not self.causal and state is not None:
            raise ValueError("a bidirectional transformer has no streaming state")
        x = x.to(self.layers[0].attention_norm.weight.dtype)  # float32 features into a bfloat16 stack
        conv_state = None
        if hasattr(self, "positional_embedding"):
            pos_emb, conv_state = self.positional_embedding(x, state.conv if state is not None else None)
            x = x + pos_emb
        x = self.dropout(x)

        start = state.pos if state is not None else 0
        q_pos = torch.arange(start, start + T, device=x.device)
        caches: list[KVCache] = []
        keep_from = 0
        if self.causal:
            C, W = self.chunk_size, self.window_size
            # The earliest key any query of this call (and of later calls) can see.
            keep_from = max(0, start - start % C + C - W)
            if use_cache:
                caches = state.caches if state is not None and state.caches else [
                    KVCache.empty(B, self.num_heads, self.head_dim, W + 16 * C, x) for _ in self.layers
                ]
            first = caches[0].first_kept(keep_from) if caches else start
            k_pos = torch.arange(first, start + T, device=x.device)
            mask = chunk_mask(q_pos, k_pos, C, W)
            # (an exported graph keeps the mask: its shapes, not its values, are fixed when tracing)
            mask = None if not torch.compiler.is_exporting() and bool(mask.all()) else mask
        else:
            k_pos, mask = q_pos, None
        if state is not None:
            valid_from = state.valid_from
        if valid_from is not None:
            keys = (k_pos[None, :] >= valid_from[:, None].to(k_pos.device))[:, None, None, :]  # (B, 1, 1, S)
            own = (k_pos[None, :] == q_pos[:, None])[None, None]  # (1, 1, T, S)
            mask = (keys if mask is None else keys & mask) | own
        bias = position_bias(self.relative_embedding, q_pos, k_pos, self.max_distance).to(x.dtype)

        for i, layer in enumerate(self.layers):
            if hidden is not None:
                hidden.append(x)
            x = layer(x, bias, mask, caches[i] if caches else None, keep_from)
        if hidden is not None:
            hidden.append(x)
        if hasattr(self, "norm"):
            x = self.norm(x)
        if not self.causal or (not use_cache and conv_state is None):
            return x, None
        if state is None:
            return x, TransformerState(T, caches, conv_state, valid_from)
        return x, state.advanced(T, caches, conv_state)
