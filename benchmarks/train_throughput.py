"""TTv2 training throughput (samples per second): crossbar-hil, and aihwkit in the same run.

Workloads (batch 10 unless ``--batch``, soft-bounds device with 20 states, c2c 1.0, d2d 0.3, read noise 0.06):

- ``digits-mlp``: the digits MLP 64-32-10 (sigmoid) on the digits training split (1347 samples);
- ``mlp-784``: a 784-256-128-10 MLP (sigmoid) on random inputs in [0, 1) and random labels.

Ours: :class:`hil.training.TrainingController` with the recommended TTv2 settings of
:mod:`hil.training.digits` (BL 31) on :class:`~hil.simulated.SimulatedCrossbar`, on the
CPU and, where present, on CUDA.  Zero-shifting before training is not timed.

``--aihwkit-python PATH`` runs aihwkit's TTv2 preset
(``build_config("ttv2", SoftBoundsDevice(...))``: ChoppedTransferCompound with
in_chop_prob 0, its gradient update with BL 5) on the same network, data, batch size
and device parameters in a subprocess of that interpreter, alternating with our runs,
and prints the ratio (ours / aihwkit) of the median samples per second.

Threads are pinned to 1 on both sides (``torch.set_num_threads(1)``; ``--threads N``: N on
both sides), and said so.

``--profile``: instead of timing, run our training once per workload under cProfile and
print where the time goes (inclusive time of the main parts of a training step, in % of
the run; cProfile's own overhead inflates the Python-heavy parts), and the number of torch
operations per batch (counted with a TorchDispatchMode).

    python benchmarks/train_throughput.py [--aihwkit-python .aihwkit/bin/python]
        [--repeats 3] [--samples 1000] [--batch 10] [--json PATH]
    python benchmarks/train_throughput.py --profile [--samples 500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

THREADS = 1

AIHWKIT_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from torch import nn
import torch.nn.functional as F
from aihwkit.nn import AnalogLinear, AnalogSequential
from aihwkit.optim import AnalogSGD
from aihwkit.simulator.configs import SoftBoundsDevice, build_config

spec = json.loads(sys.argv[1])
data = torch.load(sys.argv[2])
device = SoftBoundsDevice(
    dw_min=spec["dw"], w_max=1.0, w_min=-1.0, dw_min_std=spec["c2c"], dw_min_dtod=spec["d2d"],
    w_max_dtod=spec["d2d"], w_min_dtod=spec["d2d"],
)
rpu = build_config("ttv2", device)
rpu.forward.out_noise = spec["read_noise"]
if spec.get("bl"):
    rpu.update.desired_bl = spec["bl"]
    rpu.update.update_bl_management = False
sizes = spec["sizes"]
layers = []
for i in range(len(sizes) - 1):
    layers.append(AnalogLinear(sizes[i], sizes[i + 1], bias=True, rpu_config=rpu))
    if i < len(sizes) - 2:
        layers.append(nn.Sigmoid())
model = AnalogSequential(*layers)
if spec["cuda"]:
    model = model.cuda()
opt = AnalogSGD(model.parameters(), lr=spec["lr"])
opt.regroup_param_groups(model)
x, y = data["x"], data["y"]
if spec["cuda"]:
    x, y = x.cuda(), y.cuda()
bs = spec["batch"]

def run(n):
    for b in range(0, n, bs):
        opt.zero_grad()
        F.cross_entropy(model(x[b:b + bs]), y[b:b + bs]).backward()
        opt.step()

run(min(10 * bs, x.shape[0]))  # warm-up
if spec["cuda"]:
    torch.cuda.synchronize()
t = time.perf_counter()
run(x.shape[0])
if spec["cuda"]:
    torch.cuda.synchronize()
dt = time.perf_counter() - t
print(json.dumps({"samples": int(x.shape[0]), "seconds": dt, "samples_per_s": x.shape[0] / dt,
                  "threads": torch.get_num_threads()}))
"""


