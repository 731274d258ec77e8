"""hil.extraction: averaging of iterates, the analog averager's pulses, export, deployment."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hil.device_model import ConstantStep, DeviceModel
from hil.extraction import (
    AnalogAccumulator,
    AveragingConfig,
    DifferentialPair,
    ModelAverager,
    deploy,
    extract,
    load_extracted,
    pulse_response,
    read_precise,
    save_extracted,
    zero_shift,
)
from hil.nn import AnalogConv2d, AnalogLinear, convert_to_analog
from hil.simulated import PeripheryConfig, SimulatedCrossbar
from hil.training import TrainingConfig, TrainingController, digits_network, simulated_factory

torch.set_num_threads(1)

SIGMA = 0.06  # additive read noise of the noisy arrays below (out_noise)
NOISY = PeripheryConfig(inp_res_bits=None, out_res_bits=None, out_bound=None, out_noise=SIGMA)


def _controller(rows=6, cols=5, periphery=NOISY, seed=0):
    model = nn.Sequential(AnalogLinear(cols, rows), nn.Sigmoid(), AnalogLinear(rows, 3))
    factory = simulated_factory("softbounds-20", periphery, seed=seed)
    ctl = TrainingController(model, TrainingConfig(algorithm="ttv2", batch_size=4), factory)
    return model, ctl, factory


def test_digital_average_recovers_known_mean_within_read_noise():
    model, ctl, _ = _controller()
    avg = ModelAverager(ctl, AveragingConfig(variant="digital", n_reads=2))
    g = torch.Generator().manual_seed(1)
    K = 50
    means = [torch.rand(st.module.rows, st.module.cols, generator=g) - 0.5 for st in ctl.layers]
    # iterates = mean +- a fixed excursion (sum of excursions exactly 0)
    deltas = [0.3 * (torch.rand(m.shape, generator=g) - 0.5) for m in means]
    for k in range(K):
        sign = 1.0 if k % 2 == 0 else -1.0
        for st, m, d in zip(ctl.layers, means, deltas, strict=True):
            st.arrays["C"].set_weights(m + sign * d)
        avg.snapshot()
    w = avg.weights()
    for st, m, d in zip(ctl.layers, means, deltas, strict=True):
        est = w[st.name]["weight"]
        assert w[st.name]["snapshots"] == K and w[st.name]["reads"] == 2 * K
        se = SIGMA / math.sqrt(2 * K)  # std of the average of 2K independent reads
        err = (est - m).abs()
        # 5 standard errors per element: P(exceed) ~ 6e-7 per element
        assert float(err.max()) < 5 * se
        # without averaging, the last iterate is off by the excursion (>> the bound)
        last = m - d  # K even: the last iterate had sign -1
        assert float((last - m).abs().max()) > 5 * se


def test_averaging_window_and_schedule_follow_the_config():
    model, ctl, _ = _controller(periphery=PeripheryConfig.ideal())
    avg = ModelAverager(ctl, AveragingConfig(start=0.5, every=3))
    bs, steps = 4, 20
    ctl.planned_samples = bs * steps
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(bs, 5, generator=g)
        y = torch.randint(0, 3, (bs,), generator=g)
        ctl.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ctl.step()
    # steps whose count is a multiple of 3 with samples >= 40 (i.e. steps >= 10): 12, 15, 18
    assert avg.snapshots == 3
    assert set(avg.digital_params()) == {n for n, _ in model.named_parameters()}


def _const_device(dw: float) -> DeviceModel:
    return DeviceModel(name="const", step=ConstantStep(dw_up=dw, dw_down=dw, w_min=-1.0, w_max=1.0))


def test_analog_accumulator_pulses_match_hand_computed_example():
    D = SimulatedCrossbar(1, 3, device=_const_device(0.125), periphery=PeripheryConfig.ideal(), seed=0)
    D.set_weights(torch.zeros(1, 3))
    acc = AnalogAccumulator(D, gain=0.25, threshold=1.0, max_pulses=2)
    z = torch.tensor([[0.5, -0.75, 0.0625]])
    # B += z/4 = [0.125, -0.1875, 0.015625] per snapshot, threshold 0.125 (hand-worked in the docs)
    expected = [[1, -1, 0], [1, -2, 0], [1, -1, 0], [1, -2, 0]]
    got = [acc.add(z).tolist()[0] for _ in range(4)]
    assert got == expected
    assert acc.pulses == 10
    assert torch.allclose(acc.B, torch.tensor([[0.0, 0.0, 0.0625]]))
    assert torch.allclose(D.read(), torch.tensor([[0.5, -0.75, 0.0]]))


def test_analog_variant_averages_onto_D():
    model, ctl, factory = _controller(periphery=PeripheryConfig.ideal())
    avg = ModelAverager(ctl, AveragingConfig(variant="analog", expected_snapshots=8), factory)
    assert [r for r, _ in factory.created].count("D") == 2
    targets = [torch.full((st.module.rows, st.module.cols), 0.4) for st in ctl.layers]
    for _ in range(8):
        for st, t in zip(ctl.layers, targets, strict=True):
            st.arrays["C"].set_weights(t)
        avg.snapshot()
    w = avg.weights()
    for st, t in zip(ctl.layers, targets, strict=True):
        # D got 0.4 / 0.1 = 4 pulses per device of a soft-bounds step; ideal reads
        assert w[st.name]["pulses_on_D"] == 4 * t.numel()
        # soft bounds shrink the steps away from the symmetry point (4 pulses reach ~0.34, not
        # 0.4); the measured pulse response of D maps the read back to 4 pulses
        assert float((w[st.name]["weight"] - t).abs().max()) < 0.01
    raw = ModelAverager(ctl, AveragingConfig(variant="analog", expected_snapshots=8, calibrate="none"), factory)
    for _ in range(8):
        for st, t in zip(ctl.layers, targets, strict=True):
            st.arrays["C"].set_weights(t)
        raw.snapshot()
    for st, t in zip(ctl.layers, targets, strict=True):
        assert float((raw.weights()[st.name]["weight"] - t).abs().min()) > 0.03  # compressed


def test_analog_variant_is_not_rate_limited_on_a_fine_D():
    # a 400-state D (constant step 0.005): 0.4 needs 80 pulses in 8 snapshots; a cap of one
    # pulse per snapshot would leave D at 8 * 0.005
    model, ctl, _ = _controller(periphery=PeripheryConfig.ideal())
    fine = simulated_factory(_const_device(0.005), PeripheryConfig.ideal(), seed=2)
    avg = ModelAverager(ctl, AveragingConfig(variant="analog", expected_snapshots=8, calibrate="none"), fine)
    capped = ModelAverager(ctl, AveragingConfig(variant="analog", expected_snapshots=8, calibrate="none",
                                                max_pulses=1), fine)
    for _ in range(8):
        for st in ctl.layers:
            st.arrays["C"].set_weights(torch.full((st.module.rows, st.module.cols), 0.4))
        avg.snapshot()
        capped.snapshot()
    for st in ctl.layers:
        assert float((avg.weights()[st.name]["weight"] - 0.4).abs().max()) < 0.005
        assert float(capped.weights()[st.name]["weight"].max()) < 0.05


def test_D_reference_is_its_start_state():
    # zero_shift alternates between two states; D starts from the one its last (down) pulse
    # leaves, half a step below their mean, and the reference must be that state
    model, ctl, factory = _controller(periphery=PeripheryConfig.ideal())
    avg = ModelAverager(ctl, AveragingConfig(variant="analog", expected_snapshots=8, calibrate="none"), factory)
    avg.add(0, torch.zeros(ctl.layers[0].module.rows, ctl.layers[0].module.cols))  # prepares D, no pulse
    la = avg.layers[0]
    assert la.pulses == 0
    assert torch.allclose(la.R_D, la.D.true_weights(), atol=1e-5)
    alternating_mean = zero_shift(la.D, 10)
    assert float((alternating_mean - la.D.true_weights()).abs().min()) > 0.02


def test_pulse_response_inverts_soft_bounds_compression():
    D = SimulatedCrossbar(2, 9, device="softbounds-20", periphery=PeripheryConfig.ideal(), seed=0)
    resp = pulse_response(D, 20, repeats=1, reads=1)
    assert resp.up.shape == (21, 2, 9) and float(resp.up[0].abs().max()) == 0.0
    start = D.true_weights().clone()
    n = torch.arange(-8, 10).reshape(2, 9)
    D.pulse(n)
    moved = D.true_weights() - start
    est = resp.net_pulses(moved)
    assert float((est - n).abs().max()) < 0.05
    # the plain read divided by the nominal step misses 8 pulses by more than one pulse
    assert float((moved / D.info.dw_min - n).abs().max()) > 1.0


def test_differential_pair_programs_and_reads_the_difference():
    base = SimulatedCrossbar(3, 8, device="ideal", periphery=PeripheryConfig.ideal(), seed=0)
    pair = DifferentialPair(base)
    assert pair.shape == (3, 4) and pair.info.w_max == 2.0 and pair.info.w_min == -2.0
    target = torch.tensor([[1.6, -1.6, 0.3, 0.0], [-0.7, 0.9, 1.2, -1.9], [0.05, -0.05, 0.5, -0.5]])
    rep = pair.program(target, tol=0.005, max_iter=100)
    assert rep.converged
    g = base.true_weights()
    assert torch.allclose(g[:, :4], target / 2, atol=0.005) and torch.allclose(g[:, 4:], -target / 2, atol=0.005)
    assert float((pair.read() - target).abs().max()) < 0.011
    x = torch.rand(5, 4)
    assert float((pair.forward(x) - x @ target.T).abs().max()) < 0.011 * 4


def test_pair_trim_halves_the_weight_error_of_a_noisy_device():
    # pcm-noisy: c2c 1.5 of the step, so each device lands anywhere within tol; without the
    # trim the two errors add, with it G+ absorbs G-'s error
    errs = {}
    target = torch.empty(16, 32).uniform_(-1.6, 1.6, generator=torch.Generator().manual_seed(1))
    for trim in (False, True):
        base = SimulatedCrossbar(16, 64, device="pcm-noisy", periphery=PeripheryConfig.ideal(), seed=4)
        pair = DifferentialPair(base)
        rep = pair.program(target, tol=0.02, max_iter=100, n_reads=16, trim=trim)
        g = base.true_weights()
        errs[trim] = float((g[:, :32] - g[:, 32:] - target).pow(2).mean().sqrt())
        assert rep.pulses_spent > 0 and rep.reads > 0
    assert errs[True] < 0.75 * errs[False], errs


def test_pair_refuses_in_situ_training():
    pair = DifferentialPair(SimulatedCrossbar(2, 4, device="ideal", seed=0))
    with pytest.raises(TypeError, match="deployment mapping"):
        pair.update(torch.rand(1, 2), torch.rand(1, 2), lr=0.1)


def test_read_precise_uses_the_reads_the_noise_needs():
    a = SimulatedCrossbar(4, 8, device="softbounds-20", periphery=NOISY, seed=3)
    r = read_precise(a.read, precision=0.01, max_reads=1000)
    # (0.06 / 0.01)^2 = 36 reads; the pilot variance (8 reads x 32 devices) is within ~25 %
    assert 25 <= r.reads <= 50
    assert abs(r.read_noise - SIGMA) < 0.015
    assert float((r.mean - a.true_weights()).abs().max()) < 5 * SIGMA / math.sqrt(r.reads)


def test_extract_state_dict_load_reproduces_outputs_exactly(tmp_path):
    torch.manual_seed(0)
    factory = simulated_factory("softbounds-20", NOISY, seed=5)
    analog = convert_to_analog(digits_network("cnn"), factory, program=True, tol=0.05, max_iter=30)
    digital = extract(analog, precision=0.01)
    assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in digital.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, AnalogLinear)))
    info = digital.extraction
    assert info.source == "last_iterate" and all(L.reads_averaged >= 8 for L in info.layers)
    path = save_extracted(digital, tmp_path / "m.pt")
    fresh = load_extracted(path, digits_network("cnn"))
    assert fresh.extraction == info
    x = torch.rand(7, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), digital(x))
    # the digital parameters are copied exactly (bias of every layer)
    for name, m in analog.named_modules():
        if isinstance(m, (AnalogLinear, AnalogConv2d)):
            assert torch.equal(digital.get_submodule(name).bias, m.bias.detach())
    # the extracted weights are the array's true weights within the read precision
    conv = analog.get_submodule("1")
    err = (digital.get_submodule("1").weight.detach().reshape(8, 9) - conv.backend.true_weights()).abs()
    assert float(err.max()) < 5 * 0.01 * 1.3


def test_deploy_on_ideal_array_reaches_tolerance():
    torch.manual_seed(0)
    net = digits_network("mlp")
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.6, 0.6)
    tol = 0.01
    factory = simulated_factory("ideal", PeripheryConfig.ideal(), seed=0)
    analog, rep = deploy(net, factory, tol=tol, max_iter=60, n_reads=1)
    for L in rep.layers:
        assert L.converged_fraction == 1.0 and L.max_error <= tol and L.clipped == 0
    assert rep.pulses_spent > 0
    x = torch.rand(5, 64)
    with torch.no_grad():
        assert float((analog(x) - net(x)).abs().max()) < tol * 64 + 1e-4


@pytest.mark.slow
def test_extraction_demo_one_seed_averaging_helps():
    from hil.extraction import run_extraction_seed
    from hil.extraction.demo import CONSTANT_RATE

    # constant-rate TTv2: the last iterate wanders, the average does not
    r = run_extraction_seed(0, overrides=CONSTANT_RATE, analog=False)
    assert r["average_digital"] > r["last_iterate_digital"] + 0.02
    assert abs(r["average_deployed"] - r["average_digital"]) < 0.02
