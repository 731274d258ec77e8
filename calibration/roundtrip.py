"""Round trip: simulate a device population with known parameters, calibrate it, compare.

``python -m hil.calibration.roundtrip [--models all] [--seeds 10]`` prints, for
every step model, the largest relative error over the parameters the data
determines and how often model selection picked the true model.

The data: a ``2 x 4`` :class:`~hil.simulated.SimulatedCrossbar` (8 devices) with
the model's parameters, device-to-device spread (``d2d``), accumulating write noise
(``c2c``), the non-accumulating write-noise offset (``write_noise``, ``write_noise_rho``;
not for ``table``, whose truth is the measured ENODe table) and read noise, characterized with :func:`hil.characterization.runner.run_protocol`
(6 cycles of 110 up then 110 down pulses, enough to saturate every drawn device,
5 repeated reads per cycle; the last 2 cycles are
held out).  The fit uses the simulator's conductance range as its mapping, so
fitted and true parameters are in the same units.

What the data determines, and what the fit is compared with:

- nominal step parameters: the **mean over the 8 simulated devices** of each
  device's drawn parameter (a population mean is not observable from 8 devices);
- ``d2d``: the **sample** relative standard deviation of the drawn parameters;
- ``c2c``, the write-noise offset's std and correlation, and read noise: the generator's
  values (every pulse/read samples them); a truth with an offset that the fit leaves out
  fails, and a truth without one (``table``) must give none or one consistent with 0;
- ``table``: the true table (mean and std of the step) averaged under the hat function
  of every fitted node (what a linear interpolation on that grid recovers), scaled
  by the mean drawn scale factor; the two grid-end nodes are not counted as
  determined (each also stands for every state beyond it, so its value depends on
  how often the data visits those states, not on the table alone).

A parameter counts as determined when its estimate's standard error is below a
third of the 10 % tolerance (so that a 10 % check is meaningful); parameters
with no spread in the truth must come out consistent with zero (``d2d`` within
three standard errors of 0).

The calibration runs with chunks of ``CHUNK`` = 64 reads (the default is 1024): the
round trip's offset forgets itself within a few pulses, so short chunks lose little
here, and they keep its 60 calibrations about ten times faster (a device's 6 cycles
are one contiguous run of 1350 reads).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.calibration.mapping import Mapping, MappingSpec
from hil.calibration.measurements import MeasurementSet, load_measurements
from hil.calibration.pipeline import MODEL_KINDS, Calibration, CalibrationConfig, calibrate
from hil.device_model import (
    ConductanceMapping,
    ConstantStep,
    DeviceModel,
    DeviceVariation,
    ExpStep,
    LinearStep,
    PowStep,
    SoftBoundsStep,
)

TOLERANCE = 0.10
DETERMINED = TOLERANCE / 3
G_RANGE = (1e-6, 11e-6)
D2D = 0.2
C2C = 0.5
READ = 0.01
WRITE = 0.01  # std of the write-noise offset (the read noise's)
WRITE_RHO = 0.8  # its correlation per pulse (a memory of 4.5 pulses)
CHUNK = 64


LUT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "enode-ecram-lut"


def true_model(kind: str, lut_dir: str | Path = LUT_DIR) -> DeviceModel:
    """The population simulated for ``kind`` (spreads on steps and bounds, c2c, read noise).

    ``table`` is the ENODe lookup table of ../shared/data (``lut_dir``)."""
    d2d = {"dw_up": D2D, "dw_down": D2D, "w_min": D2D / 2, "w_max": D2D / 2}
    steps: dict[str, Any] = {
        "constant": ConstantStep(dw_up=0.04, dw_down=0.03),
        "softbounds": SoftBoundsStep(dw_up=0.05, dw_down=0.04),
        "linear": LinearStep(dw_up=0.05, dw_down=0.04, gamma_up=0.5, gamma_down=0.3),
        "pow": PowStep(dw_up=0.04, dw_down=0.035, gamma_up=1.8, gamma_down=1.4),
        "exp": ExpStep(dw_up=0.04, dw_down=0.03, gamma_up=2.0, gamma_down=1.5),
    }
    mapping = ConductanceMapping(g_min_s=G_RANGE[0], g_max_s=G_RANGE[1])
    if kind == "table":
        from hil.calibration.importers.crosssim_lut import load_tables

        if not Path(lut_dir).is_dir():
            raise ValueError(f"the table round trip needs the ENODe lookup tables at {lut_dir}")
        tables, inputs = load_tables(Path(lut_dir))
        m = tables.model(inputs)
        return m.model_copy(
            update={
                "variation": DeviceVariation(
                    d2d={"dw_up": D2D / 2, "dw_down": D2D / 2, "w_min": D2D / 4, "w_max": D2D / 4}
                ),
                "read_noise": READ / 2,
                "conductance": mapping,
            }
        )
    return DeviceModel(
        name=f"roundtrip-{kind}",
        step=steps[kind],
        variation=DeviceVariation(c2c=C2C, d2d=d2d, write_noise=WRITE, write_noise_rho=WRITE_RHO),
        read_noise=READ,
        conductance=mapping,
    )


def protocol_for(kind: str) -> Any:
    from hil.characterization.protocol import PulseProtocol

    if kind == "table":
        return PulseProtocol(n_up=140, n_down=300, cycles=6, repeated_reads=5, start_weight=-0.95)
    return PulseProtocol(n_up=110, n_down=110, cycles=6, repeated_reads=5, start_weight=-0.9)


def simulate(kind: str, seed: int, workdir: str | Path) -> tuple[MeasurementSet, dict[str, np.ndarray], DeviceModel]:
    """Characterize a simulated population; returns the measurements, the drawn per-device
    parameters and the true model."""
    import torch

    from hil.characterization.runner import run_protocol
    from hil.simulated import PeripheryConfig, SimulatedCrossbar

    model = true_model(kind)
    per = PeripheryConfig.ideal().model_copy(update={"w_noise": model.read_noise})
    sim = SimulatedCrossbar(2, 4, device=model, periphery=per, seed=seed)
    out = Path(workdir) / f"{kind}-{seed}.csv"
    assert model.conductance is not None
    run_protocol(sim, protocol_for(kind), Mapping(model=model.conductance), out, progress=False)
    drawn = {k: v.detach().to(torch.float64).cpu().numpy().ravel() for k, v in sim.devices.params.items()}
    return load_measurements(out), drawn, model


@dataclass
class Comparison:
    kind: str
    seed: int
    chosen: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def max_error(self) -> float:
        errs = [r["rel_error"] for r in self.rows if r["determined"] and r["rel_error"] is not None]
        return max(errs) if errs else float("nan")

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["ok"]]


def hat_average(grid: np.ndarray, values: np.ndarray, nodes: np.ndarray, n: int = 4001) -> np.ndarray:
    """Average of the piecewise-linear table ``(grid, values)`` under the hat function of every
    node of ``nodes``: what a fitted linear interpolation on ``nodes`` recovers from data that
    visit the states evenly."""
    w = np.linspace(nodes[0], nodes[-1], n)
    t = np.interp(w, grid, values)
    out = np.empty(len(nodes))
    for i, g in enumerate(nodes):
        left = nodes[i - 1] if i > 0 else g
        right = nodes[i + 1] if i + 1 < len(nodes) else g
        h = np.zeros_like(w)
        if i > 0:
            m = (w >= left) & (w <= g)
            h[m] = (w[m] - left) / (g - left)
        if i + 1 < len(nodes):
            m = (w >= g) & (w <= right)
            h[m] = (right - w[m]) / (right - g)
        out[i] = float((h * t).sum() / h.sum())
    return out


def _d2d_se(vals: np.ndarray, ses: np.ndarray) -> float:
    """Standard error of the corrected d2d estimate (delta method)."""
    m = abs(float(vals.mean()))
    var_b = max(float(np.var(vals, ddof=1)) - float(np.mean(ses**2)), 1e-300)
    d = len(vals)
    se2 = float(np.mean(ses**2))
    sd_var = np.sqrt(4 * var_b * se2 / d + 2 * se2 * se2 / d)
    return float(sd_var / (2 * np.sqrt(var_b)) / m) if m > 0 else float("inf")


def compare(cal: Calibration, drawn: dict[str, np.ndarray], truth: DeviceModel) -> list[dict[str, Any]]:
    """Fitted vs true, parameter by parameter (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    fam = cal.family
    if cal.chosen != truth.step.model:
        return rows
    per = cal.per_device

    def add(name: str, fit: float, true: float, se: float, kind: str = "value") -> None:
        rel = abs(fit - true) / abs(true) if true != 0 else None
        determined = bool(np.isfinite(se) and true != 0 and abs(se) / abs(true) < DETERMINED)
        ok = (not determined) or (rel is not None and rel <= TOLERANCE)
        rows.append(
            {"parameter": name, "kind": kind, "fit": fit, "true": true, "se": se, "rel_error": rel,
             "determined": determined, "ok": ok}
        )

    if truth.step.model == "table":
        assert fam.grid is not None
        step = truth.step
        for key, what in (("up", "node"), ("down", "node"), ("up", "std"), ("down", "std")):
            table = getattr(step, f"{key}_mean" if what == "node" else f"{key}_std")
            true_nodes = hat_average(np.asarray(step.grid), np.asarray(table), fam.grid)
            scale_fit = cal.parameters[f"dw_{key}"]["value"]
            scale_true = float(drawn[f"dw_{key}"].mean())
            for i, g in enumerate(fam.grid):
                p = cal.parameters[f"{key}_{what}_{i}"]
                end = i in (0, len(fam.grid) - 1)
                # a grid-end node also stands for every state beyond it, so its value depends on
                # how often the data visits those states: not a property of the table alone
                add(f"{key}_{what}_{i} (w={g:+.2f}){' end' if end else ''}", p["value"] * scale_fit,
                    float(true_nodes[i]) * scale_true, float("inf") if end else p["pooled_se"] * scale_fit)
    else:
        for name in truth.step.parameters:
            p = cal.parameters[name]
            add(name, p["value"], float(drawn[name].mean()), p["se"])
    if truth.step.model != "table":  # a table's write noise is its std nodes (compared above)
        add("c2c", cal.parameters["c2c"]["value"], truth.variation.c2c, cal.parameters["c2c"]["se"], "noise")
    tv = truth.variation
    if tv.write_noise > 0:
        if "write_sd" in cal.parameters:
            add("write_noise", cal.parameters["write_sd"]["value"], tv.write_noise, cal.parameters["write_sd"]["se"], "noise")
            add("write_noise_rho", cal.parameters["write_rho"]["value"], tv.write_noise_rho,
                cal.parameters["write_rho"]["se"], "noise")
        else:
            rows.append({"parameter": "write_noise", "kind": "noise", "fit": 0.0, "true": tv.write_noise, "se": float("inf"),
                         "rel_error": 1.0, "determined": True, "ok": False})
    elif "write_sd" in cal.parameters:
        p = cal.parameters["write_sd"]
        rows.append({"parameter": "write_noise", "kind": "noise", "fit": p["value"], "true": 0.0, "se": p["se"],
                     "rel_error": None, "determined": True, "ok": bool(p["value"] <= 3 * p["se"])})
    add("read_noise", cal.model.read_noise, truth.read_noise,
        cal.model.read_noise / np.sqrt(2 * max(cal.read_noise["repeated_reads_dof"], 1)), "noise")
    if per is not None:
        mask = cal.seq.device_rows(cal.seq.mask(np.ones(len(cal.measurements), dtype=bool)))
        for name in fam.shape_names():
            vals = per.values[name][mask]
            ses = per.se[name][mask]
            true_vals = drawn[name]
            true_d2d = float(np.std(true_vals, ddof=1) / abs(true_vals.mean()))
            fit_d2d = float(cal.model.variation.d2d.get(name, 0.0))
            se = _d2d_se(vals, ses)
            if true_d2d > 0:
                add(f"d2d[{name}]", fit_d2d, true_d2d, se * 1.0, "d2d")
            else:
                ok = fit_d2d <= 3 * se
                rows.append({"parameter": f"d2d[{name}]", "kind": "d2d", "fit": fit_d2d, "true": 0.0, "se": se,
                             "rel_error": None, "determined": True, "ok": bool(ok)})
    return rows


def run_one(kind: str, seed: int, workdir: str | Path, config: CalibrationConfig | None = None) -> Comparison:
    t0 = time.perf_counter()
    ms, drawn, truth = simulate(kind, seed, workdir)
    cfg = config or CalibrationConfig(chunk=CHUNK)
    cfg = cfg.model_copy(update={"mapping": MappingSpec(g_range=G_RANGE)})
    cal = calibrate(ms, cfg)
    comp = Comparison(kind=kind, seed=seed, chosen=cal.chosen, rows=compare(cal, drawn, truth))
    comp.seconds = time.perf_counter() - t0
    return comp


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="all")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    kinds = list(MODEL_KINDS) if args.models == "all" else args.models.split(",")
    print(f"round trip: {args.seeds} seeds per model, 8 devices, c2c {C2C}, d2d {D2D}, write noise {WRITE} "
          f"(rho {WRITE_RHO}; not for table), read noise {READ}, chunks of {CHUNK} reads, torch threads 1")
    print(f"{'model':<11} {'picked':>7} {'max rel. error (determined)':>28} {'failed checks':>14} {'s/seed':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            comps = [run_one(kind, s, tmp) for s in range(args.seeds)]
            picked = sum(c.chosen == kind for c in comps)
            errs = [c.max_error for c in comps if c.chosen == kind]
            fails = sum(len(c.failures) for c in comps if c.chosen == kind)
            secs = np.mean([c.seconds for c in comps])
            print(f"{kind:<11} {picked:>4}/{args.seeds} {max(errs) if errs else float('nan'):>28.4f} {fails:>14d} {secs:>7.1f}")
            if args.verbose:
                for c in comps:
                    print(f"  seed {c.seed}: chosen {c.chosen}")
                    for r in c.rows:
                        print(f"    {r['parameter']:<24} fit {r['fit']:.5g} true {r['true']:.5g} se {r['se']:.2g} "
                              f"err {r['rel_error'] if r['rel_error'] is None else round(r['rel_error'], 4)} "
                              f"{'determined' if r['determined'] else ''} {'ok' if r['ok'] else 'FAIL'}")


if __name__ == "__main__":
    main()
