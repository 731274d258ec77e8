"""Pulse protocols, replay of measurement files, incremental writing and --resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hil.backend import BackendInfo, CrossbarBackend
from hil.calibration.mapping import Mapping
from hil.calibration.measurements import MeasurementSet, load_measurements
from hil.characterization import PulseProtocol, replay_to_file, run_protocol
from hil.characterization.runner import CharacterizationMeta, meta_path, replay_to_set
from hil.cli.main import cli
from hil.device_model import ConductanceMapping
from hil.simulated import PeripheryConfig, SimulatedCrossbar

MAPPING = Mapping(model=ConductanceMapping(g_min_s=1e-6, g_max_s=1e-5))


def _sim(rows: int, cols: int, device: str = "ideal", seed: int = 0) -> SimulatedCrossbar:
    return SimulatedCrossbar(rows, cols, device=device, periphery=PeripheryConfig.ideal(), seed=seed)


class Crashing(CrossbarBackend):
    """Delegates to a simulator and raises after ``crash_after`` pulse calls (a lost link)."""

    def __init__(self, inner: SimulatedCrossbar, crash_after: int) -> None:
        super().__init__(inner.rows, inner.cols)
        self.inner = inner
        self.crash_after = crash_after

    def _info(self) -> BackendInfo:
        return self.inner.info

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner._forward(x)

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        return self.inner._backward(d)

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        self.inner._update(x, d, lr)

    def _pulse(self, counts: torch.Tensor) -> None:
        if self.counts.pulse_calls > self.crash_after:
            raise RuntimeError("link lost")
        self.inner._pulse(counts)

    def _read(self) -> torch.Tensor:
        return self.inner._read()


def test_protocol_file_round_trip_and_schedule(tmp_path: Path) -> None:
    p = PulseProtocol(n_up=3, n_down=2, cycles=2, repeated_reads=1, devices=[(0, 1), (1, 0)], amplitude_up_v=1.2)
    p.save(tmp_path / "p.json")
    q = PulseProtocol.load(tmp_path / "p.json")
    assert q == p
    assert q.schedule() == [(0, 0), (0, 1), (0, 1), (0, 1), (0, -1), (0, -1), (1, 0), (1, 1), (1, 1), (1, 1), (1, -1), (1, -1)]
    assert q.select_devices(2, 2) == [(0, 1), (1, 0)]
    assert len(PulseProtocol(devices=3, seed=1).select_devices(4, 4)) == 3
    with pytest.raises(ValueError, match="outside the 2x2 array"):
        PulseProtocol(devices=[(2, 0)]).select_devices(2, 2)
    with pytest.raises(ValueError, match="no steps"):
        PulseProtocol(n_up=0, n_down=0)
    with pytest.raises(ValueError, match="schema_version"):
        PulseProtocol.model_validate({"schema_version": "2.0"})


def test_run_protocol_writes_the_schema(tmp_path: Path) -> None:
    p = PulseProtocol(n_up=10, n_down=10, cycles=2, repeated_reads=2, amplitude_up_v=1.0, amplitude_down_v=-1.0,
                      width_s=1e-6, start_weight=-0.5)
    out = tmp_path / "m.csv"
    meta = run_protocol(_sim(2, 2), p, MAPPING, out, progress=False)
    assert meta.complete and meta.rows_written == 4 * 44
    ms = load_measurements(out)
    assert ms.devices == ["r0c0", "r0c1", "r1c0", "r1c1"]
    a = ms.subset(ms.device == "r0c0")
    assert a.polarity.tolist() == [0, 0] + [1] * 10 + [-1] * 10 + [0, 0] + [1] * 10 + [-1] * 10
    assert (a.optional["amplitude_v"][a.polarity == 1] == 1.0).all()
    # the ideal device moves by 0.001 per pulse: 10 pulses = 0.01 weight = 0.045 uS
    w = MAPPING.to_weight(a.conductance)
    assert w[0] == pytest.approx(-0.5, abs=0.02)
    assert w[11] - w[1] == pytest.approx(0.010, abs=1e-6)
    assert CharacterizationMeta.load(meta_path(out)).protocol == p


def test_protocol_crash_then_resume_loses_nothing(tmp_path: Path) -> None:
    p = PulseProtocol(n_up=15, n_down=15, cycles=2, devices=[(0, 0), (1, 1)])
    out = tmp_path / "m.csv"
    with pytest.raises(RuntimeError, match="link lost"):
        run_protocol(Crashing(_sim(2, 2), crash_after=20), p, MAPPING, out, progress=False)
    written = load_measurements(out, min_pulses=1)
    assert len(written) == 2 * 20  # the 20 steps before the failed 21st pulse are on disk
    with open(out, "a") as fh:
        fh.write("r0c0,0,20,1,1.2")  # and a half-written line
    with pytest.raises(ValueError, match="cannot resume"):
        run_protocol(_sim(2, 2), p.model_copy(update={"n_up": 16}), MAPPING, out, resume=True, progress=False)
    meta = run_protocol(_sim(2, 2, seed=3), p, MAPPING, out, resume=True, progress=False)
    assert meta.complete and meta.resumed == 1
    ms = load_measurements(out)
    assert len(ms) == 2 * 60
    for d in ("r0c0", "r1c1"):
        sub = ms.subset(ms.device == d)
        assert sub.pulse.tolist() == list(range(60))
        w = MAPPING.to_weight(sub.conductance)
        # the resumed device was written back to its last recorded state (tol 0.02), then stepped 0.001
        assert abs(w[20] - w[19]) < 0.02 + 0.002
    # the first 40 rows are those measured before the crash
    np.testing.assert_array_equal(ms.conductance[:40], written.conductance)


def _measured(tmp_path: Path) -> Path:
    """A device-grouped measurement of 3 devices with a gap, made on the ideal device."""
    p = PulseProtocol(n_up=25, n_down=25, cycles=2, start_weight=0.2, devices=[(0, 0), (0, 1), (0, 2)])
    raw = tmp_path / "raw.csv"
    run_protocol(_sim(1, 3), p, MAPPING, raw, progress=False)
    ms = load_measurements(raw)
    order = np.argsort(np.array([str(d) for d in ms.device]), kind="stable")
    grouped = ms.subset(order)
    grouped.pulse = grouped.pulse.copy()
    grouped.pulse[grouped.device == "r0c1"] += np.where(grouped.pulse[grouped.device == "r0c1"] >= 60, 5, 0)
    grouped.conductance = grouped.conductance.copy()
    out = tmp_path / "grouped.csv"
    grouped.save(out)
    return out


def test_replay_reproduces_a_noise_free_measurement(tmp_path: Path) -> None:
    src = _measured(tmp_path)
    ms = load_measurements(src)
    out = tmp_path / "rep.csv"
    meta = replay_to_file(_sim(1, 3), ms, MAPPING, out, tol=0.0015, progress=False)
    assert meta.complete
    rep = load_measurements(out)
    for col in ("cycle", "pulse", "polarity"):
        np.testing.assert_array_equal(getattr(rep, col), getattr(ms, col))
    np.testing.assert_array_equal(rep.device, ms.device)
    np.testing.assert_array_equal(rep.optional["time_s"], ms.optional["time_s"])
    # same model, no noise: only the write-verify of each start (tol 0.0015 weight) differs
    err = np.abs(MAPPING.to_weight(rep.conductance) - MAPPING.to_weight(ms.conductance))
    assert err.max() <= 0.0015 + 1e-6


def test_replay_restarts_after_a_gap_and_on_request(tmp_path: Path) -> None:
    ms = MeasurementSet(device=["a"] * 12, cycle=[0] * 12, pulse=list(range(6)) + list(range(10, 16)),
                        polarity=[1] * 12, conductance=np.r_[np.linspace(2e-6, 2.5e-6, 6), np.linspace(7e-6, 7.5e-6, 6)])
    rep = replay_to_set(_sim(1, 1), ms, MAPPING, tol=0.0015)
    w = MAPPING.to_weight(rep.conductance)
    assert w[6] == pytest.approx(MAPPING.to_weight(np.array([7e-6]))[0], abs=0.0016)  # re-programmed at the gap
    restart = np.zeros(12, bool)
    restart[3] = True
    rep2 = replay_to_set(_sim(1, 1), ms, MAPPING, tol=0.0015, restart_rows=restart)
    assert MAPPING.to_weight(rep2.conductance)[3] == pytest.approx(MAPPING.to_weight(ms.conductance[3:4])[0], abs=0.0016)
    # restart_g replaces the measured value at the requested restarts only (NaN: measured);
    # a segment start (the gap at row 6) keeps its measured value
    given = np.full(12, np.nan)
    given[3], given[6] = 4e-6, 9e-6
    rep3 = replay_to_set(_sim(1, 1), ms, MAPPING, tol=0.0015, restart_rows=restart, restart_g=given)
    w3 = MAPPING.to_weight(rep3.conductance)
    assert w3[3] == pytest.approx(MAPPING.to_weight(np.array([4e-6]))[0], abs=0.0016)
    assert w3[6] == pytest.approx(MAPPING.to_weight(np.array([7e-6]))[0], abs=0.0016)
    rep4 = replay_to_set(_sim(1, 1), ms, MAPPING, tol=0.0015, restart_rows=restart, restart_g=np.full(12, np.nan))
    np.testing.assert_allclose(rep4.conductance, rep2.conductance)
    with pytest.raises(ValueError, match="one conductance per row"):
        replay_to_set(_sim(1, 1), ms, MAPPING, restart_rows=restart, restart_g=np.zeros(5))


def test_replay_crash_then_resume(tmp_path: Path) -> None:
    ms = load_measurements(_measured(tmp_path))
    out = tmp_path / "rep.csv"
    with pytest.raises(RuntimeError, match="link lost"):
        replay_to_file(Crashing(_sim(1, 3), crash_after=80), ms, MAPPING, out, progress=False)
    part = load_measurements(out, min_pulses=1, drop_short_devices=True)
    assert 0 < len(part) < len(ms)
    other = tmp_path / "other.csv"
    ms.subset(np.arange(len(ms)) < 50).save(other)
    with pytest.raises(ValueError, match="replays another file"):
        replay_to_file(_sim(1, 3), load_measurements(other), MAPPING, out, resume=True, progress=False)
    meta = replay_to_file(_sim(1, 3), ms, MAPPING, out, resume=True, progress=False)
    assert meta.complete
    rep = load_measurements(out)
    np.testing.assert_array_equal(rep.pulse, ms.pulse)
    n = int(len(part))
    np.testing.assert_array_equal(rep.conductance[:n], part.conductance[: n])


def test_replay_refuses_too_small_an_array(tmp_path: Path) -> None:
    ms = load_measurements(_measured(tmp_path))
    with pytest.raises(ValueError, match="has 3 devices, the backend array has only 1x2"):
        replay_to_set(_sim(1, 2), ms, MAPPING)


def test_cli_protocol_and_replay(tmp_path: Path) -> None:
    from hil.device_model import DeviceModel, DeviceVariation, SoftBoundsStep

    model = DeviceModel(step=SoftBoundsStep(dw_up=0.05, dw_down=0.05), variation=DeviceVariation(c2c=0.2),
                        read_noise=0.005, conductance=ConductanceMapping(g_min_s=1e-6, g_max_s=1e-5))
    dev = model.save(tmp_path / "dev.json")
    proto = PulseProtocol(n_up=30, n_down=30, cycles=3, repeated_reads=2, devices=2, start_weight=-0.5)
    proto.save(tmp_path / "p.json")
    runner = CliRunner()
    out = tmp_path / "meas.csv"
    r = runner.invoke(cli, ["characterize", "--backend", f"sim:{dev}", "--protocol", str(tmp_path / "p.json"),
                            "-o", str(out), "--rows", "2", "--cols", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "mapping: the device model's mapping" in r.output
    assert len(load_measurements(out)) == 2 * 3 * 62
    r = runner.invoke(cli, ["characterize", "--backend", f"sim:{dev}", "--protocol", str(tmp_path / "p.json"), "-o", str(out)])
    assert r.exit_code != 0 and "pass --resume" in r.output
    r = runner.invoke(cli, ["characterize", "--backend", f"sim:{dev}", "-o", str(tmp_path / "x.csv")])
    assert r.exit_code != 0 and "exactly one of --replay" in r.output
    rep = tmp_path / "rep.csv"
    r = runner.invoke(cli, ["characterize", "--backend", f"sim:{dev}", "--replay", str(out), "-o", str(rep),
                            "--no-progress", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "normalized RMSE of the mean trajectory" in r.output and "held-out rows (cycles" in r.output
    back = load_measurements(rep)
    assert len(back) == len(load_measurements(out))
    meta = json.loads(meta_path(rep).read_text())
    assert meta["kind"] == "replay" and meta["complete"] is True
    rep2 = tmp_path / "rep2.csv"
    r = runner.invoke(cli, ["characterize", "--backend", f"sim:{dev}", "--replay", str(out), "-o", str(rep2),
                            "--no-progress", "--restart-at-holdout", "--no-compare"])
    assert r.exit_code == 0, r.output
    assert json.loads(meta_path(rep2).read_text())["source"]["restarts"] == 2  # one per device
    from hil.calibration.compare import main as compare_main

    code = compare_main([str(out), str(rep), str(rep2)])
    assert code in (0, 1)


def test_replay_metrics_noise_floor_and_amplitude_groups() -> None:
    """The figures of merit: a replay of the exact mean scores ~0; one noisy realization scores
    about the noise floor; amplitude groups split the step spread by |amplitude|."""
    from hil.calibration.compare import replay_metrics
    from hil.calibration.measurements import MeasurementSet

    n = 200
    pol = np.where(np.arange(n) < n // 2, 1, -1)
    amp = np.where(pol > 0, -1, 1) * np.tile(np.linspace(0.5, 3.5, n // 2), 2)
    mean = 1e-6 * (1 + np.concatenate([np.linspace(0, 1, n // 2), np.linspace(1, 0, n // 2)]))

    def realization(seed: int) -> MeasurementSet:
        r = np.random.default_rng(seed)
        return MeasurementSet(device=["d"] * n, cycle=[0] * n, pulse=range(n), polarity=pol,
                              conductance=mean + 2e-8 * r.normal(size=n), optional={"amplitude_v": amp})

    measured = realization(1)
    reps = [realization(100 + k) for k in range(32)]
    m = replay_metrics(measured, reps)
    floor = m["nrmse_noise_floor_median"]
    assert 0.005 < floor < 0.05 and m["nrmse_noise_floor_p95"] >= floor
    # the measured file is one realization of the same process: within the floor's spread
    assert m["nrmse"] <= m["nrmse_noise_floor_p95"] and m["nrmse_within_noise"]
    assert abs(m["step_std_ratio_up"] - 1) < 0.25
    groups = m["amplitude_groups"]
    assert {g["polarity"] for g in groups} == {"up", "down"}
    assert sum(g["steps"] for g in groups if g["polarity"] == "up") == n // 2 - 1
    assert all(abs(g["ratio"] - 1) < 0.5 for g in groups)
    # one replay: no floor
    assert "nrmse_noise_floor_median" not in replay_metrics(measured, reps[0])


def test_previous_rows_of_the_same_device() -> None:
    """``previous_rows``: the previous row of the same device in file order, -1 for a first row."""
    from hil.calibration.compare import previous_rows

    codes = np.array([2, 0, 2, 1, 0, 0, 2])
    assert previous_rows(codes).tolist() == [-1, -1, 0, -1, 1, 4, 2]
    assert previous_rows(np.array([], dtype=np.int64)).tolist() == []
