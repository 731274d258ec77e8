"""hil.nn: analog layers through a backend's forward/backward, digital bias, convert_to_analog."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hil.nn import AnalogConv2d, AnalogLinear, analog_layers, convert_to_analog
from hil.simulated import PeripheryConfig, SimulatedCrossbar

# Ideal arrays compute x W^T in float32; the layer's noise management divides each
# vector by its largest magnitude and multiplies it back (two more roundings).  With
# weights and inputs of magnitude <= 1 and k terms per output, float32 round-off is
# below k * 2^-24 * 4 in absolute terms; tolerances below use that bound.
EPS32 = 2.0**-24


def ideal_array(rows: int, cols: int, w: torch.Tensor | None = None) -> SimulatedCrossbar:
    b = SimulatedCrossbar(rows, cols, device="ideal", periphery=PeripheryConfig.ideal(), seed=0)
    if w is not None:
        b.set_weights(w)
    return b


def test_linear_forward_backward_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.rand(5, 7, generator=g) * 2 - 1
    bias = torch.rand(5, generator=g)
    x = torch.rand(4, 7, generator=g) * 2 - 1
    layer = AnalogLinear(7, 5, backend=ideal_array(5, 7, w))
    with torch.no_grad():
        layer.bias.copy_(bias)
    xa = x.clone().requires_grad_(True)
    xd = x.clone().requires_grad_(True)
    ya = layer(xa)
    yd = F.linear(xd, w, bias)
    tol = 8 * 7 * EPS32 * 4
    assert torch.allclose(ya, yd, atol=tol, rtol=0)
    gy = torch.rand(4, 5, generator=g) - 0.5
    ya.backward(gy)
    yd.backward(gy)
    assert torch.allclose(xa.grad, xd.grad, atol=8 * 5 * EPS32 * 4, rtol=0)
    assert torch.allclose(layer.bias.grad, gy.sum(0), atol=1e-6)
    # recorded (x, d): the weight gradient is sum_b outer(d_b, x_b)
    x_rec, d_rec, samples = layer.pop_pending()
    assert samples == 4
    assert torch.equal(x_rec, x)
    assert torch.allclose(d_rec.T @ x_rec, gy.T @ x, atol=1e-6)
    assert layer.pop_pending() is None


def test_out_scale_scales_output_and_recorded_error() -> None:
    w = torch.full((2, 3), 0.25)
    layer = AnalogLinear(3, 2, bias=False, backend=ideal_array(2, 3, w), out_scale=4.0)
    x = torch.ones(1, 3, requires_grad=True)
    y = layer(x)
    assert torch.allclose(y, torch.full((1, 2), 3.0))  # 4 * 3 * 0.25
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((1, 3), 2.0))  # 4 * (0.25 + 0.25)
    _, d, _ = layer.pop_pending()
    assert torch.allclose(d, torch.full((1, 2), 4.0))


def test_first_layer_skips_backward_mvm() -> None:
    arr = ideal_array(3, 4, torch.zeros(3, 4))
    layer = AnalogLinear(4, 3, backend=arr)
    layer(torch.rand(2, 4)).sum().backward()
    assert arr.counts.forward_calls == 1
    assert arr.counts.backward_calls == 0  # the input needs no gradient
    assert layer.pop_pending() is not None


def test_conv2d_matches_torch_conv() -> None:
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(conv.weight.shape, generator=g) * 2 - 1)
    w = conv.weight.detach().reshape(3, -1)
    layer = AnalogConv2d(2, 3, 3, stride=2, padding=1, backend=ideal_array(3, 18, w))
    with torch.no_grad():
        layer.bias.copy_(conv.bias)
    x = torch.rand(2, 2, 7, 6, generator=g)
    xa = x.clone().requires_grad_(True)
    xd = x.clone().requires_grad_(True)
    ya, yd = layer(xa), conv(xd)
    assert ya.shape == yd.shape == (2, 3, 4, 3)
    assert torch.allclose(ya, yd, atol=8 * 18 * EPS32 * 4, rtol=0)
    gy = torch.rand(ya.shape, generator=g) - 0.5
    ya.backward(gy)
    yd.backward(gy)
    assert torch.allclose(xa.grad, xd.grad, atol=8 * 9 * 3 * EPS32 * 4, rtol=0)
    x_rec, d_rec, samples = layer.pop_pending()
    assert samples == 2 and x_rec.shape == (2 * 12, 18)
    assert torch.allclose(d_rec.T @ x_rec, conv.weight.grad.reshape(3, -1), atol=1e-5)


def test_convert_to_analog_replaces_layers_and_programs() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    made = []

    def factory(rows: int, cols: int, role: str) -> SimulatedCrossbar:
        made.append((rows, cols, role))
        return ideal_array(rows, cols)

    tol = 0.002  # 2 steps of the ideal device (0.001)
    analog = convert_to_analog(net, factory, program=True, tol=tol, max_iter=100)
    assert isinstance(net[0], nn.Conv2d)  # original untouched
    assert [type(m).__name__ for _, m in analog_layers(analog)] == ["AnalogConv2d", "AnalogLinear"]
    assert made == [(2, 9, "W"), (3, 8, "W")]
    assert torch.equal(analog[3].bias, net[3].bias)
    for layer, ref in ((analog[0], net[0]), (analog[3], net[3])):
        assert layer.program_report.converged
        w_true = layer.backend.true_weights()
        assert (w_true - ref.weight.detach().reshape(w_true.shape)).abs().max() <= tol
    x = torch.rand(4, 1, 4, 4)
    # Each programmed weight is within tol of its target, so a layer's output moves by
    # at most tol * sum|inputs|; ReLU is 1-Lipschitz.  Layer 1 (9 inputs in [0, 1]):
    # e1 <= 9 tol.  Layer 2: |W2 e1| + |E2 (h + e1)| <= (||W2||_1 + 8 tol) e1 + 8 tol max|h|.
    with torch.no_grad():
        diff = float((analog(x) - net(x)).abs().max())
        h_max = float(net[:3](x).abs().max())
        w2_l1 = float(net[3].weight.abs().sum(1).max())
    e1 = 9 * tol
    bound = (w2_l1 + 8 * tol) * e1 + 8 * tol * h_max
    assert diff <= bound


def test_layer_errors() -> None:
    with pytest.raises(RuntimeError, match="no analog array"):
        AnalogLinear(3, 2)(torch.rand(1, 3))
    with pytest.raises(ValueError, match="2x3"):
        AnalogLinear(4, 2).attach(ideal_array(2, 3))
    with pytest.raises(ValueError, match="groups"):
        convert_to_analog(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)))
    with pytest.raises(ValueError, match="out_scale"):
        convert_to_analog(nn.Sequential(nn.Linear(2, 2)), out_scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="features"):
        AnalogLinear(3, 2, backend=ideal_array(2, 3))(torch.rand(1, 4))


def test_inference_without_grad_records_nothing() -> None:
    layer = AnalogLinear(3, 2, backend=ideal_array(2, 3, torch.full((2, 3), 0.5)))
    with torch.no_grad():
        y = layer(torch.ones(5, 3))
    assert torch.allclose(y, torch.full((5, 2), 1.5) + layer.bias)
    assert layer.pop_pending() is None
    assert torch.allclose(layer.read_weights(), torch.full((2, 3), 0.5))


def test_convert_to_analog_nested_order_and_digital_subtrees() -> None:
    class Kept(nn.Module):
        hil_digital = True

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    net = nn.Sequential(nn.Sequential(nn.Linear(4, 5), nn.ReLU()), nn.Linear(5, 3), Kept())
    made: list[tuple[int, int, str]] = []

    def factory(rows: int, cols: int, role: str) -> SimulatedCrossbar:
        made.append((rows, cols, role))
        return ideal_array(rows, cols)

    analog = convert_to_analog(net, factory, out_scale=[2.0, 3.0])
    # layers in named_modules order (the nested one first), out_scale matched in that order
    assert made == [(5, 4, "W"), (3, 5, "W")]
    assert analog[0][0].out_scale == 2.0 and analog[1].out_scale == 3.0
    assert isinstance(analog[2].fc, nn.Linear)  # a module marked hil_digital stays digital
    kept = Kept()
    assert convert_to_analog(kept) is not kept and isinstance(convert_to_analog(kept).fc, nn.Linear)
    with pytest.raises(ValueError, match="3 out_scale values for 2 layers"):
        convert_to_analog(net, out_scale=[1.0, 1.0, 1.0])
