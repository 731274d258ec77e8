"""The sparse (pulsed devices only) and dense (whole array) paths of ``DeviceArray.apply``.

``DeviceArray.sparse_fraction`` forces a path: 0.0 always applies pulses to the
whole array, 1.0 always gathers the pulsed devices.  Without write noise both
paths compute the same floats up to rounding (1e-6); with write noise they agree
in distribution (means and stds within ``K`` standard errors, derived from the
sample sizes; false-failure probability of each check below 1e-6).  Also: the
affine closed form against its textbook ``pow`` formula, devices without pulses
untouched, stuck devices stuck, seeded determinism, and the active-slot draw of
the pulse trains (both draw orders) against the documented expectation.
"""

from __future__ import annotations

import math

import pytest
import torch

from hil.device_model import (
    ConstantStep,
    DeviceModel,
    DeviceVariation,
    LinearStep,
    PowStep,
    SoftBoundsStep,
    TableStep,
)
from hil.simulated import SimulatedCrossbar, UpdateConfig, pulse_trains
from hil.simulated.devices import SPARSE_MIN_DEVICES, DeviceArray
from hil.simulated.pulse_trains import coincidence_total_net, pulse_probabilities

K = 5.0  # sigmas: two-sided tail 5.7e-7
ROWS, COLS = 64, 80  # above SPARSE_MIN_DEVICES: the default may gather
CPU = torch.device("cpu")

TABLE = TableStep(
    dw_up=1.5,
    dw_down=0.8,
    grid=[-1.0, -0.4, 0.0, 0.5, 1.0],
    up_mean=[0.03, 0.022, 0.015, 0.006, 0.0],
    down_mean=[0.0, -0.007, -0.011, -0.016, -0.02],
    up_std=[0.002, 0.002, 0.001, 0.001, 0.0],
    down_std=[0.0, 0.001, 0.001, 0.002, 0.002],
)
TABLE_MEAN = TABLE.model_copy(update={"up_std": [0.0] * 5, "down_std": [0.0] * 5})

STEPS = {
    "softbounds": SoftBoundsStep(dw_up=0.02, dw_down=0.01, w_min=-0.8, w_max=1.2),
    # gamma > 1: a device above the fixed point w_max / gamma does not move up
    "linear": LinearStep(dw_up=0.02, dw_down=0.015, gamma_up=2.0, gamma_down=1.5),
    "pow": PowStep(dw_up=0.02, dw_down=0.01, gamma_up=2.0, gamma_down=1.5),
    "table": TABLE_MEAN,
    "constant": ConstantStep(dw_up=0.012, dw_down=0.007),
}
D2D = {"dw_up": 0.3, "dw_down": 0.3, "w_min": 0.2, "w_max": 0.2}


def _array(kind: str, c2c: float = 0.0, d2d: bool = True, stuck: float = 0.0, seed: int = 0) -> DeviceArray:
    step = STEPS[kind]
    if kind == "table" and c2c > 0:
        step = TABLE
    var = DeviceVariation(c2c=c2c, d2d=D2D if d2d else {}, stuck_fraction=stuck, stuck_at="random")
    model = DeviceModel(step=step, variation=var)
    return DeviceArray(model, ROWS, COLS, torch.Generator().manual_seed(seed), CPU)


