"""The non-accumulating write-noise offset: simulator statistics, file format, filter, fit.

Model (``hil.device_model``): the weight that reads see is the hidden weight plus an
offset ``o``; every pulse replaces it by ``rho o + sqrt(1 - rho^2) sigma xi`` (``n``
pulses: ``rho^n o + sqrt(1 - rho^(2n)) sigma xi``).  Tolerances are ``K`` standard
errors of the statistic under the model (with the effective sample size of an AR(1)
series where successive values are correlated), with fixed seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hil.calibration.filter import Sequences, gaussian_nll, run_filter
from hil.calibration.stepmodels import Family
from hil.device_model import ConstantStep, DeviceModel, DeviceVariation, SoftBoundsStep
from hil.simulated import PeripheryConfig, SimulatedCrossbar

K = 5.0
IDEAL = PeripheryConfig.ideal()
SD = 0.05


def _model(rho: float, sd: float = SD, step: object | None = None, **var: float) -> DeviceModel:
    return DeviceModel(
        step=step or SoftBoundsStep(dw_up=1e-4, dw_down=1e-4),
        variation=DeviceVariation(write_noise=sd, write_noise_rho=rho, **var),
    )


def _offsets(sim: SimulatedCrossbar) -> torch.Tensor:
    return sim.true_weights() - sim.hidden_weights()


def _lag_corr(o: torch.Tensor) -> float:
    """Lag-1 correlation of ``o [T, devices]`` (zero-mean series)."""
    return float((o[1:] * o[:-1]).mean() / (o * o).mean())


@pytest.mark.parametrize("rho,pulses", [(0.8, 1), (0.8, 3), (0.0, 1)])
def test_offset_is_a_stationary_ar1_per_pulse(rho: float, pulses: int) -> None:
    """Dense path (every device pulsed): std ``sigma``, lag-1 correlation ``rho^n`` per call of n pulses."""
    sim = SimulatedCrossbar(32, 32, device=_model(rho), periphery=IDEAL, seed=3)
    series = [_offsets(sim)]
    for t in range(300):
        c = torch.full((32, 32), pulses if t % 2 == 0 else -pulses, dtype=torch.int64)
        sim.pulse(c)
        series.append(_offsets(sim))
    o = torch.stack(series).reshape(301, -1).double()
    phi = rho**pulses
    n = o.numel()
    n_eff = n * (1 - phi**2) / (1 + phi**2)  # effective sample size of a variance estimate
    assert abs(float(o.pow(2).mean()) / SD**2 - 1) < K * math.sqrt(2 / n_eff)
    # standard error of a lag-1 autocorrelation estimate: sqrt((1 - phi^2) / n)
    assert abs(_lag_corr(o) - phi) < K * math.sqrt(max(1 - phi**2, 1.0 / n) / n)


def test_sparse_path_redraws_only_pulsed_devices() -> None:
    """A large array with 10 % of its devices pulsed takes the gathered path: the others keep
    their offset bit for bit; the pulsed ones follow the AR(1) law."""
    rho = 0.7
    sim = SimulatedCrossbar(80, 80, device=_model(rho), periphery=IDEAL, seed=4)
    assert sim.devices._sparse_fraction() >= 0.1  # noqa: SLF001 - the path under test
    pulsed = torch.zeros(80, 80, dtype=torch.bool)
    pulsed[:8] = True
    series = [_offsets(sim)]
    for t in range(300):
        before = sim.devices.offset.clone()
        sim.pulse(torch.where(pulsed, 1 if t % 2 == 0 else -1, 0).to(torch.int64))
        assert torch.equal(sim.devices.offset[~pulsed], before[~pulsed])
        assert not torch.equal(sim.devices.offset[pulsed], before[pulsed])
        series.append(_offsets(sim))
    o = torch.stack(series)[:, pulsed].double()
    n = o.numel()
    n_eff = n * (1 - rho**2) / (1 + rho**2)
    assert abs(float(o.pow(2).mean()) / SD**2 - 1) < K * math.sqrt(2 / n_eff)
    assert abs(_lag_corr(o) - rho) < K * math.sqrt((1 - rho**2) / n)


def test_reads_without_pulses_see_the_same_offset() -> None:
    """Unlike read noise, the offset is not redrawn by a read; it does not accumulate into the
    hidden weight (hidden weights of a noise-free step move by the step only)."""
    m = _model(0.5, step=ConstantStep(dw_up=0.01, dw_down=0.01))
    sim = SimulatedCrossbar(4, 6, device=m, periphery=IDEAL, seed=0)
    r1, r2 = sim.read(), sim.read()
    assert torch.equal(r1, r2)
    torch.testing.assert_close(r1, sim.hidden_weights() + sim.devices.offset)
    assert float((r1 - sim.hidden_weights()).abs().max()) > 0
    h0 = sim.hidden_weights()
    for _ in range(5):
        sim.pulse(torch.ones(4, 6, dtype=torch.int64))
    torch.testing.assert_close(sim.hidden_weights(), h0 + 0.05)
    # with read noise, two reads differ by the read noise only
    noisy = SimulatedCrossbar(4, 6, device=m.model_copy(update={"read_noise": 0.01}), seed=0,
                              periphery=IDEAL.model_copy(update={"w_noise": 0.01}))
    diff = noisy.read() - noisy.read()
    assert float(diff.abs().max()) < K * 0.01 * math.sqrt(2)


def test_no_write_noise_means_no_offset() -> None:
    sim = SimulatedCrossbar(3, 3, device="rram-softbounds-20", seed=0)
    assert sim.devices.offset is None
    sim.pulse(torch.ones(3, 3, dtype=torch.int64))
    assert torch.equal(sim.true_weights(), sim.hidden_weights())
    assert "offset" not in sim.devices.state_dict()


def test_stuck_devices_have_no_offset() -> None:
    m = _model(0.5, stuck_fraction=0.5)
    sim = SimulatedCrossbar(8, 8, device=m, periphery=IDEAL, seed=2)
    for _ in range(3):
        sim.pulse(torch.ones(8, 8, dtype=torch.int64))
    assert torch.equal(sim.devices.offset[sim.devices.stuck], torch.zeros(int(sim.devices.stuck.sum())))
    assert float(sim.devices.offset[~sim.devices.stuck].abs().max()) > 0


def test_set_weights_sets_the_hidden_weight_and_draws_a_new_offset() -> None:
    sim = SimulatedCrossbar(40, 40, device=_model(0.9), periphery=IDEAL, seed=5)
    before = sim.devices.offset.clone()
    target = torch.full((40, 40), 0.25)
    sim.set_weights(target)
    torch.testing.assert_close(sim.hidden_weights(), target)
    o = sim.devices.offset
    assert not torch.equal(o, before)
    assert abs(float(o.pow(2).mean()) / SD**2 - 1) < K * math.sqrt(2 / o.numel())


def test_checkpoint_carries_the_offset_and_resumes_bit_identically() -> None:
    m = _model(0.8, c2c=0.5)
    a = SimulatedCrossbar(6, 7, device=m, periphery=IDEAL, seed=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        a.pulse(torch.randint(-2, 3, (6, 7), generator=g))
    state = a.state_dict()
    assert "offset" in state["devices"]
    b = SimulatedCrossbar(6, 7, device=m, periphery=IDEAL, seed=99)
    b.load_state_dict(state)
    for _ in range(4):
        c = torch.randint(-2, 3, (6, 7), generator=g)
        a.pulse(c)
        b.pulse(c)
        x = torch.rand(3, 7, generator=g)
        assert torch.equal(a.forward(x), b.forward(x))
    assert torch.equal(a.true_weights(), b.true_weights())
    # a checkpoint of a model without write noise cannot feed one with it
    plain = SimulatedCrossbar(6, 7, device=m.model_copy(update={"variation": DeviceVariation(c2c=0.5)}), seed=1)
    bad = plain.state_dict()
    bad["config"] = state["config"]
    with pytest.raises(ValueError, match="write-noise offset"):
        SimulatedCrossbar(6, 7, device=m, seed=1).load_state_dict(bad)


def test_device_model_file_round_trip_and_schema(tmp_path: Path) -> None:
    m = _model(0.85, sd=0.1)
    path = m.save(tmp_path / "dev.json")
    back = DeviceModel.load(path)
    assert back == m and back.schema_version == DeviceModel.SCHEMA_VERSION
    assert back.variation.write_noise == 0.1 and back.variation.write_noise_rho == 0.85
    # a 1.0 file (written before write noise existed) loads with none
    old = json.loads(path.read_text())
    old["schema_version"] = "1.0"
    del old["variation"]["write_noise"], old["variation"]["write_noise_rho"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    legacy = DeviceModel.load(tmp_path / "old.json")
    assert legacy.variation.write_noise == 0.0 and legacy.schema_version == "1.0"
    assert SimulatedCrossbar(2, 2, device=tmp_path / "old.json").devices.offset is None
    for bad, what in (({"write_noise_rho": 1.0}, "less than 1"), ({"write_noise": -0.1}, "greater than or equal")):
        with pytest.raises(ValueError, match=what):
            DeviceVariation(**bad)
    old["schema_version"] = "2.0"
    (tmp_path / "new.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="schema_version '2.0'"):
        DeviceModel.load(tmp_path / "new.json")


@pytest.mark.parametrize(
    "torch_device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_write_noise_on_every_torch_device(torch_device: str) -> None:
    m = _model(0.6, c2c=0.3)
    a = SimulatedCrossbar(64, 80, device=m, seed=7, torch_device=torch_device)
    b = SimulatedCrossbar(64, 80, device=m, seed=7, torch_device=torch_device)
    x = torch.rand(5, 80, device=torch_device)
    d = torch.rand(5, 64, device=torch_device) - 0.5
    for xbar in (a, b):
        xbar.update(x, d, 0.05)
        xbar.pulse(torch.ones(64, 80, dtype=torch.int64, device=torch_device))
        assert xbar.devices.offset.device.type == torch_device
    assert torch.equal(a.true_weights(), b.true_weights())


# ------------------------------------------------------------------ filter
def _exact_nll(y: np.ndarray, pol: np.ndarray, dw_up: float, dw_dn: float, q: float, r: float,
               so2: float, rho: float) -> float:
    """Exact Gaussian NLL of reads 1..T given read 0 (diffuse prior on the hidden weight) for a
    constant step far from its bounds: ``y_t - y_0 = drift_t + walk_t + (o_t - o_0) + (e_t - e_0)``."""
    n = np.cumsum(pol != 0)  # pulses up to each read (read 0: none counted)
    n = n - n[0]
    drift = np.cumsum(np.where(pol > 0, dw_up, np.where(pol < 0, -dw_dn, 0.0)))
    drift = drift - drift[0]
    t = np.arange(1, len(y))
    ns = n[t]
    walk = q * np.minimum.outer(ns, ns)
    off = so2 * (rho ** np.abs(np.subtract.outer(ns, ns)) - rho ** ns[:, None] - rho ** ns[None, :] + 1.0)
    read = r * (np.eye(len(t)) + 1.0)
    cov = walk + off + read
    d = y[t] - y[0] - drift[t]
    _, logdet = np.linalg.slogdet(cov)
    return float(0.5 * (d @ np.linalg.solve(cov, d) + logdet + len(t) * np.log(2 * np.pi)))


def test_filter_likelihood_is_exact_for_a_linear_gaussian_device() -> None:
    """Constant step far from its bounds: the state-space model is linear-Gaussian, so the
    filter's likelihood must equal the exact one (reads without pulses keep the offset)."""
    rng = np.random.default_rng(0)
    pol = rng.choice([1, -1, 0], size=40, p=[0.45, 0.35, 0.2])
    pol[0] = 0
    y = np.cumsum(rng.normal(0.0, 0.05, size=40))
    dw_up, dw_dn, c2c, r, sd, rho = 0.02, 0.015, 0.5, 0.01**2, 0.04, 0.7
    seq = Sequences(
        y=y[None, :], pol=pol[None, :].astype(np.int8), reset=np.eye(1, 40, dtype=bool),
        valid=np.ones((1, 40), dtype=bool), row=np.arange(40)[None, :], device=np.zeros(1, dtype=np.int64),
        devices=["d"],
    )
    fam = Family("constant")
    p = {"dw_up": np.full((1, 1), dw_up), "dw_down": np.full((1, 1), dw_dn),
         "w_min": np.full((1, 1), -100.0), "w_max": np.full((1, 1), 100.0)}
    # the constant step's c2c noise has std c2c * dw of the pulse's direction: use equal steps
    # for the exact formula's single walk variance
    p["dw_down"] = p["dw_up"]
    out = run_filter(seq, fam, p, np.full((1, 1), c2c), np.full((1, 1), r), write_var=sd**2, write_rho=rho)
    filt = float(gaussian_nll(out.nu[0, 0, 1:], out.var[0, 0, 1:]).sum())
    exact = _exact_nll(y, pol, dw_up, dw_up, (c2c * dw_up) ** 2, r, sd**2, rho)
    assert filt == pytest.approx(exact, rel=1e-9, abs=1e-9)
    # without the offset the one-dimensional filter runs, and agrees with the formula too
    out0 = run_filter(seq, fam, p, np.full((1, 1), c2c), np.full((1, 1), r))
    exact0 = _exact_nll(y, pol, dw_up, dw_up, (c2c * dw_up) ** 2, r, 0.0, 0.0)
    assert float(gaussian_nll(out0.nu[0, 0, 1:], out0.var[0, 0, 1:]).sum()) == pytest.approx(exact0, rel=1e-9)


