"""Fitting: the filter's step models match the simulator, round trips, model selection, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hil.calibration.filter import censored
from hil.calibration.mapping import MappingSpec
from hil.calibration.pipeline import MODEL_KINDS, CalibrationConfig, calibrate
from hil.calibration.report import FitReport, write_report
from hil.calibration.roundtrip import CHUNK as ROUNDTRIP_CHUNK
from hil.calibration.roundtrip import G_RANGE, compare, run_one, simulate, true_model
from hil.calibration.stepmodels import Family
from hil.cli.main import cli
from hil.device_model import DeviceModel
from hil.simulated import SimulatedCrossbar
from hil.simulated.devices import DeviceArray


@pytest.mark.parametrize("kind", ["constant", "linear", "softbounds", "pow", "exp"])
def test_family_transition_is_the_simulators_single_pulse(kind: str) -> None:
    model = true_model(kind).model_copy(update={"variation": true_model(kind).variation.model_copy(update={"d2d": {}, "c2c": 0.0})})
    arr = DeviceArray(model, 1, 201, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float64)
    w = torch.linspace(-1.0, 1.0, 201, dtype=torch.float64).reshape(1, -1)
    fam = Family(kind)
    p = {k: np.array([[float(getattr(model.step, k))]]) for k in model.step.parameters}
    for up in (True, False):
        ones = torch.ones_like(w)
        sim = arr.apply(w, ones if up else 0 * ones, 0 * ones if up else ones, torch.Generator())
        xn, _, _, _ = fam.transition(w.numpy(), up, p)
        lo, hi = fam.bounds_of(p)
        np.testing.assert_allclose(np.clip(xn, lo, hi), sim.numpy(), atol=1e-12)


@pytest.mark.parametrize("kind", ["constant", "linear", "softbounds", "pow", "exp", "table"])
def test_transition_with_per_element_directions_is_the_two_calls(kind: str) -> None:
    """The filter applies each sequence's own pulse direction in one transition: bit-identical
    to the up and the down transition computed separately."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.2, 1.2, size=(3, 40))
    up = rng.random(40) < 0.5
    p: dict[str, np.ndarray] = {"dw_up": rng.uniform(0.01, 0.05, (3, 40)), "dw_down": rng.uniform(0.01, 0.05, (3, 40)),
                                "w_min": np.full((3, 40), -1.0), "w_max": np.full((3, 40), 1.1)}
    if kind in ("linear", "pow", "exp"):
        p.update(gamma_up=rng.uniform(0.2, 2.0, (3, 40)), gamma_down=rng.uniform(0.2, 2.0, (3, 40)))
    grid = None
    if kind == "table":
        grid = np.linspace(-1.0, 1.1, 6)
        for i in range(6):
            p[f"up_node_{i}"] = np.full((3, 40), 0.03 - 0.004 * i)
            p[f"down_node_{i}"] = np.full((3, 40), -0.01 - 0.004 * i)
            p[f"up_std_{i}"] = np.full((3, 40), 0.01 + 0.001 * i)
            p[f"down_std_{i}"] = np.full((3, 40), 0.02 - 0.001 * i)
    fam = Family(kind, grid=grid)
    p = fam.prepare(p)
    mixed = fam.transition(x, up, p)
    for k, (a, b) in enumerate(zip(fam.transition(x, True, p), fam.transition(x, False, p), strict=True)):
        if a is None:
            assert mixed[k] is None
            continue
        expected = np.where(up, np.broadcast_to(a, x.shape), np.broadcast_to(b, x.shape))
        np.testing.assert_array_equal(np.broadcast_to(mixed[k], x.shape), expected)


def test_table_family_matches_the_simulator(shared_data: Path) -> None:
    from hil.calibration.importers.crosssim_lut import load_tables

    tables, inputs = load_tables(shared_data / "enode-ecram-lut")
    model = tables.model(inputs)
    step = model.step
    arr = DeviceArray(model, 1, 101, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float64)
    w = torch.linspace(-1.0, 1.0, 101, dtype=torch.float64).reshape(1, -1)
    fam = Family("table", grid=np.array(step.grid))
    p = {"dw_up": np.ones((1, 1)), "dw_down": np.ones((1, 1)), "w_min": np.full((1, 1), -1.0), "w_max": np.ones((1, 1))}
    for i in range(len(step.grid)):
        p[f"up_node_{i}"] = np.full((1, 1), step.up_mean[i])
        p[f"down_node_{i}"] = np.full((1, 1), step.down_mean[i])
        p[f"up_std_{i}"] = np.full((1, 1), step.up_std[i])
        p[f"down_std_{i}"] = np.full((1, 1), step.down_std[i])
    p = fam.prepare(p)
    quiet = model.model_copy(update={"step": step.model_copy(update={"up_std": [0.0] * len(step.grid),
                                                                      "down_std": [0.0] * len(step.grid)})})
    arr0 = DeviceArray(quiet, 1, 101, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float64)
    for up in (True, False):
        ones = torch.ones_like(w)
        sim = arr0.apply(w, ones if up else 0 * ones, 0 * ones if up else ones, torch.Generator())
        xn, _, noise, tab = fam.transition(w.numpy(), up, p)
        np.testing.assert_allclose(np.clip(xn, -1, 1), sim.numpy(), atol=1e-12)
        np.testing.assert_allclose(tab, arr.noise_std(w, up).numpy(), atol=1e-12)
        assert noise.shape == xn.shape