def _counts(density: float, peak: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up and down counts ``[ROWS, COLS]``: mixed signs, ~``density`` of the devices pulsed."""
    g = torch.Generator().manual_seed(seed)
    pulsed = torch.rand(ROWS, COLS, generator=g) < density
    n_up = torch.randint(0, peak + 1, (ROWS, COLS), generator=g).float() * pulsed
    n_dn = torch.randint(0, peak + 1, (ROWS, COLS), generator=g).float() * pulsed
    n_up[0, 0], n_dn[0, 0] = float(peak), 1.0  # the peak is reached: max chunks used
    return n_up, n_dn


def _start(arr: DeviceArray, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = arr.params["w_min"], arr.params["w_max"]
    return arr.clamp(lo + (hi - lo) * torch.rand(arr.shape, generator=g))


def _run(arr: DeviceArray, fraction: float, w, n_up, n_dn, seed: int = 5, chunks: int = 8):
    arr.sparse_fraction = fraction
    return arr.apply(w, n_up, n_dn, torch.Generator().manual_seed(seed), chunks)


# ------------------------------------------------------------- mean response
@pytest.mark.parametrize("kind", list(STEPS))
@pytest.mark.parametrize("peak", [1, 5, 20])
def test_noise_free_paths_agree_to_rounding(kind: str, peak: int) -> None:
    arr = _array(kind, stuck=0.05)
    w = _start(arr, 1)
    n_up, n_dn = _counts(0.3, peak, 2)
    dense = _run(arr, 0.0, w, n_up, n_dn)
    sparse = _run(arr, 1.0, w, n_up, n_dn)
    pulsed = (n_up + n_dn) > 0
    moved = (dense - w).abs()[pulsed & ~arr.stuck]
    assert float(moved.mean()) > 1e-3  # the pulses did something
    torch.testing.assert_close(sparse, dense, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("kind", ["softbounds", "linear"])
def test_affine_closed_form_matches_pow_formula(kind: str) -> None:
    """The ``expm1(n log(1 - c))`` form equals ``a/c + (w - a/c) (1 - c)^n`` (not past a/c)."""
    arr = _array(kind, d2d=True)
    lo, hi = arr.params["w_min"].double(), arr.params["w_max"].double()
    w = _start(arr, 3)
    n = torch.randint(0, 9, arr.shape, generator=torch.Generator().manual_seed(4)).float()
    for up in (True, False):
        p = {k: v.double() for k, v in arr.params.items()}
        if up:
            a = p["dw_up"]
            c = a * (1.0 if kind == "softbounds" else p["gamma_up"]) / hi
        else:
            a = -p["dw_down"]
            c = a * (1.0 if kind == "softbounds" else p["gamma_down"]) / lo
        fixed = a / c
        wd = w.double()
        ref = fixed + (wd - fixed) * (1.0 - c).clamp(min=0.0).pow(n.double())
        inside = (wd < fixed) if up else (wd > fixed)
        ref = torch.where(inside, ref, wd)
        got = arr._affine_n(w, n, up).double()
        torch.testing.assert_close(got, ref, rtol=0.0, atol=2e-6)
        if kind == "linear":
            assert bool((~inside).any())  # the "past the fixed point" branch is exercised


def _reference_affine_apply(arr: DeviceArray, w, n_up, n_dn, max_chunks: int = 8) -> torch.Tensor:
    """The chunked affine scheme written out in float64 the textbook way: per chunk
    ``floor(n (k+1)/K) - floor(n k/K)`` ups then downs, each ``a/c + (w - a/c) (1-c)^n``
    (not past ``a/c``), clamped to the bounds with stuck devices at their value."""
    p = {k: v.double() for k, v in arr.params.items()}
    lo, hi = p["w_min"], p["w_max"]
    stuck_value = arr.stuck_value.double()

    def clamp(x):
        return torch.where(arr.stuck, stuck_value, torch.minimum(torch.maximum(x, lo), hi))

    def affine(x, n, up):
        if up:
            a = p["dw_up"]
            c = a * (1.0 if arr.kind == "softbounds" else p["gamma_up"]) / hi
        else:
            a = -p["dw_down"]
            c = a * (1.0 if arr.kind == "softbounds" else p["gamma_down"]) / lo
        fixed = a / c
        out = fixed + (x - fixed) * (1.0 - c).clamp(min=0.0).pow(n)
        return torch.where((x < fixed) if up else (x > fixed), out, x)

    nu, nd = n_up.double(), n_dn.double()
    chunks = int(min(max(1.0, float((nu + nd).max())), max_chunks))
    x = w.double()
    for k in range(chunks):
        u = torch.floor(nu * (k + 1) / chunks) - torch.floor(nu * k / chunks)
        d = torch.floor(nd * (k + 1) / chunks) - torch.floor(nd * k / chunks)
        x = clamp(affine(x, u, True))
        x = clamp(affine(x, d, False))
    return clamp(x)


@pytest.mark.parametrize("kind", ["softbounds", "linear"])
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_chunked_affine_matches_reference(kind: str, fraction: float) -> None:
    arr = _array(kind, stuck=0.05)
    w = _start(arr, 14)
    n_up, n_dn = _counts(0.5, 20, 15)
    got = _run(arr, fraction, w, n_up, n_dn).double()
    ref = _reference_affine_apply(arr, w, n_up, n_dn)
    pulsed = (n_up + n_dn) > 0
    assert float((ref - w.double()).abs()[pulsed & ~arr.stuck].mean()) > 1e-3
    torch.testing.assert_close(got[pulsed], ref[pulsed], rtol=0.0, atol=2e-6)


# ------------------------------------------------------------ with write noise
@pytest.mark.parametrize("kind", ["softbounds", "pow", "table", "constant"])
def test_noisy_paths_agree_in_distribution(kind: str) -> None:
    """Identical devices (no d2d), one start state and counts: the two paths' samples agree
    in mean and std.  Tolerances: K standard errors of the difference of two means
    (sd sqrt(2/n)) and of two stds (sd / sqrt(n) for Gaussian samples)."""
    arr = _array(kind, c2c=0.5, d2d=False)
    w = torch.full(arr.shape, 0.1)
    n_up = torch.full(arr.shape, 3.0)
    n_dn = torch.full(arr.shape, 1.0)
    dense = [_run(arr, 0.0, w, n_up, n_dn, seed=s).flatten() for s in range(6)]
    sparse = [_run(arr, 1.0, w, n_up, n_dn, seed=100 + s).flatten() for s in range(6)]
    a, b = torch.cat(dense).double(), torch.cat(sparse).double()
    n = a.numel()
    sd = float(a.std())
    assert sd > 1e-4  # noise is on
    assert abs(float(a.mean() - b.mean())) < K * sd * math.sqrt(2.0 / n)
    assert abs(float(a.std() - b.std())) < K * sd / math.sqrt(n)
    # noise-free mean response of the same counts (same path math): the sample mean is
    # centered on it to first order in the noise (K standard errors + 1 % of the move)
    mean_ref = _run(_array(kind, c2c=0.0, d2d=False), 0.0, w, n_up, n_dn).flatten().double()
    move = float((mean_ref - 0.1).abs().mean())
    for x in (a, b):
        assert abs(float(x.mean()) - float(mean_ref.mean())) < K * sd / math.sqrt(n) + 0.01 * move


# ---------------------------------------------------------- untouched devices
@pytest.mark.parametrize("kind", list(STEPS))
def test_devices_without_pulses_are_bit_unchanged(kind: str) -> None:
    """Default threshold at 2 % pulsed devices of a 64 x 80 array: the gathered path is taken, so devices
    without pulses keep their exact bits, even at w = 0 where the dense path's
    ``sqrt(tiny) xi`` noise term would show (this test fails on the dense path)."""
    arr = _array(kind, c2c=0.5)
    w = _start(arr, 6)
    w[:, ::2] = 0.0
    n_up, n_dn = _counts(0.02, 6, 7)
    out = arr.apply(w, n_up, n_dn, torch.Generator().manual_seed(8))
    idle = (n_up + n_dn) == 0
    assert torch.equal(out[idle], w[idle])
    assert bool((out[~idle] != w[~idle]).any())


def test_small_arrays_default_to_dense() -> None:
    """Below SPARSE_MIN_DEVICES the whole array is computed: the ``sqrt(tiny) xi`` term
    moves idle devices at w = 0 (shows which path ran)."""
    model = DeviceModel(step=STEPS["softbounds"], variation=DeviceVariation(c2c=0.5))
    arr = DeviceArray(model, 16, 16, torch.Generator().manual_seed(0), CPU)
    assert 16 * 16 < SPARSE_MIN_DEVICES
    w = torch.zeros(arr.shape)
    n_up = torch.zeros(arr.shape)
    n_up[0, 0] = 1.0
    out = arr.apply(w, n_up, torch.zeros(arr.shape), torch.Generator().manual_seed(1))
    assert bool((out.flatten()[1:] != 0).any())
    arr.sparse_fraction = 1.0  # explicit: gathers at any size
    out = arr.apply(w, n_up, torch.zeros(arr.shape), torch.Generator().manual_seed(1))
    assert bool((out.flatten()[1:] == 0).all())


def test_no_pulses_returns_input() -> None:
    arr = _array("softbounds", c2c=0.5)
    w = _start(arr, 9)
    zero = torch.zeros(arr.shape)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(arr.apply(w, zero, zero, g), w)
    assert torch.equal(g.get_state(), state)  # no random numbers drawn


@pytest.mark.parametrize("kind", list(STEPS))
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_stuck_devices_stay_stuck(kind: str, fraction: float) -> None:
    arr = _array(kind, c2c=0.5, stuck=0.1)
    assert int(arr.stuck.sum()) > 100
    w = arr.clamp(_start(arr, 10))
    n_up, n_dn = _counts(0.4, 10, 11)
    out = _run(arr, fraction, w, n_up, n_dn)
    assert torch.equal(out[arr.stuck], arr.stuck_value[arr.stuck])


# --------------------------------------------------------------- determinism
@pytest.mark.parametrize("fraction", [0.0, 1.0, None])
def test_seeded_determinism(fraction: float | None) -> None:
    def trained(seed: int) -> torch.Tensor:
        xbar = SimulatedCrossbar(ROWS, COLS, device="rram-softbounds-20", seed=seed)
        xbar.devices.sparse_fraction = fraction
        g = torch.Generator().manual_seed(0)
        for _ in range(5):
            x = torch.rand(4, COLS, generator=g)
            d = (torch.rand(4, ROWS, generator=g) - 0.5) * 0.05
            xbar.update(x, d, 0.1)
            counts = torch.zeros(ROWS, COLS, dtype=torch.int64)
            counts[:, 3] = torch.randint(-2, 3, (ROWS,), generator=g)
            xbar.pulse(counts)
        return xbar.true_weights()

    first, again, other = trained(3), trained(3), trained(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_transfer_pulses_touch_only_their_column() -> None:
    xbar = SimulatedCrossbar(ROWS, COLS, device="rram-softbounds-20", seed=1)
    before = xbar.true_weights()
    counts = torch.zeros(ROWS, COLS, dtype=torch.int64)
    counts[:, 7] = 2
    counts[::3, 7] = -1
    xbar.pulse(counts)
    after = xbar.true_weights()
    assert torch.equal(torch.cat([after[:, :7], after[:, 8:]], 1), torch.cat([before[:, :7], before[:, 8:]], 1))
    assert bool((after[:, 7] != before[:, 7]).all())  # every pulsed device moved


# -------------------------------------------------- pulse trains: draw order
@pytest.mark.parametrize("sparse_side", ["rows", "cols", "none"])
@pytest.mark.parametrize("estimate", [True, False])  # the cost estimate, or small-array rule
def test_active_slot_draw_keeps_expectation(sparse_side: str, estimate: bool, monkeypatch) -> None:
    """Mean total coincidences per device ``BL sum_b p_d p_x`` and net ``BL sum_b
    sign p_d p_x`` (documented model), whichever side's trains are drawn first, and with
    the second side drawn for the active slots only or (``none``: most slots active)
    for all.  A sum over reps * batch * BL independent slots: binomial standard errors."""
    rows, cols, batch, bl, reps, lr, dw = 12, 16, 3, 31, 400, 0.05, 0.01
    if estimate:  # else: rows (fewer lines) first without the estimate
        monkeypatch.setattr(pulse_trains, "_SMALL_TRAINS", 0)
    g = torch.Generator().manual_seed(12)
    x = torch.rand(batch, cols, generator=g) - 0.5
    d = torch.rand(batch, rows, generator=g) - 0.5
    # a tiny side forces the draw order (few active slots on that side)
    if sparse_side == "rows":
        d[:, 1:] *= 0.01
    elif sparse_side == "cols":
        x[:, 1:] *= 0.01
    cfg = UpdateConfig(bl=bl, update_management=False)
    p_x, p_d = pulse_probabilities(x, d, lr, dw, cfg)
    q = (p_d.double()[:, :, None] * p_x.double()[:, None, :])  # [batch, rows, cols]
    sign = torch.sign(-d.double()[:, :, None] * x.double()[:, None, :])
    e_total = bl * q.sum(0)
    e_net = bl * (sign * q).sum(0)
    var = bl * (q * (1 - q)).sum(0)
    gen = torch.Generator().manual_seed(13)
    total = torch.zeros(rows, cols, dtype=torch.float64)
    net = torch.zeros(rows, cols, dtype=torch.float64)
    for _ in range(reps):
        t, n = coincidence_total_net(x, d, lr, dw, cfg, gen)
        total += t.double()
        net += n.double()
    se = torch.sqrt(reps * var).clamp(min=1e-12)
    # union bound over the devices: K sigmas per device plus one whole count of slack
    assert bool(((total - reps * e_total).abs() <= K * se + 1).all())
    assert bool(((net - reps * e_net).abs() <= K * se + 1).all())
    assert float(total.sum()) > 100  # the check has power
