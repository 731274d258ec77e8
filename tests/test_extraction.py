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
    ModelAverager,
    deploy,
    extract,
    load_extracted,
    read_precise,
    save_extracted,
)
from hil.nn import AnalogLinear, convert_to_analog
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
        # soft bounds shrink the steps away from the symmetry point: within one step of 0.4
        assert float((w[st.name]["weight"] - t).abs().max()) < 0.1


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

    r = run_extraction_seed(0)
    assert r["average_digital"] > r["last_iterate_digital"]
    assert abs(r["average_deployed"] - r["average_digital"]) < 0.03
