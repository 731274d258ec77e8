"""Validation on real measurements: one ferroelectric device split in two (../shared/data).

The ferroelectric set (ferro-hzo-ampsweep) is the shared data with several runs
per device; each run is one cycle (an amplitude sweep down, then up).  Devices
with at least 6 runs: ID161ZR15000 (7), ID170ZR5000 (6), ID181ZR1000 (6),
ID301XR1000Oct (12).  No device repeats one pulse program (pulse width and the
amplitude of every pulse) in two runs: the width changes from run to run (20 ns
to 2 ms, or 5 ms to 20 ns) with the amplitude sweep, and the devices wake up
over the runs (ID301's top conductance grows 2.6x).  The runs that share a pulse
width (ID161ZR15000 runs 0 and 1, ID294YR runs 0-2) still differ in their
amplitude sweeps.  The gong HfO2 file is one device and one cycle.

What the statistics must do with that: interleaved halves (even and odd runs,
the same span of time and widths) pass; the earlier and later halves of ID301
(widths 5 ms..20 us against 5 us..20 ns, after wake-up) fail; any split with one
run on a side is *insufficient replication* (the run-to-run variability cannot
be estimated from one run), never a pass.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

from hil.validation.compare import compare_measurements
from hil.validation.measurements import from_loaded
from hil.validation.splits import (
    cycle_settings,
    run_protocols,
    same_setting_groups,
    select_cycles,
    split_cycles,
)

MULTI_RUN = ("ID161ZR15000", "ID170ZR5000", "ID181ZR1000", "ID301XR1000Oct")


@lru_cache(maxsize=1)
def _load(folder: Path):
    from hil.calibration.importers.base import import_measurements

    _, res = import_measurements(folder, "wgfmu-summary")
    return from_loaded(res.measurements), res.measurements


@pytest.fixture
def ferro(shared_data: Path):
    return _load(shared_data / "ferro-hzo-ampsweep")[0]


@pytest.fixture
def loaded(shared_data: Path):
    return _load(shared_data / "ferro-hzo-ampsweep")[1]


@pytest.mark.parametrize("device", MULTI_RUN)
def test_interleaved_halves_of_one_device_pass(ferro, device: str) -> None:
    a, b = split_cycles(ferro, device, "interleaved")
    rep = compare_measurements(a, b).report
    assert rep.verdict == "pass", (device, rep.failed(), rep.insufficient())
    assert rep.n_evaluated >= 9  # d2d needs 3 devices and read noise repeated reads: n/a here
    assert rep.statistic("trajectory_nrmse").status == "pass"
    assert rep.reference.resampled_by == "block" and rep.reference.units >= 3


def test_earlier_and_later_runs_of_a_changed_device_fail(ferro) -> None:
    a, b = split_cycles(ferro, "ID301XR1000Oct", "halves")
    rep = compare_measurements(a, b).report
    assert rep.verdict == "fail"
    assert "trajectory_nrmse" in rep.failed()
    assert (rep.reference.units, rep.candidate.units) == (6, 6)


def test_no_device_repeats_one_pulse_program(loaded) -> None:
    """The earlier/later check needs repeated runs of one protocol on one device: none exist."""
    programs = run_protocols(loaded)
    assert len(programs) == 44
    assert same_setting_groups(programs) == []
    # the runs that share a pulse width differ in their amplitude sweeps
    widths = {(d, c[0]): cycles for d, c, cycles in same_setting_groups(cycle_settings(loaded, ("width_s",), digits=2))}
    assert widths == {("ID161ZR15000", 2e-08): [0, 1], ("ID294YR", 0.0005): [0, 1, 2]}
    assert same_setting_groups(cycle_settings(loaded, ("width_s", "amplitude_v"), digits=3)) == []
    # one program on several devices exists (a device-to-device comparison, not a split of one device)
    shared: dict[tuple, list[tuple[str, int]]] = {}
    for key, prog in programs.items():
        shared.setdefault(prog, []).append(key)
    assert [("ID161ZR15000", 1), ("ID170ZR5000", 0), ("ID180ZR1000", 0)] in shared.values()


@pytest.mark.parametrize(("device", "first", "second"), [
    ("ID161ZR15000", [0], [1]),  # both 20 ns; sweeps from 1.136 and from 0.742 V
    ("ID294YR", [0], [1, 2]),  # all 0.5 ms; negative sweeps to -2.5, -1.7, -1.8 V
    ("ID301XR1000Oct", [6, 7], [8]),  # one 0..4 V sweep program, 5 / 2 / 0.5 us
])
def test_a_single_run_on_a_side_is_insufficient_replication(ferro, device: str, first, second) -> None:
    """One run per side: the run-to-run variability cannot be estimated, so nothing is judged:
    the verdict is insufficient replication, not a pass (and no fail from single-step errors)."""
    rep = compare_measurements(select_cycles(ferro, device, first), select_cycles(ferro, device, second)).report
    assert rep.verdict == "insufficient" and not rep.passed
    assert rep.failed() == [] and rep.n_evaluated == 0
    computed = [s for s in rep.statistics if s.value is not None]
    assert len(computed) >= 9 and all(s.status == "insufficient" for s in computed)
    assert all(s.status == "n/a" for s in rep.statistics if s.name.startswith("d2d") or s.name == "read_noise")
    assert "insufficient replication" in rep.statistic("step_spread_up").note


def test_single_cycle_file_cannot_be_split(shared_data: Path) -> None:
    """The gong HfO2 file holds one device and one up/down cycle: no earlier/later halves."""
    from hil.calibration.importers.base import import_measurements
    from hil.validation.measurements import UnusableInputError

    _, res = import_measurements(shared_data / "reram-hfo2-gong" / "gong_et_al.csv", "updown-columns")
    m = from_loaded(res.measurements)
    assert m.devices == ["gong_et_al"] and set(m.cycle.tolist()) == {0}
    with pytest.raises(UnusableInputError, match="need 2 to split"):
        split_cycles(m, "gong_et_al", "halves")
