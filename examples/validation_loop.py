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

- ``--training``: the same short TTv2 run (digits MLP, 3 seeds x 3 epochs, 2 with
  ``--quick``; settings in ``TRAINING_OVERRIDES``) on emulated chips of the hidden
  device, on the fitted simulator and on the control, comparing learning curves
  (a few minutes more);
- ``--sensitivity``: the synthetic sensitivity/specificity study of
  :mod:`hil.validation.sensitivity` (20 seeds; 5 with ``--quick``);
- ``--specificity``: real-data splits of the ferroelectric devices with several
  runs (../shared/data/ferro-hzo-ampsweep): earlier/later and interleaved halves.

Usage::

    python examples/validation_loop.py --quick --json loop.json
    python examples/validation_loop.py --training --sensitivity --specificity --json all.json

JSON: ``{"passed": <fitted simulator passed>, "control_passed": <constant-step
control passed>, "chosen_model": ..., "statistics": [{"name", "value",
"threshold", "status", "control_value", "control_threshold", "control_status"},
...], "mvm": {...}, "training": {"fitted": {...}, "control": {...}} | null, "sensitivity": {...} | null,
"specificity": [...] | null, "seconds": ...}``.  One torch thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

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


# The TTv2 run of the training check.  The ENODe device's symmetry point is at +0.45 of
# its weight range: driving C there before training (reset_weights) sets every weight to
# +0.45, which one-pulse transfers of 1/200 of the range cannot undo in 3 epochs (the run
# stays at chance, 10 %, on chip and simulator alike, and such a comparison says nothing).
# So C keeps its random initialization around 0, and up to 10 pulses per transfer with
# lambda_H = 1 and a transfer after every sample suit the device's ~200 states.  The same
# settings on both sides.
TRAINING_OVERRIDES = {"reset_weights": False, "max_pulses": 10, "lambda_H": 1.0, "n_s": 1}


def training_check(hidden: Any, fitted_path: Path, control_path: Path, quick: bool) -> dict[str, Any]:
    """The same short TTv2 run on emulated chips of the hidden model, on the fitted simulator
    and on the constant-step control."""
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

    cfg = TrainingValidationConfig(epochs=2 if quick else 3, seeds=[0, 1, 2], overrides=TRAINING_OVERRIDES)
    link_cfg = LinkConfig(latency_s=0.05, poll_s=0.002)

    def chip_maker(seed: int) -> Any:
        emu = ChipEmulator(EmulatorConfig(rows=42, cols=128, device=hidden, seed=1000 * seed + 17,
                                          periphery=emulator_periphery(hidden.read_noise), keep_counts=False))
        url = register_emulator(f"train-{seed}-{time.perf_counter_ns()}", emu)
        link = ChipLink.open(url, "board", link_cfg)
        link.arm()
        return WindowAllocator(link, SerialCrossbarConfig(bl=31, link=link_cfg))

    chip_runs = run_training(chip_maker, cfg)
    out: dict[str, Any] = {}
    for label, path in (("fitted", fitted_path), ("control", control_path)):
        model = DeviceModel.load(path)
        periphery = PeripheryConfig.ideal().model_copy(update={"w_noise": model.read_noise})
        runs = run_training(simulated_maker(model, periphery, seed_offset=1), cfg)
        out[label] = compare_training(chip_runs, runs, cfg).model_dump(mode="json")
    return out


