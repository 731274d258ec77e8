"""Lipschitz regularization: penalty forms, measured spectral norms (hil.robust.lipschitz)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hil.robust.lipschitz import (
    LipschitzConfig,
    LipschitzRegularizer,
    gram_penalty,
    layer_spectral_norms,
    matrix_spectral_norm,
    operator_norm,
    unfolded_weight,
)
from hil.robust.models import TrainConfig, train_classifier


def test_config_json_round_trip() -> None:
    cfg = LipschitzConfig(kind="spectral", beta=0.1, lam=2.0)
    assert LipschitzConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError):
        LipschitzConfig(kind="frobenius")


@pytest.mark.parametrize("shape", [(3, 7), (7, 3), (4, 4)])
def test_gram_penalty_is_sum_over_singular_values(shape) -> None:
    """||G - lam I||_F^2 with the smaller Gram = sum_i (s_i^2 - lam)^2 over the min(r, c) singular values."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(1, *shape, generator=g, dtype=torch.float64)
    lam = 0.7
    s = torch.linalg.svdvals(m[0])
    torch.testing.assert_close(gram_penalty(m, lam), (s.pow(2) - lam).pow(2).sum())


def test_both_gram_matrices_give_the_same_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(1, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    lam = 1.3
    small = gram_penalty(m, lam)
    (g_small,) = torch.autograd.grad(small, m)
    big = (m[0].T @ m[0] - lam * torch.eye(8, dtype=torch.float64)).pow(2).sum()
    (g_big,) = torch.autograd.grad(big, m)
    torch.testing.assert_close(g_small, g_big)
    torch.testing.assert_close(big - small, torch.tensor(lam**2 * 5, dtype=torch.float64))


def test_unfolded_weight_shapes() -> None:
    conv = nn.Conv2d(4, 6, 3, groups=2)
    assert unfolded_weight(conv).shape == (2, 3, 2 * 9)
    assert unfolded_weight(nn.Linear(5, 2)).shape == (1, 2, 5)
    with pytest.raises(ValueError, match="Linear or nn.Conv2d"):
        unfolded_weight(nn.ReLU())


def test_operator_norm_of_conv_matches_dense_matrix() -> None:
    """Power iteration on conv/conv^T equals the top singular value of the conv as a dense matrix."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=1, bias=False)
    shape = (2, 5, 5)
    eye = torch.eye(2 * 25).view(-1, *shape)
    with torch.no_grad():
        dense = conv(eye).reshape(2 * 25, -1).T  # [out_numel, in_numel]
    exact = float(torch.linalg.matrix_norm(dense, ord=2))
    est = operator_norm(conv, shape, n_iter=500)
    assert est == pytest.approx(exact, rel=1e-4)
    # the bound stated in the module docstring: s1(M) <= ||conv|| <= sqrt(kh kw) s1(M)
    s1 = matrix_spectral_norm(conv)
    assert s1 <= exact + 1e-6 <= 3 * s1 + 1e-6


def _digits_mlp_data(n: int = 400):
    from hil.datasets import load_digits_split

    d = load_digits_split()
    return d.x_train[:n], d.y_train[:n], d.x_test


@pytest.mark.parametrize(
    "cfg", [LipschitzConfig(kind="orthogonal", beta=1e-2), LipschitzConfig(kind="spectral", beta=1e-2)]
)
def test_regularizer_lowers_measured_spectral_norm(cfg) -> None:
    """Same init, same data, same steps: every layer's measured operator norm ends lower with the penalty."""
    x, y, x_te = _digits_mlp_data()

    def build() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    plain, reg = build(), build()
    tc = TrainConfig(epochs=15, batch_size=50, lr=3e-3)
    train_classifier(plain, x, y, tc)
    train_classifier(reg, x, y, tc, cfg)
    n_plain = layer_spectral_norms(plain, x_te)
    n_reg = layer_spectral_norms(reg, x_te)
    for name in n_plain:
        assert n_reg[name] < n_plain[name], (name, n_reg, n_plain)
    # and the penalty itself is what drives it toward sqrt(lam): each norm nearer 1 than before
    for name in n_plain:
        assert abs(n_reg[name] - 1.0) < abs(n_plain[name] - 1.0)


def test_conv_regularizer_lowers_measured_operator_norm() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long()

    def build() -> nn.Sequential:
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, 2))

    plain, reg = build(), build()
    tc = TrainConfig(epochs=20, batch_size=16, lr=1e-2)
    train_classifier(plain, x, y, tc)
    train_classifier(reg, x, y, tc, LipschitzConfig(kind="orthogonal", beta=1.0, lam=0.25))
    assert layer_spectral_norms(reg, x)["0"] < layer_spectral_norms(plain, x)["0"]


def _per_example_theta_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Brute force: ||d l_n / d theta||^2 per example, with w_eff = w * exp(theta) at theta = 0."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    out = []
    for i in range(x.shape[0]):
        thetas = [torch.zeros_like(m.weight, requires_grad=True) for m in layers]
        h = x[i : i + 1]
        for mod in model:
            if mod in layers:
                w = mod.weight * torch.exp(thetas[layers.index(mod)])
                if isinstance(mod, nn.Linear):
                    h = F.linear(h, w, mod.bias)
                else:
                    h = F.conv2d(h, w, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
            else:
                h = mod(h)
        loss = F.cross_entropy(h, y[i : i + 1])
        grads = torch.autograd.grad(loss, thetas)
        out.append(sum(g.pow(2).sum() for g in grads))
    return torch.stack(out)


@pytest.mark.parametrize("conv", [False, True])
def test_variation_penalty_equals_brute_force_theta_gradient(conv) -> None:
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2), nn.Flatten(), nn.Linear(8, 3)
        )
        x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    else:
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
        x = torch.randn(5, 6, dtype=torch.float64)
    model = model.double()
    y = torch.tensor([0, 1, 2, 1, 0])
    reg = LipschitzRegularizer(model, LipschitzConfig(kind="variation", beta=2.0))
    with reg.capture():
        out = model(x)
    per = F.cross_entropy(out, y, reduction="none")
    pen = reg(per)
    expect = 2.0 * _per_example_theta_grad_norm(model, x, y).mean()
    torch.testing.assert_close(pen, expect)
    # differentiable in the weights (double back-propagation)
    pen.backward()
    assert all(p.grad is not None for p in model.parameters() if p.dim() > 1)


def test_variation_penalty_needs_capture() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    reg = LipschitzRegularizer(model, LipschitzConfig(kind="variation"))
    with pytest.raises(ValueError, match="per-example"):
        reg()
    per = F.cross_entropy(model(torch.randn(4, 3)), torch.zeros(4, dtype=torch.long), reduction="none")
    with pytest.raises(ValueError, match="capture"):
        reg(per)
    with pytest.raises(ValueError, match="no analog layer"):
        LipschitzRegularizer(nn.Sequential(nn.ReLU()), LipschitzConfig())
