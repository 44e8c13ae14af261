"""The few-row linear path and the int8 form of every linear map, including those held as conv weights."""

import pytest
import torch
import torch.nn.functional as F

from wavslm.benchmark import build
from wavslm.modules.conv import StreamingConv1d
from wavslm.modules.focal_layers import UpScale
from wavslm.modules.linear import Int8Linear, PointwiseConv1d, linear
from wavslm.modules.tuning import ATTENTION_QUERIES, CONV_FRAMES, LINEAR_ROWS, POSITIONAL_CONV_ROWS
from wavslm.optimize import optimize_for_inference


@pytest.mark.parametrize("rows", [1, 4, LINEAR_ROWS.limit, LINEAR_ROWS.limit + 1])
def test_linear_equals_torch_for_any_number_of_rows(rows):
    g = torch.Generator().manual_seed(rows)
    x, w, b = torch.randn(2, rows, 96, generator=g), torch.randn(80, 96, generator=g), torch.randn(80, generator=g)
    with torch.no_grad():
        assert torch.allclose(linear(x, w, b), F.linear(x, w, b), atol=1e-5)
        assert torch.allclose(linear(x, w), F.linear(x, w), atol=1e-5)
    # Training keeps PyTorch's own path, so gradients flow as usual.
    w.requires_grad_(True)
    linear(x, w, b).sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


def test_tuned_paths_are_taken_only_on_the_device_they_were_measured_on():
    cpu, meta = torch.empty(2, 3), torch.empty(2, 3, device="meta")
    for tuned in (LINEAR_ROWS, CONV_FRAMES, POSITIONAL_CONV_ROWS, ATTENTION_QUERIES):
        assert tuned.device == "cpu"
        assert tuned.admits(tuned.limit, cpu) and not tuned.admits(tuned.limit + 1, cpu)
        assert not tuned.admits(1, meta)


def _int8_close(float_out: torch.Tensor, int8_out: torch.Tensor) -> bool:
    return (int8_out - float_out).norm() / float_out.norm() < 0.03


def test_conv_weights_act_as_the_linear_maps_they_are_and_pack_to_int8():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    with torch.no_grad():
        # A 1x1 conv over channels-last frames.
        point = PointwiseConv1d(64, 48)
        x = torch.randn(2, 5, 64, generator=g)
        want = point._conv_forward(x.transpose(1, 2), point.weight, point.bias).transpose(1, 2)
        assert torch.allclose(point(x), want, atol=1e-5)
        point.packed = Int8Linear(*point.linear_weight())
        assert _int8_close(want, point(x))

        # A transposed conv whose kernel is its stride.
        up = UpScale(64, 32, 2)
        x = torch.randn(2, 64, 6, generator=g)
        want = up.upscale(up.activation(x))
        assert torch.allclose(up(x), want, atol=1e-5)
        up.packed = Int8Linear(*up.linear_weight())
        assert _int8_close(want, up(x))

        # A dense causal conv, stepped a few frames at a time (windows times the flat weight) = one pass.
        conv = StreamingConv1d(64, 40, 7, causal=True)
        x = torch.randn(1, 64, 2 * CONV_FRAMES.limit, generator=g)
        offline, _ = conv(x)  # more than CONV_FRAMES frames: oneDNN's convolution
        assert torch.allclose(offline, conv._conv_forward(F.pad(x, (6, 0)), conv.weight, conv.bias), atol=1e-5)
        state, pieces = None, []
        for i in range(0, x.shape[-1], 4):
            y, state = conv(x[:, :, i : i + 4], state)
            pieces.append(y)
        assert torch.allclose(torch.cat(pieces, -1), offline, atol=1e-5)
        conv.packed = Int8Linear(*conv.linear_weight())
        assert _int8_close(offline, conv(x)[0])
        # Depthwise convolutions are not linear maps over windows and stay float.
        assert StreamingConv1d(64, 64, 7, groups=64, causal=True).linear_weight() is None


def test_int8_packs_every_linear_map_of_the_step():
    lm = build("tiny")
    optimize_for_inference(lm, quantize="int8")
    held = [m for m in lm.modules() if hasattr(m, "linear_weight") and m.linear_weight() is not None]
    assert held and all(isinstance(m.packed, Int8Linear) for m in held)
    plain = [m for m in lm.modules() if type(m).__name__ == "Linear" and m.in_features >= 64]
    assert not plain, plain