# ------------------------------------------------------------------ fit
G_RANGE = (1e-6, 11e-6)
OFFSET_SD, OFFSET_RHO = 0.03, 0.9


@pytest.fixture(scope="module")
def offset_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four simulated soft-bounds devices with c2c, read noise and a write-noise offset (std
    0.03, rho 0.9: a memory of 9.5 pulses), characterized with repeated reads."""
    from hil.calibration.mapping import Mapping
    from hil.characterization import PulseProtocol, run_protocol
    from hil.device_model import ConductanceMapping

    truth = DeviceModel(
        step=SoftBoundsStep(dw_up=0.04, dw_down=0.03),
        variation=DeviceVariation(c2c=0.3, write_noise=OFFSET_SD, write_noise_rho=OFFSET_RHO),
        read_noise=0.01,
        conductance=ConductanceMapping(g_min_s=G_RANGE[0], g_max_s=G_RANGE[1]),
    )
    sim = SimulatedCrossbar(1, 4, device=truth, periphery=IDEAL.model_copy(update={"w_noise": 0.01}), seed=11)
    out = tmp_path_factory.mktemp("offset") / "wn.csv"
    assert truth.conductance is not None
    run_protocol(sim, PulseProtocol(n_up=100, n_down=100, cycles=4, repeated_reads=5, start_weight=-0.9),
                 Mapping(model=truth.conductance), out, progress=False)
    return out


def _calibrate_cli(src: Path, out: Path, write_noise: str) -> str:
    from click.testing import CliRunner

    from hil.cli.main import cli

    r = CliRunner().invoke(cli, ["calibrate", str(src), "-o", str(out), "--model", "softbounds", "--chunk", "128",
                                 "--g-range", f"{G_RANGE[0]},{G_RANGE[1]}", "--no-replay-check",
                                 "--write-noise", write_noise])
    assert r.exit_code == 0, r.output
    return r.output


def test_calibration_recovers_a_known_write_noise(offset_csv: Path, tmp_path: Path) -> None:
    """``hil calibrate --write-noise auto`` (the default) on the offset population: the offset is
    found, its std and correlation are within 4 standard errors and 15 % of the truth, and the
    written model file carries them (and prints them)."""
    out = tmp_path / "fitted.json"
    text = _calibrate_cli(offset_csv, out, "auto")
    m = DeviceModel.load(out)
    prov = m.provenance
    assert prov["config"]["write_noise"] == "auto" and prov["config"]["chunk"] == 128
    score = next(c for c in prov["candidates"] if c["model"] == "softbounds")
    assert score["write_noise"] and score["write_noise_fit"] is not None and score["write_noise_fit"]["bic_gain"] > 0
    v = m.variation
    for name, fitted, true in (("write_sd", v.write_noise, OFFSET_SD), ("write_rho", v.write_noise_rho, OFFSET_RHO)):
        se = prov["parameters"][name]["se"]
        assert prov["parameters"][name]["value"] == fitted
        assert 0 < se < 0.1 * true, (name, se)
        assert abs(fitted - true) < 4 * se and abs(fitted - true) < 0.15 * true, (name, fitted, se)
    assert m.read_noise == pytest.approx(0.01, rel=0.2)
    assert f"write noise {v.write_noise:.3g} (correlation per pulse {v.write_noise_rho:.3g})" in text


def test_calibrate_cli_write_noise_off(offset_csv: Path, tmp_path: Path) -> None:
    """``--write-noise off``: the same data, whose offset ``auto`` finds, gives a model without
    one (0 in the written JSON), and no candidate is fitted with it."""
    out = tmp_path / "off.json"
    text = _calibrate_cli(offset_csv, out, "off")
    raw = json.loads(out.read_text())
    assert raw["variation"]["write_noise"] == 0.0 and raw["variation"]["write_noise_rho"] == 0.0
    assert raw["provenance"]["config"]["write_noise"] == "off"
    assert all(c["write_noise_fit"] is None and not c["write_noise"] for c in raw["provenance"]["candidates"])
    assert "write_sd" not in raw["provenance"]["parameters"]
    assert "write noise" not in text
    assert DeviceModel.load(out).variation.write_noise == 0.0


def test_no_write_noise_is_found_where_there_is_none(tmp_path: Path) -> None:
    """The same population without the offset: the fit with it does not lower the BIC, or its
    offset is not determined, so the model has none."""
    from hil.calibration.mapping import Mapping, MappingSpec
    from hil.calibration.measurements import load_measurements
    from hil.calibration.pipeline import CalibrationConfig, calibrate
    from hil.characterization import PulseProtocol, run_protocol
    from hil.device_model import ConductanceMapping

    g_range = (1e-6, 11e-6)
    truth = DeviceModel(
        step=SoftBoundsStep(dw_up=0.04, dw_down=0.03),
        variation=DeviceVariation(c2c=0.3),
        read_noise=0.01,
        conductance=ConductanceMapping(g_min_s=g_range[0], g_max_s=g_range[1]),
    )
    sim = SimulatedCrossbar(1, 4, device=truth, periphery=IDEAL.model_copy(update={"w_noise": 0.01}), seed=12)
    out = tmp_path / "plain.csv"
    assert truth.conductance is not None
    run_protocol(sim, PulseProtocol(n_up=100, n_down=100, cycles=4, repeated_reads=5, start_weight=-0.9),
                 Mapping(model=truth.conductance), out, progress=False)
    cal = calibrate(load_measurements(out), CalibrationConfig(model="softbounds", chunk=128,
                                                              mapping=MappingSpec(g_range=g_range)))
    assert cal.model.variation.write_noise == 0.0
    wf = next(c for c in cal.candidates if c.model == "softbounds").write_noise_fit
    assert wf is not None and (wf["bic_gain"] <= 0 or wf["undetermined"])
