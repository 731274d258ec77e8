"""Measurement CSV schema: loading, errors that name file/line/problem, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hil.calibration.mapping import Mapping, MappingSpec, choose_mapping
from hil.calibration.measurements import (
    MeasurementError,
    MeasurementSet,
    MeasurementWriter,
    load_measurements,
    read_resume_state,
)
from hil.calibration.schema import MeasurementHeader, MeasurementRow, schema_table_markdown
from hil.calibration.split import holdout_rows
from hil.device_model import ConductanceMapping

HEADER = "device,cycle,pulse,polarity,conductance\n"


def _rows(n_dev: int = 2, n: int = 8, cycles: int = 2) -> str:
    lines = []
    for d in range(n_dev):
        p = 0
        for c in range(cycles):
            for k in range(n):
                pol = 1 if k < n // 2 else -1
                lines.append(f"d{d},{c},{p},{pol},{1e-6 * (1 + 0.1 * k + d)}")
                p += 1
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_valid_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "# schema_version: 1.0\n# lab: test\n" + HEADER + _rows())
    ms = load_measurements(p)
    assert len(ms) == 32
    assert ms.devices == ["d0", "d1"]
    assert ms.metadata == {"lab": "test"}
    assert ms.inputs[0]["sha256"] and len(ms.inputs[0]["sha256"]) == 64
    assert ms.line[0] == 4  # two comment lines and the header precede the first row


def test_microsiemens_column_is_scaled(tmp_path: Path) -> None:
    text = HEADER.replace("conductance", "conductance_us") + _rows().replace("e-06", "")
    ms = load_measurements(_write(tmp_path, text))
    assert ms.conductance[0] == pytest.approx(1e-6)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("device,cycle,pulse,conductance\n" + "d0,0,0,1e-6\n", "missing required column(s) ['polarity']"),
        ("device,cycle,pulse,polarity,g\n" + "d0,0,0,1,1e-6\n", "expected exactly one conductance column"),
        ("device,cycle,pulse,polarity,conductance_ms\n" + "d0,0,0,1,1\n", "expected exactly one conductance column"),
        (HEADER + "d0,0,0,1,abc\n", "line 2: column 'conductance' must be a number, found 'abc'"),
        (HEADER + "d0,0,0,1,nan\n", "line 2: conductance is 'nan' (NaN/inf are not allowed)"),
        (HEADER + "d0,0,0,2,1e-6\n", "line 2: polarity must be -1, 0 or +1, found 2"),
        (HEADER + "d0,0,x,1,1e-6\n", "line 2: column 'pulse' must be an integer, found 'x'"),
        (HEADER + "d0,0,0,1\n", "line 2: expected 5 fields"),
        (HEADER + "d0,0,0,1,1e-6,7\n", "line 2: expected 5 fields"),
        ("device,cycle,pulse,polarity,conductance,voltage\n" + "d0,0,0,1,1e-6,1\n", "unknown column(s) ['voltage']"),
        (HEADER, "has a header but no data rows"),
        ("", "no header row"),
        ("# schema_version: 2.0\n" + HEADER + "d0,0,0,1,1e-6\n", "schema_version '2.0' is not readable"),
    ],
)
def test_malformed_input_names_file_line_and_problem(tmp_path: Path, text: str, needle: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(MeasurementError) as info:
        load_measurements(p)
    msg = str(info.value)
    assert str(p) in msg
    assert needle in msg


def test_microsiemens_in_a_siemens_column_is_refused(tmp_path: Path) -> None:
    """Values like 12.5 in ``conductance`` (siemens) are microsiemens: refused, naming the rows."""
    text = HEADER + _rows().replace("e-06", "")
    p = _write(tmp_path, text)
    with pytest.raises(MeasurementError) as info:
        load_measurements(p)
    msg = str(info.value)
    assert f"{p}:line 2: conductance 1 (siemens) = 1 S is not a plausible device conductance" in msg
    assert "32 of 32 rows" in msg and "name the column conductance_us" in msg
    # the same numbers under the microsiemens name load, and a conductance_us column holding
    # values of 0.1 S or more is refused too
    assert load_measurements(_write(tmp_path, text.replace("conductance", "conductance_us"), "us.csv"))
    big = HEADER.replace("conductance", "conductance_us") + _rows().replace("e-06", "e+06")
    with pytest.raises(MeasurementError, match=r"line 2: conductance_us 1e\+06 \(microsiemens\) = 1 S"):
        load_measurements(_write(tmp_path, big, "big.csv"))


def test_check_applies_the_row_rules_to_sets_built_in_memory() -> None:
    """An importer's set is checked like a file: bad polarity, NaN, microsiemens as siemens."""
    base = dict(device=["a"] * 6, cycle=[0] * 6, pulse=range(6), source="plugin.dat")
    ok = MeasurementSet(polarity=[1, 1, 1, -1, -1, -1], conductance=np.full(6, 1e-6), **base)
    assert ok.check() is ok
    bad = MeasurementSet(polarity=[1, 1, 3, -1, -1, -1], conductance=[1e-6, np.nan, 1e-6, 2.0, 1e-6, 1e-6], **base)
    with pytest.raises(MeasurementError) as info:
        bad.check()
    msg = str(info.value)
    assert "plugin.dat:row 2: polarity must be -1, 0 or +1, found 3" in msg
    assert "plugin.dat:row 1: conductance nan S is not finite" in msg
    assert "plugin.dat:row 3: conductance 2 S" in msg


