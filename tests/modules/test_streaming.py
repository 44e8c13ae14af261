"""Properties every streaming module keeps: chunked equals one pass, a longer input never changes earlier
outputs, rows of a batch are independent, and a state snapshot can be restored and replayed."""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from wavslm.modules.focal import (
    FocalCompressor,
    FocalCompressorConfig,
    FocalDecompressor,
    FocalDecompressorConfig,
)
from wavslm.modules.state import clone_state
from wavslm.modules.transformer import TransformerEncoder
from wavslm.modules.vocos import Vocos, VocosConfig
from wavslm.modules.wavenext import WaveNeXt, WaveNeXtConfig
from wavslm.wavlm import WavLM, WavLMConfig


@dataclass
class Case:
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int, int], Tensor]  # (batch, units) -> input
    unit: int  # input frames (or samples) per streaming step
    out_per_unit: int  # output frames (or samples) per streaming step


def _focal(**kw):
    base = dict(hidden_dims=(24, 24), focal_window=3, focal_level=2, focal_factor=2, causal=True, window_size=8)
    return {**base, **kw}


CASES = {
    "transformer": Case(
        lambda: TransformerEncoder(2, 32, 64, 4, num_buckets=32, max_distance=64, causal=True, window_size=12,
                                   chunk_size=4, conv_pos=6, conv_pos_groups=4, final_norm=True),
        lambda b, n: torch.randn(b, 4 * n, 32), 4, 4),
    "wavlm": Case(
        lambda: WavLM(WavLMConfig(hidden_dims=[8] * 7, num_layers=1, dim=16, ffn_dim=32, num_heads=2, num_buckets=16,
                                  max_distance=32, conv_pos=4, conv_pos_groups=2, causal=True, window_size=8)),
        lambda b, n: torch.randn(b, 1280 * n), 1280, 4),
    "compressor": Case(
        lambda: FocalCompressor(FocalCompressorConfig(input_dim=16, output_dim=6, downscale_factors=(2, 1), **_focal())),
        lambda b, n: torch.randn(b, 8 * n, 16), 8, 4),
    "decompressor": Case(
        lambda: FocalDecompressor(FocalDecompressorConfig(input_dim=6, output_dim=16, upscale_factors=(1, 1),
                                                          last_window_size=8, lookahead_size=3, **_focal())),
        lambda b, n: torch.randn(b, 4 * n, 6), 4, 4),
    "wavenext": Case(
        lambda: WaveNeXt(WaveNeXtConfig(input_dim=16, num_layers=2, dim=16, ffn_dim=32, hop_length=10, causal=True)),
        lambda b, n: torch.randn(b, 4 * n, 16), 4, 40),
    "vocos": Case(
        lambda: Vocos(VocosConfig(input_dim=16, num_layers=2, dim=16, ffn_dim=32, n_fft=32, hop_length=8, causal=True)),
        lambda b, n: torch.randn(b, 4 * n, 16), 4, 32),
}


def run(module, x, unit, pieces, state=None):
    outs, start = [], 0
    for units in pieces:
        y, state = module(x[:, start : start + unit * units], state)
        outs.append(y)
        start += unit * units
    return torch.cat(outs, dim=1), state


@pytest.fixture(params=sorted(CASES))
def case(request):
    torch.manual_seed(0)
    spec = CASES[request.param]
    return spec, spec.build().eval()


@torch.no_grad()
def test_chunked_equals_one_pass(case):
    spec, module = case
    x = spec.inputs(2, 9)
    full, _ = module(x)
    assert full.shape[1] == 9 * spec.out_per_unit
    for pieces in ([1] * 9, [2, 7], [3, 1, 5]):
        chunked, _ = run(module, x, spec.unit, pieces)
        assert (chunked - full).abs().max() < 1e-4, pieces


@torch.no_grad()
def test_prefix_is_never_changed_by_what_follows(case):
    spec, module = case
    x = spec.inputs(1, 8)
    short, _ = module(x[:, : 3 * spec.unit])
    long, _ = module(x)
    assert (long[:, : short.shape[1]] - short).abs().max() < 1e-4


@torch.no_grad()
def test_rows_are_independent(case):
    spec, module = case
    x = spec.inputs(3, 5)
    batch, _ = run(module, x, spec.unit, [2, 3])
    alone, _ = run(module, x[1:2], spec.unit, [2, 3])
    assert (batch[1:2] - alone).abs().max() < 1e-4


@torch.no_grad()
def test_state_snapshot_and_restore(case):
    spec, module = case
    x = spec.inputs(2, 6)
    _, state = run(module, x, spec.unit, [2])
    snapshot = clone_state(state)
    first, _ = run(module, x[:, 2 * spec.unit :], spec.unit, [1, 3], state)
    again, _ = run(module, x[:, 2 * spec.unit :], spec.unit, [1, 3], snapshot)
    assert torch.equal(first, again)
