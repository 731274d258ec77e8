"""Update and forward throughput of SimulatedCrossbar (and, optionally, of aihwkit's AnalogTile).

Usage::

    python3 benchmarks/update_throughput.py                      # table, 1 thread
    python3 benchmarks/update_throughput.py --json out/tp.json   # + JSON
    python3 benchmarks/update_throughput.py --aihwkit-python .aihwkit/bin/python
    python3 benchmarks/update_throughput.py --device cuda        # GPU only

What is measured, per array size (256x256, 1024x1024), batch (1, 64) and torch
device (cpu, and cuda when available):

- ``update``: one call of ``update(x, d, lr)`` with x ~ U[0, 1] ``[batch, n]``,
  d ~ U[-0.5, 0.5] ``[batch, n]``, lr = 0.01, on a constant-step device with
  dw_min = 0.001 in [-1, 1] (c2c 0.3 and 30 % device-to-device spread, as
  aihwkit's ConstantStepDevice), stochastic pulse trains of bit length 31 with
  update management: about lr |x| |d| / dw_min <= 5 pulses per device and sample,
  never saturated.  Throughput is counted in **device updates per second**:
  ``rows * cols * batch`` per call.
- ``forward``: one call of ``forward(x)`` through the default periphery (7-bit
  DAC, 9-bit ADC, out_bound 12, output noise 0.06).  Throughput is counted in
  **MVMs per second** (input vectors: ``batch`` per call); the table also shows
  G MAC/s (``rows * cols * batch`` multiply-accumulates per call).

Each figure is the median (and the minimum) over ``--reps`` repetitions of at
least ``--min-time`` seconds each.  With ``--aihwkit-python PATH`` the same
configuration runs on aihwkit's AnalogTile in a subprocess of that interpreter
(benchmarks/_aihwkit_worker.py), interleaved with ours repetition by
repetition, and the table shows the ratios ours / aihwkit.  Threads are pinned
(``--threads``, default 1) on both sides with ``torch.set_num_threads`` and the
usual BLAS/OpenMP variables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hil.config import dump_json
from hil.device_model import ConstantStep, DeviceModel, DeviceVariation
from hil.simulated import PeripheryConfig, SimulatedCrossbar, UpdateConfig

LR = 0.01
DW_MIN = 0.001
BL = 31
WORKER = Path(__file__).resolve().with_name("_aihwkit_worker.py")

# aihwkit's ConstantStepDevice defaults (dw_min_std 0.3, dw_min_dtod 0.3, w_min/max_dtod 0.3)
# with dw_min 0.001 and bounds [-1, 1]
DEVICE = DeviceModel(
    name="bench-constant",
    description="constant step 0.001 in [-1, 1], c2c 0.3, d2d 0.3 (aihwkit ConstantStepDevice defaults)",
    source="benchmarks/update_throughput.py",
    step=ConstantStep(dw_up=DW_MIN, dw_down=DW_MIN, w_min=-1.0, w_max=1.0),
    variation=DeviceVariation(
        c2c=0.3, d2d={"dw_up": 0.3, "dw_down": 0.3, "w_min": 0.3, "w_max": 0.3}
    ),
)


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


class Ours:
    """One measurement set-up of SimulatedCrossbar."""

    def __init__(self, size: int, batch: int, device: str) -> None:
        self.device = device
        self.xbar = SimulatedCrossbar(
            size, size, device=DEVICE, periphery=PeripheryConfig(), update=UpdateConfig(bl=BL),
            seed=0, torch_device=device,
        )
        g = torch.Generator().manual_seed(0)
        self.xbar.set_weights((torch.rand(size, size, generator=g) * 0.2 - 0.1).to(device))
        self.x = torch.rand(batch, size, generator=g).to(device)
        self.d = (torch.rand(batch, size, generator=g) - 0.5).to(device)

    def measure(self, what: str, min_time: float) -> float:
        """Calls per second of ``what`` (``update`` or ``forward``), timed over >= min_time s."""
        if what == "update":
            def call() -> None:
                self.xbar.update(self.x, self.d, LR)
        else:
            def call() -> None:
                self.xbar.forward(self.x)

        call()  # warm-up
        _sync(self.device)
        t0 = time.perf_counter()
        call()
        _sync(self.device)
        single = max(time.perf_counter() - t0, 1e-7)
        n = max(1, int(min_time / single))
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        _sync(self.device)
        return n / (time.perf_counter() - t0)


class Aihwkit:
    """aihwkit's AnalogTile measured in a subprocess of another interpreter (JSON lines)."""

    def __init__(self, python: str, threads: int) -> None:
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        self.proc = subprocess.Popen(
            [python, str(WORKER), "--serve", "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self.info = self._ask({"op": "info"})

    def _ask(self, req: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"aihwkit worker exited (code {self.proc.poll()}); see its stderr above")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"aihwkit worker: {out['error']}")
        return out

    def measure(self, size: int, batch: int, what: str, device: str, min_time: float) -> float:
        req = {"size": size, "batch": batch, "what": what, "device": device, "min_time": min_time}
        return float(self._ask(req)["calls_per_s"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda is not available on this machine")
    ref = Aihwkit(args.aihwkit_python, args.threads) if args.aihwkit_python else None
    if ref is not None and (ref.info["threads"] != args.threads):
        raise SystemExit(f"aihwkit worker runs {ref.info['threads']} threads, asked for {args.threads}")
    rows, details = [], []
    load_start = os.getloadavg()
    try:
        for device in devices:
            for size in args.sizes:
                for batch in args.batches:
                    ours = Ours(size, batch, device)
                    cell: dict[str, list[float]] = {k: [] for k in ("ou", "of", "au", "af")}
                    ref_ok = ref is not None
                    for _ in range(args.reps):  # alternate ours / aihwkit, repetition by repetition
                        cell["ou"].append(ours.measure("update", args.min_time))
                        if ref_ok:
                            try:
                                cell["au"].append(ref.measure(size, batch, "update", device, args.min_time))
                            except RuntimeError as exc:  # e.g. a CPU-only aihwkit asked for cuda
                                print(f"# aihwkit on {device}: {exc}", file=sys.stderr)
                                ref_ok = False
                        cell["of"].append(ours.measure("forward", args.min_time))
                        if ref_ok:
                            cell["af"].append(ref.measure(size, batch, "forward", device, args.min_time))
                    del ours
                    per_call = size * size * batch
                    ou, of = _stats(cell["ou"]), _stats(cell["of"])
                    au = _stats(cell["au"]) if cell["au"] else None
                    af = _stats(cell["af"]) if cell["af"] else None
                    rows.append({
                        "size": size,
                        "batch": batch,
                        "device": device,
                        "ours_updates_per_s": ou["median"] * per_call,
                        "ours_forward_per_s": of["median"] * batch,
                        "aihwkit_updates_per_s": au["median"] * per_call if au else None,
                        "aihwkit_forward_per_s": af["median"] * batch if af else None,
                    })
                    details.append({
                        "size": size, "batch": batch, "device": device,
                        "update_calls_per_s": {"ours": ou, "aihwkit": au},
                        "forward_calls_per_s": {"ours": of, "aihwkit": af},
                        "update_ratio_per_rep": (
                            [a / b for a, b in zip(cell["ou"], cell["au"], strict=False)] if au else None
                        ),
                        "forward_ratio_per_rep": (
                            [a / b for a, b in zip(cell["of"], cell["af"], strict=False)] if af else None
                        ),
                    })
                    _print_row(rows[-1], details[-1])
    finally:
        if ref is not None:
            ref.close()
    return {
        "rows": rows,
        "threads": args.threads,
        "repetitions": args.reps,
        "min_time_s": args.min_time,
        "statistic": "median over repetitions (details: median, min, max of calls per second)",
        "units": {
            "updates_per_s": "device updates per second: rows * cols * batch per update() call",
            "forward_per_s": "MVMs (input vectors) per second: batch per forward() call",
        },
        "config": {"lr": LR, "dw_min": DW_MIN, "bl": BL, "x": "U[0,1]", "d": "U[-0.5,0.5]"},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1min_start_end": [load_start[0], os.getloadavg()[0]],
        },
        "aihwkit": ref.info if ref is not None else None,
        "details": details,
    }


HEADER = (
    f"{'size':>5} {'batch':>5} {'dev':>4} | {'ours upd/s':>11} {'(min)':>9} {'ours MVM/s':>11} {'GMAC/s':>7}"
    f" | {'aihwkit upd/s':>13} {'aihwkit MVM/s':>13} | {'upd ratio':>9} {'fwd ratio':>9}"
)


def _fmt(v: float | None, scale: float = 1e6, unit: str = "M") -> str:
    return "-" if v is None else f"{v / scale:.1f}{unit}"


def _print_row(row: dict, det: dict) -> None:
    size, batch = row["size"], row["batch"]
    per_call = size * size * batch
    ou_min = det["update_calls_per_s"]["ours"]["min"] * per_call
    gmac = row["ours_forward_per_s"] * size * size / 1e9
    au, af = row["aihwkit_updates_per_s"], row["aihwkit_forward_per_s"]
    ur = f"{row['ours_updates_per_s'] / au:.2f}x" if au else "-"
    fr = f"{row['ours_forward_per_s'] / af:.2f}x" if af else "-"
    print(
        f"{size:>5} {batch:>5} {row['device']:>4} | {_fmt(row['ours_updates_per_s']):>11} {_fmt(ou_min):>9}"
        f" {_fmt(row['ours_forward_per_s'], 1e3, 'k'):>11} {gmac:>7.2f}"
        f" | {_fmt(au):>13} {_fmt(af, 1e3, 'k'):>13} | {ur:>9} {fr:>9}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Update and forward throughput of SimulatedCrossbar.")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="array sizes n (n x n)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="batch sizes")
    ap.add_argument("--device", action="append", choices=["cpu", "cuda"],
                    help="torch device (repeatable; default: cpu, and cuda when available)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on both sides (default 1)")
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions (default 5)")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per timed measurement (default 1)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--aihwkit-python", metavar="PATH",
                    help="interpreter of an environment with aihwkit: measure its AnalogTile too")
    args = ap.parse_args(argv)
    print(
        f"# crossbar-hil SimulatedCrossbar throughput: torch {torch.__version__}, "
        f"threads={args.threads} (torch.set_num_threads), {os.cpu_count()} CPUs, "
        f"lr={LR}, dw_min={DW_MIN}, BL={BL}, {args.reps} reps x >= {args.min_time}s, median"
    )
    if args.aihwkit_python:
        print(f"# aihwkit via {args.aihwkit_python} (same configuration, interleaved)")
    print("# upd/s = device updates per second (rows*cols*batch per call); MVM/s = input vectors per second")
    print(HEADER)
    result = run(args)
    if result["aihwkit"]:
        a = result["aihwkit"]
        print(f"# aihwkit {a['aihwkit']} on torch {a['torch']}, threads={a['threads']}")
    load = result["machine"]["load_average_1min_start_end"]
    print(f"# 1-minute load average at start / end: {load[0]:.2f} / {load[1]:.2f}")
    if args.json:
        dump_json(args.json, result)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