def specificity_check() -> list[dict[str, Any]]:
    """Earlier/later and interleaved halves of every ferroelectric device with at least 6 runs."""
    from hil.calibration.importers.base import import_measurements
    from hil.validation.compare import compare_measurements
    from hil.validation.measurements import UnusableInputError, from_loaded
    from hil.validation.splits import split_cycles

    _, res = import_measurements(SHARED / "ferro-hzo-ampsweep", "wgfmu-summary")
    m = from_loaded(res.measurements)
    out = []
    for dev in m.devices:
        n_runs = len(set(m.cycle[m.device == dev].tolist()))
        if n_runs < 6:
            continue
        for mode in ("halves", "interleaved"):
            a, b = split_cycles(m, dev, mode)
            try:
                rep = compare_measurements(a, b).report
                out.append({"device": dev, "runs": n_runs, "split": mode, "passed": rep.passed,
                            "failed": rep.failed(), "evaluated": rep.n_evaluated,
                            "trajectory_nrmse": rep.statistic("trajectory_nrmse").value,
                            "trajectory_threshold": rep.statistic("trajectory_nrmse").threshold})
            except UnusableInputError as exc:
                out.append({"device": dev, "runs": n_runs, "split": mode, "unusable": str(exc)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="6 cycles instead of 10; 5 seeds in --sensitivity")
    p.add_argument("--out", default="validation_loop_out", help="folder for CSVs, models and reports")
    p.add_argument("--n-up", type=int, default=100, help="up pulses per cycle (default 100)")
    p.add_argument("--n-down", type=int, default=250, help="down pulses per cycle (default 250)")
    p.add_argument("--training", action="store_true", help="also compare a short TTv2 run")
    p.add_argument("--sensitivity", action="store_true", help="also run the synthetic sensitivity study")
    p.add_argument("--specificity", action="store_true", help="also split real ferroelectric runs")
    p.add_argument("--json", dest="json_path", default=None, help="write the summary JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    hidden = hidden_model()
    from hil.characterization.protocol import PulseProtocol

    protocol = PulseProtocol(name="loop", n_up=args.n_up, n_down=args.n_down, cycles=6 if args.quick else 10,
                             repeated_reads=5)
    spec = start_emulator("validation-loop-chip", hidden, ROWS, COLS, seed=3)
    cm = hidden.conductance
    cfg = LoopConfig(rows=ROWS, cols=COLS, protocol=protocol, g_range_s=(cm.g_min_s, cm.g_max_s),
                     control="constant", mvm=True, progress=False)
    out = Path(args.out)
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
    summary: dict[str, Any] = {
        "passed": res.passed,
        "control_passed": control.passed,
        "chosen_model": res.chosen_model,
        "hidden_model": hidden.name,
        "devices": ROWS * COLS,
        "protocol": protocol.model_dump(mode="json"),
        "statistics": rows,
        "mvm": {"passed": mvm.get("passed"), "statistics": mvm.get("statistics")},
        "training": None,
        "sensitivity": None,
        "specificity": None,
        "loop_seconds": res.seconds,
    }
    if args.training:
        tr = training_check(hidden, Path(res.device_model), out / "control.json", args.quick)
        summary["training"] = {}
        for label, rep in tr.items():
            summary["training"][label] = {
                "passed": rep["passed"], "statistics": rep["statistics"],
                "chip_accuracy": [r["test_accuracy"] for r in rep["reference"]],
                "simulator_accuracy": [r["test_accuracy"] for r in rep["candidate"]],
            }
            print(f"training ({label} simulator vs chip): "
                  + ", ".join(f"{s['name']} {s['value']:.3g}/{s['threshold']:.3g} {s['status']}"
                              for s in rep["statistics"]))
    if args.sensitivity:
        from hil.validation.sensitivity import sensitivity_study

        sens = sensitivity_study(seeds=5 if args.quick else 20)
        summary["sensitivity"] = sens
        print("sensitivity (synthetic, default thresholds):")
        for r in sens["rows"]:
            print(f"  {r['change']:<10} failed {r['failed']:>2}/{r['seeds']}  {r['failed_statistics']}")
    if args.specificity:
        spec_rows = specificity_check()
        summary["specificity"] = spec_rows
        print("specificity (ferroelectric devices, one device split in two):")
        for r in spec_rows:
            verdict = r.get("unusable") or (f"{'PASS' if r['passed'] else 'FAIL'} {r['failed']} "
                                             f"({r['evaluated']} evaluated)")
            print(f"  {r['device']:<16} {r['runs']:>2} runs {r['split']:<11} {verdict}")
    summary["seconds"] = time.perf_counter() - t0
    print(f"total {summary['seconds']:.0f} s")
    if args.json_path:
        dump_json(args.json_path, summary)


if __name__ == "__main__":
    main()
