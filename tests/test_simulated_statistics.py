"""Statistical and semantic tests of ``SimulatedCrossbar``.

Every tolerance is derived from the model under test (binomial / Gaussian
variances, Bernstein bounds with a union bound over devices, Taylor error
terms of the multi-pulse scheme), with fixed seeds; none is tuned to the
outcome.  ``K`` standard deviations are used where the statistic is a sum of
many independent terms (central limit); the false-failure probability of each
such check is below 1e-6.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from hil.device_model import (
    ConstantStep,
    DeviceModel,
    DeviceVariation,
    ExpStep,
    LinearStep,
    PowStep,
    SoftBoundsStep,
    TableStep,
)
from hil.simulated import PeripheryConfig, SimulatedCrossbar, UpdateConfig, get_preset
from hil.simulated.pulse_trains import coincidence_counts, pulse_probabilities

K = 5.0  # sigmas for Gaussian-limit checks: two-sided tail 5.7e-7
IDEAL = PeripheryConfig.ideal()
DW = 0.001  # step of the "ideal" preset


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pulses(xbar: SimulatedCrossbar, value: int) -> None:
    xbar.pulse(torch.full(xbar.shape, value, dtype=torch.int64))


# --------------------------------------------------------------------------
# formulas of hil/device_model.py, written out independently in float64
# --------------------------------------------------------------------------
def _u(w, lo, hi):
    return (w - lo) / (hi - lo)


def _interp(grid, values, w):
    import numpy as np

    return float(np.interp(w, grid, values))


def step_formula(step, w: float, up: bool) -> float:
    """Signed mean change of one pulse at state ``w`` as documented in hil/device_model.py."""
    m = step.model
    lo, hi = step.w_min, step.w_max
    if m == "constant":
        return step.dw_up if up else -step.dw_down
    if m == "softbounds":
        return step.dw_up * (1 - w / hi) if up else -step.dw_down * (1 - w / lo)
    if m == "linear":
        if up:
            return step.dw_up * (1 - step.gamma_up * w / hi)
        return -step.dw_down * (1 - step.gamma_down * w / lo)
    u = _u(w, lo, hi)
    if m == "pow":
        return step.dw_up * (2 * (1 - u)) ** step.gamma_up if up else -step.dw_down * (2 * u) ** step.gamma_down
    if m == "exp":
        if up:
            return step.dw_up * math.exp(step.gamma_up * (0.5 - u))
        return -step.dw_down * math.exp(step.gamma_down * (u - 0.5))
    if m == "table":
        if up:
            return step.dw_up * _interp(step.grid, step.up_mean, w)
        return step.dw_down * _interp(step.grid, step.down_mean, w)
    raise AssertionError(m)


TABLE = TableStep(
    dw_up=1.5,
    dw_down=0.8,
    grid=[-1.0, -0.4, 0.0, 0.5, 1.0],
    up_mean=[0.03, 0.022, 0.015, 0.006, 0.0],
    down_mean=[0.0, -0.007, -0.011, -0.016, -0.02],
    up_std=[0.002, 0.002, 0.001, 0.001, 0.0],
    down_std=[0.0, 0.001, 0.001, 0.002, 0.002],
)

# the same table without pulse-to-pulse spread: deterministic mean response
TABLE_MEAN = TABLE.model_copy(update={"up_std": [0.0] * 5, "down_std": [0.0] * 5})

STEPS = {
    "constant": ConstantStep(dw_up=0.012, dw_down=0.007),
    "linear": LinearStep(dw_up=0.02, dw_down=0.01, gamma_up=0.6, gamma_down=0.3),
    "softbounds": SoftBoundsStep(dw_up=0.02, dw_down=0.01, w_min=-0.8, w_max=1.2),
    "pow": PowStep(dw_up=0.02, dw_down=0.01, gamma_up=2.0, gamma_down=1.5),
    "exp": ExpStep(dw_up=0.02, dw_down=0.01, gamma_up=2.0, gamma_down=1.0, w_min=-0.5, w_max=1.5),
    "table": TABLE_MEAN,
}


# --------------------------------------------------------------------------
# update: expectation, variance, BL bound
# --------------------------------------------------------------------------
def _probabilities(x: torch.Tensor, d: torch.Tensor, lr: float, dw: float, bl: int):
    """p_x, p_d of the documented update management, float64 (pulse_trains module docstring)."""
    s = lr / (dw * bl)
    x_max = x.abs().amax(dim=1, keepdim=True)
    d_max = d.abs().amax(dim=1, keepdim=True)
    c = torch.sqrt(s * d_max / x_max)
    return x.abs() * c, d.abs() * s / c


def test_expected_update_is_minus_lr_outer_for_ideal_device() -> None:
    rows, cols, batch, reps, lr, bl = 24, 32, 4, 25, 0.01, 31
    g = _gen(123)
    x = torch.rand(batch, cols, generator=g, dtype=torch.float64)
    d = torch.rand(batch, rows, generator=g, dtype=torch.float64) - 0.5
    xbar = SimulatedCrossbar(rows, cols, device="ideal", periphery=IDEAL, seed=7)
    for _ in range(reps):
        xbar.update(x.float(), d.float(), lr)
    dw_meas = xbar.true_weights().double()
    expected = -reps * lr * d.T @ x
    assert dw_meas.abs().max() < 0.95  # no device reached a bound: the device is linear here

    p_x, p_d = _probabilities(x, d, lr, DW, bl)
    assert float(p_x.max()) < 1 and float(p_d.max()) < 1  # not saturated
    px32, pd32 = pulse_probabilities(x.float(), d.float(), lr, DW, UpdateConfig(bl=bl))
    torch.testing.assert_close(px32.double(), p_x, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pd32.double(), p_d, rtol=1e-5, atol=1e-7)

    # pulses per device: a sum over reps*batch*bl independent slots, each 0 or +-1 with
    # probability q = p_d p_x.  E = expected / dw exactly.
    n_meas = dw_meas / DW
    assert (n_meas - n_meas.round()).abs().max() < 1e-2  # whole pulses
    q = p_d[:, :, None] * p_x[:, None, :]  # [batch, rows, cols]
    var = reps * bl * (q * (1 - q)).sum(0)
    torch.testing.assert_close(reps * bl * (q * torch.sign(-d[:, :, None] * x[:, None, :])).sum(0), expected / DW)

    # (1) every device: Bernstein's inequality with a union bound over all devices,
    #     P(any |S - E| > t) <= alpha with t = L/3 + sqrt(L^2/9 + 2 L V), L = ln(2 N / alpha)
    alpha = 1e-6
    L = math.log(2 * rows * cols / alpha)
    t = L / 3 + torch.sqrt(L * L / 9 + 2 * L * var)
    dev = (n_meas - expected / DW).abs()
    assert bool((dev <= t).all()), f"worst device off by {float((dev / t).max()):.2f} x its bound"

    # (2) the whole array: least-squares gain T = sum(a * dW) with a = E / sum(E^2) has mean 1;
    #     its variance is summed exactly over independent slots:
    #     Var(fd^T A fx) = sum((M_d A M_x) * A) - (p_d^T A p_x)^2, M = diag(p(1-p)) + p p^T
    a = expected / expected.pow(2).sum()
    gain = float((a * dw_meas).sum())
    var_gain = 0.0
    for b in range(batch):
        sgn = -torch.sign(d[b])[:, None] * torch.sign(x[b])[None, :]
        A = a * sgn * DW
        m_d = torch.diag(p_d[b] * (1 - p_d[b])) + torch.outer(p_d[b], p_d[b])
        m_x = torch.diag(p_x[b] * (1 - p_x[b])) + torch.outer(p_x[b], p_x[b])
        second = float(((m_d @ A @ m_x) * A).sum())
        first = float(p_d[b] @ A @ p_x[b])
        var_gain += reps * bl * (second - first * first)
    sd = math.sqrt(var_gain)
    assert sd < 0.02  # the test resolves a 10 % bias
    assert abs(gain - 1.0) < K * sd, f"gain {gain:.4f}, sd {sd:.4f}"


def test_update_sign_follows_minus_lr() -> None:
    x = torch.tensor([[1.0, -1.0]])
    d = torch.tensor([[0.5, -0.5]])
    for lr, sign in ((100.0, -1.0), (-100.0, 1.0)):
        xbar = SimulatedCrossbar(2, 2, device="ideal", periphery=IDEAL)
        xbar.update(x, d, lr)  # saturated: every slot of every line fires
        torch.testing.assert_close(xbar.true_weights(), sign * 31 * DW * torch.sign(d.T @ x))


def test_at_most_bl_pulses_per_device_per_sample() -> None:
    bl, rows, cols = 9, 16, 12
    g = _gen(5)
    cfg = UpdateConfig(bl=bl)
    for batch, lr in ((1, 1e3), (6, 1e3), (6, 0.05), (6, 0.003)):
        x = torch.rand(batch, cols, generator=g) * 2 - 1
        d = torch.rand(batch, rows, generator=g) - 0.5
        n_up, n_down = coincidence_counts(x, d, lr, DW, cfg, _gen(1))
        total = n_up + n_down
        assert float(total.max()) <= bl * batch
        assert (total == total.round()).all() and float(torch.minimum(n_up, n_down).min()) >= 0
        if lr == 1e3:  # saturated: exactly BL coincidences per sample
            assert torch.equal(total, torch.full_like(total, bl * batch))
            net = n_up - n_down
            torch.testing.assert_close(net, -bl * (torch.sign(d).T @ torch.sign(x)))
    # through the backend, one sample at a time: |dW| <= BL * dw per device and update
    xbar = SimulatedCrossbar(rows, cols, device="ideal", periphery=IDEAL, update=cfg, seed=2)
    for lr in (0.001, 0.1, 10.0, 1e4):
        for _ in range(3):
            w0 = xbar.true_weights()
            xbar.update(torch.rand(cols, generator=g) - 0.5, torch.rand(rows, generator=g) - 0.5, lr)
            assert float((xbar.true_weights() - w0).abs().max()) <= bl * DW * (1 + 1e-4)


def test_no_update_management_keeps_expectation() -> None:
    # without update management p_x = |x| sqrt(s), p_d = |d| sqrt(s): same mean per slot
    x = torch.tensor([[0.8, 0.2, 0.5]], dtype=torch.float64)
    d = torch.tensor([[0.3, -0.6]], dtype=torch.float64)
    lr, bl, reps = 0.02, 31, 400
    cfg = UpdateConfig(bl=bl, update_management=False)
    xbar = SimulatedCrossbar(2, 3, device="ideal", periphery=IDEAL, update=cfg, seed=3)
    acc = torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(reps):  # small updates from 0 each time (the array never saturates)
        xbar.set_weights(torch.zeros(2, 3))
        xbar.update(x.float(), d.float(), lr)
        acc += xbar.true_weights().double()
    s = lr / (DW * bl)
    q = (d.abs().T * s**0.5) @ (x.abs() * s**0.5)
    var = reps * bl * q * (1 - q) * DW * DW
    err = (acc - reps * -lr * d.T @ x).abs()
    assert bool((err < K * var.sqrt()).all())


# --------------------------------------------------------------------------
# device semantics: single pulses, chunked multi-pulse application
# --------------------------------------------------------------------------
def _states(step, n: int = 11, margin: float = 0.05) -> torch.Tensor:
    span = step.w_max - step.w_min
    return torch.linspace(step.w_min + margin * span, step.w_max - margin * span, n)


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_single_pulse_matches_documented_formula(kind: str) -> None:
    step = STEPS[kind]
    w = _states(step)
    for up in (True, False):
        xbar = SimulatedCrossbar(1, w.numel(), device=DeviceModel(step=step), periphery=IDEAL)
        xbar.set_weights(w[None, :])
        w0 = xbar.true_weights()[0].double()
        _pulses(xbar, 1 if up else -1)
        got = xbar.true_weights()[0].double() - w0
        want = torch.tensor([step_formula(step, float(v), up) for v in w0], dtype=torch.float64)
        # float32 state: a few ulp of |w| (ulp(1) = 1.2e-7)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert bool((torch.sign(got) == (1 if up else -1)).all() | (want == 0).all())


def _chunk_error_bound(step, traj: list[float], sizes: list[int], up: bool) -> float:
    """Leading-order error of the chunked scheme vs the pulse-by-pulse map, summed over chunks.

    For a chunk of ``h`` pulses the scheme ``w + h f(w + (h - 1) / 2 f(w))`` differs from
    ``h`` single pulses by ``f f'^2 h(h-1)(h-2)/6 + f^2 f'' h(h^2-1)/24 + O(h^4)`` (Taylor
    expansion of both); |f|, |f'|, |f''| are bounded over the states the chunk crosses (central
    differences of the documented formula, float64).  A ``table`` is piecewise linear: f'' is
    0 inside a piece, and a chunk that crosses a grid point instead deviates from the linear
    extension by at most ``2 h^2 |f| |slope jump|``.  Local errors are not amplified later:
    every step model here has a step that shrinks in the direction of motion.
    """
    span = step.w_max - step.w_min
    eps = 1e-5 * span
    total, start = 0.0, 0
    for h in sizes:
        a, b = sorted((traj[start], traj[start + h]))
        start += h
        ws = [a + (b - a) * i / 64 for i in range(65)]
        ws = [min(max(v, step.w_min + eps), step.w_max - eps) for v in ws]
        f = [step_formula(step, v, up) for v in ws]
        fp = [step_formula(step, v + eps, up) for v in ws]
        fm = [step_formula(step, v - eps, up) for v in ws]
        f0 = max(map(abs, f))
        f1 = max(abs(p - m) / (2 * eps) for p, m in zip(fp, fm, strict=True))
        local = f0 * f1 * f1 * h * (h - 1) * (h - 2) / 6
        if step.model == "table":
            scale = step.dw_up if up else step.dw_down
            vals = step.up_mean if up else step.down_mean
            g = step.grid
            m = [scale * (vals[i + 1] - vals[i]) / (g[i + 1] - g[i]) for i in range(len(g) - 1)]
            for i in range(1, len(g) - 1):
                if a <= g[i] <= b:
                    local += 2 * h * h * f0 * abs(m[i] - m[i - 1])
        else:
            f2 = max(abs(p - 2 * c + m) / eps**2 for p, c, m in zip(fp, f, fm, strict=True))
            local += f0 * f0 * f2 * h * (h * h - 1) / 24
        total += local
    return total


@pytest.mark.parametrize("kind", ["pow", "exp", "table", "linear", "softbounds", "constant"])
@pytest.mark.parametrize("up", [True, False])
def test_many_pulses_in_one_call_close_to_pulse_by_pulse(kind: str, up: bool) -> None:
    step = STEPS[kind]
    n, chunks = 60, 8
    sign = 1 if up else -1
    w_start = _states(step, 4, margin=0.1)
    if not up:
        w_start = w_start.flip(0)
    model = DeviceModel(step=step)
    upd = UpdateConfig(max_chunks=chunks)
    one = SimulatedCrossbar(1, w_start.numel(), device=model, periphery=IDEAL, update=upd)
    ref = SimulatedCrossbar(1, w_start.numel(), device=model, periphery=IDEAL, update=upd)
    one.set_weights(w_start[None, :])
    ref.set_weights(w_start[None, :])
    _pulses(one, sign * n)
    traj = [ref.true_weights()[0].double()]
    for _ in range(n):
        _pulses(ref, sign)
        traj.append(ref.true_weights()[0].double())
    w_one, w_ref = one.true_weights()[0].double(), traj[-1]
    moved = (w_ref - w_start.double()).abs()
    err = (w_one - w_ref).abs()
    float_err = 4e-7 * n  # float32 rounding of n pulse-by-pulse additions (|w| <= 1.5)
    if kind in ("constant", "linear", "softbounds"):
        assert float(err.max()) < float_err  # closed forms: exact up to rounding
        return
    sizes = [(n * (k + 1)) // chunks - (n * k) // chunks for k in range(chunks)]  # as applied
    for j in range(w_start.numel()):
        bound = _chunk_error_bound(step, [float(t[j]) for t in traj], sizes, up) + float_err
        assert float(err[j]) <= bound, (j, float(err[j]), bound)
        # and the bound is tight enough to matter: under 5 % of the movement
        assert bound < 0.05 * float(moved[j]) + float_err, (j, bound, float(moved[j]))


def test_mixed_up_down_in_one_call_are_interleaved() -> None:
    # 300 up and 300 down pulses in one call from the lower bound: interleaved, a
    # soft-bounds device ends near its symmetry point (ups first would end elsewhere).
    step = STEPS["softbounds"]
    xbar = SimulatedCrossbar(1, 1, device=DeviceModel(step=step), periphery=IDEAL, update=UpdateConfig(max_chunks=64))
    xbar.set_weights(torch.tensor([[step.w_min]]))
    n = torch.full((1, 1), 300.0)
    w = xbar.devices.apply(xbar.true_weights(), n, n, xbar.generator, max_chunks=64)
    ws = float(xbar.symmetry_point())
    per_chunk = 300 / 64
    # a chunk of h ups then h downs swings at most h * max step around the 2-cycle
    assert abs(float(w) - ws) <= per_chunk * step.dw_up * (1 - step.w_min / step.w_max)


# --------------------------------------------------------------------------
# symmetry point, number of states, bounds
# --------------------------------------------------------------------------
def _symmetry_formula(step) -> float:
    """w* with f_up(w*) + f_down(w*) = 0, by bisection on the documented formulas (float64)."""
    lo, hi = step.w_min, step.w_max
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if step_formula(step, mid, True) + step_formula(step, mid, False) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("kind", ["softbounds", "linear", "pow", "exp", "table"])
def test_symmetry_point_convergence_alternating_pulses(kind: str) -> None:
    step = STEPS[kind]
    ws = _symmetry_formula(step)
    xbar = SimulatedCrossbar(1, 2, device=DeviceModel(step=step), periphery=IDEAL)
    torch.testing.assert_close(xbar.symmetry_point(), torch.full((1, 2), ws, dtype=torch.float32), atol=1e-5, rtol=0)
    # start at both bounds (margin: the step vanishes exactly at a soft bound)
    span = step.w_max - step.w_min
    xbar.set_weights(torch.tensor([[step.w_min + 0.01 * span, step.w_max - 0.01 * span]]))
    for _ in range(800):
        _pulses(xbar, 1)
        _pulses(xbar, -1)
        w_after_pair = xbar.true_weights()
    # the alternating map settles on a 2-cycle that straddles w* (proof: the net step is
    # > 0 below w* and < 0 above), so each phase is within one up step of w*; the up step
    # there is at most the step at w* - 2 f_up(w*) (it falls with w).
    f_star = step_formula(step, ws, True)
    tol = step_formula(step, ws - 2 * f_star, True)
    assert float((w_after_pair - ws).abs().max()) <= tol
    _pulses(xbar, 1)
    assert float((xbar.true_weights() - ws).abs().max()) <= tol


def test_symmetry_point_noisy_asymmetric_preset() -> None:
    model = get_preset("asymmetric")  # soft bounds, up 3x down, c2c 0.3, 10 % d2d
    xbar = SimulatedCrossbar(4, 4, device=model, periphery=IDEAL, seed=21)
    ws = xbar.symmetry_point().double()
    p = xbar.devices.params
    a_u, a_d = p["dw_up"].double(), p["dw_down"].double()
    lo, hi = p["w_min"].double(), p["w_max"].double()
    # per device: w* = (a_u - a_d) / (a_u / hi - a_d / lo) for soft bounds
    torch.testing.assert_close(ws, (a_u - a_d) / (a_u / hi - a_d / lo), atol=1e-5, rtol=0)
    assert abs(float(ws.mean()) - 0.5) < 0.05  # nominal +0.5
    xbar.set_weights(torch.full((4, 4), -0.9))
    burn, m = 600, 2000
    acc = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(burn + m):
        _pulses(xbar, 1)
        up_phase = xbar.true_weights().double()
        _pulses(xbar, -1)
        if i >= burn:
            acc += 0.5 * (up_phase + xbar.true_weights().double())
    mean = acc / m
    # AR(1) per pulse pair: contraction kappa = a_u / hi + a_d / |lo|, write-noise variance
    # per pair sigma^2 = c2c^2 (f_u^2 + f_d^2) at w*; stationary variance sigma^2 / (2 kappa);
    # the average of m pairs has variance ~ stationary * 2 / (kappa m).
    f_u = a_u * (1 - ws / hi)
    kappa = a_u / hi + a_d / lo.abs()
    sigma2 = model.variation.c2c**2 * 2 * f_u.pow(2)
    sd_mean = (sigma2 / (2 * kappa) * 2 / (kappa * m)).sqrt()
    deterministic = a_u * (1 - (ws - 2 * f_u) / hi)  # 2-cycle half-width bound, as above
    err = (mean - ws).abs()
    assert bool((err <= deterministic + K * sd_mean).all()), float((err / (deterministic + K * sd_mean)).max())


def test_symmetric_constant_device_reports_mid_range() -> None:
    xbar = SimulatedCrossbar(2, 2, device=DeviceModel(step=ConstantStep(w_min=-0.5, w_max=1.5)))
    torch.testing.assert_close(xbar.symmetry_point(), torch.full((2, 2), 0.5))
    # an asymmetric constant device balances nowhere: its mean drifts to one bound
    up_biased = SimulatedCrossbar(1, 1, device=DeviceModel(step=ConstantStep(dw_up=0.02, dw_down=0.01)))
    torch.testing.assert_close(up_biased.symmetry_point(), torch.ones(1, 1))


def test_number_of_states() -> None:
    # range / step at the symmetry point
    assert torch.allclose(SimulatedCrossbar(2, 2, device="ideal").n_states(), torch.full((2, 2), 2000.0), rtol=1e-5)
    sb = SimulatedCrossbar(2, 2, device="softbounds-20", periphery=IDEAL)
    torch.testing.assert_close(sb.n_states(), torch.full((2, 2), 20.0), rtol=1e-5, atol=0)
    # asymmetric preset, nominal: w* = 0.5, step 0.015 * (1 - 0.5) = 0.0075 -> 2 / 0.0075
    nominal = get_preset("asymmetric")
    nominal.variation = DeviceVariation()
    asym = SimulatedCrossbar(1, 1, device=nominal, periphery=IDEAL)
    assert float(asym.n_states()) == pytest.approx(2 / 0.0075, rel=1e-4)
    # measured: one pulse each way at w* gives the step the count is based on
    sb.set_weights(sb.symmetry_point())
    w0 = sb.true_weights()
    _pulses(sb, 1)
    up = sb.true_weights() - w0
    sb.set_weights(w0)
    _pulses(sb, -1)
    down = w0 - sb.true_weights()
    torch.testing.assert_close(2.0 / (0.5 * (up + down)), sb.n_states(), rtol=1e-4, atol=0)
    # constant device: exactly n_states pulses cross the whole range
    ideal = SimulatedCrossbar(1, 1, device="ideal", periphery=IDEAL, initial_weight=-1.0)
    _pulses(ideal, 1999)
    assert float(ideal.true_weights()) < 1.0
    _pulses(ideal, 1)
    assert float(ideal.true_weights()) == pytest.approx(1.0, abs=1e-5)
    assert SimulatedCrossbar(1, 1, device="ideal").info.dw_min == pytest.approx(2 / 2000)


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_bounds_never_exceeded(kind: str) -> None:
    step = STEPS[kind]
    model = DeviceModel(
        step=step,
        variation=DeviceVariation(c2c=0.8, d2d={name: 0.3 for name in step.parameters}, stuck_fraction=0.05),
    )
    rows, cols = 12, 10
    xbar = SimulatedCrossbar(rows, cols, device=model, periphery=IDEAL, seed=4)
    lo, hi = xbar.devices.params["w_min"], xbar.devices.params["w_max"]
    assert bool((lo < hi).all())
    g = _gen(9)
    for i in range(40):
        if i % 3 == 0:
            counts = torch.randint(-400, 401, (rows, cols), generator=g)
            xbar.pulse(counts)
        else:
            lr = [0.05, 5.0][i % 2]
            xbar.update(torch.rand(8, cols, generator=g) * 2 - 1, torch.rand(8, rows, generator=g) - 0.5, lr)
        w = xbar.true_weights()
        assert bool(torch.isfinite(w).all())
        assert bool(((w >= lo) & (w <= hi)).all()), f"round {i}: outside [w_min, w_max]"
    xbar.set_weights(torch.full((rows, cols), 10.0))
    assert bool((xbar.true_weights() <= hi).all())


# --------------------------------------------------------------------------
# variation and noise
# --------------------------------------------------------------------------
def _truncated_sd(c: float = 3.0) -> float:
    """sd of a standard normal truncated at +-c."""
    phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(c / math.sqrt(2))
    return math.sqrt(1 - 2 * c * phi / mass)


def test_d2d_spread_matches_configuration() -> None:
    d2d = {"dw_up": 0.2, "dw_down": 0.1, "gamma_up": 0.25, "w_min": 0.05, "w_max": 0.15}
    step = PowStep(dw_up=0.01, dw_down=0.02, gamma_up=1.5, gamma_down=0.7, w_min=-1.0, w_max=2.0)
    model = DeviceModel(step=step, variation=DeviceVariation(d2d=d2d))
    rows = cols = 64
    n = rows * cols
    xbar = SimulatedCrossbar(rows, cols, device=model, seed=17)
    params = xbar.devices.params
    k = _truncated_sd()
    for name in step.parameters:
        v = params[name].double().flatten()
        nominal = getattr(step, name)
        rel = d2d.get(name, 0.0)
        if rel == 0:
            assert torch.equal(v, torch.full_like(v, float(torch.tensor(nominal))))
            continue
        sd = abs(nominal) * rel * k
        # sample mean: sd / sqrt(n); sample sd: its standard error is sd / sqrt(2 (n - 1))
        # (normal kurtosis; the truncated normal's is smaller)
        assert abs(float(v.mean()) - nominal) < K * sd / math.sqrt(n), name
        assert abs(float(v.std()) - sd) < K * sd / math.sqrt(2 * (n - 1)), name
        assert float((v - nominal).abs().max()) <= 3 * abs(nominal) * rel * (1 + 1e-5)  # truncated
    # parameters are drawn independently
    a = params["dw_up"].double().flatten()
    b = params["gamma_up"].double().flatten()
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(corr) < K / math.sqrt(n)
    # different seeds give different devices, one seed the same
    again = SimulatedCrossbar(rows, cols, device=model, seed=17).devices.params
    other = SimulatedCrossbar(rows, cols, device=model, seed=18).devices.params
    assert torch.equal(again["dw_up"], params["dw_up"])
    assert not torch.equal(other["dw_up"], params["dw_up"])


def test_c2c_write_noise_std() -> None:
    # one pulse on a constant device: dw * (1 + c2c * xi); n pulses in one call: sum of n
    c2c, n_dev = 0.4, 4096
    model = DeviceModel(step=ConstantStep(dw_up=0.002, dw_down=0.002), variation=DeviceVariation(c2c=c2c))
    for n in (1, 25):
        xbar = SimulatedCrossbar(64, 64, device=model, periphery=IDEAL, seed=n)
        _pulses(xbar, n)
        dw = xbar.true_weights().double().flatten()
        sd = c2c * 0.002 * math.sqrt(n)
        assert abs(float(dw.mean()) - n * 0.002) < K * sd / math.sqrt(n_dev)
        assert abs(float(dw.std()) - sd) < K * sd / math.sqrt(2 * (n_dev - 1))


def test_table_write_noise_std() -> None:
    # per pulse: sd = dw scale * tabulated std at the state (plus c2c * |mean|, here 0)
    n_dev = 4096
    for up, w0 in ((True, -0.4), (False, 0.5)):
        xbar = SimulatedCrossbar(64, 64, device=DeviceModel(step=TABLE), periphery=IDEAL, seed=int(up))
        xbar.set_weights(torch.full((64, 64), w0))
        _pulses(xbar, 1 if up else -1)
        dw = (xbar.true_weights() - w0).double().flatten()
        mean = step_formula(TABLE, w0, up)
        sd = (TABLE.dw_up if up else TABLE.dw_down) * _interp(TABLE.grid, TABLE.up_std if up else TABLE.down_std, w0)
        assert abs(float(dw.mean()) - mean) < K * sd / math.sqrt(n_dev)
        assert abs(float(dw.std()) - sd) < K * sd / math.sqrt(2 * (n_dev - 1))


def _periph(**kw) -> PeripheryConfig:
    base = dict(inp_res_bits=None, out_res_bits=None, out_bound=None, out_noise=0.0)
    base.update(kw)
    return PeripheryConfig(**base)


def test_read_noise_out_noise_std() -> None:
    rows, cols, batch = 8, 16, 2000
    xbar = SimulatedCrossbar(rows, cols, device="ideal", periphery=_periph(out_noise=0.1), seed=1)
    xbar.set_weights(torch.rand(rows, cols, generator=_gen(2)) - 0.5)
    x = torch.rand(batch, cols, generator=_gen(3))
    resid = (xbar.forward(x) - x @ xbar.true_weights().T).double().flatten()
    n = resid.numel()
    assert abs(float(resid.mean())) < K * 0.1 / math.sqrt(n)
    assert abs(float(resid.std()) - 0.1) < K * 0.1 / math.sqrt(2 * (n - 1))
    # the transposed read has the same output noise
    d = torch.rand(batch, rows, generator=_gen(4))
    resid_b = (xbar.backward(d) - d @ xbar.true_weights()).double().flatten()
    assert abs(float(resid_b.std()) - 0.1) < K * 0.1 / math.sqrt(2 * (resid_b.numel() - 1))


def test_read_noise_weight_noise_std() -> None:
    rows, cols, batch = 8, 16, 2000
    w_noise, rel, out = 0.05, 0.1, 0.03
    per = _periph(out_noise=out, w_noise=w_noise, w_noise_relative=rel)
    xbar = SimulatedCrossbar(rows, cols, device="ideal", periphery=per, seed=5)
    xbar.set_weights(torch.rand(rows, cols, generator=_gen(6)) * 1.6 - 0.8)
    w = xbar.true_weights()
    x = torch.rand(batch, cols, generator=_gen(7)) * 2 - 1
    resid = (xbar.forward(x) - x @ w.T).double()
    # independent device noise per read, referred to the output:
    # var = w_noise^2 |x|^2 + rel^2 (x^2 . w^2) + out_noise^2
    var = (w_noise**2) * x.pow(2).sum(1, keepdim=True) + rel**2 * (x.pow(2) @ w.pow(2).T) + out**2
    z = (resid / var.double().sqrt()).flatten()
    n = z.numel()
    assert abs(float(z.mean())) < K / math.sqrt(n)
    assert abs(float(z.std()) - 1) < K / math.sqrt(2 * (n - 1))
    # read(): one-hot columns, so every weight is read with sd sqrt(w_noise^2 + rel^2 w^2 + out^2)
    reads = torch.stack([xbar.read() for _ in range(300)]).double()
    sd_w = (w_noise**2 + rel**2 * w.double().pow(2) + out**2).sqrt()
    z = ((reads - w.double()) / sd_w).flatten()
    assert abs(float(z.std()) - 1) < K / math.sqrt(2 * (z.numel() - 1))
    # averaging n_reads full reads divides the sd by sqrt(n_reads)
    avg = torch.stack([xbar.read(n_reads=9) for _ in range(200)]).double()
    z = ((avg - w.double()) / (sd_w / 3)).flatten()
    assert abs(float(z.std()) - 1) < K / math.sqrt(2 * (z.numel() - 1))


def test_device_read_noise_becomes_weight_read_noise() -> None:
    model = get_preset("pcm-noisy")
    xbar = SimulatedCrossbar(2, 2, device=model)
    assert xbar.config.periphery.w_noise == model.read_noise
    assert SimulatedCrossbar(2, 2, device=model, periphery=IDEAL).config.periphery.w_noise == 0.0


# --------------------------------------------------------------------------
# DAC / ADC
# --------------------------------------------------------------------------
def test_adc_saturation_and_quantization() -> None:
    bits, bound = 6, 4.0
    per = PeripheryConfig(inp_res_bits=None, out_res_bits=bits, out_bound=bound, out_noise=0.0)
    rows, cols = 6, 16
    xbar = SimulatedCrossbar(rows, cols, device="ideal", periphery=per)
    xbar.set_weights(torch.full((rows, cols), 0.9))
    # saturation: 16 * 0.9 = 14.4 > 4 -> exactly +-4
    y = xbar.forward(torch.ones(3, cols))
    assert torch.equal(y, torch.full((3, rows), bound))
    assert torch.equal(xbar.forward(-torch.ones(cols)), torch.full((rows,), -bound))
    # quantization: on the grid bound / (2^(bits-1) - 1), within half a step of the exact value
    lsb = bound / (2 ** (bits - 1) - 1)
    xbar.set_weights(torch.rand(rows, cols, generator=_gen(1)) * 0.5 - 0.25)
    x = torch.rand(500, cols, generator=_gen(2)) * 2 - 1
    exact = x @ xbar.true_weights().T
    assert float(exact.abs().max()) < bound
    y = xbar.forward(x)
    k = y / lsb
    torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)
    assert float((y - exact).abs().max()) <= lsb / 2 * (1 + 1e-5)
    assert len(torch.unique(y)) <= 2 ** bits - 1
    # the quantization error is spread over the whole step (not a constant offset)
    assert float((y - exact).abs().max()) > 0.4 * lsb
    # small and large batches take different kernels (fused / element-wise): same numbers
    assert all(torch.equal(xbar.forward(x[i : i + 1]), y[i : i + 1]) for i in range(0, 500, 37))


def test_dac_quantization_and_clipping() -> None:
    bits, bound = 4, 0.5
    per = PeripheryConfig(inp_res_bits=bits, inp_bound=bound, out_res_bits=None, out_bound=None, out_noise=0.0)
    n = 8
    xbar = SimulatedCrossbar(n, n, device="ideal", periphery=per)
    xbar.set_weights(torch.eye(n) * 0.5)
    w = xbar.true_weights()
    x = torch.rand(200, n, generator=_gen(3)) * 1.6 - 0.8
    lsb = bound / (2 ** (bits - 1) - 1)
    xq = torch.round(x.clamp(-bound, bound) / lsb) * lsb
    y = xbar.forward(x)
    torch.testing.assert_close(y, xq @ w.T)
    assert all(torch.equal(xbar.forward(x[i]), y[i]) for i in range(0, 200, 13))  # fused path
    # inputs beyond the range are clipped to +-bound
    torch.testing.assert_close(xbar.forward(torch.full((n,), 3.0)), torch.full((n,), 0.5 * bound))
    assert float((xq - x.clamp(-bound, bound)).abs().max()) <= lsb / 2 * (1 + 1e-6)


# --------------------------------------------------------------------------
# write-verify, stuck devices
# --------------------------------------------------------------------------
def test_program_converges_on_ideal_device() -> None:
    rows, cols = 10, 12
    xbar = SimulatedCrossbar(rows, cols, device="ideal", periphery=IDEAL, seed=1)
    target = torch.rand(rows, cols, generator=_gen(8)) * 1.6 - 0.8
    tol = 0.005
    rep = xbar.program(target, tol=tol, max_iter=60)
    assert rep.converged and rep.unconverged_devices == 0 and rep.converged_fraction == 1.0
    err = (xbar.true_weights() - target).abs()
    assert float(err.max()) <= tol and rep.max_error == pytest.approx(float(err.max()), abs=1e-6)
    # pulses: at least |target| / dw per device, not wastefully more
    needed = float((target.abs() / DW).round().clamp(min=0).sum())
    assert needed - rows * cols * tol / DW <= rep.pulses_spent <= 1.2 * needed


def test_program_with_read_noise_needs_averaging() -> None:
    # read noise sd 0.01 per read: averaging 16 reads gives 0.0025, well inside tol 0.02
    per = _periph(out_noise=0.01)
    target = torch.rand(6, 6, generator=_gen(9)) - 0.5
    xbar = SimulatedCrossbar(6, 6, device="ideal", periphery=per, seed=2)
    rep = xbar.program(target, tol=0.02, max_iter=80, n_reads=16)
    assert rep.converged
    assert float((xbar.true_weights() - target).abs().max()) <= 0.02 + K * 0.0025
    assert rep.reads == 16 * (rep.iterations + 1)


def test_program_reports_stuck_devices_honestly() -> None:
    rows, cols = 10, 10
    model = DeviceModel(
        step=ConstantStep(dw_up=DW, dw_down=DW), variation=DeviceVariation(stuck_fraction=0.1, stuck_at="max")
    )
    xbar = SimulatedCrossbar(rows, cols, device=model, periphery=IDEAL, seed=3)
    stuck = xbar.devices.stuck
    assert int(stuck.sum()) == 10
    target = torch.rand(rows, cols, generator=_gen(10)) - 0.5  # all far from +1
    rep = xbar.program(target, tol=0.005, max_iter=40)
    err = (xbar.true_weights() - target).abs()
    assert not rep.converged
    assert rep.unconverged_devices == 10
    assert rep.converged_fraction == pytest.approx(0.9)
    assert bool((err[~stuck] <= 0.005).all())  # everything else made it
    assert rep.max_error == pytest.approx(float(err.max()), abs=1e-6) and rep.max_error >= 0.5
    assert rep.rms_error == pytest.approx(float(err.pow(2).mean().sqrt()), rel=1e-5)
    assert rep.iterations == 40  # it kept trying the stuck ones


def test_stuck_devices_never_move() -> None:
    for stuck_at in ("min", "max", "random"):
        model = DeviceModel(
            step=SoftBoundsStep(dw_up=0.05, dw_down=0.05),
            variation=DeviceVariation(c2c=0.5, d2d={"dw_up": 0.3}, stuck_fraction=0.25, stuck_at=stuck_at),
        )
        xbar = SimulatedCrossbar(8, 8, device=model, seed=6)
        stuck = xbar.devices.stuck.clone()
        assert int(stuck.sum()) == 16
        value = xbar.true_weights()[stuck].clone()
        expect = {"min": xbar.devices.params["w_min"], "max": xbar.devices.params["w_max"]}.get(stuck_at)
        if expect is not None:
            assert torch.equal(value, expect[stuck])
        g = _gen(11)
        for _ in range(10):
            xbar.update(torch.rand(4, 8, generator=g), torch.rand(4, 8, generator=g) - 0.5, 0.5)
            xbar.pulse(torch.randint(-20, 21, (8, 8), generator=g))
            assert torch.equal(xbar.true_weights()[stuck], value)
        xbar.set_weights(torch.zeros(8, 8))
        xbar.program(torch.full((8, 8), 0.3), tol=0.05, max_iter=5)
        assert torch.equal(xbar.true_weights()[stuck], value)
        assert not torch.equal(xbar.true_weights()[~stuck], torch.zeros(48))


# --------------------------------------------------------------------------
# reproducibility and checkpoints
# --------------------------------------------------------------------------
def _session(xbar: SimulatedCrossbar, seed: int = 0) -> list[torch.Tensor]:
    g = _gen(seed)
    out = []
    for _ in range(3):
        x = torch.rand(5, xbar.cols, generator=g)
        d = torch.rand(5, xbar.rows, generator=g) - 0.5
        out.append(xbar.forward(x))
        out.append(xbar.backward(d))
        xbar.update(x, d, 0.1)
        xbar.pulse(torch.randint(-3, 4, xbar.shape, generator=g))
        out.append(xbar.read())
    xbar.program(torch.full(xbar.shape, 0.2), tol=0.05, max_iter=3)
    out.append(xbar.true_weights())
    return out


def test_bit_identical_reruns_and_seed_dependence() -> None:
    def make(seed: int) -> SimulatedCrossbar:
        return SimulatedCrossbar(6, 7, device="rram-softbounds-20", seed=seed)

    a, b, c = make(42), make(42), make(43)
    ra, rb, rc = _session(a), _session(b), _session(c)
    assert all(torch.equal(u, v) for u, v in zip(ra, rb, strict=True))
    differs = [not torch.equal(u, v) for u, v in zip(ra, rc, strict=True)]
    assert all(differs)


def test_state_dict_round_trip_continues_identically() -> None:
    a = SimulatedCrossbar(5, 4, device="pcm-noisy", seed=3)
    _session(a, seed=1)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    # a backend built differently (other preset, other seed) becomes the same array
    b = SimulatedCrossbar(5, 4, device="ideal", seed=99)
    b.load_state_dict(state)
    assert b.config == a.config and b.info == a.info
    assert torch.equal(b.true_weights(), a.true_weights())
    ra, rb = _session(a, seed=2), _session(b, seed=2)
    assert all(torch.equal(u, v) for u, v in zip(ra, rb, strict=True))
    with pytest.raises(ValueError, match="checkpoint is for a 5x4 array, this one is 4x5"):
        SimulatedCrossbar(4, 5).load_state_dict(state)


# --------------------------------------------------------------------------
# CPU and CUDA: one code path
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "torch_device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_device_smoke(torch_device: str) -> None:
    a = SimulatedCrossbar(32, 16, device="rram-softbounds-20", seed=1, torch_device=torch_device)
    b = SimulatedCrossbar(32, 16, device="rram-softbounds-20", seed=1, torch_device=torch_device)
    x = torch.rand(8, 16, device=torch_device)
    d = torch.rand(8, 32, device=torch_device) - 0.5
    for xbar in (a, b):
        y = xbar.forward(x)
        assert y.shape == (8, 32) and y.device.type == torch_device
        assert xbar.backward(d).shape == (8, 16)
        xbar.update(x, d, 0.05)
        xbar.pulse(torch.ones(32, 16, dtype=torch.int64, device=torch_device))
        assert xbar.read().device.type == torch_device
    assert torch.equal(a.true_weights(), b.true_weights())
    ideal = SimulatedCrossbar(8, 8, device="ideal", periphery=IDEAL, torch_device=torch_device)
    target = torch.rand(8, 8, device=torch_device) - 0.5
    assert ideal.program(target, tol=0.005, max_iter=60).converged
    state = a.state_dict()
    c = SimulatedCrossbar(32, 16, device="rram-softbounds-20", seed=5, torch_device=torch_device)
    c.load_state_dict(state)
    torch.testing.assert_close(c.forward(x), a.forward(x))


# --------------------------------------------------------------------------
# the throughput benchmark keeps working (tiny sizes; figures are in docs/performance.md)
# --------------------------------------------------------------------------
def test_throughput_benchmark_smoke(tmp_path, capsys) -> None:
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "update_throughput.py"
    spec = importlib.util.spec_from_file_location("update_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "tp.json"
    mod.main(["--sizes", "8", "--batches", "1", "3", "--reps", "2", "--min-time", "0.01",
              "--device", "cpu", "--json", str(out)])
    data = json.loads(out.read_text())
    keys = {"size", "batch", "device", "ours_updates_per_s", "ours_forward_per_s",
            "aihwkit_updates_per_s", "aihwkit_forward_per_s"}
    assert [(r["size"], r["batch"], r["device"]) for r in data["rows"]] == [(8, 1, "cpu"), (8, 3, "cpu")]
    for row in data["rows"]:
        assert set(row) == keys
        assert row["ours_updates_per_s"] > 0 and row["ours_forward_per_s"] > 0
        assert row["aihwkit_updates_per_s"] is None and row["aihwkit_forward_per_s"] is None
    assert data["threads"] == 1
    assert "threads=1" in capsys.readouterr().out
