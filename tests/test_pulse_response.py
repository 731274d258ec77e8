"""Pulses of other amplitude and width: the pulse-response law, the simulator, replay, calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hil.backend import BackendInfo, CrossbarBackend
from hil.calibration.mapping import Mapping
from hil.calibration.measurements import MeasurementSet
from hil.calibration.pipeline import CalibrationConfig, calibrate
from hil.characterization.protocol import PulseProtocol
from hil.characterization.runner import replay_to_set, run_protocol
from hil.device_model import ConductanceMapping, DeviceModel
from hil.pulse_response import PulseResponse, PulseShape, SwitchingLaw, log_fraction_np
from hil.simulated import PeripheryConfig, SimulatedCrossbar

LAW = PulseResponse(
    up=SwitchingLaw(log10_t0_s=-6.0, activation_v=4.0, exponent=0.5),
    down=SwitchingLaw(log10_t0_s=-6.5, activation_v=3.0, exponent=0.6),
    nominal_up=PulseShape(amplitude_v=3.0, width_s=1e-5),
    nominal_down=PulseShape(amplitude_v=3.0, width_s=1e-5),
)


def _model(c2c: float = 0.0, law: PulseResponse | None = LAW, step: str = "softbounds", **d2d: float) -> DeviceModel:
    return DeviceModel.model_validate(
        {
            "step": {"model": step, "dw_up": 0.1, "dw_down": 0.08, "w_min": -1.0, "w_max": 1.0},
            "variation": {"c2c": c2c, "d2d": d2d},
            "pulse_response": None if law is None else law.model_dump(),
        }
    )


def test_law_scale_is_one_at_the_nominal_pulse_and_grows_with_amplitude_and_width() -> None:
    for up in (True, False):
        nom = LAW.nominal_up if up else LAW.nominal_down
        assert LAW.scale_np(nom.amplitude_v, nom.width_s, up) == 1.0
        v = np.array([0.5, 1.0, 2.0, 3.0, 5.0])
        by_v = LAW.scale_np(v, 1e-5, up)
        by_t = LAW.scale_np(3.0, np.array([1e-8, 1e-7, 1e-6, 1e-5, 1e-3]), up)
        assert np.all(np.diff(by_v) > 0) and np.all(np.diff(by_t) > 0)
        # numpy and torch agree; the sign of the amplitude does not matter
        t = LAW.scale_torch(torch.tensor(-v, dtype=torch.float64), torch.full((5,), 1e-5, dtype=torch.float64), up)
        assert np.allclose(t.numpy(), by_v, rtol=1e-12)
    # f is a fraction: at most 1, and its log stays finite for pulses far too weak to switch
    with np.errstate(all="raise"):
        lf = log_fraction_np(np.array([0.01, 3.0, 100.0]), np.array([1e-9, 1e-5, 10.0]), LAW.up)
    assert np.all(np.isfinite(lf)) and np.all(lf <= 0.0) and lf[-1] == 0.0


def test_device_model_with_pulse_response_round_trips(tmp_path) -> None:
    m = _model(0.2, dw_up=0.1)
    path = m.save(tmp_path / "dev.json")
    back = DeviceModel.load(path)
    assert back == m and back.pulse_response == LAW
    with pytest.raises(ValueError, match="exponent"):
        SwitchingLaw(log10_t0_s=-6.0, activation_v=1.0, exponent=0.0)
    with pytest.raises(ValueError, match="field_exponent"):
        SwitchingLaw(log10_t0_s=-6.0, activation_v=1.0, exponent=0.5, field_exponent=-1.0)


def test_a_schema_1_2_model_without_field_exponent_loads_with_merz_law(tmp_path) -> None:
    """Files written before the field exponent (schema 1.2) read as Merz's law (alpha = 1)."""
    import json

    d = json.loads(_model(0.2).to_json())
    d["schema_version"] = "1.2"
    for direction in ("up", "down"):
        del d["pulse_response"][direction]["field_exponent"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = DeviceModel.load(tmp_path / "old.json")
    assert old.pulse_response is not None and old.pulse_response.up.field_exponent == 1.0
    assert old.pulse_response == LAW
    # alpha = 1 is Merz's tau = t0 exp(V_a / V): the law's log fraction by hand
    v, t = 1.7, 3e-6
    z = 0.5 * (np.log(t) + 6.0 * np.log(10.0) - 4.0 / v)
    assert np.isclose(float(log_fraction_np(v, t, LAW.up)), np.log(-np.expm1(-np.exp(z))), rtol=1e-12)


@pytest.mark.parametrize("step", ["constant", "softbounds", "pow"])
def test_nominal_shaped_pulses_equal_unshaped_ones_bit_for_bit(step: str) -> None:
    m = _model(0.3, step=step, dw_up=0.2, w_max=0.1)
    a = SimulatedCrossbar(3, 4, device=m, seed=5, periphery=PeripheryConfig.ideal())
    b = SimulatedCrossbar(3, 4, device=m, seed=5, periphery=PeripheryConfig.ideal())
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        counts = torch.randint(-3, 4, (3, 4), generator=g)
        a.pulse(counts)
        # the up and down nominal pulses (here of one shape) are the default
        b.pulse(counts, amplitude_v=3.0, width_s=1e-5)
    assert torch.equal(a.true_weights(), b.true_weights())
    assert a.info.pulse_shapes and a.devices.params["dw_up"].equal(b.devices.params["dw_up"])


def test_a_shaped_pulse_scales_the_step() -> None:
    sim = SimulatedCrossbar(2, 3, device=_model(step="constant"), seed=0, periphery=PeripheryConfig.ideal())
    amp = torch.tensor([[0.5, 1.0, 3.0], [1.0, 2.0, 4.0]], dtype=torch.float64)
    width = torch.tensor([[1e-5, 1e-6, 1e-7], [1e-4, 1e-5, 1e-3]], dtype=torch.float64)
    counts = torch.tensor([[1, 1, 1], [-1, -1, -1]])
    sim.pulse(counts, amplitude_v=amp, width_s=width)
    want = np.stack([0.1 * LAW.scale_np(amp[0].numpy(), width[0].numpy(), True),
                     -0.08 * LAW.scale_np(amp[1].numpy(), width[1].numpy(), False)])
    assert np.allclose(sim.true_weights().numpy(), want, rtol=1e-5, atol=1e-7)
    # only the width given: the nominal amplitude of each direction
    sim.set_weights(torch.zeros(2, 3))
    sim.pulse(counts, width_s=1e-3)
    assert np.allclose(sim.true_weights()[0].numpy(), 0.1 * LAW.scale_np(3.0, 1e-3, True), rtol=1e-5)


def test_bad_pulse_shapes_are_refused_before_anything_changes() -> None:
    sim = SimulatedCrossbar(2, 2, device=_model(), seed=0, periphery=PeripheryConfig.ideal())
    before = sim.true_weights().clone()
    ones = torch.ones(2, 2, dtype=torch.int64)
    for kwargs, msg in (
        ({"amplitude_v": float("nan")}, "amplitude_v"),
        ({"width_s": -1e-6}, "width_s must be > 0"),
        ({"amplitude_v": 0.0}, "amplitude_v must be > 0"),
        ({"amplitude_v": torch.ones(3, 2)}, "shape"),
        ({"width_s": torch.tensor([[1e-6, float("inf")], [1e-6, 1e-6]])}, "NaN/inf"),
    ):
        with pytest.raises(ValueError, match=msg):
            sim.pulse(ones, **kwargs)
    assert torch.equal(sim.true_weights(), before) and sim.counts.pulse_calls == 0
    plain = SimulatedCrossbar(2, 2, device=_model(law=None), seed=0)
    assert not plain.info.pulse_shapes
    with pytest.raises(ValueError, match="nominal pulse only"):
        plain.pulse(ones, width_s=1e-6)


class _NominalOnly(CrossbarBackend):
    """A backend without pulse shapes that records what reaches it."""

    def __init__(self) -> None:
        super().__init__(2, 2)
        self.sent: list[torch.Tensor] = []

    def _info(self) -> BackendInfo:
        return BackendInfo(name="nominal-only", rows=2, cols=2, w_min=-1.0, w_max=1.0, dw_min=0.1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2)

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.zeros(d.shape[0], 2)

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        pass

    def _pulse(self, counts: torch.Tensor) -> None:
        self.sent.append(counts)


def test_a_backend_without_pulse_shapes_refuses_them_and_sends_nothing() -> None:
    b = _NominalOnly()
    with pytest.raises(ValueError, match="nothing was sent"):
        b.pulse(torch.ones(2, 2, dtype=torch.int64), amplitude_v=2.0)
    assert b.sent == []
    b.pulse(torch.ones(2, 2, dtype=torch.int64))
    assert len(b.sent) == 1


def _sweep_set(devices: int, widths: list[float], n: int, seed: int = 0) -> MeasurementSet:
    """Amplitude sweeps (0.5 -> 3.5 V up, then down) per run, one width per run, as a template."""
    rows: dict[str, list] = {k: [] for k in ("device", "cycle", "pulse", "polarity", "amplitude_v", "width_s")}
    ramp = np.linspace(0.5, 3.5, n)
    for d in range(devices):
        k = 0
        for c, wdt in enumerate(widths):
            for pol, amps in ((1, ramp), (-1, -ramp)):
                for a in amps:
                    rows["device"].append(f"d{d}")
                    rows["cycle"].append(c)
                    rows["pulse"].append(k)
                    rows["polarity"].append(pol)
                    rows["amplitude_v"].append(float(a))  # signed as the sweep; only |V| matters
                    rows["width_s"].append(wdt)
                    k += 1
    m = len(rows["device"])
    return MeasurementSet(device=np.array(rows["device"], dtype=object), cycle=rows["cycle"], pulse=rows["pulse"],
                          polarity=rows["polarity"], conductance=np.full(m, 1.5e-6),
                          optional={"amplitude_v": np.array(rows["amplitude_v"]), "width_s": np.array(rows["width_s"])})


MAPPING = Mapping(model=ConductanceMapping(g_min_s=1e-6, g_max_s=2e-6))


def test_replay_applies_each_rows_pulse_shape() -> None:
    tpl = _sweep_set(2, [1e-7, 1e-4], 6)
    sim = SimulatedCrossbar(1, 2, device=_model(step="constant"), seed=0, periphery=PeripheryConfig.ideal())
    out = replay_to_set(sim, tpl, MAPPING)
    w = MAPPING.to_weight(out.conductance, out.device)
    dw = np.diff(w[tpl.device == "d0"])
    pol = tpl.polarity[tpl.device == "d0"][1:]
    amp, wid = tpl.optional["amplitude_v"][tpl.device == "d0"][1:], tpl.optional["width_s"][tpl.device == "d0"][1:]
    want = np.where(pol > 0, 0.1 * LAW.scale_np(amp, wid, True), -0.08 * LAW.scale_np(amp, wid, False))
    assert np.allclose(dw, want, rtol=1e-4, atol=1e-6)
    # pulse_shapes=False: every pulse nominal
    sim2 = SimulatedCrossbar(1, 2, device=_model(step="constant"), seed=0, periphery=PeripheryConfig.ideal())
    w2 = MAPPING.to_weight(replay_to_set(sim2, tpl, MAPPING, pulse_shapes=False).conductance, tpl.device)
    assert np.allclose(np.diff(w2[tpl.device == "d0"]), np.where(pol > 0, 0.1, -0.08), atol=1e-6)
    with pytest.raises(ValueError, match="nominal pulse only"):
        replay_to_set(SimulatedCrossbar(1, 2, device=_model(law=None)), tpl, MAPPING, pulse_shapes=True)


def test_protocol_pulses_take_the_protocols_shape(tmp_path) -> None:
    p = PulseProtocol(n_up=3, n_down=0, cycles=1, amplitude_up_v=1.0, width_s=1e-6, start_weight=0.0)
    sim = SimulatedCrossbar(1, 2, device=_model(step="constant"), seed=0, periphery=PeripheryConfig.ideal())
    run_protocol(sim, p, MAPPING, tmp_path / "p.csv", backend_spec="sim", progress=False)
    w = sim.true_weights()[0].numpy()
    assert np.allclose(w, 3 * 0.1 * LAW.scale_np(1.0, 1e-6, True), rtol=1e-4)


def test_calibration_fits_the_law_back_from_amplitude_sweeps() -> None:
    """Round trip: sweeps at four widths on devices with a known law (c2c 0.3, read noise 0.01) ->
    the law is kept by the BIC, its parameters come back within 10 %, and the relative strength
    of every swept pulse (its scale against the truth's nominal pulse) within 10 % wherever that
    pulse moves the device by at least a tenth of the strongest one."""
    truth = _model(0.3).model_copy(update={"read_noise": 0.01})
    tpl = _sweep_set(6, [1e-7, 1e-6, 1e-5, 1e-4], 30)
    sim = SimulatedCrossbar(1, 6, device=truth, seed=3, periphery=PeripheryConfig.ideal().model_copy(update={"w_noise": 0.01}))
    ms = replay_to_set(sim, tpl, MAPPING)
    cal = calibrate(ms, CalibrationConfig(model="softbounds"))
    assert cal.pulse_law is not None and cal.pulse_law.used and cal.pulse_law.bic_change < -100
    # Merz's form (alpha = 1) is the truth: a free field exponent does not pay for its 2 parameters
    assert not cal.pulse_law.field_exponent_used and cal.pulse_law.field_exponent_bic_change > 0
    fitted = cal.train_model.pulse_response
    assert fitted is not None and cal.model.pulse_response == fitted
    for d in ("up", "down"):
        for name in ("log10_t0_s", "activation_v", "exponent"):
            want, got = getattr(getattr(LAW, d), name), getattr(getattr(fitted, d), name)
            assert abs(got / want - 1.0) < 0.10, (d, name, got, want)
    amp = np.linspace(0.5, 3.5, 30)
    for up in (True, False):
        ref = fitted.scale_np(3.0, 1e-5, up)
        for wdt in (1e-7, 1e-6, 1e-5, 1e-4):
            true = LAW.scale_np(amp, wdt, up)
            got = fitted.scale_np(amp, wdt, up) / ref
            big = true > 0.1 * true.max()
            assert np.all(np.abs(got[big] / true[big] - 1.0) < 0.10), (up, wdt, got[big] / true[big])
    # without the law every pulse is the same pulse
    plain = calibrate(ms, CalibrationConfig(model="softbounds", pulse_response="none"))
    assert plain.pulse_law is None and plain.model.pulse_response is None
    # a set of identical pulses has no law to fit
    same = ms.subset(np.ones(len(ms), dtype=bool))
    same.optional["width_s"] = np.full(len(ms), 1e-6)
    same.optional["amplitude_v"] = np.full(len(ms), 2.0)
    assert calibrate(same, CalibrationConfig(model="softbounds")).pulse_law is None


def test_calibration_fits_a_steep_field_exponent_back(tmp_path) -> None:
    """A device whose up pulses switch with a threshold-like amplitude law (field exponent
    alpha 3: tau = t0 exp((V_a / V)^3)): the BIC keeps the free exponent, which comes back
    within 15 %, and the relative strength of the swept pulses within 20 %."""
    steep = LAW.model_copy(update={"up": SwitchingLaw(log10_t0_s=-6.0, activation_v=2.0, exponent=0.5, field_exponent=3.0)})
    truth = _model(0.3, law=steep).model_copy(update={"read_noise": 0.01})
    sim = SimulatedCrossbar(1, 6, device=truth, seed=3, periphery=PeripheryConfig.ideal().model_copy(update={"w_noise": 0.01}))
    ms = replay_to_set(sim, _sweep_set(6, [1e-7, 1e-6, 1e-5, 1e-4], 30), MAPPING)
    cal = calibrate(ms, CalibrationConfig(model="softbounds"))
    law = cal.pulse_law
    assert law is not None and law.used and law.field_exponent_used and law.field_exponent_bic_change < -50
    up = law.response.up
    assert abs(up.field_exponent / 3.0 - 1.0) < 0.15 and abs(up.activation_v / 2.0 - 1.0) < 0.10
    assert abs(law.response.down.field_exponent - 1.0) < 0.15
    amp = np.linspace(0.5, 3.5, 30)
    ref = law.response.scale_np(3.0, 1e-5, True)
    for wdt in (1e-7, 1e-6, 1e-5):
        true = steep.scale_np(amp, wdt, True)
        big = true > 0.1 * true.max()
        got = law.response.scale_np(amp[big], wdt, True) / ref
        assert np.all(np.abs(got / true[big] - 1.0) < 0.20), (wdt, got / true[big])
    assert law.as_dict()["field_exponent_used"] is True
    # --pulse-response merz: Merz's alpha = 1 only, the free exponent is not even fitted
    merz = calibrate(ms, CalibrationConfig(model="softbounds", pulse_response="merz")).pulse_law
    assert merz is not None and merz.used and not merz.field_exponent_used and np.isnan(merz.nll_free)
    assert merz.response.up.field_exponent == 1.0 and merz.k_law == 6 and law.k_law == 8
    assert merz.nll_law > law.nll_law + 50
    # the report draws the law (pulse_law.png) where one is kept, and only there
    from hil.calibration.report import write_report

    paths = write_report(cal, tmp_path / "rep")
    assert paths["law_figure"].stat().st_size > 10_000
    plain = calibrate(ms, CalibrationConfig(model="softbounds", pulse_response="none"))
    assert "law_figure" not in write_report(plain, tmp_path / "rep-none")
    assert not (tmp_path / "rep-none" / "pulse_law.png").exists()


def test_d2d_and_c2c_scale_with_the_pulse() -> None:
    """A weak pulse's c2c noise is the scaled step's (relative noise), on every device."""
    m = _model(0.5, step="constant", dw_up=0.2)
    sim = SimulatedCrossbar(64, 64, device=m, seed=1, periphery=PeripheryConfig.ideal())
    s = float(LAW.scale_np(1.0, 1e-6, True))
    sim.pulse(torch.ones(64, 64, dtype=torch.int64), amplitude_v=1.0, width_s=1e-6)
    dw = sim.true_weights() / s
    nominal = sim.devices.params["dw_up"]
    rel = (dw / nominal - 1.0).flatten()
    assert abs(float(rel.std()) - 0.5) < 0.03 and abs(float(rel.mean())) < 0.03


def test_cli_calibrate_pulse_response_and_replay_with_shapes(tmp_path) -> None:
    """`hil calibrate --pulse-response auto|none` on a sweep file, then `hil characterize --replay` of
    that file on the fitted model applies each row's shape (it follows the sweeps, a replay with
    nominal pulses does not)."""
    from click.testing import CliRunner

    from hil.calibration.measurements import load_measurements
    from hil.cli.main import cli

    truth = _model(0.3).model_copy(update={"read_noise": 0.01})
    sim = SimulatedCrossbar(1, 3, device=truth, seed=1, periphery=PeripheryConfig.ideal().model_copy(update={"w_noise": 0.01}))
    src = replay_to_set(sim, _sweep_set(3, [1e-7, 1e-5, 1e-4], 20), MAPPING).save(tmp_path / "sweeps.csv")
    runner = CliRunner()
    for opt in ("auto", "merz", "none"):
        out = tmp_path / f"{opt}.json"
        r = runner.invoke(cli, ["calibrate", str(src), "-o", str(out), "--model", "softbounds", "--no-replay-check",
                                "--pulse-response", opt])
        assert r.exit_code == 0, r.output
        m = DeviceModel.load(out)
        assert (m.pulse_response is not None) == (opt != "none")
        assert ("pulse response (KAI/Merz" in r.output) == (opt != "none")
        if opt == "merz":
            assert m.provenance["pulse_law"]["field_exponent_used"] is False
            assert m.provenance["pulse_law"]["nll_free_field_exponent"] is None  # not fitted
    rep = tmp_path / "rep.csv"
    r = runner.invoke(cli, ["characterize", "--backend", f"sim:{tmp_path / 'auto.json'}", "--replay", str(src), "-o", str(rep)])
    assert r.exit_code == 0, r.output
    assert "pulses: each row's amplitude_v and width_s" in r.output
    r2 = runner.invoke(cli, ["characterize", "--backend", f"sim:{tmp_path / 'none.json'}", "--replay", str(src),
                             "-o", str(tmp_path / "rep-none.csv")])
    assert r2.exit_code == 0 and "not applied: the backend has no pulse shapes" in r2.output, r2.output
    ms, got = load_measurements(src), load_measurements(rep)
    # the same model replayed with nominal pulses only is far off the measured sweeps
    fitted = DeviceModel.load(tmp_path / "auto.json")
    nominal = replay_to_set(SimulatedCrossbar(1, 3, device=fitted, seed=0), ms, Mapping(model=fitted.conductance),
                            pulse_shapes=False)
    err_shaped = np.sqrt(np.mean((got.conductance - ms.conductance) ** 2))
    err_nominal = np.sqrt(np.mean((nominal.conductance - ms.conductance) ** 2))
    assert err_shaped < 0.5 * err_nominal, (err_shaped, err_nominal)
    r = runner.invoke(cli, ["calibrate", str(src), "-o", str(tmp_path / "x.json"), "--pulse-response", "kai"])
    assert r.exit_code != 0 and "--pulse-response" in r.output


def test_amplitude_sweep_protocol_on_a_simulator_with_the_law_and_refused_elsewhere(tmp_path) -> None:
    """`hil characterize --protocol` with sweeps: every pulse gets its ramp amplitude and its cycle's
    width, recorded in the file; a backend without pulse shapes refuses the protocol up front."""
    from hil.calibration.measurements import load_measurements

    p = PulseProtocol(n_up=5, n_down=5, cycles=2, sweep_up_v=(0.5, 2.5), sweep_down_v=(1.0, 3.0),
                      widths_s=[1e-6, 1e-4], start_weight=0.0)
    shapes = p.step_shapes()
    assert [round(s["amplitude_v"], 3) for s in shapes[:5]] == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert shapes[5]["amplitude_v"] == 1.0 and shapes[10]["width_s"] == 1e-4 and shapes[0]["width_s"] == 1e-6
    sim = SimulatedCrossbar(1, 2, device=_model(step="constant"), seed=0, periphery=PeripheryConfig.ideal())
    run_protocol(sim, p, MAPPING, tmp_path / "sweep.csv", backend_spec="sim", progress=False)
    ms = load_measurements(tmp_path / "sweep.csv")
    one = ms.device == ms.devices[0]
    w = MAPPING.to_weight(ms.conductance[one], ms.device[one])
    amp, wid, pol = ms.optional["amplitude_v"][one], ms.optional["width_s"][one], ms.polarity[one]
    want = np.where(pol > 0, 0.1 * LAW.scale_np(amp, wid, True), -0.08 * LAW.scale_np(amp, wid, False))
    # each read follows its own pulse (the first read of the file is after the first pulse)
    assert np.allclose(np.diff(w), want[1:], rtol=1e-4, atol=2e-6)
    plain = SimulatedCrossbar(1, 2, device=_model(law=None), seed=0)
    with pytest.raises(ValueError, match="nominal pulse only"):
        run_protocol(plain, p, MAPPING, tmp_path / "x.csv", backend_spec="sim", progress=False)
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(ValueError, match="sweep_up_v and amplitude_up_v"):
        PulseProtocol(sweep_up_v=(0.5, 1.0), amplitude_up_v=1.0)
    with pytest.raises(ValueError, match="widths_s must be"):
        PulseProtocol(widths_s=[1e-6, 0.0])


def test_pulse_law_roundtrip_example_runs(tmp_path, capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "pulse_law_roundtrip.py"
    spec = importlib.util.spec_from_file_location("pulse_law_roundtrip", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--devices", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pulse law kept" in out and (tmp_path / "fitted.json").exists()
    fitted = DeviceModel.load(tmp_path / "fitted.json").pulse_response
    assert fitted is not None and abs(fitted.up.exponent / 0.5 - 1.0) < 0.1


def test_replay_rows_without_a_valid_shape_get_the_nominal_pulse() -> None:
    """A file with only a width column, some of it missing: those pulses are the nominal ones,
    the others take their width (and the nominal amplitude of their direction)."""
    tpl = _sweep_set(1, [1e-4], 4)
    del tpl.optional["amplitude_v"]
    width = tpl.optional["width_s"]
    width[2] = np.nan
    width[5] = 0.0
    sim = SimulatedCrossbar(1, 1, device=_model(step="constant"), seed=0, periphery=PeripheryConfig.ideal())
    w = MAPPING.to_weight(replay_to_set(sim, tpl, MAPPING).conductance, tpl.device)
    pol = tpl.polarity[1:]
    s_up, s_dn = LAW.scale_np(3.0, 1e-4, True), LAW.scale_np(3.0, 1e-4, False)
    want = np.where(pol > 0, 0.1 * s_up, -0.08 * s_dn)
    want[[1, 4]] = np.where(pol[[1, 4]] > 0, 0.1, -0.08)  # rows 2 and 5: nominal
    assert np.allclose(np.diff(w), want, rtol=1e-4, atol=1e-6)


def test_hil_loop_closes_on_amplitude_sweeps(tmp_path) -> None:
    """`hil loop` with a sweep protocol on a backend whose devices follow a law: it characterizes
    with the sweeps, calibrates the law, characterizes its own simulator with the same sweeps,
    and validates; without the law the same simulator's trajectories are far off."""
    import json

    from click.testing import CliRunner

    from hil.cli.main import cli

    truth = _model(0.2).model_copy(update={"read_noise": 0.005})
    dev = truth.save(tmp_path / "truth.json")
    proto = PulseProtocol(name="sweeps", n_up=30, n_down=30, cycles=8, sweep_up_v=(0.5, 3.5), sweep_down_v=(0.5, 3.5),
                          widths_s=[1e-7, 1e-6, 1e-5, 1e-4], start_weight=0.0).save(tmp_path / "sweeps.json")
    r = CliRunner().invoke(cli, ["loop", "--backend", f"sim:{dev}", "--protocol", str(proto), "--rows", "2", "--cols", "4",
                                 "--model", "softbounds", "--out", str(tmp_path / "loop"), "--no-progress",
                                 "--json", str(tmp_path / "loop.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "loop.json").read_text())
    assert res["passed"] is True
    fitted = DeviceModel.load(tmp_path / "loop" / "device.json")
    assert fitted.pulse_response is not None
    # the same fitted model without its law, replayed on the backend's sweeps: far off
    from hil.calibration.measurements import load_measurements

    chip = load_measurements(tmp_path / "loop" / "chip.csv")
    mapping = Mapping(model=fitted.conductance)
    with_law = replay_to_set(SimulatedCrossbar(2, 4, device=fitted, seed=1), chip, mapping)
    plain = fitted.model_copy(update={"pulse_response": None})
    without = replay_to_set(SimulatedCrossbar(2, 4, device=plain, seed=1), chip, mapping)
    err = {k: float(np.sqrt(np.mean((v.conductance - chip.conductance) ** 2))) for k, v in
           (("law", with_law), ("plain", without))}
    assert err["law"] < 0.5 * err["plain"], err