def test_censored_moments_match_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    for m, v in ((0.9, 0.01), (1.05, 4e-4), (0.0, 1e-6), (-0.95, 0.04)):
        x = np.clip(rng.normal(m, np.sqrt(v), 400_000), -1, 1)
        mean, var = censored(np.array(m), np.array(v), np.array(-1.0), np.array(1.0))
        # Monte Carlo standard errors: sd/sqrt(n) for the mean, sqrt((m4 - var^2)/n) for the
        # variance (the censored distribution is far from normal: use its own fourth moment)
        n = len(x)
        m4 = float(np.mean((x - x.mean()) ** 4))
        assert abs(mean - x.mean()) < 5 * x.std() / np.sqrt(n) + 1e-12
        assert abs(var - x.var()) < 5 * np.sqrt(max(m4 - x.var() ** 2, 0.0) / n) + 1e-15


def test_roundtrip_softbounds_fast(tmp_path: Path) -> None:
    """Data simulated with d2d, c2c, the write-noise offset and read noise is fitted back within 10 %.

    A parameter counts as determined when its standard error is below 10 %/3; the
    step parameters, c2c and the spreads of the step sizes must be determined here
    (the protocol saturates every device), so the check is not vacuous.
    """
    cfg = CalibrationConfig(candidates=["constant", "softbounds", "linear"], chunk=ROUNDTRIP_CHUNK)
    comp = run_one("softbounds", 0, tmp_path, cfg)
    assert comp.chosen == "softbounds"
    determined = {r["parameter"] for r in comp.rows if r["determined"]}
    assert {"dw_up", "dw_down", "w_min", "w_max", "c2c"} <= determined, comp.rows
    # the write-noise offset is found and compared (its std and memory: within 10 % where
    # determined; tests/test_write_noise.py checks a larger offset's recovery in detail)
    assert {"write_noise", "write_noise_rho"} <= {r["parameter"] for r in comp.rows}, comp.rows
    bad = comp.failures
    assert not bad, bad


def test_noise_free_single_device_is_fitted_exactly(tmp_path: Path) -> None:
    from hil.calibration.mapping import Mapping
    from hil.calibration.measurements import load_measurements
    from hil.characterization import PulseProtocol, run_protocol
    from hil.device_model import DeviceVariation, ExpStep
    from hil.simulated import PeripheryConfig

    model = DeviceModel(step=ExpStep(dw_up=0.03, dw_down=0.02, gamma_up=2.0, gamma_down=1.0),
                        variation=DeviceVariation(), conductance=true_model("exp").conductance)
    sim = SimulatedCrossbar(1, 1, device=model, periphery=PeripheryConfig.ideal())
    out = tmp_path / "m.csv"
    assert model.conductance is not None
    run_protocol(sim, PulseProtocol(n_up=120, n_down=120, cycles=3, start_weight=-0.9), Mapping(model=model.conductance),
                 out, progress=False)
    cal = calibrate(load_measurements(out), CalibrationConfig(model="exp", mapping=MappingSpec(g_range=G_RANGE)))
    step = cal.model.step
    for k in ("dw_up", "dw_down", "gamma_up", "gamma_down", "w_min", "w_max"):
        # float32 simulator states: 1e-7 relative, propagated through the fit
        assert getattr(step, k) == pytest.approx(getattr(model.step, k), rel=2e-3, abs=2e-3), k


def test_calibration_outputs_round_trip(tmp_path: Path) -> None:
    ms, drawn, truth = simulate("constant", 1, tmp_path)
    cal = calibrate(ms, CalibrationConfig(model="constant", mapping=MappingSpec(g_range=G_RANGE)))
    assert not [r for r in compare(cal, drawn, truth) if not r["ok"]]
    path = cal.model.save(tmp_path / "dev.json")
    back = DeviceModel.load(path)
    assert back == cal.model
    prov = back.provenance
    assert prov["inputs"][0]["sha256"] == ms.inputs[0]["sha256"]
    assert prov["chosen_model"] == "constant" and "fit_date" in prov and "bic" in prov["score"]
    assert prov["mapping"]["g_min_s"] == G_RANGE[0]
    sim = SimulatedCrossbar(2, 2, device=path)
    assert sim.info.dw_min > 0
    paths = write_report(cal, tmp_path / "rep")
    assert paths["figure"].stat().st_size > 10_000
    rep = FitReport.load(paths["json"])
    assert FitReport.from_json(rep.to_json()) == rep
    text = paths["text"].read_text()
    assert "model selection" in text and "chosen: constant" in text


