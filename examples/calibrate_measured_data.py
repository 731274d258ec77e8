"""Calibrate the three shared measured data sets and print the figures of docs/results.md (calibration).

    python examples/calibrate_measured_data.py [--data ../shared/data] [--out runs/calibration]
                                               [--json PATH] [--quick]

For every raw pulse-train set (HfO2 ReRAM of Gong et al.; ferroelectric
amplitude sweeps) it runs ``hil calibrate`` (as a library call, same code), the
held-out replay check (the model fitted on the fitting rows, replayed on the
simulator with ``hil characterize --replay --restart-at-holdout``'s code, 64
copies or fewer averaged) and the same check in-sample (the final model on all
rows); one ``hil characterize --replay`` of each set is also written to disk.
For the HfO2 set it compares the fit with aihwkit's ``ReRamESPresetDevice``
(the published reference fit named in the data's SOURCE.md), evaluated with the
same likelihood.  For the ENODe lookup table it imports the table model and, as
a check of the table path, calibrates pulse trains sampled from the tables.
``--quick`` skips the ferroelectric in-sample replay and the ENODe sampling.
torch runs with one thread; BLAS with one thread inside the fits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hil.calibration.compare import format_metrics, replay_metrics
from hil.calibration.filter import Sequences, gaussian_nll, run_filter
from hil.calibration.mapping import MappingSpec
from hil.calibration.pipeline import CalibrationConfig, jsonable
from hil.calibration.report import write_report
from hil.calibration.stepmodels import Family
from hil.calibration.workflow import calibrate_path, replay_check, replay_copies
from hil.characterization.runner import replay_to_file
from hil.device_model import DeviceModel, DeviceVariation, TableStep

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def aihwkit_reram_es(w: np.ndarray, up: bool) -> np.ndarray:
    """Mean step of aihwkit's ReRamESPresetDevice (ExpStepDevice) at weights ``w`` in [-1, 1].

    ExpStep: z = 2 w / (w_max - w_min) * a + b; up: dw_min (1 + up_bias) max(1 - A_up exp(gamma_up z), 0),
    down: dw_min (1 + down_bias) max(1 - A_down exp(-gamma_down z), 0), with up_bias = min(up_down, 0),
    down_bias = -max(up_down, 0).  Values of the preset as quoted in the data's SOURCE.md.
    """
    dw_min, up_down = 0.00135, 0.259359
    a = b = -0.5
    z = 2.0 * w / 2.0 * a + b
    if up:
        return dw_min * (1.0 + min(up_down, 0.0)) * np.maximum(1.0 - (-1.18445) * np.exp(5.0 * z), 0.0)
    return -dw_min * (1.0 - max(up_down, 0.0)) * np.maximum(1.0 - (-0.081404) * np.exp(-5.0 * z), 0.0)


def aihwkit_as_table(nodes: int = 81) -> DeviceModel:
    """The aihwkit preset as our ``table`` model: its mean step tabulated, its ``dw_min_std`` (5, relative
    to the step) as the tabulated std, its ``write_noise_std`` (75 x dw_min, not accumulating) as read noise."""
    grid = np.linspace(-1.0, 1.0, nodes)
    up = aihwkit_reram_es(grid, True)
    dn = aihwkit_reram_es(grid, False)
    return DeviceModel(
        name="aihwkit-ReRamES",
        step=TableStep(grid=grid.tolist(), up_mean=up.tolist(), down_mean=dn.tolist(),
                       up_std=(5.0 * np.abs(up)).tolist(), down_std=(5.0 * np.abs(dn)).tolist()),
        variation=DeviceVariation(),
        read_noise=75 * 0.00135,
    )


def model_nll(model: DeviceModel, seq: Sequences, score: np.ndarray) -> float:
    """NLL of a device model (one device, its nominal parameters) on scored reads, our filter."""
    step = model.step
    if step.model == "table":
        fam = Family("table", grid=np.array(step.grid), std_up=np.array(step.up_std), std_down=np.array(step.down_std),
                     table_bounds=(step.w_min, step.w_max))
        p: dict[str, Any] = {"dw_up": np.ones((1, 1)), "dw_down": np.ones((1, 1))}
        for i in range(len(step.grid)):
            p[f"up_node_{i}"] = np.full((1, 1), step.up_mean[i])
            p[f"down_node_{i}"] = np.full((1, 1), step.down_mean[i])
    else:
        fam = Family(step.model)
        p = {k: np.full((1, 1), float(getattr(step, k))) for k in step.parameters}
    out = run_filter(seq, fam, p, np.full((1, 1), model.variation.c2c), np.full((1, 1), model.read_noise**2))
    return float(gaussian_nll(out.nu[0][score], out.var[0][score]).sum())


def step_table(model: DeviceModel, ws: list[float]) -> dict[str, list[float]]:
    import torch as _t

    from hil.simulated.devices import DeviceArray

    arr = DeviceArray(model, 1, len(ws), _t.Generator().manual_seed(0), _t.device("cpu"), _t.float64)
    w = _t.tensor([ws], dtype=_t.float64)
    return {"up": arr.delta_up(w)[0].tolist(), "down": arr.delta_down(w)[0].tolist()}


def msq_change(ms_list: list[Any], ks: tuple[int, ...] = (1, 10, 100)) -> dict[int, float]:
    """Mean square change over ``k`` pulses within each contiguous sweep, averaged over the sets
    given (the measured file, or the replayed copies): grows like ``k`` for accumulating
    (write) noise and saturates for noise that does not accumulate."""
    out = {}
    for k in ks:
        vals = []
        for ms in ms_list:
            starts = np.nonzero(ms.segment_starts())[0].tolist() + [len(ms)]
            for a, b in zip(starts[:-1], starts[1:], strict=True):
                g = ms.conductance[a:b]
                if len(g) > k:
                    vals.append((g[k:] - g[:-k]) ** 2)
        out[k] = float(np.mean(np.concatenate(vals))) if vals else float("nan")
    return out


def run_set(name: str, path: Path, out: Path, cfg: CalibrationConfig, in_sample: bool, fmt: str = "auto",
            fit_samples: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = calibrate_path(path, fmt, None, cfg, replay=False, fit_samples=fit_samples)
    t_cal = time.perf_counter() - t0
    cal = run.calibration
    assert cal is not None and run.measurements is not None
    ms = run.measurements
    t1 = time.perf_counter()
    cal.replay = replay_check(cal)
    t_rep = time.perf_counter() - t1
    out.mkdir(parents=True, exist_ok=True)
    run.model.save(out / f"{name}.json")
    ms.save(out / f"{name}.csv")
    write_report(cal, out / f"{name}-report", run.reference)
    res: dict[str, Any] = {
        "input": str(path),
        "rows": len(ms),
        "devices": len(ms.devices),
        "chosen": cal.chosen,
        "heldout_unit": cal.heldout_unit,
        "calibrate_seconds": t_cal,
        "replay_check_seconds": t_rep,
        "candidates": [c.model_dump() for c in cal.candidates],
        "parameters": {k: {kk: v.get(kk) for kk in ("value", "se", "d2d")} for k, v in cal.parameters.items()},
        "model": json.loads(run.model.to_json()),
        "heldout_replay": {k: v for k, v in cal.replay.items() if k not in ("trajectory", "per_device")},
    }
    print(f"\n=== {name}: {path}")
    print(f"{len(ms)} rows, {len(ms.devices)} devices; calibrate {t_cal:.1f} s (torch and BLAS 1 thread); chosen {cal.chosen}")
    for c in cal.candidates:
        print(f"  {c.model:<11} BIC {c.bic:>11.1f}  held-out NLL {c.nll_heldout if c.nll_heldout is not None else float('nan'):>10.1f}"
              f"  {('eligible' if c.eligible else '-') if c.determined else 'rejected (undetermined)'}"
              f"{'  <- chosen' if c.model == cal.chosen else ''}")
    print(format_metrics(cal.replay, f"held-out replay ({cal.heldout_unit}), model fitted on the fitting rows:"))
    if in_sample:
        reps = replay_copies(run.model, ms, cal.mapping, cal.replay["replays"])
        m = replay_metrics(ms, reps)
        res["in_sample_replay"] = {k: v for k, v in m.items() if k != "per_device"}
        print(format_metrics(m, "in-sample replay (final model, all rows):"))
    # one `hil characterize --replay` file, as a user would run it
    from hil.calibration.workflow import device_periphery
    from hil.simulated import SimulatedCrossbar

    sim = SimulatedCrossbar(1, len(ms.devices), device=run.model, periphery=device_periphery(run.model), seed=0)
    rep_path = out / f"{name}-replay.csv"
    if rep_path.exists():
        rep_path.unlink()
    replay_to_file(sim, ms, cal.mapping, rep_path, progress=False)
    print(f"  one characterize --replay written to {rep_path}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("runs/calibration"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.data.is_dir():
        print(f"measured data not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}

    # ---- HfO2 ReRAM (Gong et al.), also in the units of the aihwkit fit (w = the file's values)
    gong = args.data / "reram-hfo2-gong" / "gong_et_al.csv"
    results["hfo2"] = run_set("hfo2", gong, args.out, CalibrationConfig(name="hfo2-gong"), in_sample=True)
    cfg_units = CalibrationConfig(name="hfo2-gong-data-units", mapping=MappingSpec(g_range=(-1e-6, 1e-6)))
    run = calibrate_path(gong, "auto", None, cfg_units, replay=False)
    cal = run.calibration
    assert cal is not None
    ref = aihwkit_as_table()
    ours = run.model
    all_rows = cal.seq.mask(np.ones(len(cal.measurements), dtype=bool))
    held = cal.seq.mask(cal.heldout)
    n_ref, n_ours = model_nll(ref, cal.seq, all_rows), model_nll(ours, cal.seq, all_rows)
    ws = [-0.5, 0.0, 0.5]
    cmp = {
        "ours_model": cal.chosen,
        "ours_steps": step_table(ours, ws),
        "aihwkit_steps": {"up": aihwkit_reram_es(np.array(ws), True).tolist(), "down": aihwkit_reram_es(np.array(ws), False).tolist()},
        "ours_c2c_abs_at_0": float(ours.variation.c2c * abs(step_table(ours, [0.0])["up"][0])),
        "aihwkit_c2c_abs_at_0": float(5.0 * aihwkit_reram_es(np.array([0.0]), True)[0]),
        "ours_read_noise": ours.read_noise,
        "aihwkit_write_noise": 75 * 0.00135,
        "nll_all_rows": {"ours": n_ours, "aihwkit": n_ref, "reads": int(all_rows.sum())},
        "nll_heldout_rows": {"ours_train_model": model_nll(cal.train_model, cal.seq, held), "aihwkit": model_nll(ref, cal.seq, held)},
    }
    sym = {}
    for label, m in (("ours", ours), ("aihwkit", ref)):
        from hil.calibration.pipeline import model_summary

        sym[label] = model_summary(m)
    cmp["summary"] = sym
    reps = replay_copies(ref, cal.measurements, cal.mapping, 64)
    cmp["aihwkit_in_sample_replay"] = {k: v for k, v in replay_metrics(cal.measurements, reps).items() if k != "per_device"}
    ours_reps = replay_copies(ours, cal.measurements, cal.mapping, 64)
    cmp["ours_in_sample_replay"] = {k: v for k, v in replay_metrics(cal.measurements, ours_reps).items()
                                    if k != "per_device"}
    # the file is in units of 1e-6 S here (g per unit): mean square change in file units^2
    unit2 = 1e-12
    cmp["mean_square_change"] = {
        label: {k: v / unit2 for k, v in msq_change(sets).items()}
        for label, sets in (("measured", [cal.measurements]), ("ours", ours_reps), ("aihwkit", reps))
    }
    cmp["parameters_file_units"] = {k: getattr(ours.step, k) for k in ours.step.parameters}
    cmp["c2c"] = ours.variation.c2c
    results["hfo2_vs_aihwkit"] = cmp
    print("\n--- HfO2 fit in the file's units vs aihwkit ReRamESPresetDevice (mean step at w = -0.5, 0, +0.5)")
    print(f"  ours ({cal.chosen}): up {np.round(cmp['ours_steps']['up'], 5)}, down {np.round(cmp['ours_steps']['down'], 5)}")
    print(f"  aihwkit (exp)  : up {np.round(cmp['aihwkit_steps']['up'], 5)}, down {np.round(cmp['aihwkit_steps']['down'], 5)}")
    print(f"  accumulating noise per pulse at w=0: ours {cmp['ours_c2c_abs_at_0']:.4f}, aihwkit {cmp['aihwkit_c2c_abs_at_0']:.4f}")
    print(f"  non-accumulating noise: ours (read) {ours.read_noise:.4f}, aihwkit (write_noise) {75 * 0.00135:.4f}")
    print(f"  symmetry point / dw_min / states: ours {sym['ours']}, aihwkit {sym['aihwkit']}")
    print(f"  NLL on all {all_rows.sum()} reads (our filter): ours {n_ours:.1f}, aihwkit {n_ref:.1f}")
    print(f"  ours ({cal.chosen}) in file units: {cmp['parameters_file_units']}, c2c {ours.variation.c2c:.4g}")
    print(format_metrics(cmp["aihwkit_in_sample_replay"], "  aihwkit preset replayed in-sample (64 copies):"))
    print(format_metrics(cmp["ours_in_sample_replay"], f"  ours ({cal.chosen}, file units) replayed in-sample (64 copies):"))
    print("  mean square change over k pulses within a sweep (file units^2; accumulating noise grows with k):")
    for label, v in cmp["mean_square_change"].items():
        print(f"    {label:<9} " + "  ".join(f"k={k}: {x:.4f}" for k, x in v.items()))

    # ---- ferroelectric amplitude sweeps (the largest set: the timing target)
    results["ferro"] = run_set("ferro", args.data / "ferro-hzo-ampsweep", args.out,
                               CalibrationConfig(name="ferro-hzo"), in_sample=not args.quick)

    # ---- ENODe lookup table
    lut = args.data / "enode-ecram-lut"
    t0 = time.perf_counter()
    run = calibrate_path(lut, "auto", None, CalibrationConfig(name="enode"), replay=False)
    run.model.save(args.out / "enode-table.json")
    results["enode"] = {"imported_model": run.model.step.model, "seconds": time.perf_counter() - t0}
    print(f"\n=== enode: {lut}: imported as a {run.model.step.model} model (no fit) in {results['enode']['seconds']:.2f} s")
    if not args.quick:
        res = run_set("enode-sampled", lut, args.out, CalibrationConfig(name="enode-sampled", model="auto"), in_sample=True,
                      fmt="crosssim-lut", fit_samples=True)
        results["enode_sampled"] = res
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(results), indent=2))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