def workload_data(name: str, samples: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    if name == "digits-mlp":
        from hil.datasets import load_digits_split

        d = load_digits_split()
        n = min(samples, d.x_train.shape[0]) if samples else d.x_train.shape[0]
        return d.x_train[:n].contiguous(), d.y_train[:n].contiguous(), [64, 32, 10]
    g = torch.Generator().manual_seed(0)
    n = samples or 1000
    return (
        torch.rand(n, 784, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        [784, 256, 128, 10],
    )


def ours(
    x: torch.Tensor,
    y: torch.Tensor,
    sizes: list[int],
    torch_device: str,
    bs: int = 10,
    update: bool = True,
    bl: int | None = None,
    writes: bool = True,
) -> float:
    """Samples per second of our TTv2 (recommended digits settings; ``bl``: another bit
    length) over the whole of (x, y).

    ``update=False``: the same analog forward and backward passes (through the backends'
    MVMs, periphery noise included) without ``controller.step()`` -- the speed that no
    implementation of the update can exceed with this forward/backward path.

    ``writes=False``: the whole training step, controller included (transfer reads, H,
    thresholds, biases), but every array write (the pulsed updates of A, the pulses on C)
    costs nothing: the backends' ``_update``, ``_pulse`` and ``_pulse_columns`` return at
    once.  The speed that no backend implementation of the writes (native code
    included) can exceed under this controller.  Not a training: the weights never change.
    """
    return _timed(
        _our_training(x, y, sizes, torch_device, bs, update, bl, writes),
        x.shape[0],
        torch_device,
        bs,
    )


def digital(
    x: torch.Tensor, y: torch.Tensor, sizes: list[int], torch_device: str, bs: int = 10
) -> float:
    """Samples per second of the same network in plain torch (``nn.Linear``, ``torch.optim.SGD``):
    the speed of torch's own eager autograd and optimizer at this size, no analog anything."""
    torch.manual_seed(0)
    model = nn.Sequential(*_layers(sizes, nn.Linear)).to(torch_device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = x.to(torch_device), y.to(torch_device)

    def run(n: int) -> None:
        for b in range(0, n, bs):
            opt.zero_grad()
            F.cross_entropy(model(x[b : b + bs]), y[b : b + bs]).backward()
            opt.step()

    return _timed(run, x.shape[0], torch_device, bs)


def _timed(run, n: int, torch_device: str, bs: int) -> float:  # noqa: ANN001
    """Samples per second of ``run(n)`` after a warm-up of ``run(10 * bs)``."""
    run(min(10 * bs, n))  # warm-up
    if torch_device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    run(n)
    if torch_device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def _layers(sizes: list[int], linear) -> list[nn.Module]:  # noqa: ANN001
    """``linear(in, out)`` layers with sigmoids between them."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Sigmoid())
    return layers


# (label, [(file name ending, function name), ...]): inclusive times summed; the indented
# parts belong to the controller step and overlap (a transfer's C pulses are device responses)
PROFILE_PARTS = [
    ("controller step (all of the below)", [("training/controller.py", "step")]),
    ("  pulse trains (probabilities, draws)", [("pulse_trains.py", "draw_trains")]),
    (
        "  coincidence counts incl. trains",
        [("pulse_trains.py", "coincidence_total_net"), ("pulse_trains.py", "coincidence_pulsed")],
    ),
    (
        "  device responses (A updates and C pulses)",
        [
            ("devices.py", "_apply"),
            ("devices.py", "apply_total_net_at"),
            ("devices.py", "apply_signed_at"),
        ],
    ),
    ("  transfers (reads, H, and their C pulses)", [("training/controller.py", "_transfer")]),
    ("forward MVMs (AnalogLayer.mvm_forward)", [("nn/layers.py", "mvm_forward")]),
    ("backward MVMs (AnalogLayer.mvm_backward)", [("nn/layers.py", "mvm_backward")]),
    (
        "backend input checks (check_vectors / check_matrix)",
        [("hil/checks.py", "check_vectors"), ("hil/checks.py", "check_matrix")],
    ),
]


def profile(
    x: torch.Tensor, y: torch.Tensor, sizes: list[int], name: str, samples: int, bs: int = 10
) -> dict:
    """cProfile breakdown (PROFILE_PARTS, % of the run) and torch operations per batch of one run."""
    import cProfile
    import pstats

    from torch.utils._python_dispatch import TorchDispatchMode

    class _CountOps(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            _CountOps.ops += 1
            return func(*args, **(kwargs or {}))

    n = min(samples, x.shape[0]) - min(samples, x.shape[0]) % bs
    run = _our_training(x, y, sizes, "cpu", bs)
    run(10 * bs)  # warm-up
    batches = min(20, n // bs)
    with _CountOps():
        run(batches * bs)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    run(n)
    prof.disable()
    wall = time.perf_counter() - t
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())  # all own times: the profiled run
    parts = {}
    for label, funcs in PROFILE_PARTS:
        ct = sum(
            v[3]
            for (f, _, fn), v in stats.items()
            for end, want in funcs
            if f.endswith(end) and fn == want
        )
        parts[label] = 100.0 * ct / total
    step = parts[PROFILE_PARTS[0][0]]
    fwd_bwd = parts[PROFILE_PARTS[5][0]] + parts[PROFILE_PARTS[6][0]]
    parts["rest (loss, autograd, Python loop)"] = max(0.0, 100.0 - step - fwd_bwd)
    print(
        f"{name}: {n} samples under cProfile in {wall:.2f} s; {_CountOps.ops / batches:.0f} torch "
        f"operations per batch of {bs}"
    )
    for label, pct in parts.items():
        print(f"  {label:52s} {pct:5.1f} %")
    return {
        "workload": name,
        "samples": n,
        "seconds_under_cprofile": wall,
        "torch_ops_per_batch": _CountOps.ops / batches,
        "percent": parts,
    }


def _our_training(
    x: torch.Tensor,
    y: torch.Tensor,
    sizes: list[int],
    torch_device: str,
    bs: int,
    update: bool = True,
    bl: int | None = None,
    writes: bool = True,
):  # noqa: ANN202
    """``run(n)``: TTv2 training (recommended digits settings) on the first ``n`` samples
    (``update=False``: without the controller's step; ``writes=False``: with array writes
    that cost nothing, see :func:`ours`)."""
    from hil.nn import AnalogLinear
    from hil.training import TrainingController, recommended_config, simulated_factory
    from hil.training.digits import digits_device, digits_periphery

    torch.manual_seed(0)
    model = nn.Sequential(*_layers(sizes, AnalogLinear)).to(torch_device)
    cfg = recommended_config("ttv2", "mlp", **({} if bl is None else {"bl": bl}))
    factory = simulated_factory(
        digits_device(20, 1.0, 0.3),
        digits_periphery(0.06),
        bl=cfg.bl,
        seed=1,
        torch_device=torch_device,
    )
    ctl = TrainingController(model, cfg, factory)
    ctl.prepare()  # zero-shifting with real writes, so that the arrays start as in training
    if not writes:
        for _, backend in factory.created:
            backend._update = lambda x, d, lr: None  # type: ignore[method-assign]
            backend._pulse = lambda counts: None  # type: ignore[method-assign]
            backend._pulse_columns = lambda ks, counts: None  # type: ignore[method-assign]
    x, y = x.to(torch_device), y.to(torch_device)

    def run(n: int) -> None:
        for b in range(0, n, bs):
            ctl.zero_grad()
            F.cross_entropy(model(x[b : b + bs]), y[b : b + bs]).backward()
            if update:
                ctl.step()

    return run


def aihwkit(
    python: str, data_file: str, sizes: list[int], cuda: bool, bs: int = 10, bl: int = 0
) -> float:
    """Samples per second of aihwkit's TTv2 preset (``bl`` > 0: with a fixed bit length ``bl``,
    bit-length management off, as ours) in a subprocess of ``python``."""
    spec = {
        "sizes": sizes,
        "batch": bs,
        "dw": 0.1,
        "c2c": 1.0,
        "d2d": 0.3,
        "read_noise": 0.06,
        "lr": 0.1,
        "cuda": cuda,
        "bl": bl,
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    out = subprocess.run(
        [python, "-c", AIHWKIT_CHILD, json.dumps(spec), data_file, str(THREADS)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"aihwkit run failed ({python}):\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--aihwkit-python", default=None, help="interpreter of an environment with aihwkit"
    )
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions per side")
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        help="training samples per measurement (0: digits 1347, mlp-784 1000)",
    )
    p.add_argument("--workloads", default="digits-mlp,mlp-784")
    p.add_argument(
        "--batch",
        type=int,
        default=10,
        help="mini-batch size on every side (the issue's workloads use 10)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, pinned to the same number on every side (default 1)",
    )
    p.add_argument("--devices", default="auto", help="cpu, cuda, or auto (cpu + cuda if present)")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument(
        "--aihwkit-bl",
        default="0",
        help="comma-separated aihwkit bit lengths: 0 = its TTv2 preset (BL 5 with "
        "bit-length management), N = a fixed BL N as ours (e.g. 0,31)",
    )
    p.add_argument(
        "--ours-bl",
        type=int,
        default=None,
        help="bit length of our update (default: the recommended settings' 31); a "
        "measurement of what the draws cost, not a tuned setting",
    )
    p.add_argument(
        "--ceilings",
        action="store_true",
        help="also time our training with array writes that cost nothing, our "
        "forward/backward without the update, and the same network in plain digital "
        "torch: the most any implementation of the writes / of the update could reach",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="print where our training's time goes (cProfile) instead of timing",
    )
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be a positive number of samples, got {args.batch}")
    if args.ours_bl is not None and args.ours_bl < 1:
        p.error(f"--ours-bl must be a positive number of pulse slots, got {args.ours_bl}")
    if args.threads < 1:
        p.error(f"--threads must be a positive number of threads, got {args.threads}")
    global THREADS
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    if args.profile:
        rows = [
            profile(*workload_data(name, args.samples or 500), name, args.samples or 500, args.batch)
            for name in args.workloads.split(",")
        ]
        report = {"threads": THREADS, "torch": torch.__version__, "profile": rows}
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return report
    devices = (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        if args.devices == "auto"
        else args.devices.split(",")
    )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"torch {torch.__version__}, threads pinned to {torch.get_num_threads()} (both sides); "
        f"batch {args.batch}; repeats {args.repeats}; {os.cpu_count()} CPUs, load average "
        + (" ".join(f"{v:.2f}" for v in load) if load else "n/a")
    )
    report: dict = {
        "threads": THREADS,
        "torch": torch.__version__,
        "batch": args.batch,
        "ours_bl": args.ours_bl,
        "cpus": os.cpu_count(),
        "load_average_start": load,
        "results": [],
    }
    for name in args.workloads.split(","):
        x, y, sizes = workload_data(name, args.samples)
        with tempfile.TemporaryDirectory() as tmp:
            data_file = str(Path(tmp) / "data.pt")
            torch.save({"x": x, "y": y}, data_file)
            for dev in devices:
                report["results"].append(_measure(name, dev, x, y, sizes, data_file, args))
    report["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _measure(
    name: str,
    dev: str,
    x: torch.Tensor,
    y: torch.Tensor,
    sizes: list[int],
    data_file: str,
    args: argparse.Namespace,
) -> dict:
    """One workload on one torch device: all sides alternated ``args.repeats`` times; prints
    and returns medians, minima and ratios to aihwkit (the preset's, or each BL's)."""
    bls = [int(v) for v in str(args.aihwkit_bl).split(",")] if args.aihwkit_python else []
    sides: dict[str, list[float]] = {"ours": []}
    for _ in range(args.repeats):
        bs = args.batch
        sides["ours"].append(ours(x, y, sizes, dev, bs, bl=args.ours_bl))
        if args.ceilings:
            sides.setdefault("ours_without_update", []).append(
                ours(x, y, sizes, dev, bs, update=False, bl=args.ours_bl)
            )
            sides.setdefault("ours_zero_cost_writes", []).append(
                ours(x, y, sizes, dev, bs, bl=args.ours_bl, writes=False)
            )
            sides.setdefault("digital_torch", []).append(digital(x, y, sizes, dev, bs))
        for bl in bls:
            key = "aihwkit" if bl == 0 else f"aihwkit_bl{bl}"
            sides.setdefault(key, []).append(
                aihwkit(args.aihwkit_python, data_file, sizes, dev == "cuda", bs=bs, bl=bl)
            )
    mine = sides["ours"]
    row: dict = {
        "workload": name,
        "device": dev,
        "samples": int(x.shape[0]),
        "ours_samples_per_s": {"min": min(mine), "median": statistics.median(mine), "all": mine},
    }
    labels = {
        "ours": "ours TTv2",
        "ours_without_update": "ours, forward/backward only",
        "ours_zero_cost_writes": "ours, writes cost nothing",
        "digital_torch": "digital torch MLP",
        "aihwkit": "aihwkit TTv2 preset",
    }
    for key, vals in sides.items():
        if key != "ours":
            row[f"{key}_samples_per_s"] = {
                "min": min(vals),
                "median": statistics.median(vals),
                "all": vals,
            }
        label = labels.get(key, f"aihwkit TTv2, BL {key[len('aihwkit_bl') :]}")
        print(
            f"{name:11s} {dev:4s} {label:30s} {statistics.median(vals):9.0f} samples/s (min {min(vals):.0f})",
            flush=True,
        )
    for key in [k for k in sides if k.startswith("aihwkit")]:
        ref = sides[key]
        suffix = "" if key == "aihwkit" else key[len("aihwkit") :]
        ratio = statistics.median(mine) / statistics.median(ref)
        ratios = [a / b for a, b in zip(mine, ref, strict=True)]
        row[f"ratio_median{suffix}"] = ratio
        row[f"ratio_min{suffix}"] = min(ratios)
        line = f"{name:11s} {dev:4s}   ratio ours / {labels.get(key, key):20s} {ratio:.2f}x (per-pair min {min(ratios):.2f}x)"
        for ceil in ("ours_zero_cost_writes", "ours_without_update", "digital_torch"):
            if ceil in sides:
                c = statistics.median(sides[ceil]) / statistics.median(ref)
                row[f"ceiling_{ceil}{suffix}"] = c
                line += f"; {labels[ceil]} {c:.2f}x"
        print(line, flush=True)
    return row


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
