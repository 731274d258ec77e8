"""The noise match (calibration/noise_match.py): noise terms scaled so that a free-running replay
is as spread per pulse as the measurement, and left alone where the likelihood already is."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.calibration.mapping import Mapping
from hil.calibration.noise_match import match_step_spread, scale_noise
from hil.calibration.roundtrip import simulate
from hil.device_model import DeviceModel, DeviceVariation, SoftBoundsStep, TableStep


def _model() -> DeviceModel:
    return DeviceModel(step=SoftBoundsStep(dw_up=0.05, dw_down=0.04),
                       variation=DeviceVariation(c2c=0.5, write_noise=0.01, write_noise_rho=0.5,
                                                 d2d={"dw_up": 0.1}),
                       read_noise=0.02)


def test_scale_noise_scales_the_noise_terms_and_nothing_else() -> None:
    m = _model()
    half = scale_noise(m, 0.5)
    assert half.variation.c2c == pytest.approx(0.25)
    assert half.variation.write_noise == pytest.approx(0.005)
    assert half.read_noise == pytest.approx(0.01)
    assert half.variation.write_noise_rho == 0.5 and half.variation.d2d == {"dw_up": 0.1}
    assert half.step == m.step
    measured_read = scale_noise(m, 0.5, read=False)
    assert measured_read.read_noise == 0.02 and measured_read.variation.c2c == pytest.approx(0.25)
    table = DeviceModel(step=TableStep(grid=[-1.0, 0.0, 1.0], up_mean=[0.02] * 3, down_mean=[0.02] * 3,
                                       up_std=[0.01, 0.02, 0.03], down_std=[0.004] * 3))
    t = scale_noise(table, 2.0)
    assert isinstance(t.step, TableStep)
    assert t.step.up_std == pytest.approx([0.02, 0.04, 0.06]) and t.step.down_std == pytest.approx([0.008] * 3)
    assert t.step.up_mean == [0.02] * 3
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise scale"):
            scale_noise(m, bad)


def test_overestimated_noise_is_scaled_back_and_the_true_noise_is_kept(tmp_path: Path) -> None:
    """Data of a known population: its own model reproduces the step spread (kappa 1, not
    applied); the same model with twice the write and read noise is scaled back to about half."""
    ms, _, truth = simulate("softbounds", 0, tmp_path)
    assert truth.conductance is not None
    mapping = Mapping(model=truth.conductance)
    own = match_step_spread(truth, ms, mapping)
    assert not own.applied, own.line()
    assert abs(own.kappa - 1) < 0.15, own.line()
    noisy = scale_noise(truth, 2.0)
    back = match_step_spread(noisy, ms, mapping)
    assert back.applied, back.line()
    assert 0.4 < back.kappa < 0.6, back.line()
    assert back.measured_var == pytest.approx(own.measured_var)
    assert back.replayed_var_likelihood > 2 * back.measured_var
    assert set(back.scaled) == {"c2c", "write_noise", "read_noise"}
    # a read noise measured from repeated reads is not scaled, so it is not in the list
    assert "read_noise" not in match_step_spread(noisy, ms, mapping, scale_read=False).scaled


def test_a_noise_free_model_is_left_alone(tmp_path: Path) -> None:
    ms, _, truth = simulate("softbounds", 1, tmp_path)
    quiet = scale_noise(truth, 0.0)
    assert truth.conductance is not None
    out = match_step_spread(quiet, ms, Mapping(model=truth.conductance))
    assert not out.applied and "no fitted noise term" in out.reason
