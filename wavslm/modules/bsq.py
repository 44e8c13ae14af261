"""Binary spherical quantization (BSQ, https://arxiv.org/abs/2406.07548) with one implicit codebook.

A latent `lats (..., bits)` is quantized dimension by dimension to `+s` where it is strictly positive and
to `-s` otherwise (zero goes to `-s`), with `s = 1 / sqrt(bits)`, so every code lies on the unit sphere.
The token is the sign pattern read as a binary number, most significant bit first: bit `i` (from the left)
is 1 where dimension `i` is positive. With 6 bits, `[+, -, -, -, -, +]` is token `0b100001 = 33`.

The codebook is implicit (`2 ** bits` codes), so the quantizer has no weights. The functions here are pure;
the module only remembers `bits`.
"""

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError


def code_scale(bits: int) -> float:
    """The magnitude `1 / sqrt(bits)` of every coordinate of a code."""
    return 1.0 / math.sqrt(bits)


def _bit_weights(bits: int, device: torch.device) -> Tensor:
    """`(bits,)` int64 place values, most significant first: `[2**(bits-1), ..., 2, 1]`."""
    return 2 ** torch.arange(bits - 1, -1, -1, device=device)


def lats_to_codes(lats: Tensor) -> Tensor:
    """`lats (..., bits)` -> `codes (..., bits)` in `{-s, +s}`; not differentiable (see `straight_through`)."""
    s = code_scale(lats.shape[-1])
    return torch.where(lats > 0, s, -s).to(lats.dtype)


def codes_to_toks(codes: Tensor) -> Tensor:
    """`codes (..., bits)` (or latents) -> `toks (...)` int64, positive dimensions read MSB-first as ones."""
    return ((codes > 0) * _bit_weights(codes.shape[-1], codes.device)).sum(dim=-1)


def lats_to_toks(lats: Tensor) -> Tensor:
    """`lats (..., bits)` -> `toks (...)` int64 (the sign pattern of the latents)."""
    return codes_to_toks(lats)


def toks_to_codes(toks: Tensor, bits: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """`toks (...)` integers in `[0, 2**bits)` -> `codes (..., bits)` in `{-s, +s}` of `dtype`."""
    ones = (toks[..., None].long() // _bit_weights(bits, toks.device)) % 2
    return (ones.to(dtype) * 2 - 1) * code_scale(bits)


def straight_through(lats: Tensor) -> Tensor:
    """Quantize `lats (..., bits)` in the forward pass, pass the gradient through unchanged (for training)."""
    return lats + (lats_to_codes(lats) - lats).detach()


class BinarySphericalQuantizer(nn.Module):
    """BSQ with `codebook_size = 2 ** bits` implicit codes (released name and config key `codebook_size`).

    `forward(lats (B, T, bits)) -> (toks (B, T) int64, codes (B, T, bits))`. Stateless and weightless:
    frames are quantized independently, so streaming needs nothing.
    """

    def __init__(self, codebook_size: int = 4096) -> None:
        super().__init__()
        bits = int(round(math.log2(codebook_size))) if codebook_size > 1 else 0
        if bits < 1 or 2**bits != codebook_size:
            raise InputError(f"quantizer codebook_size must be a power of two >= 2, got {codebook_size}")
        self.codebook_size = codebook_size
        self.bits = bits

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "BinarySphericalQuantizer":
        """Build from a released `quantizer_config` dict (only `codebook_size`); unknown keys raise."""
        unknown = sorted(set(config) - {"codebook_size"})
        if unknown:
            raise InputError(f"unknown quantizer_config key(s) {unknown}; expected only 'codebook_size'")
        return cls(**config)

    def forward(self, lats: Tensor) -> tuple[Tensor, Tensor]:
        self._check_bits(lats)
        return lats_to_toks(lats), lats_to_codes(lats)

    def quantize(self, lats: Tensor) -> Tensor:
        """Straight-through codes `(..., bits)`: quantized values, identity gradient."""
        self._check_bits(lats)
        return straight_through(lats)

    def lats_to_codes(self, lats: Tensor) -> Tensor:
        self._check_bits(lats)
        return lats_to_codes(lats)

    def lats_to_toks(self, lats: Tensor) -> Tensor:
        self._check_bits(lats)
        return lats_to_toks(lats)

    def codes_to_toks(self, codes: Tensor) -> Tensor:
        self._check_bits(codes)
        return codes_to_toks(codes)

    def toks_to_codes(self, toks: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return toks_to_codes(toks, self.bits, dtype)

    @property
    def codebook(self) -> Tensor:
        """All codes `(codebook_size, bits)`, row `i` being the code of token `i`."""
        return toks_to_codes(torch.arange(self.codebook_size), self.bits)

    def _check_bits(self, x: Tensor) -> None:
        if x.shape[-1] != self.bits:
            raise ValueError(
                f"expected latents with {self.bits} dims in the last axis, got shape {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, bits={self.bits}"