def test_calibrate_cli(tmp_path: Path) -> None:
    ms, _, _ = simulate("softbounds", 2, tmp_path)
    src = tmp_path / "softbounds-2.csv"
    out = tmp_path / "dev.json"
    r = CliRunner().invoke(cli, ["calibrate", str(src), "-o", str(out), "--model", "softbounds", "--report",
                                 str(tmp_path / "rep"), "--g-range", f"{G_RANGE[0]},{G_RANGE[1]}"])
    assert r.exit_code == 0, r.output
    assert "held-out replay" in r.output and "device model written" in r.output
    m = DeviceModel.load(out)
    from hil.calibration.workflow import replay_count

    assert m.step.model == "softbounds" and m.provenance["replay_check"]["replays"] == replay_count(ms)
    assert (tmp_path / "rep" / "report.png").is_file()
    # the noise match ran, said what it found, and left the right model's noise alone
    nm = m.provenance["noise_match"]
    assert "noise match:" in r.output and not nm["applied"] and abs(nm["kappa"] - 1) < 0.2, nm
    assert "noise match:" in (tmp_path / "rep" / "report.txt").read_text()
    r = CliRunner().invoke(cli, ["calibrate", str(src), "-o", str(tmp_path / "none.json"), "--model", "softbounds",
                                 "--noise-match", "none", "--no-replay-check", "--g-range", f"{G_RANGE[0]},{G_RANGE[1]}"])
    assert r.exit_code == 0, r.output
    assert "noise match:" not in r.output and DeviceModel.load(tmp_path / "none.json").provenance["noise_match"] is None
    r = CliRunner().invoke(cli, ["calibrate", str(tmp_path / "dev.json"), "-o", str(tmp_path / "x.json")])
    assert r.exit_code != 0 and "no importer recognises" in r.output


