"""Deployment through CrossbarBackend.program() onto small SimulatedCrossbar arrays."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hil.robust.compensation import add_compensation
from hil.robust.deploy import (
    BackendLayer,
    DeployConfig,
    backend_monte_carlo_accuracy,
    deploy_to_backends,
    simulated_factory,
)
from hil.robust.variation import VariationConfig
from hil.simulated import PeripheryConfig, SimulatedCrossbar

TOL = 0.004


def _exact_factory():
    """Constant-step device (2000 states) and an ideal periphery: only write-verify error remains."""
    return simulated_factory("ideal", PeripheryConfig.ideal())


def _cfg(**kw) -> DeployConfig:
    return DeployConfig(tol=TOL, max_pulses_per_iter=256, **kw)


@pytest.mark.parametrize("max_tile", [None, (3, 4)])
def test_linear_layer_on_backends_within_write_verify_bound(max_tile) -> None:
    """|y_backend - y| <= s_w * max_err * ||x||_1 per output (max_err <= tol from the reports)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 7))
    x = torch.randn(20, 10)
    dep = deploy_to_backends(model, _exact_factory(), calibration_x=x, cfg=_cfg(max_tile=max_tile))
    try:
        reps = dep.reports["0"]
        assert len(reps) == (1 if max_tile is None else math.ceil(7 / 3) * math.ceil(10 / 4))
        assert all(r.converged for r in reps) and dep.converged_fraction == 1.0
        layer = dep.model[0]
        assert isinstance(layer, BackendLayer)
        max_err = max(r.max_error for r in reps)
        bound = layer.w_scale * max_err * x.abs().sum(1, keepdim=True) + 1e-5
        with torch.no_grad():
            diff = (dep(x) - model(x)).abs()
        assert bool((diff <= bound).all())
        # the largest weight used `headroom` of the range: s_w = max|W| / (0.8 * 1)
        assert layer.w_scale == pytest.approx(float(model[0].weight.detach().abs().max()) / 0.8)
    finally:
        dep.close()
    assert all(be._closed for be in dep.backends)


def test_conv_and_compensated_model_on_backends() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2), nn.Flatten(), nn.Linear(8, 4)
    )
    comp = add_compensation(model, [None, 1, 0])
    with torch.no_grad():  # make the blocks do something
        for p in comp.parameters():
            if p.dim() <= 1 or p.abs().sum() == 0:
                p.add_(0.1)
    x = torch.rand(6, 1, 4, 4)
    dep = deploy_to_backends(comp, _exact_factory(), calibration_x=x, cfg=_cfg())
    try:
        assert set(dep.reports) == {"0", "2.layer", "4.layer"}  # blocks stay digital
        assert all(r.converged for rs in dep.reports.values() for r in rs)
        with torch.no_grad():
            ref = comp(x)
            out = dep(x)
        # three layers of write-verify error, each relative <= tol / (0.8 * 1): a loose 5 %
        assert float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max())
    finally:
        dep.close()


def test_programming_variation_is_applied_to_the_targets() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30, bias=False))
    with torch.no_grad():
        model[0].weight.uniform_(0.1, 0.5)  # one sign, no clamping for sigma = 0.1
    sigma = 0.1
    dep = deploy_to_backends(
        model, _exact_factory(), variation=VariationConfig(sigma=sigma), seed=3, cfg=_cfg()
    )
    try:
        layer = dep.model[0]
        nominal = model[0].weight.detach() / layer.w_scale
        theta = torch.log(dep.targets["0"] / nominal).double().flatten()
        n = theta.numel()
        assert abs(float(theta.std()) - sigma) < 5 * sigma / math.sqrt(2 * n)
        assert abs(float(theta.mean())) < 5 * sigma / math.sqrt(n)
        be = layer.tiles[0][0]
        assert isinstance(be, SimulatedCrossbar)
        assert float((be.true_weights() - dep.targets["0"]).abs().max()) <= TOL + 1e-6
    finally:
        dep.close()
    # seeded: the same seed gives the same chip
    again = deploy_to_backends(model, _exact_factory(), variation=VariationConfig(sigma=sigma), seed=3, cfg=_cfg())
    assert torch.equal(again.targets["0"], dep.targets["0"])
    again.close()


def test_backend_monte_carlo_accuracy_and_errors() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    x = torch.randn(30, 5)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(-1)
    r = backend_monte_carlo_accuracy(
        model, _exact_factory(), x, y, VariationConfig(sigma=0.0), n_samples=2, calibration_x=x, cfg=_cfg()
    )
    # an example keeps its class when its top-2 margin exceeds twice the output error bound
    s_w = float(model[0].weight.detach().abs().max()) / 0.8
    bound = s_w * TOL * x.abs().sum(1)
    top2 = logits.topk(2, dim=1).values
    safe = float(((top2[:, 0] - top2[:, 1]) > 2 * bound).double().mean())
    assert r.n_samples == 2 and min(r.accuracies) >= safe > 0.5
    with pytest.raises(ValueError, match="factory returned a 4x4"):
        deploy_to_backends(model, lambda r_, c_: SimulatedCrossbar(4, 4, device="ideal"))
    with pytest.raises(ValueError, match="groups=2"):
        deploy_to_backends(nn.Sequential(nn.Conv2d(2, 2, 1, groups=2)), _exact_factory())
