"""TTv2 trains the digits MLP through ``SerialCrossbar`` on an emulated test chip.

Three runs per seed, with the same device model, periphery, TTv2 settings and seed:

- ``direct``: ``SimulatedCrossbar`` arrays (``hil.training.train_digits``);
- ``emulated``: the same training through the board protocol: every array
  operation is a frame to a ``ChipEmulator`` (in-process ``xbarsim://`` URL)
  whose one physical 42 x 128 array holds all four TTv2 arrays as windows;
- ``emulated_faulty``: as ``emulated`` with 1 % of request frames and 1 % of
  reply frames corrupted and 1 % of replies dropped.

After each emulated run the driver's write journal is checked against the
emulator's pulse log: ``duplicate_pulses`` (pulses the board executed twice)
and ``lost_pulses`` (acknowledged pulses the board never applied) must be 0.
``frames_per_sample``: request frames the driver sent during training steps
(forward and backward MVMs, one UPDATE per mini-batch and array, transfer reads,
one PULSE_BATCH per transfer), divided by the training samples, averaged over
the fault-free emulated runs; preparation (zero-shifting) and the final test
evaluation are not included.

Why windows of one array: one test chip carries one physical array; TTv2 needs
A and C per layer.  Non-overlapping windows (``WindowAllocator``) keep every
array a separate set of devices, and each contract operation stays one frame
(the window is 8 bytes in the frame), so nothing costs more than on a chip with
four arrays.

Usage::

    python examples/ttv2_on_emulated_chip.py --quick --json out.json   # 3 seeds
    python examples/ttv2_on_emulated_chip.py --json out.json           # 5 seeds

JSON: ``{"direct", "emulated", "emulated_faulty"}`` (test accuracy, mean over
seeds), ``"duplicate_pulses"``, ``"lost_pulses"`` (sums over all emulated runs),
``"frames_per_sample"``.  Per-seed figures and the seed-to-seed std go to stdout.
One torch thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from hil.config import dump_json
from hil.datasets import load_digits_split
from hil.drivers.chip import (
    ChipEmulator,
    ChipLink,
    EmulatorConfig,
    FaultConfig,
    LinkConfig,
    SerialCrossbarConfig,
    WindowAllocator,
    register_emulator,
    unregister_emulator,
)
from hil.drivers.chip.audit import audit_pulses
from hil.nn import convert_to_analog
from hil.safety import SafetyLimits
from hil.training import TrainingController, fit, recommended_config, train_digits
from hil.training.digits import OUT_SCALE, digits_device, digits_network, digits_periphery

CHIP_ROWS, CHIP_COLS = 42, 128  # A1, C1: 32 x 64 side by side; A2, C2: 10 x 32 below
LIMITS = SafetyLimits(
    max_read_voltage_v=0.25,  # inputs are scaled to |x| <= 1 -> 0.2 V at the board's full scale
    max_write_voltage_v=1.5,
    min_pulse_width_s=1e-8,
    max_pulse_width_s=1e-6,
    compliance_current_a=1e-4,
    max_pulses_per_call=1000,  # UPDATE of 10 samples x BL 31 = 310 pulses per device at most
)
FAULTY = FaultConfig(corrupt_request_rate=0.01, corrupt_reply_rate=0.01, drop_reply_rate=0.01)


def run_direct(seed: int, epochs: int, split: Any) -> float:
    return train_digits("ttv2", "mlp", seed=seed, epochs=epochs, split=split).test_accuracy


def run_emulated(
    seed: int, epochs: int, split: Any, faults: FaultConfig | None, **overrides: Any
) -> dict[str, Any]:
    """The run of :func:`train_digits` with arrays from a WindowAllocator on an emulated chip.

    ``overrides`` replace fields of the recommended TrainingConfig (tests shorten preparation).
    """
    cfg = recommended_config("ttv2", "mlp", seed=seed, epochs=epochs, **overrides)
    torch.manual_seed(seed)
    model = convert_to_analog(digits_network("mlp"), out_scale=OUT_SCALE["mlp"])
    emu = ChipEmulator(
        EmulatorConfig(
            rows=CHIP_ROWS,
            cols=CHIP_COLS,
            device=digits_device(20, 1.0, 0.3),
            periphery=digits_periphery(0.06).model_dump(),
            seed=1000 * seed + 17,
            keep_counts=False,
            faults=(faults or FaultConfig()).model_copy(update={"seed": seed}),
        )
    )
    name = f"ttv2-seed{seed}-{'faulty' if faults else 'clean'}"
    url = register_emulator(name, emu)
    link_cfg = LinkConfig(latency_s=0.05, poll_s=0.002)
    link = ChipLink.open(url, LIMITS, link_cfg)
    alloc = WindowAllocator(link, SerialCrossbarConfig(bl=cfg.bl, link=link_cfg))
    ctl = TrainingController(model, cfg, alloc)
    link.arm()
    ctl.prepare()
    base = link.counters.as_dict()
    last: dict[str, dict[str, int]] = {}

    def on_step(c: TrainingController) -> None:
        last.update(link.counters.as_dict())

    ctl.add_callback("step", on_step)
    t0 = time.perf_counter()
    res = fit(model, ctl, split.x_train, split.y_train, x_test=split.x_test, y_test=split.y_test,
              eval_every_epoch=False)
    seconds = time.perf_counter() - t0
    audit = audit_pulses(link.journal, emu.pulse_log)
    n = max(ctl.samples, 1)
    per_op = {
        op: {k: (v - base.get(op, {}).get(k, 0)) / n for k, v in t.items()
             if k in ("frames_sent", "bytes_sent", "bytes_received", "round_trips", "retries",
                                             "last_seq_queries")}
        for op, t in last.items()
    }
    total = link.counters.total()
    for _, _, backend in ctl.arrays():
        backend.close()
    unregister_emulator(name)
    return {
        "accuracy": float(res.test_accuracy or 0.0),
        "frames_per_sample": per_op["total"]["frames_sent"],
        "per_sample": per_op,
        "audit": audit.as_dict(),
        "retries": total.retries,
        "timeouts": total.timeouts,
        "bad_replies": total.bad_replies,
        "faults_injected": {k: v for k, v in emu.stats.items() if k.startswith("fault_")},
        "windows": alloc.describe(),
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 seeds instead of 5")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides --quick)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    p.add_argument("--epochs", type=int, default=15, help="training epochs per run (default 15)")
    p.add_argument("--json", dest="json_path", default=None, help="write the summary JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    n_seeds = args.seeds if args.seeds is not None else (3 if args.quick else 5)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    split = load_digits_split()
    direct, clean, faulty = [], [], []
    t0 = time.perf_counter()
    for seed in seeds:
        direct.append(run_direct(seed, args.epochs, split))
        clean.append(run_emulated(seed, args.epochs, split, None))
        faulty.append(run_emulated(seed, args.epochs, split, FAULTY))
        print(
            f"seed {seed}: direct {direct[-1]:.4f}  emulated {clean[-1]['accuracy']:.4f}  "
            f"emulated_faulty {faulty[-1]['accuracy']:.4f}  frames/sample "
            f"{clean[-1]['frames_per_sample']:.3f}  faulty: retries {faulty[-1]['retries']}, "
            f"faults {faulty[-1]['faults_injected']}, audit {faulty[-1]['audit']}  "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    runs = clean + faulty
    summary = {
        "direct": statistics.fmean(direct),
        "emulated": statistics.fmean(r["accuracy"] for r in clean),
        "emulated_faulty": statistics.fmean(r["accuracy"] for r in faulty),
        "duplicate_pulses": int(sum(r["audit"]["duplicate_pulses"] for r in runs)),
        "lost_pulses": int(sum(r["audit"]["lost_pulses"] for r in runs)),
        "frames_per_sample": statistics.fmean(r["frames_per_sample"] for r in clean),
    }
    if len(seeds) > 1:
        std = statistics.stdev(direct)
        print(f"seed-to-seed std: direct {std:.4f}, emulated {statistics.stdev(r['accuracy'] for r in clean):.4f}, "
              f"emulated_faulty {statistics.stdev(r['accuracy'] for r in faulty):.4f}; |emulated - direct| = "
              f"{abs(summary['emulated'] - summary['direct']):.4f}, |emulated_faulty - direct| = "
              f"{abs(summary['emulated_faulty'] - summary['direct']):.4f}")
    print(f"windows: {clean[0]['windows']}")
    print(f"per training sample, fault-free run of seed {seeds[0]} (op: frames_sent, bytes_sent, bytes_received):")
    for op, t in clean[0]["per_sample"].items():
        if not t["frames_sent"]:
            continue
        print(f"  {op:<8} {t['frames_sent']:.3f} frames  {t['bytes_sent']:.0f} B out  {t['bytes_received']:.0f} B in")
    print(f"per training sample, faulty run of seed {seeds[0]}: "
          + ", ".join(f"{k} {v:.3f}" for k, v in faulty[0]["per_sample"]["total"].items()))
    print(json.dumps(summary, indent=2))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json_path:
        dump_json(args.json_path, summary)


if __name__ == "__main__":
    main()
