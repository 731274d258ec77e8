"""Sensitivity and specificity of the default thresholds on synthetic data (docs/validation.md).

Base point (hil.validation.sensitivity): soft-bounds device, up/down step 0.03/0.02,
c2c 0.5, d2d 0.1, read noise 0.01; 16 x 16 devices, 10 cycles of 5 reads + 50 up
+ 50 down pulses.  A 20 % change of c2c or of the up/down ratio must fail; the
same model (other devices, other noise) must pass in at least 19 of 20 seeds.
"""

from __future__ import annotations

import pytest

from hil.validation.compare import compare_measurements
from hil.validation.sensitivity import base_model, base_protocol, changed_model, sensitivity_study
from hil.validation.synthetic import simulated_measurements


@pytest.fixture(scope="module")
def reference():
    return simulated_measurements(base_model(), base_protocol(), 16, 16, seed=0)


def test_identical_model_passes(reference) -> None:
    cand = simulated_measurements(changed_model("identical"), base_protocol(), 16, 16, seed=1000)
    rep = compare_measurements(reference, cand).report
    assert rep.passed, rep.failed()
    assert rep.n_evaluated == 14


def test_c2c_plus_20_percent_is_detected(reference) -> None:
    cand = simulated_measurements(changed_model("c2c+20%"), base_protocol(), 16, 16, seed=1001)
    rep = compare_measurements(reference, cand).report
    assert not rep.passed
    assert set(rep.failed()) <= {"step_spread_up", "step_spread_down"}, rep.failed()


def test_asymmetry_plus_20_percent_is_detected(reference) -> None:
    cand = simulated_measurements(changed_model("asym+20%"), base_protocol(), 16, 16, seed=1002)
    rep = compare_measurements(reference, cand).report
    assert not rep.passed
    assert {"step_mean_up", "asymmetry"} <= set(rep.failed())
    assert "step_mean_down" not in rep.failed()


@pytest.mark.slow
def test_sensitivity_study_20_seeds() -> None:
    # 5 x 20 comparisons (about 10 minutes on 2 busy cores)
    res = sensitivity_study(seeds=20)
    rows = {r["change"]: r for r in res["rows"]}
    assert rows["identical"]["failed"] <= 1, rows["identical"]
    for change in ("c2c+20%", "c2c-20%", "asym+20%", "asym-20%"):
        assert rows[change]["failed"] >= 18, rows[change]
