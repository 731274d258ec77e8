"""Importers of the three shared data sets, auto-detection, plug-in registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hil.calibration import example_data
from hil.calibration.importers import base
from hil.calibration.importers.base import (
    ImportResult,
    NoOptions,
    detect_format,
    import_measurements,
    list_importers,
    register_importer,
)
from hil.calibration.importers.updown_columns import GONG_SHA256
from hil.calibration.measurements import MeasurementError, MeasurementSet


def test_builtin_importers_are_listed() -> None:
    names = list_importers()
    for n in ("schema", "updown-columns", "crosssim-lut", "wgfmu-summary"):
        assert n in names and names[n]


def test_shipped_gong_file_is_the_published_one() -> None:
    from hil.calibration.measurements import sha256_file

    p = example_data("gong_et_al.csv")
    assert sha256_file(p) == GONG_SHA256
    assert (p.parent / "LICENSE-gong_et_al.txt").is_file()
    assert (p.parent / "SOURCE-gong_et_al.md").is_file()


def test_updown_columns_gong(shared_data: Path) -> None:
    path = shared_data / "reram-hfo2-gong" / "gong_et_al.csv"
    assert detect_format(path) == "updown-columns"
    fmt, res = import_measurements(path)
    ms = res.measurements
    assert ms is not None and len(ms) == 2000
    assert (ms.polarity[:1000] == 1).all() and (ms.polarity[1000:] == -1).all()
    raw = np.loadtxt(path, delimiter=",")
    np.testing.assert_allclose(ms.conductance[:1000], raw[:, 0] * 1e-6)
    np.testing.assert_allclose(ms.conductance[1000:], raw[:, 1] * 1e-6)
    starts = ms.segment_starts()
    assert starts[0] and starts[1000] and starts.sum() == 2  # the down sweep restarts
    assert "aihwkit_reram_es" in res.reference
    fmt, res2 = import_measurements(path, options={"g_per_unit_s": "2e-6", "g_offset_s": "1e-5"})
    assert res2.measurements is not None
    np.testing.assert_allclose(res2.measurements.conductance[:1000], 1e-5 + raw[:, 0] * 2e-6)


def test_updown_columns_errors(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("0.1,0.2\n0.3,x\n0.4,0.5\n")
    with pytest.raises(MeasurementError, match=r"bad.csv:line 2: column 2 must be a number, found 'x'"):
        import_measurements(p, "updown-columns")
    with pytest.raises(ValueError, match="bad options for format 'updown-columns'"):
        import_measurements(p, "updown-columns", {"g_per_unit_s": "-1"})


def test_crosssim_lut_enode(shared_data: Path) -> None:
    d = shared_data / "enode-ecram-lut"
    assert detect_format(d) == "crosssim-lut"
    assert detect_format(d / "dG_increasing.txt") == "crosssim-lut"
    fmt, res = import_measurements(d / "dG_decreasing.txt")
    m = res.device_model
    assert m is not None and m.step.model == "table" and res.measurements is None
    assert len(m.step.grid) == 48 and m.step.grid[0] == -1.0 and m.step.grid[-1] == pytest.approx(1.0)
    span = m.conductance.g_max_s - m.conductance.g_min_s
    up_uS = np.array(m.step.up_mean) * span / 2 * 1e6
    down_uS = np.array(m.step.down_mean) * span / 2 * 1e6
    # SOURCE.md: mean over the table +4.7 uS up, -2.5 uS down
    assert up_uS.mean() == pytest.approx(4.7, abs=0.1)
    assert down_uS.mean() == pytest.approx(-2.5, abs=0.1)
    samples = res.sampler(devices=2, cycles=2, n_up=50, n_down=60, seed=1)
    assert len(samples) == 2 * 2 * 110
    assert samples.conductance.min() >= 2.9772e-4 - 1e-12 and samples.conductance.max() <= 9.7828e-4 + 1e-12
    # the up pulses raise the conductance on average by about the table mean at the bottom
    first = samples.conductance[:50]
    assert np.diff(first).mean() > 0


def test_crosssim_lut_sampler_reproduces_the_table_moments(shared_data: Path) -> None:
    from hil.calibration.importers.crosssim_lut import _moments, load_tables

    tables, _ = load_tables(shared_data / "enode-ecram-lut")
    rng = np.random.default_rng(0)
    j = 10
    g = np.full(200_000, tables.g[j])
    steps = tables.draw(g, True, rng.random(len(g)))
    mean, std = _moments(tables.cdf, tables.up)
    # Monte Carlo error of the mean: std / sqrt(n); allow 4 standard errors
    assert abs(steps.mean() - mean[j]) < 4 * std[j] / np.sqrt(len(g))
    assert steps.std() == pytest.approx(std[j], rel=0.02)


def test_crosssim_lut_errors(tmp_path: Path) -> None:
    (tmp_path / "dG_increasing.txt").write_text("1st Row = Gbins, x\n 1, 2, 3\n 0, 0.5, 1\n\n1,2\n")
    (tmp_path / "dG_decreasing.txt").write_text("1st Row = Gbins, x\n 1, 2, 3\n 0, 0.5, 1\n\n1,2,3\n1,2,3\n1,2,3\n")
    with pytest.raises(MeasurementError, match="dG_increasing.txt: the step matrix is 1x2, expected 3 CDF rows x 3 bins"):
        import_measurements(tmp_path, "crosssim-lut")


def test_wgfmu_summary_ferro(shared_data: Path) -> None:
    d = shared_data / "ferro-hzo-ampsweep"
    assert detect_format(d) == "wgfmu-summary"
    fmt, res = import_measurements(d)
    ms = res.measurements
    assert ms is not None
    assert len(ms.devices) == 14
    assert len({(str(a), int(b)) for a, b in zip(ms.device, ms.cycle, strict=True)}) == 44
    assert len(ms) == 4595
    # a positive amplitude lowers the conductance: polarity -1
    assert (ms.polarity[ms.optional["amplitude_v"] > 0] == -1).all()
    assert (ms.polarity[ms.optional["amplitude_v"] < 0] == 1).all()
    assert "width_s" in ms.optional and "x_file" in ms.extra
    assert any("NOT identical" in n for n in res.notes)
    assert len(res.reference["author_fits"]) == 44
    # conductance = mean of 1/R_low and 1/R_high, first row of one known file
    f = d / "ID161ZR15000_20241024113236_Summary.dat"
    first = f.read_text().splitlines()[7].split(",")
    g = 0.5 * (1 / float(first[3]) + 1 / float(first[4]))
    i = int(np.nonzero(ms.extra["x_file"] == f.name)[0][0])
    assert ms.conductance[i] == pytest.approx(g)


def test_wgfmu_summary_errors(tmp_path: Path) -> None:
    p = tmp_path / "X_Summary.dat"
    p.write_text("test_date,test_time,device_name,device_id\n01.01.2024,10:00:00,,D1\na\nb\nc\nd\nPulse Number,index,Pulse Amplitude (V),R_low (ohm),R_high (ohm)\n1,1,0.5,1e6,abc\n")
    with pytest.raises(MeasurementError, match=r"X_Summary.dat:line 8: non-numeric value"):
        import_measurements(p, "wgfmu-summary")


def test_detect_refuses_unknown(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="no importer recognises this file"):
        detect_format(p)


def test_register_a_plugin(tmp_path: Path) -> None:
    class TwoColumn:
        name = "lab-two-column-test"
        description = "test plug-in: pulse polarity and conductance per line"
        Options = NoOptions

        def detect(self, path: Path) -> bool:
            return path.suffix == ".lab"

        def load(self, path: Path, options: NoOptions) -> ImportResult:
            rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
            ms = MeasurementSet(
                device=["lab"] * len(rows), cycle=[0] * len(rows), pulse=range(len(rows)),
                polarity=[int(r[0]) for r in rows], conductance=[float(r[1]) for r in rows], source=str(path),
            )
            return ImportResult(measurements=ms.check())

    register_importer(TwoColumn())
    try:
        p = tmp_path / "run.lab"
        p.write_text("".join(f"{1 if k < 5 else -1} {1e-6 * (1 + k)}\n" for k in range(10)))
        fmt, res = import_measurements(p)
        assert fmt == "lab-two-column-test"
        assert res.measurements is not None and len(res.measurements) == 10
    finally:
        base._REGISTRY.pop("lab-two-column-test", None)
    with pytest.raises(ValueError, match="lacks 'name'"):
        register_importer(object())  # type: ignore[arg-type]
