"""Validation on real measurements: one ferroelectric device split in two (../shared/data).

The ferroelectric set (ferro-hzo-ampsweep) is the shared data with several runs
per device; each run is one cycle (an amplitude sweep down, then up).  Devices
with at least 6 runs: ID161ZR15000 (7), ID170ZR5000 (6), ID181ZR1000 (6),
ID301XR1000Oct (12).  Their runs change the pulse width from run to run (20 ns
to 2 ms, or 5 ms to 20 ns) and the devices wake up over the runs (ID301's top
conductance grows 2.6x), so earlier and later runs are not one protocol: the
interleaved halves (even and odd runs, the same span of time and widths) are
the like-for-like split, and they must pass; the earlier and later halves of
ID301XR1000Oct (widths 5 ms..20 us against 5 us..20 ns, after wake-up) must fail.

Runs of one device with one pulse width (one protocol): ID161ZR15000 runs 0 and 1
(20 ns) and ID294YR runs 0-2 (0.5 ms).  The gong HfO2 file is one device and one
cycle: nothing to split.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

from hil.validation.compare import compare_measurements
from hil.validation.measurements import from_loaded
from hil.validation.splits import cycle_settings, same_setting_groups, select_cycles, split_cycles

MULTI_RUN = ("ID161ZR15000", "ID170ZR5000", "ID181ZR1000", "ID301XR1000Oct")


@lru_cache(maxsize=1)
def _load(folder: Path):
    from hil.calibration.importers.base import import_measurements

    _, res = import_measurements(folder, "wgfmu-summary")
    return from_loaded(res.measurements), cycle_settings(res.measurements, ("width_s",), digits=2)


@pytest.fixture
def ferro(shared_data: Path):
    return _load(shared_data / "ferro-hzo-ampsweep")[0]


@pytest.fixture
def widths(shared_data: Path):
    return _load(shared_data / "ferro-hzo-ampsweep")[1]


@pytest.mark.parametrize("device", MULTI_RUN)
def test_interleaved_halves_of_one_device_pass(ferro, device: str) -> None:
    a, b = split_cycles(ferro, device, "interleaved")
    rep = compare_measurements(a, b).report
    assert rep.passed, (device, rep.failed())
    assert rep.n_evaluated >= 9  # d2d needs 3 devices and read noise repeated reads: n/a here
    assert rep.statistic("trajectory_nrmse").status == "pass"


def test_earlier_and_later_runs_of_a_changed_device_fail(ferro) -> None:
    a, b = split_cycles(ferro, "ID301XR1000Oct", "halves")
    rep = compare_measurements(a, b).report
    assert not rep.passed
    assert "trajectory_nrmse" in rep.failed()


def test_runs_of_one_pulse_width_are_found(widths) -> None:
    groups = {(d, c[0]): cycles for d, c, cycles in same_setting_groups(widths)}
    assert groups == {("ID161ZR15000", 2e-08): [0, 1], ("ID294YR", 0.0005): [0, 1, 2]}


def test_earlier_and_later_run_of_one_width_agree_except_the_up_step_spread(ferro) -> None:
    """ID161ZR15000, the two 20-ns runs (earlier, later): step means, asymmetry, number of
    states and the step distributions (KS) pass; the up-step spread fails (1.55 against 1.51):
    the later run's up steps scatter more than the very smooth earlier run's (still 0.77
    against 0.59 with its one glitch read removed).  One run per side: the run-to-run
    variability cannot be estimated (trajectory n/a, allowances from single steps)."""
    a = select_cycles(ferro, "ID161ZR15000", [0], "earlier")
    b = select_cycles(ferro, "ID161ZR15000", [1], "later")
    rep = compare_measurements(a, b).report
    assert rep.statistic("trajectory_nrmse").status == "n/a"
    for name in ("step_mean_up", "step_mean_down", "asymmetry", "step_ks_up", "step_ks_down", "n_states"):
        assert rep.statistic(name).status == "pass", (name, rep.statistic(name))
    assert rep.failed() == ["step_spread_up"]


def test_neighbouring_runs_of_one_sweep_range_pass(ferro) -> None:
    """ID301XR1000Oct runs 6-8 share the amplitude sweep (0..4 V) with widths 5, 2 and 0.5 us."""
    rep = compare_measurements(select_cycles(ferro, "ID301XR1000Oct", [6, 7]),
                               select_cycles(ferro, "ID301XR1000Oct", [8])).report
    assert rep.passed, rep.failed()
    assert rep.statistic("trajectory_nrmse").status == "pass"


def test_single_cycle_file_cannot_be_split(shared_data: Path) -> None:
    """The gong HfO2 file holds one device and one up/down cycle: no earlier/later halves."""
    from hil.calibration.importers.base import import_measurements
    from hil.validation.measurements import UnusableInputError

    _, res = import_measurements(shared_data / "reram-hfo2-gong" / "gong_et_al.csv", "updown-columns")
    m = from_loaded(res.measurements)
    assert m.devices == ["gong_et_al"] and set(m.cycle.tolist()) == {0}
    with pytest.raises(UnusableInputError, match="need 2 to split"):
        split_cycles(m, "gong_et_al", "halves")