def test_calibrate_cli_imports_a_lookup_table_directly(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "enode.json"
    r = CliRunner().invoke(cli, ["calibrate", str(shared_data / "enode-ecram-lut"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = DeviceModel.load(out)
    assert m.step.model == "table" and m.provenance["format"] == "crosssim-lut"
    assert len(m.provenance["inputs"]) == 2


def test_gong_calibration(shared_data: Path, tmp_path: Path) -> None:
    # CPU time of this process: the fit runs on one thread (torch and BLAS), so this is the wall
    # time on an idle machine, and it does not fail when other jobs share the cores
    t0 = time.process_time()
    r = CliRunner().invoke(cli, ["calibrate", str(shared_data / "reram-hfo2-gong" / "gong_et_al.csv"), "-o",
                                 str(tmp_path / "gong.json"), "--no-replay-check", "--export", str(tmp_path / "g.csv")])
    assert r.exit_code == 0, r.output
    m = DeviceModel.load(tmp_path / "gong.json")
    prov = m.provenance
    assert {c["model"] for c in prov["candidates"]} == set(MODEL_KINDS)
    assert prov["score"]["heldout_unit"] == "pulses"
    # the data's mean drift: up sweep from about -0.92 to +1.07 in 1000 pulses (SOURCE.md)
    scale = (m.conductance.g_max_s - m.conductance.g_min_s) / 2 / 1e-6
    assert prov["summary"]["dw_min"] * scale == pytest.approx(0.002, rel=0.5)
    assert m.read_noise * scale == pytest.approx(0.108, rel=0.2)  # lag-1 autocovariance of the steps
    # its correlated noise that does not accumulate (docs/calibration.md, section 7) is the
    # write-noise offset: about the read noise's size, a memory of a few to tens of pulses
    v = m.variation
    assert 0.5 * m.read_noise < v.write_noise < 2 * m.read_noise
    assert 0.5 < v.write_noise_rho < 0.99
    # the bounds: the measured device never left [-1.04, 1.04] (percentiles 0.5 and 99.5 of its
    # reads, normalized); a hard bound the reads never reach is not determined by them and is
    # set at the extreme reads, so the simulated device stays in the measured range (before, the
    # unreached upper bound of the constant model was left at 12.8)
    from hil.calibration.measurements import load_measurements

    g = load_measurements(tmp_path / "g.csv").conductance
    c = m.conductance
    w = c.w_min + (g - c.g_min_s) / (c.g_max_s - c.g_min_s) * (c.w_max - c.w_min)
    lo, hi = np.percentile(w, [0.5, 99.5])
    assert lo - 1e-9 <= m.step.w_min < m.step.w_max <= hi + 1e-9, (m.step, lo, hi)
    assert time.process_time() - t0 < 60


def test_gong_held_out_targets(shared_data: Path) -> None:
    """The issue's figures on the HfO2 file, as ``hil calibrate`` checks them (model fitted on
    the fitting rows, replayed from the predicted start of each held-out stretch, 400 copies):
    normalized RMSE of the mean trajectory below 0.10 and the per-pulse spread within 1.5x."""
    from hil.calibration.workflow import calibrate_path

    run = calibrate_path(shared_data / "reram-hfo2-gong" / "gong_et_al.csv", "auto", None,
                         CalibrationConfig(name="hfo2-gong"), seed=1)
    m = run.calibration.replay
    assert m["replays"] == 400 and m["restart"]["rows"] == 2
    assert m["nrmse"] < 0.10 and m["pass_nrmse"], m["nrmse"]
    assert m["pass_step_std"], (m["step_std_ratio_up"], m["step_std_ratio_down"])


def test_hard_bounds_the_reads_never_reach_are_set_at_the_extreme_reads() -> None:
    """``constant``/``table`` bounds beyond the reads are set at the 0.5th / 99.5th percentile of the
    reads the fit saw (per device for per-device fits) unless the data reject that value (the
    NLL rises by more than 2 nats: the reads reach the bound), marked undetermined (standard
    error inf), and the fit's NLL is recomputed; a bound left at the reads keeps its value but is
    marked undetermined when the data do not reject moving it one span of the reads away (its
    likelihood is one-sided there); the bounds of state-dependent models are left alone."""
    from dataclasses import replace

    from hil.calibration.bounds import BOUND_NATS, bounds_at_reads
    from hil.calibration.filter import Sequences
    from hil.calibration.fit import FitResult, device_nll
    from hil.calibration.measurements import MeasurementSet

    rng = np.random.default_rng(0)
    n = 200
    # a: climbs to its bound 0.9 and stays there; b: climbs from -0.5 to 0.5 only (no bound in
    # sight); c: climbs to its bound 0.9 and touches it at the last pulse only (read noise 0.002)
    wa = np.minimum(np.linspace(-0.9, 1.4, n), 0.9) + 0.01 * rng.standard_normal(n)
    wb = np.linspace(-0.5, 0.5, n) + 0.01 * rng.standard_normal(n)
    wc = np.linspace(-0.9, 0.9, n) + 0.002 * rng.standard_normal(n)
    w = np.concatenate([wa, wb, wc])
    ms = MeasurementSet(device=np.repeat(np.array(["a", "b", "c"], dtype=object), n),
                        cycle=np.zeros(3 * n, dtype=np.int64), pulse=np.tile(np.arange(n), 3),
                        polarity=np.ones(3 * n, dtype=np.int8), conductance=1e-6 * (2 + w))
    seq = Sequences.build(ms, w)
    score = seq.mask(np.ones(3 * n, dtype=bool))
    fam = Family("constant")

    def fit(values: dict[str, list[float]], read: list[float]) -> FitResult:
        d = len(values["w_min"])
        vals = {k: np.array(v, dtype=float) for k, v in values.items()}
        vals.update(c2c=np.full(d, 0.1), read_sd=np.array(read))
        f = FitResult(kind="constant", per_device=d > 1, values=vals, se={k: np.full(d, 0.01) for k in vals},
                      nll=0.0, n_scored=int(score.sum()), k=4, success=True, message="", nfev=1)
        return replace(f, nll=float(device_nll(fam, seq, f, score).sum()))

    per = fit({"dw_up": [0.0116, 0.005, 0.00905], "dw_down": [0.01] * 3, "w_min": [-3.0, -7.0, -3.0],
               "w_max": [0.9, 12.8, 0.9]}, [0.01, 0.01, 0.002])
    out, lines = bounds_at_reads(fam, seq, score, per)
    lo = [np.percentile(x, 0.5) for x in (wa, wb, wc)]
    assert lo[0] > wa.min() and lo[2] > wc.min()
    hi_b, hi_c = np.percentile(wb, 99.5), np.percentile(wc, 99.5)
    assert hi_c < 0.895  # c's bound lies beyond its 99.5th percentile, but its last read reaches it
    cost_c = device_nll(fam, seq, replace(per, values=dict(per.values, w_max=np.array([0.9, 12.8, hi_c]))), score)
    assert cost_c[2] - device_nll(fam, seq, per, score)[2] > BOUND_NATS
    assert out.values["w_max"].tolist() == pytest.approx([0.9, hi_b, 0.9])
    assert out.se["w_max"][0] == 0.01 and np.isinf(out.se["w_max"][1])
    # c's reads reject a bound below 0.9, but not one beyond: c is a ramp that never stops (its
    # likelihood is one-sided at 0.9), so its bound stays at 0.9, not determined; a, which sits at
    # its bound, rejects moving it away
    assert np.isinf(out.se["w_max"][2])
    # the lower bounds: b's goes to its 0.5th percentile; c starts its sweep below its own (its
    # first reads are its lowest), which the data reject with its small read noise: its lowest read
    assert np.isinf(out.se["w_min"]).all()
    assert out.values["w_min"][1:].tolist() == pytest.approx([lo[1], wc.min()])
    assert len(lines) == 3 and "w_max: not reached by the reads (1 of 3 devices; fitted 12.8)" in lines[2]
    assert lines[1].startswith("w_max: not reached by the reads (1 of 2 devices; moving it one span") and "left at 0.9," in lines[1]
    assert "(percentile 0)" in lines[0] and "(percentile 0.5)" in lines[0]
    assert out.nll == pytest.approx(float(device_nll(fam, seq, out, score).sum()))
    assert per.values["w_max"][1] == 12.8  # the input fit is not modified
    pooled, lines = bounds_at_reads(fam, seq, score, fit({"dw_up": [0.008], "dw_down": [0.01], "w_min": [-5.0],
                                                            "w_max": [20.0]}, [0.01]))
    assert pooled.values["w_min"][0] == pytest.approx(np.percentile(w, 0.5))
    assert len(lines) >= 1
    # a state-dependent model's bounds shape every step: left to undetermined_parameters
    soft = replace(per, kind="softbounds")
    assert bounds_at_reads(Family("softbounds"), seq, score, soft) == (soft, [])


def _sweeps_down(n: int = 600, seed: int = 0) -> tuple[object, np.ndarray, np.ndarray]:
    """Two devices swept down by ``n`` pulses of 0.002 (c2c 0.5), read noise 0.005: ``a`` reaches
    its hard lower bound -0.5 after about 250 pulses and sits there; ``b`` (bound -2) never does."""
    from hil.calibration.filter import Sequences
    from hil.calibration.measurements import MeasurementSet

    rng = np.random.default_rng(seed)

    def run(lo: float, w0: float) -> np.ndarray:
        steps = -0.002 * (1 + 0.5 * rng.standard_normal(n))
        out = np.empty(n)
        x = w0
        for k in range(n):  # a constant step clamped at lo
            x = max(x + steps[k], lo)
            out[k] = x
        return out + 0.005 * rng.standard_normal(n)

    w = np.concatenate([run(-0.5, 0.0), run(-2.0, 0.2)])
    ms = MeasurementSet(device=np.repeat(np.array(["a", "b"], dtype=object), n), cycle=np.zeros(2 * n, dtype=np.int64),
                        pulse=np.tile(np.arange(n), 2), polarity=-np.ones(2 * n, dtype=np.int8),
                        conductance=1e-6 * (2 + w))
    seq = Sequences.build(ms, w)
    return seq, seq.mask(np.ones(2 * n, dtype=bool)), w


def test_table_node_refit_keeps_every_devices_scales_and_bounds() -> None:
    """The table's alternating fit refits the shared nodes with each device's scales and bounds
    held (``keep_scales``); the result must carry those per-device values, since the per-device
    refit starts from them.  It used to return the first device's for every device, which put
    the bound of a device sitting at its bound (the table round trip's seed 8) where the
    likelihood has no gradient: the shared nodes then absorbed the stall (17 % off)."""
    from hil.calibration.fit import fit_model

    seq, score, _ = _sweeps_down(200)
    fam = Family("table", grid=np.linspace(-1.0, 0.3, 4))
    init: dict[str, np.ndarray] = {"dw_up": np.array([1.0, 1.2]), "dw_down": np.array([0.9, 1.1]),
                                   "w_min": np.array([-0.5, -2.0]), "w_max": np.array([0.3, 0.4]),
                                   "c2c": np.zeros(2), "read_sd": np.full(2, 0.005)}
    for i in range(4):
        init[f"up_node_{i}"], init[f"down_node_{i}"] = np.array([0.002]), np.array([-0.002])
        init[f"up_std_{i}"], init[f"down_std_{i}"] = np.array([0.001]), np.array([0.001])
    out = fit_model(fam, seq, score, init, per_device=False, read_sd_fixed=0.005, max_nfev=5, keep_scales=True)
    for name in ("dw_up", "dw_down", "w_min", "w_max"):
        assert out.values[name].tolist() == init[name].tolist(), name
    assert len(out.values["down_node_0"]) == 1 and "down_node_0" in out.se and "w_min" not in out.se


def test_hard_bounds_start_from_a_profile_scan() -> None:
    """Per-device fits of hard bounds start from the read percentile of lowest NLL
    (``scan_hard_bounds``): a device sitting at its bound gets a start next to it (its
    0.5th-percentile read lies about 2.6 read-noise standard deviations beyond it), a device that
    never reaches its bound keeps an extreme read, no device gets a start worse than the one it
    came with, and models whose bounds shape the step are returned unchanged."""
    from dataclasses import replace

    from hil.calibration.bounds import device_extremes, scan_hard_bounds
    from hil.calibration.fit import FitResult, device_nll

    seq, score, w = _sweeps_down()
    fam = Family("constant")
    lo, hi = device_extremes(seq, score)
    assert lo[0] < -0.5 - 2 * 0.005  # the 0.5th percentile of a: beyond its bound by the read noise
    start = {"dw_up": 0.002, "dw_down": np.full(2, 0.002), "w_min": lo, "w_max": hi, "c2c": 0.5, "read_sd": 0.005}
    out = scan_hard_bounds(fam, seq, score, start)
    assert abs(out["w_min"][0] + 0.5) < 0.005 and out["w_min"][1] < -0.95
    assert np.all(out["w_max"] >= out["w_min"] + 1e-3) and out["dw_up"].tolist() == [0.002, 0.002]
    probe = FitResult(kind="constant", per_device=True, values={k: np.broadcast_to(v, (2,)).astype(float)
                      for k, v in start.items()}, se={}, nll=0.0, n_scored=0, k=0, success=True, message="", nfev=0)
    before = device_nll(fam, seq, probe, score)
    after = device_nll(fam, seq, replace(probe, values=out), score)
    assert np.all(after <= before + 1e-9) and after[0] < before[0] - 10
    soft = scan_hard_bounds(Family("softbounds"), seq, score, start)
    assert soft["w_min"].tolist() == lo.tolist() and soft["w_max"].tolist() == hi.tolist()


@pytest.mark.slow
def test_ferro_calibration_time_and_replay(shared_data: Path, tmp_path: Path) -> None:
    """The issue's target: ``hil calibrate`` on the largest shared data set (with its held-out
    replay check, as ``hil calibrate DIR -o x.json`` runs it) under 30 s on 2 cores.  Measured
    with ``--jobs 1`` (no worker processes; the default fits the candidates on every core, the
    same result sooner) as the CPU time of this process (user + sys of every thread): the fit and
    the replay run on one thread (torch and BLAS), so this is the wall time on one idle core, an
    upper bound of the default's on two, and it does not fail when other jobs share the cores."""
    t0 = time.process_time()
    r = CliRunner().invoke(cli, ["calibrate", str(shared_data / "ferro-hzo-ampsweep"), "-o", str(tmp_path / "f.json"),
                                 "--jobs", "1"])
    cpu = time.process_time() - t0
    assert r.exit_code == 0, r.output
    m = DeviceModel.load(tmp_path / "f.json")
    assert m.provenance["devices"] == 14
    assert m.provenance["mapping"]["per_device"]
    assert any("NOT identical" in n for n in m.provenance["notes"])
    assert m.provenance["replay_check"]["replays"] >= 8
    # the amplitude sweeps at several widths carry a pulse law, kept by the BIC, with a field
    # exponent of its own (the up pulses switch with a threshold-like amplitude law)
    assert m.pulse_response is not None and m.provenance["pulse_law"]["bic_change"] < -500
    assert m.provenance["pulse_law"]["field_exponent_used"] and m.pulse_response.up.field_exponent > 2
    # the likelihood's noise terms replay steps too spread (they absorb what the mean model
    # misses): scaled down, the held-out step spread is within the factor 1.5
    nm = m.provenance["noise_match"]
    assert nm["applied"] and nm["kappa"] < 0.8, nm
    assert m.provenance["replay_check"]["pass_step_std"], m.provenance["replay_check"]
    # and the held-out runs' mean trajectory is within the issue's 10 % of the range
    assert m.provenance["replay_check"]["pass_nrmse"], m.provenance["replay_check"]["nrmse"]
    assert cpu < 30, cpu


@pytest.mark.slow
def test_ferro_pulse_law_predicts_the_held_out_runs_better(shared_data: Path) -> None:
    """The pulse law's effect on the held-out runs of the ferroelectric set: the trajectory error of
    the identical-pulse calibration (0.167 at seed 0) falls by at least a quarter with the law
    (0.108; docs/calibration.md, section 7)."""
    from hil.calibration.pipeline import CalibrationConfig
    from hil.calibration.workflow import calibrate_path

    d = shared_data / "ferro-hzo-ampsweep"
    with_law = calibrate_path(d, config=CalibrationConfig()).calibration
    without = calibrate_path(d, config=CalibrationConfig(pulse_response="none")).calibration
    assert with_law is not None and without is not None and with_law.replay and without.replay
    assert with_law.pulse_law is not None and with_law.pulse_law.used and without.pulse_law is None
    assert with_law.replay["nrmse"] < 0.75 * without.replay["nrmse"], (with_law.replay["nrmse"], without.replay["nrmse"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_roundtrip_every_model_ten_seeds(kind: str, tmp_path: Path, shared_data: Path) -> None:
    """Selection picks the true model in >= 9 of 10 seeds; every determined parameter within 10 %."""
    comps = [run_one(kind, seed, tmp_path) for seed in range(10)]
    picked = sum(c.chosen == kind for c in comps)
    assert picked >= 9, [c.chosen for c in comps]
    failures = [(c.seed, f) for c in comps if c.chosen == kind for f in c.failures]
    assert not failures, failures
    summary = {"model": kind, "picked": picked, "max_error": max(c.max_error for c in comps if c.chosen == kind)}
    print(json.dumps(summary))


def _partial_range_measurements(shared_data: Path, tmp_path: Path) -> tuple[Path, tuple[float, float]]:
    """The ENODe table device (c2c, d2d, read noise) driven only part of its range: 100 up
    pulses but 100 down pulses, which bring it back only to about mid range (the lower bound
    is never approached): the protocol that made ``auto`` pick a degenerate ``pow`` fit."""
    from hil.calibration.importers.base import import_measurements
    from hil.calibration.mapping import Mapping
    from hil.characterization import PulseProtocol, run_protocol
    from hil.device_model import DeviceVariation
    from hil.simulated import PeripheryConfig

    _, res = import_measurements(shared_data / "enode-ecram-lut", "crosssim-lut")
    assert res.device_model is not None
    model = res.device_model.model_copy(update={
        "variation": DeviceVariation(c2c=0.3, d2d={"dw_up": 0.1, "dw_down": 0.1}), "read_noise": 0.004})
    sim = SimulatedCrossbar(1, 4, device=model, periphery=PeripheryConfig.ideal().model_copy(update={"w_noise": 0.004}),
                            seed=3)
    out = tmp_path / "partial.csv"
    assert model.conductance is not None
    run_protocol(sim, PulseProtocol(n_up=100, n_down=100, cycles=3, repeated_reads=5), Mapping(model=model.conductance),
                 out, progress=False)
    return out, (model.conductance.g_min_s, model.conductance.g_max_s)


def test_selection_rejects_fits_the_data_do_not_determine(shared_data: Path, tmp_path: Path) -> None:
    """A protocol that does not drive the devices across their range: ``pow`` fits a lower
    bound far outside the data with standard errors 10^3-10^4 times its values; selection
    rejects it (and says why) and falls back to a determined model; asked for explicitly, it is
    fitted with a warning."""
    from hil.calibration.measurements import load_measurements

    path, g_range = _partial_range_measurements(shared_data, tmp_path)
    ms = load_measurements(path)
    # the table device's conductance range (its mapping), as the validation loop passes it
    cfg = CalibrationConfig(candidates=["constant", "pow"], mapping=MappingSpec(g_range=g_range))
    cal = calibrate(ms, cfg)
    score = {c.model: c for c in cal.candidates}
    assert not score["pow"].determined and score["pow"].undetermined
    assert any("w_min" in why for why in score["pow"].undetermined), score["pow"].undetermined
    assert score["constant"].determined
    assert cal.chosen == "constant"
    # the lower bound the reads never approach is not left where the optimizer put it: it is set at
    # each device's lowest reads, and the report says so
    assert any(b.startswith("w_min: not reached by the reads") for b in score["constant"].bounds_at_reads)
    assert cal.model.step.w_min >= cal.weights.min()
    assert any("never reach is not determined" in n for n in cal.notes)
    assert any(n.startswith("rejected pow: parameters not determined by the data") for n in cal.notes)
    assert [c for c in cal.model.provenance["candidates"] if c["model"] == "pow"][0]["determined"] is False
    from hil.calibration.report import text_summary

    assert "pow not determined by the data" in text_summary(cal)
    forced = calibrate(ms, cfg.model_copy(update={"model": "pow"}))
    assert forced.chosen == "pow"
    assert any(n.startswith("WARNING: the requested model pow") for n in forced.notes)


def test_undetermined_parameter_rules() -> None:
    """The rules one by one: relative standard error, box limits, bounds beyond the data."""
    from hil.calibration.pipeline import undetermined_parameters

    def table(**kw: tuple[float, float]) -> dict[str, dict[str, float]]:
        return {k: {"value": v, "se": se} for k, (v, se) in kw.items()}

    ok = table(dw_up=(0.05, 0.001), dw_down=(0.04, 0.001), w_min=(-1.0, 0.01), w_max=(1.0, 0.01),
               gamma_up=(1.5, 0.05), gamma_down=(0.0, 0.01))
    assert undetermined_parameters(Family("pow"), ok, (-1.0, 1.0)) == []  # gamma 0 of pow is a value
    # the degenerate pow of the partial-range protocol
    bad = dict(ok, **table(w_min=(-19.73, 8.9e4), dw_up=(0.107, 479.0)))
    why = undetermined_parameters(Family("pow"), bad, (-0.25, 1.0))
    assert len(why) == 2 and "w_min = -19.73" in why[1] and "standard error" in why[1]
    # weak but real (the HfO2 step sizes: 50-90 % relative standard error) is kept
    assert undetermined_parameters(Family("softbounds"), dict(ok, **table(dw_up=(0.001, 0.0009))), (-1, 1)) == []
    # at the limit of the search box, or far beyond the data
    assert "search box" in undetermined_parameters(Family("pow"), dict(ok, **table(gamma_up=(29.9, 0.1))), (-1, 1))[0]
    far = undetermined_parameters(Family("softbounds"), dict(ok, **table(w_min=(-5.2, 0.5))), (-0.25, 1.0))
    assert far and "below the lowest reads" in far[0]
    # hard bounds of constant (a clamp set at the extreme reads) are not checked; fixed parameters skipped
    assert undetermined_parameters(Family("constant"), dict(ok, **table(w_min=(-5.2, 50.0))), (-0.25, 1.0)) == []
    nan_se = dict(ok, **table(dw_up=(1.0, float("nan"))))
    assert undetermined_parameters(Family("softbounds"), nan_se, (-1, 1), free={"dw_down", "w_min", "w_max"}) == []
    assert "not finite" in undetermined_parameters(Family("softbounds"), nan_se, (-1, 1))[0]


def test_protocol_shift_of_the_ferroelectric_held_out_runs(shared_data: Path) -> None:
    """The held-out later runs use pulse widths their devices' fitting runs never had: the
    replay check says so (information printed beside the held-out figures)."""
    from hil.calibration.compare import format_metrics, protocol_shift
    from hil.calibration.importers.base import import_measurements
    from hil.calibration.split import holdout_rows

    _, res = import_measurements(shared_data / "ferro-hzo-ampsweep", "wgfmu-summary")
    ms = res.measurements
    assert ms is not None
    held, unit = holdout_rows(ms, 1 / 3)
    shift = protocol_shift(ms, held)
    assert unit == "cycles" and shift is not None
    assert shift["width_s"]["heldout_outside_fraction"] > 0.9
    assert shift["amplitude_v"]["heldout_outside_fraction"] < 0.1
    assert shift["mean_change_up_heldout"] > shift["mean_change_up_fitting"] > 0
    text = format_metrics({"rows": 1, "devices": 1, "nrmse": 0.1, "pass_nrmse": False, "pass_step_std": True,
                           "protocol_shift": shift})
    assert "outside their device's fitting widths" in text
    # without width and amplitude columns, or without held-out rows: nothing to say
    plain = ms.subset(np.ones(len(ms), dtype=bool))
    plain.optional = {}
    assert protocol_shift(plain, held) is None
    assert protocol_shift(ms, np.zeros(len(ms), dtype=bool)) is None


def test_replay_check_restarts_from_the_prediction_not_the_held_out_read(tmp_path: Path) -> None:
    """The held-out check writes each device, at its first held-out read, to the fitted
    model's prediction of that read from the earlier reads: an outlier there (a held-out read)
    does not move the replay; ``hil characterize --restart-at-holdout`` (measured) follows it."""
    from hil.calibration.compare import holdout_starts
    from hil.calibration.workflow import predicted_reads, replay_check, replay_copies

    ms, _, _ = simulate("constant", 1, tmp_path)
    cfg = CalibrationConfig(model="constant", mapping=MappingSpec(g_range=G_RANGE))
    clean = calibrate(ms, cfg)
    restart = holdout_starts(ms, clean.heldout)
    k = np.nonzero(restart)[0]
    assert len(k) == len(ms.devices) and not ms.segment_starts()[k].any()
    span = G_RANGE[1] - G_RANGE[0]
    bad = ms.subset(np.ones(len(ms), dtype=bool))
    bad.conductance = ms.conductance.copy()
    bad.conductance[k] += 0.3 * span  # one wild held-out read per device
    cal = calibrate(bad, cfg)
    assert cal.heldout[k].all()
    pred = predicted_reads(cal)
    # the prediction uses the earlier reads only: the same with or without the outliers
    np.testing.assert_allclose(pred[k], predicted_reads(clean)[k], rtol=0, atol=1e-3 * span)
    assert np.isnan(pred[ms.segment_starts()]).all()
    assert np.all(np.abs(pred[k] - ms.conductance[k]) < 0.1 * span)
    m = replay_check(cal, seed=0, replays=8)
    assert m["restart"]["rows"] == len(k)
    assert min(m["restart"]["measured_minus_predicted"]) > 0.2
    g_pred = np.where(restart, pred, np.nan)
    by_pred = replay_copies(cal.train_model, bad, cal.mapping, 2, restart_rows=restart, restart_g=g_pred)
    by_read = replay_copies(cal.train_model, bad, cal.mapping, 2, restart_rows=restart)
    # the replay's read at the restart, relative to the prediction, over devices and copies
    # (a device drawn with other bounds, read noise and the write-verify tolerance scatter it)
    off_pred = np.mean([(rep.conductance[k] - pred[k]) / span for rep in by_pred])
    off_read = np.mean([(rep.conductance[k] - pred[k]) / span for rep in by_read])
    assert abs(off_pred) < 0.08 and off_read > 0.2


def test_candidate_fits_in_worker_processes_give_the_same_calibration(tmp_path: Path) -> None:
    """``jobs=2`` fits the candidates in worker processes (each as soon as the fit it starts from
    is done: pow from softbounds, exp from constant) and gives the same models, scores and choice
    as ``jobs=1``; ``jobs=0`` picks workers only for large sets."""
    from hil.calibration.candidates import PARALLEL_MIN_ROWS, auto_jobs

    ms, _, _ = simulate("softbounds", 3, tmp_path)
    ms = ms.subset(np.isin(ms.device, ms.devices[:2]))
    cfg = CalibrationConfig(candidates=["constant", "softbounds", "pow", "exp"],
                            mapping=MappingSpec(g_range=G_RANGE), chunk=ROUNDTRIP_CHUNK)
    one = calibrate(ms, cfg, jobs=1)
    two = calibrate(ms, cfg, jobs=2)
    assert one.chosen == two.chosen
    assert one.model.model_dump(exclude={"provenance"}) == two.model.model_dump(exclude={"provenance"})
    assert [c.model_dump() for c in one.candidates] == [c.model_dump() for c in two.candidates]
    assert auto_jobs(PARALLEL_MIN_ROWS - 1) == 1 and auto_jobs(PARALLEL_MIN_ROWS) >= 1
    with pytest.raises(ValueError, match="jobs"):
        calibrate(ms, cfg, jobs=-1)


def _calibrate_in_a_daemon(args: tuple) -> str:
    ms, cfg = args
    return calibrate(ms, cfg, jobs=2).chosen


def test_candidate_fits_inside_a_daemonic_worker_run_in_that_worker(tmp_path: Path) -> None:
    """A worker of a ``multiprocessing.Pool`` (daemonic: it may not start processes) asking for
    ``jobs=2`` fits the candidates itself instead of failing."""
    import multiprocessing

    ms, _, _ = simulate("softbounds", 3, tmp_path)
    ms = ms.subset(np.isin(ms.device, ms.devices[:1]))
    cfg = CalibrationConfig(candidates=["constant", "softbounds"], mapping=MappingSpec(g_range=G_RANGE),
                            chunk=ROUNDTRIP_CHUNK)
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(1) as pool:
        chosen = pool.apply_async(_calibrate_in_a_daemon, ((ms, cfg),)).get(timeout=300)
    assert chosen == calibrate(ms, cfg).chosen


def test_candidate_fits_fall_back_to_this_process_when_workers_cannot_start(tmp_path: Path, monkeypatch) -> None:
    """No worker processes to be had (here: starting the pool fails with an OSError, as where no
    fork server can run): a warning, and the same calibration fitted in this process."""
    import concurrent.futures

    ms, _, _ = simulate("softbounds", 3, tmp_path)
    ms = ms.subset(np.isin(ms.device, ms.devices[:1]))
    cfg = CalibrationConfig(candidates=["constant", "softbounds"], mapping=MappingSpec(g_range=G_RANGE),
                            chunk=ROUNDTRIP_CHUNK)
    want = calibrate(ms, cfg)

    class NoWorkers:
        def __init__(self, *a: object, **k: object) -> None:
            raise OSError("no fork server here")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", NoWorkers)
    with pytest.warns(RuntimeWarning, match="worker processes failed .*OSError.* 2 remaining"):
        got = calibrate(ms, cfg, jobs=2)
    assert got.chosen == want.chosen
    assert got.model.model_dump(exclude={"provenance"}) == want.model.model_dump(exclude={"provenance"})
