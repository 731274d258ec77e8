"""The allowance is built on replication units (devices, cycles), never on single steps.

Synthetic single-device data whose runs vary from run to run
(:mod:`hil.validation.replication`): steps of one run share that run's step size,
so the sampling error of a comparison must come from the runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps

from hil.calibration.measurements import MeasurementSet
from hil.cli.main import cli
from hil.validation.compare import compare_measurements
from hil.validation.measurements import Measurements
from hil.validation.replication import (
    replication_study,
    run_varying_measurements,
    single_device_model,
)
from hil.validation.statistics import build_features, choose_level, prepare, replicates
from hil.validation.thresholds import ValidationThresholds

MODEL = single_device_model(c2c=0.1, read_noise=0.002)


def test_units_are_devices_else_cycles_never_steps() -> None:
    one = prepare(run_varying_measurements(MODEL, 1, seed=1))
    three = prepare(run_varying_measurements(MODEL, 3, seed=1))
    assert choose_level(one, 5) == "none"
    assert choose_level(three, 5) == "block"


def test_jackknife_and_bootstrap_variance_of_a_mean_is_the_textbook_one() -> None:
    """For the mean trajectory (linear in the units) both give s^2 / G over the G cycles."""
    from hil.validation.compare import _axis

    m = run_varying_measurements(MODEL, 4, run_sd=0.3, seed=2)
    p = prepare(m)
    axis = _axis(p, p, ValidationThresholds())
    feat = build_features(p, axis, "block")
    per_cycle = np.stack([axis.norm(m.conductance[(m.cycle == c) & (m.polarity != 0)]) for c in range(4)])
    want = per_cycle.var(axis=0, ddof=1) / 4
    jk = replicates(feat, 200, np.random.default_rng(0), 20, min_units=5)
    assert jk.method == "jackknife" and jk.dof == 3
    got = jk.var_scale * np.var(jk.stats.traj, axis=0, ddof=1)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    bs = replicates(feat, 4000, np.random.default_rng(0), 20, min_units=4)
    assert bs.method == "bootstrap"
    got = bs.var_scale * np.var(bs.stats.traj, axis=0, ddof=1)
    assert np.median(got / want) == pytest.approx(1.0, abs=0.08)


def test_one_cycle_per_file_is_insufficient_not_pass() -> None:
    a = run_varying_measurements(MODEL, 1, seed=3)
    b = run_varying_measurements(MODEL, 1, seed=4)
    rep = compare_measurements(a, b).report
    assert rep.verdict == "insufficient" and not rep.passed and rep.n_evaluated == 0
    assert rep.reference.resampled_by == "none" and rep.reference.units == 1
    assert {s.status for s in rep.statistics} <= {"insufficient", "n/a"}
    assert rep.statistic("step_mean_up").value is not None  # computed, shown, not judged


def test_run_to_run_variation_widens_the_allowance() -> None:
    """The same 3 + 3 runs with and without run-to-run variation of the step size: the
    allowance of the mean step must grow with it (a step-level error would barely see it)."""
    th = ValidationThresholds()
    allowance = {}
    for sd in (0.0, 0.3):
        a = run_varying_measurements(MODEL, 3, run_sd=sd, seed=5)
        b = run_varying_measurements(MODEL, 3, run_sd=sd, seed=6)
        rep = compare_measurements(a, b, th).report
        s = rep.statistic("step_mean_up")
        assert s.status in ("pass", "fail") and s.dof is not None and s.dof < 5
        allowance[sd] = s.allowance
    assert allowance[0.3] > 2.5 * allowance[0.0], allowance


def test_t_quantile_for_few_units() -> None:
    """5 + 5 cycles: the scalar allowances are the t quantile (Welch dof) over z = 3 times wider."""
    a = run_varying_measurements(MODEL, 5, run_sd=0.1, seed=7)
    b = run_varying_measurements(MODEL, 5, run_sd=0.1, seed=8)
    t_rep = compare_measurements(a, b, ValidationThresholds()).report
    z_rep = compare_measurements(a, b, ValidationThresholds(small_sample=False)).report
    s_t, s_z = t_rep.statistic("asymmetry"), z_rep.statistic("asymmetry")
    assert 4 <= s_t.dof <= 8
    ratio = s_t.allowance / s_z.allowance
    assert ratio == pytest.approx(sps.t.ppf(sps.norm.cdf(3.0), s_t.dof) / 3.0, rel=1e-6)


def test_cli_exit_2_for_insufficient_replication(tmp_path) -> None:
    paths = []
    for seed in (9, 10):
        m: Measurements = run_varying_measurements(MODEL, 1, seed=seed)
        path = tmp_path / f"run{seed}.csv"
        MeasurementSet(device=m.device, cycle=m.cycle, pulse=m.pulse, polarity=m.polarity,
                       conductance=m.conductance).save(path)
        paths.append(str(path))
    out = tmp_path / "rep.json"
    res = CliRunner().invoke(cli, ["validate", *paths, "--json", str(out), "--report", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "INSUFFICIENT REPLICATION" in res.output
    assert "unusable input: insufficient replication" in res.output
    assert out.exists() and (tmp_path / "r" / "report.md").exists()


@pytest.mark.slow
def test_replication_study_keeps_the_false_failure_rate() -> None:
    # 12 x 40 comparisons (about 3 minutes on 2 busy cores)
    res = replication_study(seeds=40, power_runs=())
    for row in res["rows"]:
        if row["runs_per_side"] == 1:
            assert row["insufficient"] == row["seeds"], row
        else:  # one run population on both sides (a 10 % drift over 20 runs for earlier/later)
            assert row["fail"] <= 2, row
