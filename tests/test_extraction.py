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
    ColumnPeriphery,
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
from hil.extraction.deploy import calibrate_columns, column_gains
from hil.extraction.program import WriteVerifyConfig, write_verify
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
        assert L.converged_fraction == 1.0 and L.max_error <= tol and L.clipped == 0 and L.far_off == 0
    assert rep.pulses_spent > 0
    x = torch.rand(5, 64)
    with torch.no_grad():
        assert float((analog(x) - net(x)).abs().max()) < tol * 64 + 1e-4


class _Recording(SimulatedCrossbar):
    """A simulated array that records every pulse call and every (averaged) read."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.log: list[tuple[str, torch.Tensor]] = []

    def _pulse(self, counts):
        self.log.append(("pulse", counts.clone()))
        super()._pulse(counts)

    def read(self, n_reads=1):
        w = super().read(n_reads)
        self.log.append(("read", w.clone()))
        return w


def _pcm_array(rows=16, cols=64, seed=3, cls=SimulatedCrossbar):
    from hil.simulated import resolve_device_model
    from hil.training.digits import digits_periphery

    model = resolve_device_model("pcm-noisy")
    periphery = digits_periphery(0.06).model_copy(update={"w_noise": model.read_noise})
    return cls(rows, cols, device=model, periphery=periphery, seed=seed)


def test_write_verify_without_freeze_is_crossbar_program():
    # freeze=False, no confirmation: the same loop as CrossbarBackend.program, bit for bit
    target = torch.empty(8, 16).uniform_(-0.8, 0.8, generator=torch.Generator().manual_seed(0))
    a, b = _pcm_array(8, 16, seed=7), _pcm_array(8, 16, seed=7)
    ra = a.program(target, tol=0.02, max_iter=30, n_reads=4)
    rb = write_verify(b, target, WriteVerifyConfig(tol=0.02, max_iter=30, n_reads=4, freeze=False))
    assert torch.equal(a.true_weights(), b.true_weights())
    assert ra == rb


def test_write_verify_freeze_pulses_no_device_after_it_verified():
    target = torch.empty(8, 32).uniform_(-0.8, 0.8, generator=torch.Generator().manual_seed(1))
    a = _pcm_array(8, 32, seed=2, cls=_Recording)
    cfg = WriteVerifyConfig(tol=0.02, max_iter=60, n_reads=16)
    rep = write_verify(a, target, cfg)
    verified = torch.zeros(8, 32, dtype=torch.bool)
    pulsed_after = 0
    for kind, t in a.log:
        if kind == "read":
            verified |= (target - t).abs() <= cfg.tol
        else:
            pulsed_after += int(((t != 0) & verified).sum())
    assert pulsed_after == 0
    assert int(verified.sum()) > 0.9 * target.numel() and rep.pulses_spent > 0


def test_freeze_rule_removes_the_far_off_devices_on_pcm_noisy():
    # pcm-noisy: a pulse's noise (1.5 x the step, up to ~0.06) exceeds tol 0.02; without the
    # freeze rule devices that verified get re-pulsed on read-noise false alarms and end far off
    target = torch.empty(16, 64).uniform_(-0.9, 0.9, generator=torch.Generator().manual_seed(0))
    errs = {}
    for freeze in (False, True):
        a = _pcm_array(seed=5)
        write_verify(a, target, WriteVerifyConfig(tol=0.02, max_iter=100, n_reads=64, freeze=freeze))
        errs[freeze] = (a.true_weights() - target).abs()
    assert float(errs[False].max()) > 0.15  # the mechanism the freeze rule fixes
    assert float(errs[True].max()) < 0.06  # tol + the verify read's noise (0.063 / 8) x 5
    assert float(errs[True].pow(2).mean().sqrt()) < 0.7 * float(errs[False].pow(2).mean().sqrt())


def test_confirmation_read_reopens_false_passes():
    # 8 reads per verify read (noise 0.022 > tol 0.02): many false passes; a 256-read confirmation
    # reopens them
    target = torch.empty(16, 64).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))
    errs = {}
    for confirm in (0, 256):
        a = _pcm_array(seed=9)
        rep = write_verify(a, target, WriteVerifyConfig(tol=0.02, max_iter=100, n_reads=8, confirm_reads=confirm))
        errs[confirm] = float((a.true_weights() - target).abs().gt(0.04).float().mean())
        assert rep.reads >= 8 + confirm
    assert errs[256] < 0.5 * errs[0], errs


def test_column_gains_and_periphery_reproduce_the_digital_layer():
    w = torch.tensor([[0.2, -0.4, 0.1], [1.8, 0.3, -0.9], [0.0, 0.0, 0.0]])
    g = column_gains(w, "column", out_scale=1.5, fill=0.9, w_max=2.0)
    assert torch.allclose(g, torch.tensor([0.4 / 1.8, 1.0, 1.5]))  # the zero row keeps out_scale
    assert torch.equal(column_gains(w, "layer", 1.5, 0.9, 2.0), torch.full((3,), 1.5))
    with pytest.raises(ValueError, match="mapping"):
        column_gains(w, "row", 1.5, 0.9, 2.0)
    # on ideal pairs the deployed model computes the digital one
    torch.manual_seed(0)
    net = digits_network("mlp")
    factory = simulated_factory("ideal", PeripheryConfig.ideal(), seed=0)
    analog, rep = deploy(net, factory, pair=True, mapping="column", verify=WriteVerifyConfig(tol=0.002, n_reads=1))
    assert isinstance(analog[0], ColumnPeriphery) and rep.digital_params == 2 * (32 + 10)
    for L, lin in zip(rep.layers, (net[0], net[2]), strict=True):
        peak = float(lin.weight.detach().abs().amax(1).max())
        assert abs(L.gain_max - peak / 1.8) < 1e-6 and L.clipped == 0
    x = torch.rand(5, 64)
    with torch.no_grad():
        assert float((analog(x) - net(x)).abs().max()) < 0.05


def test_forward_reads_average_the_output_noise():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8))
    factory = simulated_factory("ideal", PeripheryConfig(inp_res_bits=None, out_res_bits=None, out_bound=None,
                                                         out_noise=0.1), seed=1)
    var = {}
    for k in (1, 4):
        analog, _ = deploy(net, factory, mapping="layer", verify=WriteVerifyConfig(tol=0.01, n_reads=64),
                           forward_reads=k)
        x = torch.rand(1, 16).expand(400, 16)
        with torch.no_grad():
            var[k] = float(analog(x).var(dim=0).mean())
    assert 0.15 < var[4] / var[1] < 0.4, var


def test_calibrate_columns_removes_a_per_column_gain_and_offset_error():
    torch.manual_seed(0)
    net = digits_network("cnn")
    factory = simulated_factory("ideal", PeripheryConfig.ideal(), seed=0)
    analog, _ = deploy(net, factory, mapping="layer", out_scale=[0.5, 0.5, 1.0], max_iter=0)
    g = torch.Generator().manual_seed(3)
    scales = {}
    for name, mod in analog.named_modules():
        if isinstance(mod, ColumnPeriphery):
            w = net.get_submodule(name).weight.detach().reshape(mod.analog.rows, -1) / mod.gain[:, None]
            # systematic error per column: the array's gain off by 2 % (std), the offset by 0.1
            scales[name] = (1 + 0.02 * torch.randn(mod.analog.rows, generator=g)).clamp(0.96, 1.04)
            mod.analog.backend.set_weights(w * scales[name][:, None])
            mod.offset.add_(0.1 * torch.randn(mod.analog.rows, generator=g))
    gains0 = {n: m.gain.clone() for n, m in analog.named_modules() if isinstance(m, ColumnPeriphery)}
    x = torch.rand(256, 64, generator=g)
    with torch.no_grad():
        before = float((analog(x) - net(x)).pow(2).mean())
        n = calibrate_columns(analog, net, x, reads=1)
        after = float((analog(x) - net(x)).pow(2).mean())
    assert n == 256 * (16 + 4 + 1)  # output pixels of the two convolutions and the linear layer
    assert after < 1e-3 * before, (before, after)
    # each column's gain undoes its array's gain error, the offset is the bias again
    for name, mod in analog.named_modules():
        if isinstance(mod, ColumnPeriphery):
            ratio = mod.gain / gains0[name]
            assert float((ratio * scales[name] - 1).abs().max()) < 1e-3, name
            assert torch.allclose(mod.offset, net.get_submodule(name).bias.detach(), atol=1e-3)
    # an error on the weights of an always-on input is an output offset: the offset absorbs it
    lin = nn.Linear(16, 8)
    analog, _ = deploy(lin, factory, mapping="layer", max_iter=0)
    mod = analog
    w = lin.weight.detach().clone()
    delta = 0.05 * torch.randn(8, generator=g)
    w[:, 0] += delta
    mod.analog.backend.set_weights(w)
    x = torch.rand(128, 16, generator=g)
    x[:, 0] = 1.0
    with torch.no_grad():
        calibrate_columns(analog, lin, x, reads=1)
        assert torch.allclose(mod.offset, lin.bias.detach() - delta, atol=1e-4)
        assert float((analog(x) - lin(x)).abs().max()) < 1e-4


def test_deployment_summary_over_programmings():
    from hil.extraction.demo import deployment_summary

    rep = {"rms_error": 0.01, "pulses_spent": 5}
    runs = [{"seed": 0, "average_digital": 0.90, "average_deployed_each": [0.89, 0.91, 0.88], "deploy": [rep] * 3},
            {"seed": 1, "average_digital": 0.80, "average_deployed_each": [0.80, 0.78, 0.79], "deploy": [rep] * 3}]
    d = deployment_summary(runs)
    assert d["programmings"] == 3 and d["device"] == "pcm-noisy"
    assert d["per_seed"][0]["gap_each"] == pytest.approx([-0.01, 0.01, -0.02])
    assert d["per_seed"][1]["gap_mean"] == pytest.approx(-0.01)
    assert d["worst_seed_gap"] == pytest.approx(-0.01)
    assert d["gap_all"]["min"] == pytest.approx(-0.02) and d["gap_all"]["max"] == pytest.approx(0.01)
    # pooled within-model std (ddof 1 per model; model 1: gaps 0, -0.02, -0.01, variance 1e-4)
    v0 = ((0.01 / 3) ** 2 + (0.01 + 0.01 / 3) ** 2 + (0.02 - 0.01 / 3) ** 2) / 2
    assert d["std_within_model"] == pytest.approx(((v0 + 0.0001) / 2) ** 0.5)


def test_set_exact_writes_the_pair_targets():
    from hil.extraction.study import set_exact

    torch.manual_seed(0)
    net = digits_network("mlp")
    factory = simulated_factory("ideal", PeripheryConfig.ideal(), seed=0)
    analog, _ = deploy(net, factory, pair=True, mapping="column", max_iter=0)
    set_exact(analog, net)
    for idx in (0, 2):
        mod = analog[idx]
        t = net[idx].weight.detach() / mod.gain[:, None]
        g = mod.analog.backend.base.true_weights()
        assert torch.allclose(g, torch.cat([t / 2, -t / 2], dim=1), atol=1e-6)
    x = torch.rand(4, 64)
    with torch.no_grad():
        assert float((analog(x) - net(x)).abs().max()) < 1e-4


def test_layer_only_accuracy_points_at_the_damaged_layer():
    from hil.extraction.study import layer_only_accuracy, set_exact

    torch.manual_seed(0)
    net = digits_network("mlp")
    factory = simulated_factory("ideal", PeripheryConfig.ideal(), seed=0)
    analog, _ = deploy(net, factory, pair=True, mapping="column", max_iter=0)
    set_exact(analog, net)
    x = torch.rand(200, 64)
    with torch.no_grad():
        y = net(x).argmax(1)
    assert layer_only_accuracy(analog, net, x, y) == [1.0, 1.0]
    base = analog[2].analog.backend.base
    w = base.true_weights()
    w[:, :32] = -w[:, :32]  # layer 2's G+ mirrored: its weights far off
    base.set_weights(w)
    acc = layer_only_accuracy(analog, net, x, y)
    assert acc[0] == 1.0 and acc[1] < 0.9


@pytest.mark.slow
def test_extraction_demo_one_seed_averaging_helps():
    from hil.extraction import run_extraction_seed
    from hil.extraction.demo import CONSTANT_RATE

    # constant-rate TTv2: the last iterate wanders, the average does not
    r = run_extraction_seed(0, overrides=CONSTANT_RATE, analog=False)
    assert r["average_digital"] > r["last_iterate_digital"] + 0.02
    # the target, on the mean of the 3 programmings, and no programming far off
    assert abs(r["average_deployed"] - r["average_digital"]) < 0.01
    assert all(L["far_off"] == 0 for d in r["deploy"] for L in d["layers"])
