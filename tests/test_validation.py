"""Statistics of hil.validation: steps, read groups, KS, d2d, unusable input, report round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from hil.characterization.protocol import PulseProtocol
from hil.device_model import ConstantStep, DeviceModel, DeviceVariation, SoftBoundsStep
from hil.validation.compare import STATISTICS, compare_measurements
from hil.validation.measurements import Measurements, UnusableInputError
from hil.validation.report import ValidationReport, format_table, markdown, write_report
from hil.validation.statistics import ks_null, prepare
from hil.validation.synthetic import simulated_measurements


def _model(c2c: float = 0.5, d2d: float = 0.1, read_noise: float = 0.01) -> DeviceModel:
    spread = {"dw_up": d2d, "dw_down": d2d, "w_min": d2d, "w_max": d2d} if d2d else {}
    return DeviceModel(
        step=SoftBoundsStep(dw_up=0.03, dw_down=0.02),
        variation=DeviceVariation(c2c=c2c, d2d=spread),
        read_noise=read_noise,
    )


SMALL = PulseProtocol(n_up=30, n_down=30, cycles=6, repeated_reads=4)


def test_ks_null_equals_scipy_d_on_every_value() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 70)
    b = rng.normal(0.3, 1.2, 50)
    values = np.r_[a, b]
    units = np.arange(values.size)
    labels = np.zeros((3, values.size), dtype=bool)
    labels[0, : a.size] = True  # the observed split
    labels[1] = rng.random(values.size) < 0.5
    labels[2, ::2] = True
    d = ks_null(values, units, labels, grid=10_000)
    for p in range(3):
        want = sps.ks_2samp(values[labels[p]], values[~labels[p]]).statistic
        assert d[p] == pytest.approx(want, abs=1e-12)


def test_steps_states_read_groups_and_pulse_jumps() -> None:
    # device a: read, 2 reads (polarity 0), up, up, down, [jump], up ; device b: one cycle
    rows = [
        ("a", 0, 0, 0, 1.0), ("a", 0, 1, 0, 1.2), ("a", 0, 2, 0, 0.8),
        ("a", 0, 3, 1, 2.0), ("a", 0, 4, 1, 3.5), ("a", 0, 5, -1, 3.0),
        ("a", 0, 9, 1, 5.0),  # pulse number jumps: unrecorded events, no step here
        ("a", 1, 10, 1, 6.0),  # new cycle: no step across the cycle boundary
        ("a", 1, 11, -1, 5.5),
        ("b", 0, 0, 1, 1.0), ("b", 0, 1, -1, 0.5),
    ]
    m = Measurements.from_columns(*zip(*rows, strict=True))
    p = prepare(m)
    steps = {(str(m.device[i]), int(m.pulse[i])): (int(p.step_dir[i]), p.state[i], p.step[i])
             for i in np.flatnonzero(p.step_dir >= 0)}
    assert steps == {
        ("a", 3): (0, 0.8, pytest.approx(1.2)),
        ("a", 4): (0, 2.0, pytest.approx(1.5)),
        ("a", 5): (1, 3.5, pytest.approx(-0.5)),
        ("a", 11): (1, 6.0, pytest.approx(-0.5)),
        ("b", 1): (1, 1.0, pytest.approx(-0.5)),
    }
    # one read group: rows 0-2 of device a (values 1.0, 1.2, 0.8): SS 0.08 over 2 dof
    assert p.read_dof.sum() == pytest.approx(2.0)
    assert p.read_dev2.sum() == pytest.approx(0.08)
    assert p.n_dev == 2 and p.n_blocks == 3


def test_rows_given_out_of_order_are_sorted() -> None:
    m = Measurements.from_columns(["x", "x", "x"], [0, 0, 0], [2, 0, 1], [1, 0, 1], [3.0, 1.0, 2.0])
    assert m.pulse.tolist() == [0, 1, 2]
    assert m.conductance.tolist() == [1.0, 2.0, 3.0]


def test_malformed_rows_are_refused_with_the_row() -> None:
    with pytest.raises(UnusableInputError, match="polarity must be -1, 0 or \\+1, found 2 at data row 1"):
        Measurements.from_columns(["x", "x"], [0, 0], [0, 1], [1, 2], [1.0, 2.0])
    with pytest.raises(UnusableInputError, match="'conductance' has 1 NaN"):
        Measurements.from_columns(["x", "x"], [0, 0], [0, 1], [1, 1], [1.0, float("nan")])


def test_read_noise_is_recovered() -> None:
    # std of the estimate of sigma with d dof is sigma / sqrt(2 d); d = 6 cycles x 3 x 16 devices
    m = simulated_measurements(_model(read_noise=0.02), SMALL, 4, 4, seed=5)
    c = compare_measurements(m, m)
    rn = c.report.statistic("read_noise")
    sigma = 0.02 * c.axis.scale / 2.0 * (1e-5 - 1e-6) / c.axis.scale  # weight noise -> siemens
    dof = 6 * 3 * 16
    assert rn.reference == pytest.approx(sigma, abs=4 * sigma / np.sqrt(2 * dof))


def test_d2d_spread_of_the_step_is_compared() -> None:
    # soft bounds: the state-matched CV of the up step follows the d2d of dw_up; 0.05 vs 0.3
    # on 256 devices is far outside the sampling error, 0.3 vs 0.3 inside it
    def model(d2d_up: float) -> DeviceModel:
        return DeviceModel(
            step=SoftBoundsStep(dw_up=0.03, dw_down=0.03),
            variation=DeviceVariation(c2c=0.3, d2d={"dw_up": d2d_up}),
            read_noise=0.005,
        )

    proto = PulseProtocol(n_up=20, n_down=20, cycles=4)
    ref = simulated_measurements(model(0.3), proto, 16, 16, seed=2)
    same = compare_measurements(ref, simulated_measurements(model(0.3), proto, 16, 16, seed=3)).report
    low = compare_measurements(ref, simulated_measurements(model(0.05), proto, 16, 16, seed=3)).report
    assert same.statistic("d2d_step_up").status == "pass"
    assert low.statistic("d2d_step_up").status == "fail"
    assert low.statistic("d2d_step_up").candidate < 0.1
    assert low.statistic("d2d_step_down").status == "pass"


def test_same_file_passes_with_zero_differences() -> None:
    m = simulated_measurements(_model(), SMALL, 4, 4, seed=1)
    rep = compare_measurements(m, m).report
    assert rep.passed and [s.name for s in rep.statistics] == list(STATISTICS)
    for s in rep.statistics:
        if s.status != "n/a":
            assert s.value == pytest.approx(0.0, abs=1e-12), s.name


def test_different_numbers_of_devices_and_cycles_compare_distributions() -> None:
    ref = simulated_measurements(_model(), PulseProtocol(n_up=30, n_down=30, cycles=8, repeated_reads=4), 8, 8, seed=1)
    cand = simulated_measurements(_model(), PulseProtocol(n_up=30, n_down=30, cycles=5, repeated_reads=4), 6, 6, seed=2)
    rep = compare_measurements(ref, cand).report
    assert rep.reference.devices == 64 and rep.candidate.devices == 36
    assert rep.passed, format_table(rep)


def test_a_constant_step_device_fails_against_soft_bounds() -> None:
    ref = simulated_measurements(_model(), SMALL, 8, 8, seed=1)
    wrong = DeviceModel(
        step=ConstantStep(dw_up=0.025, dw_down=0.025),
        variation=DeviceVariation(c2c=0.5, d2d={"dw_up": 0.1, "dw_down": 0.1}),
        read_noise=0.01,
    )
    rep = compare_measurements(ref, simulated_measurements(wrong, SMALL, 8, 8, seed=2)).report
    assert not rep.passed
    assert {"step_mean_up", "step_mean_down", "step_ks_up", "step_ks_down"} <= set(rep.failed())


def test_different_protocols_are_unusable_input() -> None:
    ref = simulated_measurements(_model(), SMALL, 4, 4, seed=1)
    other = simulated_measurements(_model(), PulseProtocol(n_up=10, n_down=10, cycles=6), 4, 4, seed=1)
    with pytest.raises(UnusableInputError, match="do not follow one protocol.*\\+1 x 30, -1 x 30.*\\+1 x 10, -1 x 10"):
        compare_measurements(ref, other)


def test_too_few_steps_and_flat_reference_are_unusable() -> None:
    few = Measurements.from_columns(["a"] * 6, [0] * 6, range(6), [1, 1, 1, -1, -1, -1], [1, 2, 3, 2, 1, 0.0])
    with pytest.raises(UnusableInputError, match="2 up-pulse steps \\(need at least 20\\)"):
        compare_measurements(few, few)
    n = 60
    flat = Measurements.from_columns(["a"] * n, [0] * n, range(n), [1] * 30 + [-1] * 30, [1.0] * n)
    with pytest.raises(UnusableInputError, match="flat"):
        compare_measurements(flat, flat)


def test_report_json_round_trip_markdown_and_figures(tmp_path) -> None:
    ref = simulated_measurements(_model(), SMALL, 4, 4, seed=1)
    cand = simulated_measurements(_model(c2c=1.0), SMALL, 4, 4, seed=2)
    comp = compare_measurements(ref, cand)
    md = write_report(comp, tmp_path / "rep")
    back = ValidationReport.load(tmp_path / "rep" / "report.json")
    assert back == comp.report
    assert back.figures == ["trajectories.png", "step_vs_state.png", "step_histograms.png"]
    for f in back.figures:
        assert (tmp_path / "rep" / f).stat().st_size > 5000
    text = md.read_text()
    assert "| step_spread_up |" in text and "## Thresholds and their reasons" in text
    assert markdown(back) == text
