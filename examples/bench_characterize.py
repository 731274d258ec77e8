"""Characterize a 4 x 4 region of an emulated bench array, fit it with ``hil calibrate``, check the fit.

What it does, end to end, with no hardware:

1. starts a :class:`~hil.drivers.bench.BenchEmulator` (Keithley 2600B SMU,
   Keithley 707B matrix, Keysight 33500B pulse generator on loopback TCP ports)
   backed by a hidden soft-bounds device model (d2d and c2c variation, read noise);
2. opens it as a :class:`~hil.drivers.bench.BenchCrossbar` through pyvisa-py
   (``TCPIP::127.0.0.1::PORT::SOCKET``) -- the same code that drives a real bench;
3. runs a pulse-response protocol: per cycle ``N`` potentiation pulses then ``N``
   depression pulses, every device read (device by device) after every pulse, and
   writes the reads as a long-format measurement CSV (device, cycle, pulse,
   polarity, conductance in siemens);
4. checks that out-of-limit requests are refused before anything is sent;
5. fits the CSV with ``hil calibrate`` (automatic model selection; conductance
   range pinned to the bench configuration's ``g_min_s``/``g_max_s`` so that
   weights mean the same on both sides) and compares every fitted step
   parameter with the hidden model.

Run::

    python examples/bench_characterize.py [--quick] [--json PATH]

JSON: ``{"devices": int, "commands_sent": int, "fit_relative_error": {param: rel_err},
"out_of_limit_sent": int}``.  Targets: every step parameter within 15 %, no
out-of-limit command on the wire, ``--quick`` under 5 minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hil.device_model import (
    STEP_PARAMETERS,
    ConductanceMapping,
    DeviceModel,
    DeviceVariation,
    SoftBoundsStep,
)
from hil.drivers.bench import BenchConfig, BenchCrossbar, BenchEmulator
from hil.safety import SafetyError

G_MIN_S, G_MAX_S = 1e-5, 1e-4

#: the emulator's hidden device population (not known to the bench code)
HIDDEN = DeviceModel(
    name="bench-hidden-softbounds",
    description="hidden model of the emulated bench array",
    source="examples/bench_characterize.py",
    step=SoftBoundsStep(dw_up=0.06, dw_down=0.04, w_min=-1.0, w_max=1.0),
    variation=DeviceVariation(c2c=0.2, d2d={"dw_up": 0.1, "dw_down": 0.1}),
    read_noise=0.004,
    conductance=ConductanceMapping(g_min_s=G_MIN_S, g_max_s=G_MAX_S),
)


def bench_config() -> BenchConfig:
    """The bench file of a 4 x 4 region (resources are filled in from the emulator)."""
    return BenchConfig.model_validate(
        {
            "name": "emulated-4x4-region",
            "description": "2602B + 707B (7174A in slot 1) + 33522B, word lines on columns 1-4, bit lines 5-8",
            "smu": {"resource": "TCPIP::127.0.0.1::5025::SOCKET", "nplc": 0.1},
            "matrix": {"resource": "TCPIP::127.0.0.1::5026::SOCKET", "array_rows": [1, 2, 3, 4],
                       "array_cols": [5, 6, 7, 8]},
            "pulse_generator": {"resource": "TCPIP::127.0.0.1::5024::SOCKET"},
            "read": {"voltage_v": 0.2, "compliance_a": 1e-4},
            "pulses": {"up": {"amplitude_v": 1.2, "width_s": 1e-6}, "down": {"amplitude_v": 1.4, "width_s": 1e-6},
                       "period_s": 1e-5},
            "limits": {"max_read_voltage_v": 0.5, "max_write_voltage_v": 2.0, "min_pulse_width_s": 1e-7,
                       "max_pulse_width_s": 1e-3, "compliance_current_a": 1e-3, "max_pulses_per_call": 50},
            "conductance": {"g_min_s": G_MIN_S, "g_max_s": G_MAX_S, "w_min": -1.0, "w_max": 1.0},
            "dw_nominal": 0.05,
        }
    )


def characterize(xb: BenchCrossbar, path: Path, cycles: int, n_pulses: int) -> int:
    """Pulse-response protocol; writes the schema CSV; returns the number of rows."""
    cfg = xb.config
    names = [f"r{i}c{j}" for i in range(xb.rows) for j in range(xb.cols)]
    counter = 0
    rows = 0
    with path.open("w", newline="") as fh:
        fh.write("# schema_version: 1.0\n")
        fh.write(f"# source: {Path(__file__).name} on bench {cfg.name!r}\n")
        out = csv.writer(fh)
        out.writerow(["device", "cycle", "pulse", "polarity", "conductance", "amplitude_v", "width_s", "read_voltage_v"])

        def record(cycle: int, polarity: int) -> None:
            nonlocal rows
            g = xb.read_conductances().flatten().tolist()
            shape = cfg.pulses.up if polarity > 0 else cfg.pulses.down
            amp = polarity * shape.amplitude_v if polarity else 0.0
            width = shape.width_s if polarity else 0.0
            for name, value in zip(names, g, strict=True):
                out.writerow([name, cycle, counter, polarity, f"{value:.9e}", f"{amp:g}", f"{width:g}",
                              f"{cfg.read.voltage_v:g}"])
                rows += 1

        record(0, 0)
        for cycle in range(cycles):
            for polarity in (+1, -1):
                counts = torch.full(xb.shape, polarity, dtype=torch.int64)
                for _ in range(n_pulses):
                    xb.pulse(counts)
                    counter += 1
                    record(cycle, polarity)
    return rows


def refusals(xb: BenchCrossbar) -> int:
    """Out-of-limit requests; each must be refused with nothing sent.  Returns how many were refused."""
    refused = 0
    before = xb.commands_sent
    lim = xb.config.limits
    attempts = [
        lambda: xb.pulse(torch.full(xb.shape, lim.max_pulses_per_call + 1, dtype=torch.int64)),
        lambda: setattr(xb.smu, "source_voltage", 2 * lim.max_read_voltage_v),
        lambda: setattr(xb.pulser, "high_level", 1.5 * lim.max_write_voltage_v),
        lambda: setattr(xb.pulser, "pulse_width", 10 * lim.max_pulse_width_s),
        lambda: setattr(xb.smu, "current_limit", 10 * lim.compliance_current_a),
    ]
    for attempt in attempts:
        try:
            attempt()
        except SafetyError:  # every limit, the contract's pulse-count limit included
            refused += 1
    if xb.commands_sent != before:
        raise AssertionError("an out-of-limit request sent a command")
    return refused


def run_hil_calibrate(csv_path: Path, out_json: Path) -> None:
    """``hil calibrate CSV`` with the conductance range of the bench configuration."""
    cmd = [
        sys.executable, "-m", "hil.cli.main", "calibrate", str(csv_path),
        "-o", str(out_json),
        "--g-range", f"{G_MIN_S:g},{G_MAX_S:g}",
        "--model", "auto",
    ]
    print("$ hil", " ".join(cmd[3:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"hil calibrate failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    for line in done.stdout.strip().splitlines():
        print("  " + line)


def compare(fitted: DeviceModel, hidden: DeviceModel) -> dict[str, float]:
    """Relative error of every step parameter the fitted and the hidden model share."""
    shared = [p for p in STEP_PARAMETERS[fitted.step.model] if p in STEP_PARAMETERS[hidden.step.model]]
    out = {}
    for p in shared:
        h = float(getattr(hidden.step, p))
        f = float(getattr(fitted.step, p))
        out[p] = abs(f - h) / abs(h)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 cycles instead of 4 (< 5 min)")
    parser.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the CSV and the fitted model here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cycles, n_pulses = (2, 40) if args.quick else (4, 40)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_characterize_"))
    work.mkdir(parents=True, exist_ok=True)
    hidden_path = HIDDEN.save(work / "hidden_device.json")
    cfg = bench_config()
    emu = BenchEmulator.from_config(cfg, hidden_path, seed=11, initial_weight=-1.0)
    emu.start()
    try:
        with BenchCrossbar(cfg.with_resources(emu.resources), arm=True) as xb:
            print(f"bench: {xb.info.hardware_id}")
            refused = refusals(xb)
            csv_path = work / "pulse_response.csv"
            rows = characterize(xb, csv_path, cycles, n_pulses)
        commands = xb.commands_sent  # after close(): the final safe state counts too
        t_meas = time.perf_counter() - t0
        print(f"measured {rows} reads of {cfg.rows * cfg.cols} devices, {commands} commands "
              f"({emu.stats.total_commands} received by the emulator), {t_meas:.1f} s; "
              f"{refused} out-of-limit requests refused before sending")
    finally:
        emu.stop()
    if commands != emu.stats.total_commands:
        raise SystemExit(f"driver counted {commands} commands, the emulator received {emu.stats.total_commands}")
    if emu.stats.hot_switches or emu.stats.shorts:
        raise SystemExit(f"unsafe switching seen by the emulator: {emu.stats}")

    fitted_path = work / "fitted_device.json"
    run_hil_calibrate(csv_path, fitted_path)
    fitted = DeviceModel.load(fitted_path)
    errors = compare(fitted, HIDDEN)
    result = {
        "devices": cfg.rows * cfg.cols,
        "commands_sent": commands,
        "fit_relative_error": errors,
        "out_of_limit_sent": len(emu.stats.out_of_limit),
    }
    print(f"fitted step model: {fitted.step.model} (hidden: {HIDDEN.step.model})")
    for p, e in errors.items():
        print(f"  {p:<8} hidden {getattr(HIDDEN.step, p):+.4f}  fitted {getattr(fitted.step, p):+.4f}  "
              f"relative error {e:.3f}")
    print(f"total {time.perf_counter() - t0:.1f} s; files in {work}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    ok = all(e <= 0.15 for e in errors.values()) and result["out_of_limit_sent"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