def test_too_few_pulses_is_an_error_or_a_counted_exclusion(tmp_path: Path) -> None:
    text = HEADER + _rows(n_dev=1) + "short,0,0,1,1e-6\nshort,0,1,-1,1e-6\nshort,0,2,0,1e-6\n"
    p = _write(tmp_path, text)
    with pytest.raises(MeasurementError, match=r"line 18: device 'short' has 2 pulse rows"):
        load_measurements(p)
    ms = load_measurements(p, drop_short_devices=True)
    assert ms.devices == ["d0"]
    assert len(ms.exclusions) == 1 and ms.exclusions[0].rows == 3


def test_pulse_order_and_cycle_order_are_checked(tmp_path: Path) -> None:
    rows = _rows(n_dev=1).splitlines()
    rows[3], rows[4] = rows[4], rows[3]
    with pytest.raises(MeasurementError, match="does not follow pulse"):
        load_measurements(_write(tmp_path, HEADER + "\n".join(rows) + "\n"))
    bad = HEADER + "".join(f"d0,{1 if k < 3 else 0},{k},1,1e-6\n" for k in range(8))
    with pytest.raises(MeasurementError, match="cycles must not go back"):
        load_measurements(_write(tmp_path, bad, "c.csv"))


def test_problems_are_collected_not_only_the_first(tmp_path: Path) -> None:
    text = HEADER + "d0,0,0,1,x\nd0,0,1,5,1e-6\nd0,0,2,1,inf\n"
    with pytest.raises(MeasurementError) as info:
        load_measurements(_write(tmp_path, text))
    assert len(info.value.problems) == 3


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 40
    ms = MeasurementSet(
        device=["a"] * 20 + ["b,c".replace(",", "_")] * 20,
        cycle=[0] * 10 + [1] * 10 + [0] * 20,
        pulse=list(range(20)) + list(range(0, 40, 2)),
        polarity=rng.choice([-1, 0, 1], n),
        conductance=rng.random(n) * 1e-5,
        optional={"amplitude_v": rng.normal(size=n), "time_s": np.arange(n) * 0.1},
        extra={"x_note": np.array([f"r{i}" for i in range(n)], dtype=object)},
    )
    ms.metadata["origin"] = "unit test"
    path = ms.save(tmp_path / "rt.csv")
    back = load_measurements(path, min_pulses=1)
    for col in ("cycle", "pulse", "polarity", "conductance"):
        np.testing.assert_array_equal(getattr(back, col), getattr(ms, col))
    np.testing.assert_array_equal(back.device, ms.device)
    np.testing.assert_array_equal(back.optional["amplitude_v"], ms.optional["amplitude_v"])
    np.testing.assert_array_equal(back.extra["x_note"], ms.extra["x_note"])
    assert back.metadata == {"origin": "unit test"}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([-1, 0, 1]), st.floats(-1e-3, 1e-3, allow_nan=False, allow_infinity=False)),
        min_size=5,
        max_size=30,
    )
)
def test_every_loaded_row_validates_as_measurement_row(rows: list[tuple[int, float]]) -> None:
    import tempfile

    text = HEADER + "".join(f"dev,0,{i},{p},{g!r}\n" for i, (p, g) in enumerate(rows))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "h.csv"
        p.write_text(text)
        ms = load_measurements(p, min_pulses=0)
    for i in range(len(ms)):
        MeasurementRow(
            device=str(ms.device[i]),
            cycle=int(ms.cycle[i]),
            pulse=int(ms.pulse[i]),
            polarity=int(ms.polarity[i]),  # type: ignore[arg-type]
            conductance=float(ms.conductance[i]),
        )


