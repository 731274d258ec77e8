"""Device-to-device spread within groups of devices pulsed alike (calibration/spread.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hil.calibration.mapping import MappingSpec
from hil.calibration.measurements import MeasurementSet
from hil.calibration.pipeline import CalibrationConfig, calibrate
from hil.calibration.spread import device_spread, pulse_width_groups

G_RANGE = (1e-6, 11e-6)


def test_device_spread_within_groups_and_the_one_group_case() -> None:
    rng = np.random.default_rng(0)
    se = np.full(8, 0.01)
    # two groups far apart, no spread inside either: one group reads the gap as spread
    vals = np.r_[np.full(4, 1.0), np.full(4, 2.0)] + 0.01 * rng.normal(size=8)
    one = device_spread(vals, se)
    two = device_spread(vals, se, np.r_[np.zeros(4), np.ones(4)].astype(int))
    assert one is not None and two is not None
    assert one["significant"] and one["estimate"] > 0.3 and one["dof"] == 7
    assert not two["significant"] and two["estimate"] < 0.02 and two["dof"] == 6 and two["groups_used"] == 2
    assert two["raw"] == pytest.approx(one["raw"])
    # the one-group result is the plain rule: variance over devices less the mean squared error
    v = rng.normal(1.0, 0.2, size=6)
    s = np.full(6, 0.05)
    r = device_spread(v, s)
    assert r is not None
    assert r["estimate"] == pytest.approx(np.sqrt(np.var(v, ddof=1) - 0.05**2) / abs(v.mean()))
    assert r["chi2"] == pytest.approx(np.sum(((v - v.mean()) / s) ** 2))
    # groups of one carry no information; fewer than 2 degrees of freedom: no estimate
    assert device_spread(v, s, np.arange(6)) is None
    assert device_spread(v[:2], s[:2]) is None
    # unknown standard errors leave the test with fewer degrees of freedom, never a crash
    s_nan = s.copy()
    s_nan[:4] = np.nan
    r_nan = device_spread(v, s_nan)
    assert r_nan is not None and not r_nan["significant"] and r_nan["estimate"] == 0.0


def _two_protocols(seed: int = 0) -> MeasurementSet:
    """Six constant-step devices without any device-to-device spread; the three pulsed with
    2 ms pulses move 2.5 x more per pulse than the three pulsed with 20 ns pulses."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("device", "cycle", "pulse", "polarity", "conductance", "width_s")}
    for d in range(6):
        long = d >= 3
        dw, width = (0.05 if long else 0.02), (2e-3 if long else 2e-8)
        w, k = -0.9, 0
        for c in range(4):
            for pol in [1] * 40 + [-1] * 40:
                w = float(np.clip(w + pol * dw * (1 + 0.3 * rng.normal()), -1.0, 1.0))
                g = G_RANGE[0] + (w + 1) / 2 * (G_RANGE[1] - G_RANGE[0]) + 2e-8 * rng.normal()
                for key, val in zip(rows, (f"d{d}", c, k, pol, g, width), strict=True):
                    rows[key].append(val)
                k += 1
    width = np.array(rows.pop("width_s"))
    return MeasurementSet(**{k: np.array(v) for k, v in rows.items()}, optional={"width_s": width})


def test_calibration_reads_a_width_difference_as_protocol_not_device_spread() -> None:
    ms = _two_protocols()
    groups = pulse_width_groups(ms, np.ones(len(ms), dtype=bool), ms.devices)
    assert groups is not None and groups.tolist() == [0, 0, 0, 1, 1, 1]
    same = MeasurementSet(ms.device, ms.cycle, ms.pulse, ms.polarity, ms.conductance,
                          optional={"width_s": np.full(len(ms), 1e-6)})
    assert pulse_width_groups(same, np.ones(len(ms), dtype=bool), ms.devices) is None
    plain = MeasurementSet(ms.device, ms.cycle, ms.pulse, ms.polarity, ms.conductance)
    assert pulse_width_groups(plain, np.ones(len(ms), dtype=bool), ms.devices) is None

    base = {"model": "constant", "mapping": MappingSpec(g_range=G_RANGE), "write_noise": "off"}
    grouped = calibrate(ms, CalibrationConfig(**base))
    ungrouped = calibrate(ms, CalibrationConfig(**base, d2d_groups="none"))
    # across protocols the steps differ by 2.5x: the ungrouped rule calls it device variation
    assert ungrouped.model.variation.d2d.get("dw_up", 0.0) > 0.3
    assert grouped.model.variation.d2d.get("dw_up", 0.0) == 0.0
    assert grouped.parameters["dw_up"]["d2d_groups"] == 2
    assert any("different sets of pulse widths" in n for n in grouped.notes)
    assert not any("different sets of pulse widths" in n for n in ungrouped.notes)


def test_calibrate_cli_d2d_groups_option(tmp_path) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from hil.cli.main import cli
    from hil.device_model import DeviceModel

    src = _two_protocols(1).save(tmp_path / "two.csv")
    spread = {}
    for opt in ("pulse-width", "none"):
        out = tmp_path / f"{opt}.json"
        r = CliRunner().invoke(cli, ["calibrate", str(src), "-o", str(out), "--model", "constant", "--write-noise", "off",
                                     "--g-range", f"{G_RANGE[0]},{G_RANGE[1]}", "--no-replay-check", "--d2d-groups", opt])
        assert r.exit_code == 0, r.output
        m = DeviceModel.load(out)
        assert m.provenance["config"]["d2d_groups"] == opt.replace("-", "_")
        spread[opt] = m.variation.d2d.get("dw_up", 0.0)
    assert spread["pulse-width"] == 0.0 and spread["none"] > 0.3
    r = CliRunner().invoke(cli, ["calibrate", str(src), "-o", str(tmp_path / "x.json"), "--d2d-groups", "device"])
    assert r.exit_code != 0 and "--d2d-groups" in r.output
