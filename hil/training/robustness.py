"""The TTv2 robustness study on digits (library part of examples/ttv2_robustness.py).

Three axes, one at a time from the base point (20 states, c2c 1.0, read noise 0.06), on a
simulated soft-bounds device with 30 % device-to-device spread (see :mod:`hil.training.digits`):

- number of device states: 10, 20, 50, 1000   (step 2 / states at w = 0)
- cycle-to-cycle update noise, std relative to the step: 0.1, 1, 3, 10
- additive output (read) noise of every MVM: 0, 0.02, 0.06, 0.2

Every point: 15 epochs, batch 10, 3 seeds; the hyperparameters are the ones tuned at the
base point on a validation split (:data:`hil.training.digits.RECOMMENDED`) and are not
re-tuned per point.  :func:`run_robustness` returns the JSON-ready report::

    {"fp_sgd": <accuracy>, "results": [{"algorithm", "states", "c2c", "read_noise",
     "accuracy_mean", "accuracy_std"}, ...],          # first network (the MLP)
     "cnn": {"fp_sgd": ..., "results": [...]},         # further networks by name
     "meta": {...}}                                    # settings, per-seed runs, timings,
                                                       # "c2c_fall_off": {net: {alg: c2c}}

``quick=True``: the MLP only, every algorithm at the base point and analog SGD, TTv2 and
c-TTv2 along the c2c axis (under 5 minutes on 2 cores).  ``base_only=True``: every algorithm at
the base point only (e.g. the CNN).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

BASE = {"states": 20, "c2c": 1.0, "read_noise": 0.06}
AXES = {
    "states": [10, 20, 50, 1000],
    "c2c": [0.1, 1.0, 3.0, 10.0],
    "read_noise": [0.0, 0.02, 0.06, 0.2],
}
ALGORITHMS = ["analog_sgd", "tt", "ttv2", "cttv2"]
QUICK_C2C = ("analog_sgd", "ttv2", "cttv2")
"""Algorithms of ``--quick`` along the c2c axis (the claim: analog SGD against the TTv2 family)."""


FALL_OFF_DROP = 0.05
"""An algorithm *falls off* along c2c at the first grid value where its mean accuracy is more
than this (5 points) below its own accuracy at the lowest c2c of the grid."""


def c2c_fall_off(block: dict[str, Any], algorithm: str, drop: float = FALL_OFF_DROP) -> float | None:
    """The c2c value where ``algorithm`` falls off in one network's ``block`` of the report
    (``{"results": [...]}``): the first c2c of the grid (at the base states and read noise)
    whose mean accuracy is more than ``drop`` below the one at the lowest c2c.  None: it does
    not fall off within the grid, or the block has fewer than two c2c rows for it."""
    rows = sorted(
        (r["c2c"], r["accuracy_mean"])
        for r in block["results"]
        if r["algorithm"] == algorithm and r["states"] == BASE["states"] and r["read_noise"] == BASE["read_noise"]
    )
    if len(rows) < 2:
        return None
    ref = rows[0][1]
    return next((c2c for c2c, acc in rows[1:] if acc < ref - drop), None)


def grid_points(axes: dict[str, list[float]]) -> list[dict[str, float]]:
    """The base point, then every other value of each axis (one axis changed at a time)."""
    points = [dict(BASE)]
    for axis, values in axes.items():
        for v in values:
            p = dict(BASE, **{axis: v})
            if p not in points:
                points.append(p)
    return points


def plan(quick: bool, networks: list[str], base_only: bool = False) -> list[tuple[str, str, dict[str, float]]]:
    """(network, algorithm, point) of every configuration to run (``base_only``: every
    algorithm at the base point only)."""
    jobs = []
    for net in networks:
        if base_only:
            jobs += [(net, alg, dict(BASE)) for alg in ALGORITHMS]
        elif quick:
            for alg in ALGORITHMS:
                jobs.append((net, alg, dict(BASE)))
            for c2c in AXES["c2c"]:
                if c2c != BASE["c2c"]:
                    for alg in QUICK_C2C:
                        jobs.append((net, alg, dict(BASE, c2c=c2c)))
        else:
            for point in grid_points(AXES):
                for alg in ALGORITHMS:
                    jobs.append((net, alg, point))
    return jobs


def _run(
    task: tuple[str, str, dict[str, float], int, int, str | None],
) -> tuple[str, str, dict[str, float], int, float, float]:
    import torch

    torch.set_num_threads(1)
    from hil.training import train_digits

    net, alg, point, seed, epochs, preset = task
    t = time.perf_counter()
    if alg == "fp_sgd":
        acc = train_digits("fp_sgd", net, seed=seed, epochs=epochs).test_accuracy
    else:
        acc = train_digits(alg, net, seed=seed, epochs=epochs, preset=preset, **point).test_accuracy
    return net, alg, point, seed, float(acc), time.perf_counter() - t


def run_robustness(
    quick: bool = True,
    networks: list[str] | None = None,
    seeds: int = 3,
    epochs: int = 15,
    jobs: int = 2,
    log: Callable[[str], None] | None = print,
    command: str = "",
    base_only: bool = False,
    first_seed: int = 0,
    preset: str | None = None,
) -> dict[str, Any]:
    """Run the study (see the module doc); ``jobs`` worker processes with 1 torch thread each.
    ``base_only``: every algorithm at the base point only (no axes); seeds
    ``first_seed .. first_seed + seeds - 1``; ``preset``: a name of
    :data:`hil.training.digits.PRESETS` applied to every algorithm it has settings for."""
    from hil.training.digits import PRESETS

    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    networks = networks or (["mlp"] if quick else ["mlp", "cnn"])
    seed_list = list(range(first_seed, first_seed + seeds))
    tasks = [(net, "fp_sgd", {}, s, epochs, None) for net in networks for s in seed_list]
    tasks += [
        (net, alg, pt, s, epochs, preset) for net, alg, pt in plan(quick, networks, base_only) for s in seed_list
    ]
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    say(f"{len(tasks)} training runs on {jobs} worker(s), 1 torch thread each")
    done: list[tuple[str, str, dict[str, float], int, float, float]] = []

    def record(i: int, r: tuple[str, str, dict[str, float], int, float, float]) -> None:
        done.append(r)
        say(f"  [{i}/{len(tasks)}] {r[0]} {r[1]:10s} {r[2]} seed {r[3]}: {r[4]:.4f} ({r[5]:.0f} s)")

    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for i, r in enumerate(pool.map(_run, tasks), 1):
                record(i, r)
    else:
        for i, task in enumerate(tasks, 1):
            record(i, _run(task))
    report: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "command": command, "epochs": epochs, "batch_size": 10, "seeds": seed_list, "base": BASE,
        "preset": preset,
        "axes": {} if base_only else {"c2c": AXES["c2c"]} if quick else AXES, "base_only": base_only, "runs": [], "fp_sgd_std": {},
    }
    for net in networks:
        fp = [r[4] for r in done if r[0] == net and r[1] == "fp_sgd"]
        rows = []
        for n2, alg, point in plan(quick, [net], base_only):
            accs = [r[4] for r in done if r[0] == n2 and r[1] == alg and r[2] == point]
            rows.append({
                "algorithm": alg, "states": point["states"], "c2c": point["c2c"],
                "read_noise": point["read_noise"], "accuracy_mean": statistics.mean(accs),
                "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            })
        block = {"fp_sgd": statistics.mean(fp), "results": rows}
        meta["runs"] += [
            {"network": r[0], "algorithm": r[1], **r[2], "seed": r[3], "accuracy": r[4], "seconds": r[5]}
            for r in done if r[0] == net
        ]
        meta["fp_sgd_std"][net] = statistics.stdev(fp) if len(fp) > 1 else 0.0
        if not base_only:
            meta.setdefault("c2c_fall_off", {})[net] = {
                alg: c2c_fall_off(block, alg) for alg in ALGORITHMS
                if sum(r["algorithm"] == alg for r in rows) > 1
            }
        if not report:
            report.update(block)
        else:
            report[net] = block
        say(format_table(net, block, meta["fp_sgd_std"][net]))
        if not base_only:
            falls = ", ".join(f"{a} {'-' if v is None else f'{v:g}'}" for a, v in meta["c2c_fall_off"][net].items())
            say(f"c2c fall-off (first c2c more than {100 * FALL_OFF_DROP:g} points below its c2c "
                f"{AXES['c2c'][0]:g} accuracy; - none in the grid): {falls}")
    meta["seconds"] = time.perf_counter() - t0
    report["meta"] = meta
    return report


def format_table(net: str, block: dict[str, Any], fp_std: float) -> str:
    """The table of one network as text (mean +- std of the test accuracy over seeds)."""
    lines = []
    lines.append(f"\n{net}: floating-point SGD {block['fp_sgd']:.4f} +- {fp_std:.4f} (test accuracy, mean +- std)")
    lines.append(f"{'states':>7} {'c2c':>5} {'read':>5} | " + " | ".join(f"{a:>15}" for a in ALGORITHMS))
    keys = []
    for r in block["results"]:
        k = (r["states"], r["c2c"], r["read_noise"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        cells = []
        for alg in ALGORITHMS:
            row = next((r for r in block["results"] if (r["states"], r["c2c"], r["read_noise"]) == k and r["algorithm"] == alg), None)
            cells.append(f"{row['accuracy_mean']:.3f} +- {row['accuracy_std']:.3f}" if row else f"{'-':>15}")
        lines.append(f"{k[0]:>7g} {k[1]:>5g} {k[2]:>5g} | " + " | ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)