def test_measurement_row_refuses_what_the_loader_refuses() -> None:
    with pytest.raises(ValidationError):
        MeasurementRow(device="d", cycle=0, pulse=0, polarity=2, conductance=1e-6)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        MeasurementRow(device="d", cycle=0, pulse=0, polarity=1, conductance=float("nan"))
    with pytest.raises(ValidationError):
        MeasurementRow(device="a,b", cycle=0, pulse=0, polarity=1, conductance=1e-6)


def test_schema_models_json_round_trip() -> None:
    row = MeasurementRow(device="d", cycle=1, pulse=2, polarity=-1, conductance=1e-6, amplitude_v=-1.5)
    assert MeasurementRow.from_json(row.to_json()) == row
    hdr = MeasurementHeader(columns=["device", "cycle"], metadata={"a": "b"})
    assert MeasurementHeader.from_json(hdr.to_json()) == hdr
    assert "conductance_us" in schema_table_markdown()


def test_writer_appends_and_resume_cuts_a_half_line(tmp_path: Path) -> None:
    cols = ["device", "cycle", "pulse", "polarity", "conductance"]
    out = tmp_path / "w.csv"
    with MeasurementWriter(out, cols) as w:
        w.write_rows([["d", "0", str(k), "1", "1e-6"] for k in range(3)])
    with open(out, "a") as fh:
        fh.write("d,0,3,1,1e")  # a crash in the middle of a line
    assert read_resume_state(out, cols) == 3
    assert out.read_text().endswith("\n")
    with pytest.raises(ValueError, match="columns"):
        read_resume_state(out, cols[:4])


def test_mapping_pooled_and_per_device() -> None:
    g = np.concatenate([np.linspace(1e-6, 2e-6, 50), np.linspace(1e-9, 2e-9, 50)])
    ms = MeasurementSet(device=["a"] * 50 + ["b"] * 50, cycle=[0] * 100, pulse=list(range(50)) * 2,
                        polarity=[1] * 100, conductance=g)
    m = choose_mapping(ms)
    assert m.per_device is not None  # ranges differ by 1000x > 10x
    w = m.to_weight(ms.conductance, ms.device)
    assert w.min() == pytest.approx(-1.0 - 2 * 0.01 / 0.98, abs=1e-9)
    np.testing.assert_allclose(m.to_conductance(w, ms.device), g, rtol=1e-12)
    pooled = choose_mapping(ms, MappingSpec(normalize="pooled"))
    assert pooled.per_device is None
    given = choose_mapping(ms, MappingSpec(g_range=(0.0, 4e-6)))
    assert given.to_weight(np.array([2e-6]))[0] == pytest.approx(0.0)
    diff = Mapping(model=ConductanceMapping(kind="differential", g_min_s=0.0, g_max_s=2e-6))
    assert diff.to_weight(np.array([-1e-6]))[0] == pytest.approx(-0.5)
    back = Mapping.from_model(m.model, {"mapping": m.provenance()})
    assert back.per_device == m.per_device


def test_holdout_rules() -> None:
    ms = MeasurementSet(device=["a"] * 30, cycle=np.repeat([0, 1, 2], 10), pulse=range(30),
                        polarity=[1, -1] * 15, conductance=np.ones(30))
    held, unit = holdout_rows(ms, 1 / 3)
    assert unit == "cycles" and held.sum() == 10 and held[20:].all()
    one = MeasurementSet(device=["a"] * 20, cycle=[0] * 20, pulse=list(range(10)) + list(range(11, 21)),
                         polarity=[1] * 10 + [-1] * 10, conductance=np.ones(20))
    held, unit = holdout_rows(one, 0.3)
    assert unit == "pulses"
    assert held[7:10].all() and held[17:20].all() and held.sum() == 6
