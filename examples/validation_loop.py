"""Closed loop on the chip emulator: a hidden measured device, fitted and validated; a wrong model fails.

The emulated chip (``ChipEmulator`` behind the in-process ``serial+xbarsim://`` URL,
driven through ``SerialCrossbar``) holds a **hidden** device model that the
pipeline is never given: the ENODe ECRAM lookup table of ../shared/data
(van de Burgt et al. 2017, imported as a ``table`` step model by the
``crosssim-lut`` importer) with cycle-to-cycle noise (c2c 0.3 of the step),
device-to-device spread (10 % of the up and down step scales) and read noise
(0.004 of the weight range per read).  Its periphery is ideal apart from that
read noise.

:func:`hil.validation.loop.run_loop` then characterizes the chip (8 x 8 devices,
``--quick``: 6 cycles, full: 10 cycles of 5 reads + 100 up + 250 down pulses: the
ENODe down step is a tenth to a third of the up step below mid range, so 250 down
pulses bring the devices back across their whole range),
calibrates it (model selection ``auto``), builds the simulator of the fitted
model, characterizes it with the same protocol and validates it against the
chip.  The control: a constant-step model with the fitted step at the symmetry
point, bounds, noise and spread, characterized and validated the same way; it
must fail.  The same MVM test vectors on the chip and on the fitted simulator
are compared too.  Options:

- ``--training``: the same short training runs of the digits MLP on emulated chips
  of the hidden device, on the fitted simulator and on the control, comparing
  learning curves: analog SGD (8 seeds x 3 epochs, 4 seeds with ``--quick``;
  ``SGD_OVERRIDES``), where the device model decides the learning curve, and
  TTv2 (the same seeds, 3 epochs, 2 with ``--quick``; ``TRAINING_OVERRIDES``),
  which is designed to be robust to it (about 10 minutes more);
- ``--sensitivity``: the synthetic sensitivity/specificity study of
  :mod:`hil.validation.sensitivity` (20 seeds; 5 with ``--quick``);
- ``--specificity``: real-data splits of the ferroelectric devices with several
  runs (../shared/data/ferro-hzo-ampsweep): earlier/later and interleaved halves,
  and earlier against later runs of one pulse width; plus an audit of what the
  shared data allow (runs of one device repeating one pulse program: none);
- ``--replication``: the synthetic unit-of-replication study of
  :mod:`hil.validation.replication` (one device whose runs vary from run to run,
  compared with itself: false failures, insufficient-replication verdicts);
- ``--training-resolution``: what the analog-SGD training check resolves, on
  simulated arrays of the hidden model against other chips of it, models with one
  property changed and the constant-step control (about 10 minutes);
- ``--training-from DIR``: skip the loop and compare training only, with the fitted
  and control models of an earlier run's ``--out`` folder.

Usage::

    python examples/validation_loop.py --quick --json loop.json
    python examples/validation_loop.py --training --sensitivity --specificity --json all.json
    python examples/validation_loop.py --training-from validation_loop_out --json training.json
    python examples/validation_loop.py --skip-loop --training-resolution --specificity --json extra.json
    python examples/validation_loop.py --skip-loop --specificity --replication --json spec.json

JSON: ``{"passed": <fitted simulator passed>, "control_passed": <constant-step
control passed>, "chosen_model": ..., "statistics": [{"name", "value",
"threshold", "status", "control_value", "control_threshold", "control_status"},
...], "mvm": {...}, "training": {"analog_sgd": {"fitted": {...}, "control": {...}}, "ttv2": {...}} | null,
"training_resolution": [...] | null, "sensitivity": {...} | null,
"specificity": {"splits": [...], "audit": {...}} | null, "replication": {"rows": [...]} | null,
"seconds": ...}``.  One torch thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hil.config import dump_json
from hil.validation.loop import LoopConfig, run_loop
from hil.validation.report import ValidationReport, format_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROWS = COLS = 8


def hidden_model() -> Any:
    """The ENODe lookup-table device with c2c, d2d and read noise (the emulator's secret)."""
    from hil.calibration.importers.base import import_measurements
    from hil.device_model import DeviceVariation

    lut = SHARED / "enode-ecram-lut"
    if not lut.is_dir():
        raise SystemExit(f"the ENODe lookup table is not at {lut} (../shared/data beside the checkout)")
    _, res = import_measurements(lut, "crosssim-lut")
    return res.device_model.model_copy(update={
        "name": "hidden-enode-lut",
        "description": "ENODe ECRAM lookup table + c2c 0.3 + d2d 0.1 (dw_up, dw_down) + read noise 0.004",
        "variation": DeviceVariation(c2c=0.3, d2d={"dw_up": 0.1, "dw_down": 0.1}),
        "read_noise": 0.004,
    })


def emulator_periphery(read_noise: float) -> dict[str, Any]:
    from hil.simulated import PeripheryConfig

    return PeripheryConfig.ideal().model_copy(update={"w_noise": read_noise}).model_dump()


def start_emulator(name: str, model: Any, rows: int, cols: int, seed: int) -> str:
    """Register an emulated chip of the hidden model; returns its backend spec."""
    from hil.drivers.chip import ChipEmulator, EmulatorConfig, register_emulator

    emu = ChipEmulator(EmulatorConfig(rows=rows, cols=cols, device=model, seed=seed,
                                      periphery=emulator_periphery(model.read_noise), keep_counts=False))
    register_emulator(name, emu)
    return f"serial+xbarsim://{name}#limits=board"


# The TTv2 run of the training check: the tuned settings of recommended_config("ttv2")
# (lambda_A 8, lambda_H 0.2, 2 columns per transfer, cosine schedule) with two changes
# for the ENODe device.  Its symmetry point is at +0.45 of its weight range: driving C
# there before training (reset_weights) sets every weight to +0.45, which transfers of
# 1/200 of the range cannot undo in 3 epochs (the run stays at chance, 10 %, on chip
# and simulator alike, and such a comparison says nothing), so C keeps its random
# initialization around 0; and up to 10 pulses per transfer instead of 2 suit the
# device's ~200 states (with 2 the run collapses to chance in the third epoch).  The
# same settings on both sides.
TRAINING_OVERRIDES = {"reset_weights": False, "max_pulses": 10}

# The model-sensitive training check: plain analog SGD, whose updates go straight onto the
# devices, so the up/down asymmetry and the state dependence of the steps decide the
# learning curve (TTv2 is designed to be insensitive to them, and does not tell the
# constant-step control from the measured device).  W keeps its random initialization
# (reset_weights False, as above); 8 seeds x 3 epochs.
SGD_OVERRIDES = {"reset_weights": False}
SGD_SEEDS = list(range(8))


def training_check(hidden: Any, fitted_path: Path, control_path: Path, quick: bool,
                   algorithms: tuple[str, ...] = ("analog_sgd", "ttv2")) -> dict[str, Any]:
    """The same short training on emulated chips of the hidden model, on the fitted simulator
    and on the constant-step control: analog SGD (model-sensitive) and TTv2 (robust).

    Returns ``{algorithm: {"fitted": report, "control": report}}``."""
    from hil.device_model import DeviceModel
    from hil.drivers.chip import (
        ChipEmulator,
        ChipLink,
        EmulatorConfig,
        LinkConfig,
        SerialCrossbarConfig,
        WindowAllocator,
        register_emulator,
    )
    from hil.simulated import PeripheryConfig
    from hil.validation.training import (
        TrainingValidationConfig,
        compare_training,
        run_training,
        simulated_maker,
    )

    link_cfg = LinkConfig(latency_s=0.05, poll_s=0.002)

    def chip_maker(seed: int) -> Any:
        emu = ChipEmulator(EmulatorConfig(rows=42, cols=128, device=hidden, seed=1000 * seed + 17,
                                          periphery=emulator_periphery(hidden.read_noise), keep_counts=False))
        url = register_emulator(f"train-{seed}-{time.perf_counter_ns()}", emu)
        link = ChipLink.open(url, "board", link_cfg)
        link.arm()
        return WindowAllocator(link, SerialCrossbarConfig(bl=31, link=link_cfg))

    out: dict[str, Any] = {}
    for algorithm in algorithms:
        if algorithm == "analog_sgd":
            cfg = TrainingValidationConfig(algorithm="analog_sgd", epochs=3,
                                           seeds=SGD_SEEDS[:4] if quick else SGD_SEEDS, overrides=SGD_OVERRIDES)
        else:
            cfg = TrainingValidationConfig(algorithm=algorithm, epochs=2 if quick else 3,
                                           seeds=SGD_SEEDS[:4] if quick else SGD_SEEDS, overrides=TRAINING_OVERRIDES)
        t0 = time.perf_counter()
        chip_runs = run_training(chip_maker, cfg)
        out[algorithm] = {"chip_seconds": time.perf_counter() - t0}
        for label, path in (("fitted", fitted_path), ("control", control_path)):
            model = DeviceModel.load(path)
            periphery = PeripheryConfig.ideal().model_copy(update={"w_noise": model.read_noise})
            t0 = time.perf_counter()
            runs = run_training(simulated_maker(model, periphery, seed_offset=1), cfg)
            out[algorithm][label] = compare_training(chip_runs, runs, cfg).model_dump(mode="json")
            out[algorithm][f"{label}_seconds"] = time.perf_counter() - t0
    return out


def training_resolution(hidden: Any, quick: bool) -> list[dict[str, Any]]:
    """What the analog-SGD training check resolves: simulated arrays of the hidden model
    (the reference) against other chips of the same model, and against models with one
    property changed (up/down asymmetry +-20 %, 1.5x fewer states, 2x c2c noise) and the
    constant-step control.  Same settings as the training check, simulator only."""
    from hil.simulated import PeripheryConfig
    from hil.validation.loop import constant_control
    from hil.validation.training import (
        TrainingValidationConfig,
        compare_training,
        run_training,
        simulated_maker,
    )

    cfg = TrainingValidationConfig(algorithm="analog_sgd", epochs=3,
                                   seeds=SGD_SEEDS[:4] if quick else SGD_SEEDS, overrides=SGD_OVERRIDES)
    periphery = PeripheryConfig.ideal().model_copy(update={"w_noise": hidden.read_noise})
    step, var = hidden.step, hidden.variation

    def changed(name: str, step_update: dict[str, float] | None = None, c2c: float | None = None) -> Any:
        return hidden.model_copy(update={
            "name": name,
            "step": step.model_copy(update=step_update or {}),
            "variation": var.model_copy(update={} if c2c is None else {"c2c": c2c}),
        })

    candidates = [
        ("same model, chip 2", hidden, 1),
        ("same model, chip 3", hidden, 2),
        ("same model, chip 4", hidden, 3),
        ("up/down asymmetry +20 % (dw_up x 1.2)", changed("asym+20", {"dw_up": step.dw_up * 1.2}), 1),
        ("up/down asymmetry -20 % (dw_up / 1.2)", changed("asym-20", {"dw_up": step.dw_up / 1.2}), 1),
        ("1.5x fewer states (both steps x 1.5)",
         changed("states/1.5", {"dw_up": step.dw_up * 1.5, "dw_down": step.dw_down * 1.5}), 1),
        ("c2c noise x 2", changed("c2c*2", c2c=2 * var.c2c), 1),
        ("constant-step control", constant_control(hidden), 1),
    ]
    ref = run_training(simulated_maker(hidden, periphery), cfg)
    rows = []
    for label, model, offset in candidates:
        t0 = time.perf_counter()
        rep = compare_training(ref, run_training(simulated_maker(model, periphery, seed_offset=offset), cfg), cfg)
        rows.append({"candidate": label, "passed": rep.passed, "seconds": time.perf_counter() - t0,
                     "statistics": [{"name": s.name, "value": s.value, "threshold": s.threshold,
                                     "status": s.status, "reference": s.reference, "candidate": s.candidate}
                                    for s in rep.statistics]})
        print(f"  {label:<40} {'PASS' if rep.passed else 'FAIL'} "
              + ", ".join(f"{s.name} {s.value:.3g}/{s.threshold:.3g}" for s in rep.statistics), flush=True)
    return rows


NEIGHBOUR_RUNS = [("ID301XR1000Oct", [4], [5]), ("ID301XR1000Oct", [6, 7], [8]), ("ID301XR1000Oct", [10], [11])]


def specificity_check() -> dict[str, Any]:
    """Real data: what the shared sets allow for "one device split in two".

    ``splits``: earlier/later and interleaved halves of every ferroelectric device with
    at least 6 runs; the nearest like-for-like splits (runs of one device with one pulse
    width, neighbouring runs of one ID301 sweep), whose pulse programs still differ.
    ``audit``: runs of one device that repeat one pulse program (width and every
    pulse's amplitude): none; identical programs on different devices; and the gong
    HfO2 file (one device, one cycle), whose earlier and later halves of each phase
    visit different states."""
    from hil.calibration.importers.base import import_measurements
    from hil.validation.compare import compare_measurements
    from hil.validation.measurements import UnusableInputError, from_loaded
    from hil.validation.splits import (
        cycle_settings,
        run_protocols,
        same_setting_groups,
        select_cycles,
        split_cycles,
    )

    _, res = import_measurements(SHARED / "ferro-hzo-ampsweep", "wgfmu-summary")
    m = from_loaded(res.measurements)
    out: list[dict[str, Any]] = []

    def run(dev: str, n_runs: int, split: str, a: Any, b: Any) -> None:
        try:
            rep = compare_measurements(a, b).report
        except UnusableInputError as exc:
            out.append({"device": dev, "runs": n_runs, "split": split, "unusable": str(exc)})
            return
        traj = rep.statistic("trajectory_nrmse")
        out.append({"device": dev, "runs": n_runs, "split": split, "verdict": rep.verdict, "passed": rep.passed,
                    "failed": rep.failed(), "insufficient": rep.insufficient(), "evaluated": rep.n_evaluated,
                    "units": [rep.reference.units, rep.candidate.units],
                    "trajectory_nrmse": traj.value, "trajectory_threshold": traj.threshold,
                    "statistics": [{"name": s.name, "value": s.value, "threshold": s.threshold, "dof": s.dof,
                                    "status": s.status} for s in rep.statistics]})

    for dev in m.devices:
        n_runs = len(set(m.cycle[m.device == dev].tolist()))
        if n_runs < 6:
            continue
        for mode in ("halves", "interleaved"):
            a, b = split_cycles(m, dev, mode)
            run(dev, n_runs, mode, a, b)
    # runs of one device with one pulse width (their amplitude sweeps differ)
    for dev, (width,), cycles in same_setting_groups(cycle_settings(res.measurements, ("width_s",), digits=2)):
        n_runs = len(set(m.cycle[m.device == dev].tolist()))
        first, second = cycles[: len(cycles) // 2], cycles[len(cycles) // 2:]
        run(dev, n_runs, f"width {width:g} s: {first} vs {second}",
            select_cycles(m, dev, first, "earlier"), select_cycles(m, dev, second, "later"))
    # neighbouring runs of ID301 with one programmed amplitude sweep (header endVoltage 3.5,
    # 4.0 and 5.0 V) and widths within 2.5x (50/20 us; 5/2/0.5 us; 50/20 ns)
    for dev, first, second in NEIGHBOUR_RUNS:
        n_runs = len(set(m.cycle[m.device == dev].tolist()))
        run(dev, n_runs, f"same sweep: {first} vs {second}",
            select_cycles(m, dev, first, "earlier"), select_cycles(m, dev, second, "later"))

    programs = run_protocols(res.measurements)
    shared: dict[tuple, list[str]] = {}
    for (dev, cyc), key in programs.items():
        shared.setdefault(key, []).append(f"{dev} run {cyc}")
    runs_per_device: dict[str, int] = {}
    for dev, _ in programs:
        runs_per_device[dev] = runs_per_device.get(dev, 0) + 1
    audit: dict[str, Any] = {
        "ferro_devices": len(runs_per_device),
        "ferro_devices_with_several_runs": sorted(d for d, n in runs_per_device.items() if n >= 2),
        "ferro_same_program_runs_of_one_device": [
            {"device": d, "runs": c} for d, _, c in same_setting_groups(programs)],
        "ferro_same_program_on_different_devices": [v for v in shared.values() if len(v) > 1],
        "gong": gong_halves(),
    }
    return {"splits": out, "audit": audit}


def gong_halves() -> dict[str, Any]:
    """The gong HfO2 file: one device, one cycle (1000 up, then 1000 down pulses).  Its only
    earlier/later split is within a phase: the states (5-95 % of the reads, in the file's
    normalized units; the importer maps 1 unit to 1 uS) each half of each phase visits."""
    from hil.calibration.importers.base import import_measurements
    from hil.validation.measurements import from_loaded

    _, res = import_measurements(SHARED / "reram-hfo2-gong" / "gong_et_al.csv", "updown-columns")
    m = from_loaded(res.measurements)
    out: dict[str, Any] = {"devices": len(m.devices), "cycles": len(set(m.cycle.tolist()))}
    for pol, name in ((1, "up"), (-1, "down")):
        g = m.conductance[m.polarity == pol] / 1e-6  # back to the file's units (updown-columns: 1 uS per unit)
        half = g.size // 2
        out[name] = {
            "pulses": int(g.size),
            "earlier_half_states": [round(float(np.percentile(g[:half], q)), 3) for q in (5, 95)],
            "later_half_states": [round(float(np.percentile(g[half:], q)), 3) for q in (5, 95)],
        }
    return out


def replication_check(quick: bool) -> dict[str, Any]:
    """False failures of one device against itself when its runs vary (hil.validation.replication)."""
    from hil.validation.replication import replication_study

    t0 = time.perf_counter()
    res = replication_study(seeds=10 if quick else 40)
    res["seconds"] = time.perf_counter() - t0
    return res


def print_training(tr: dict[str, Any]) -> dict[str, Any]:
    """Print the training comparisons and return their summary."""
    out: dict[str, Any] = {}
    for algorithm, sides in tr.items():
        out[algorithm] = {"chip_seconds": sides["chip_seconds"]}
        for label in ("fitted", "control"):
            rep = sides[label]
            out[algorithm][label] = {
                "passed": rep["passed"], "statistics": rep["statistics"],
                "chip_accuracy": [r["test_accuracy"] for r in rep["reference"]],
                "chip_loss": [r["train_loss"] for r in rep["reference"]],
                "simulator_accuracy": [r["test_accuracy"] for r in rep["candidate"]],
                "simulator_loss": [r["train_loss"] for r in rep["candidate"]],
                "seconds": sides[f"{label}_seconds"],
            }
            print(f"training {algorithm} ({label} simulator vs chip): "
                  f"{'PASS' if rep['passed'] else 'FAIL'} "
                  + ", ".join(f"{s['name']} {s['value']:.3g}/{s['threshold']:.3g} {s['status']}"
                              for s in rep["statistics"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="6 cycles instead of 10; 5 seeds in --sensitivity")
    p.add_argument("--out", default="validation_loop_out", help="folder for CSVs, models and reports")
    p.add_argument("--n-up", type=int, default=100, help="up pulses per cycle (default 100)")
    p.add_argument("--n-down", type=int, default=250, help="down pulses per cycle (default 250)")
    p.add_argument("--training", action="store_true", help="also compare short training runs")
    p.add_argument("--training-from", default=None, metavar="DIR",
                   help="skip the loop: compare training with the fitted model (DIR/device.json) and "
                   "control (DIR/control.json) of an earlier run's --out folder")
    p.add_argument("--skip-loop", action="store_true",
                   help="skip the closed loop: run only --training-resolution, --sensitivity, --specificity, "
                   "--replication")
    p.add_argument("--algorithms", default="analog_sgd,ttv2",
                   help="training algorithms to compare (default analog_sgd,ttv2)")
    p.add_argument("--training-resolution", action="store_true",
                   help="also measure what the analog-SGD training check resolves (simulator only)")
    p.add_argument("--sensitivity", action="store_true", help="also run the synthetic sensitivity study")
    p.add_argument("--specificity", action="store_true", help="also split real ferroelectric runs")
    p.add_argument("--replication", action="store_true",
                   help="also run the synthetic unit-of-replication study (40 seeds; 10 with --quick)")
    p.add_argument("--jobs", type=int, default=0,
                   help="worker processes for the calibration's candidate fits (0: one per core; 1: none)")
    p.add_argument("--json", dest="json_path", default=None, help="write the summary JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    hidden = hidden_model()
    algorithms = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
    summary: dict[str, Any] = {"hidden_model": hidden.name, "training": None, "training_resolution": None,
                               "sensitivity": None, "specificity": None, "replication": None}
    if args.training_from:
        src = Path(args.training_from)
        summary["training"] = print_training(
            training_check(hidden, src / "device.json", src / "control.json", args.quick, algorithms))
    elif not args.skip_loop:
        out = Path(args.out)
        res, control = closed_loop(hidden, args, out, summary)
        if args.training:
            summary["training"] = print_training(
                training_check(hidden, Path(res.device_model), out / "control.json", args.quick, algorithms))
    if args.training_resolution:
        print("training resolution (analog SGD, simulated arrays of the hidden model as reference):")
        summary["training_resolution"] = training_resolution(hidden, args.quick)
    if args.sensitivity:
        from hil.validation.sensitivity import sensitivity_study

        sens = sensitivity_study(seeds=5 if args.quick else 20)
        summary["sensitivity"] = sens
        print("sensitivity (synthetic, default thresholds):")
        for r in sens["rows"]:
            print(f"  {r['change']:<10} failed {r['failed']:>2}/{r['seeds']}  {r['failed_statistics']}")
    if args.specificity:
        spec = specificity_check()
        summary["specificity"] = spec
        print("specificity (ferroelectric devices, one device split in two):")
        for r in spec["splits"]:
            verdict = r.get("unusable") or (
                f"{r['verdict'].upper()} failed {r['failed']} ({r['evaluated']} evaluated, "
                f"{len(r['insufficient'])} insufficient; units {r['units'][0]} + {r['units'][1]})")
            print(f"  {r['device']:<16} {r['runs']:>2} runs {r['split']:<28} {verdict}")
        a = spec["audit"]
        print(f"  runs of one device that repeat one pulse program: {a['ferro_same_program_runs_of_one_device']}")
        print(f"  one pulse program on several devices: {a['ferro_same_program_on_different_devices']}")
        print(f"  gong HfO2: {a['gong']}")
    if args.replication:
        rep = replication_check(args.quick)
        summary["replication"] = rep
        print("replication (synthetic, one device, runs varying from run to run; same population on both sides):")
        for r in rep["rows"]:
            print(f"  {r['case']:<14} runs/side {r['runs_per_side']:>2} run_sd {r['run_sd']:<5} drift {r['drift']:<5} "
                  f"pass {r['pass']:>2} fail {r['fail']:>2} insufficient {r['insufficient']:>2}  {r['failed_statistics']}")
    summary["seconds"] = time.perf_counter() - t0
    print(f"total {summary['seconds']:.0f} s")
    if args.json_path:
        dump_json(args.json_path, summary)


def closed_loop(hidden: Any, args: argparse.Namespace, out: Path, summary: dict[str, Any]) -> Any:
    """Characterize the emulated chip, fit, simulate, validate (and the control); fills ``summary``."""
    from hil.characterization.protocol import PulseProtocol

    protocol = PulseProtocol(name="loop", n_up=args.n_up, n_down=args.n_down, cycles=6 if args.quick else 10,
                             repeated_reads=5)
    spec = start_emulator("validation-loop-chip", hidden, ROWS, COLS, seed=3)
    cm = hidden.conductance
    cfg = LoopConfig(rows=ROWS, cols=COLS, protocol=protocol, g_range_s=(cm.g_min_s, cm.g_max_s),
                     control="constant", mvm=True, progress=False, jobs=args.jobs)
    res = run_loop(spec, out, cfg)
    control = ValidationReport.load(out / "control_report.json")
    print(format_table(res.validation))
    print(f"\nclosed loop: hidden ENODe table on the emulator; fitted model {res.chosen_model}")
    head = f"{'statistic':<18} {'fitted':>9} {'threshold':>9} {'':<5} {'constant':>9} {'threshold':>9}"
    print(head)
    rows = []
    for s in res.validation.statistics:
        c = control.statistic(s.name)
        rows.append({"name": s.name, "value": s.value, "threshold": s.threshold, "status": s.status,
                     "control_value": c.value, "control_threshold": c.threshold, "control_status": c.status})

        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.4g}"

        print(f"{s.name:<18} {f(s.value):>9} {f(s.threshold):>9} {s.status.upper():<5} "
              f"{f(c.value):>9} {f(c.threshold):>9} {c.status.upper()}")
    print(f"verdict: fitted simulator {'PASSES' if res.passed else 'FAILS'}; constant-step control "
          f"{'PASSES (not told apart!)' if control.passed else 'FAILS as it must'} "
          f"({', '.join(control.failed())})")
    mvm = res.mvm or {}
    print("MVM: " + ", ".join(f"{s['name']} {s['value']:.3g}/{s['threshold']:.3g} {s['status']}"
                              for s in mvm.get("statistics", [])))
    summary.update({
        "passed": res.passed,
        "control_passed": control.passed,
        "chosen_model": res.chosen_model,
        "devices": ROWS * COLS,
        "protocol": protocol.model_dump(mode="json"),
        "statistics": rows,
        "mvm": {"passed": mvm.get("passed"), "statistics": mvm.get("statistics")},
        "loop_seconds": res.seconds,
    })
    return res, control


if __name__ == "__main__":
    main()
