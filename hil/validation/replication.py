"""Is the allowance built on the right unit of replication?  Synthetic runs of one device.

A real device measured in several runs (cycles, sessions) varies from run to run:
the step size and the write noise of one run are shared by every step of that run
(its state trajectory, temperature, wake-up, slow drift), so the steps of one run
are not independent draws.  A comparison that treats every step as its own sample
then underestimates the sampling error whenever runs differ, and fails a device
against itself.  This module measures that on synthetic data with a known answer.

:func:`run_varying_measurements`: one device measured in ``runs`` runs; each run
is one cycle of the protocol on a fresh simulator of the model whose up and down
step sizes are scaled by a factor ``exp(N(0, run_sd))`` drawn per run and whose
c2c noise is scaled by another such factor (the run-to-run variation), times a
linear drift ``1 + drift * (t - 1/2)`` of the step sizes over the runs
(``t`` from 0 for the first run to 1 for the last).

:func:`replication_study`: for each number of runs per side and each run-to-run
variation, ``seeds`` comparisons of two independent measurements of the same run
population (nothing differs, so every failure is a false failure), plus an
earlier-vs-later split of one device with a slow drift of the step size.
Returns the counts of pass, fail and insufficient-replication verdicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hil.device_model import DeviceModel
from hil.validation.measurements import Measurements
from hil.validation.sensitivity import base_model, base_protocol, changed_model
from hil.validation.synthetic import simulated_measurements


def single_device_model(c2c: float = 0.5, read_noise: float = 0.01) -> DeviceModel:
    """The sensitivity study's soft-bounds device without device-to-device spread (one device)."""
    return base_model(c2c=c2c, d2d=0.0, read_noise=read_noise)


def run_varying_measurements(
    model: DeviceModel,
    runs: int,
    run_sd: float = 0.0,
    step_scale: float = 1.0,
    seed: int = 0,
    n: int = 100,
    repeated_reads: int = 5,
    first_run: int = 0,
) -> Measurements:
    """One device (``dev0``) measured in ``runs`` runs, run ``i`` recorded as cycle ``first_run + i``.

    Each run: ``repeated_reads`` reads, ``n`` up and ``n`` down pulses from w = 0
    (ideal periphery plus the model's read noise).  The runs are simulated at once as
    the rows of one ``runs x 1`` array whose up and down step sizes vary from row to
    row by a relative std ``run_sd`` (the simulator's d2d draw, ``1 + run_sd * N(0, 1)``,
    independent for up and down) around ``step_scale`` times the model's.
    """
    step, var = model.step, model.variation
    d2d = {"dw_up": run_sd, "dw_down": run_sd} if run_sd > 0 else {}
    m = model.model_copy(update={
        "step": step.model_copy(update={"dw_up": step.dw_up * step_scale, "dw_down": step.dw_down * step_scale}),
        "variation": var.model_copy(update={"d2d": d2d}),
    })
    meas = simulated_measurements(m, base_protocol(cycles=1, n=n, repeated_reads=repeated_reads), runs, 1,
                                  seed=seed)
    run = np.array([int(d[1:].split("c")[0]) for d in meas.device], dtype=np.int64)  # ids are r{row}c0
    return Measurements.from_columns(
        np.full(len(meas), "dev0", dtype=object), first_run + run, meas.pulse, meas.polarity, meas.conductance,
        source=f"synthetic one device, {runs} runs, run_sd {run_sd:g}, step x {step_scale:g}, seed {seed}",
    )


def _verdict(report: Any) -> str:
    """'pass', 'fail' or 'insufficient' (reports without a verdict field: pass or fail)."""
    v = getattr(report, "verdict", None)
    return str(v) if v is not None else ("pass" if report.passed else "fail")


def replication_study(
    seeds: int = 40,
    runs: tuple[int, ...] = (1, 2, 3, 5, 10),
    run_sds: tuple[float, ...] = (0.0, 0.15),
    drift: float = 0.10,
    drift_runs: int = 10,
    n: int = 100,
    c2c: float = 0.1,
    read_noise: float = 0.002,
    power_runs: tuple[int, ...] = (3, 5, 10, 20),
    power_change: str = "asym+20%",
    thresholds: Any = None,
) -> dict[str, Any]:
    """Verdict counts of same-population comparisons (and one drift split) per configuration.

    Rows: ``{"case", "runs_per_side", "run_sd", "drift", "seeds", "pass", "fail",
    "insufficient", "failed_statistics": {name: count}}``.  Cases: ``"same"`` (two
    independent measurements of one run population, ``runs`` runs each: every failure
    is false), ``"earlier/later"`` (one device with ``2 * drift_runs`` runs and a
    step-size drift of ``drift`` over them, first half against second half) and
    ``power_change`` (e.g. ``"asym+20%"``, a change of
    :func:`hil.validation.sensitivity.changed_model` in the candidate, ``power_runs``
    runs per side: every failure is a detection).
    """
    from hil.validation.compare import compare_measurements

    model = single_device_model(c2c=c2c, read_noise=read_noise)
    out: list[dict[str, Any]] = []

    def tally(case: str, g: int, sd: float, dr: float, pairs: Any) -> None:
        row: dict[str, Any] = {"case": case, "runs_per_side": g, "run_sd": sd, "drift": dr, "seeds": seeds,
                               "pass": 0, "fail": 0, "insufficient": 0, "failed_statistics": {}}
        for s, (a, b) in enumerate(pairs):
            rep = compare_measurements(a, b, thresholds, seed=s).report
            row[_verdict(rep)] += 1
            for name in rep.failed():
                row["failed_statistics"][name] = row["failed_statistics"].get(name, 0) + 1
        out.append(row)

    for sd in run_sds:
        for g in runs:
            tally("same", g, sd, 0.0, (
                (run_varying_measurements(model, g, sd, seed=10_000 + 2 * s, n=n),
                 run_varying_measurements(model, g, sd, seed=10_001 + 2 * s, n=n))
                for s in range(seeds)))
    for sd in run_sds:
        # a linear drift of the step size by `drift` over 2 x drift_runs runs: the halves' means
        # differ by drift / 2 (the earlier half at 1 - drift / 4, the later at 1 + drift / 4)
        tally("earlier/later", drift_runs, sd, drift, (
            (run_varying_measurements(model, drift_runs, sd, 1 - drift / 4, seed=20_000 + 2 * s, n=n),
             run_varying_measurements(model, drift_runs, sd, 1 + drift / 4, seed=20_001 + 2 * s, n=n,
                                      first_run=drift_runs))
            for s in range(seeds)))
    changed = changed_model(power_change, model)
    for sd in run_sds:
        for g in power_runs:
            tally(power_change, g, sd, 0.0, (
                (run_varying_measurements(model, g, sd, seed=30_000 + 2 * s, n=n),
                 run_varying_measurements(changed, g, sd, seed=30_001 + 2 * s, n=n))
                for s in range(seeds)))
    return {"model": model.model_dump(mode="json"), "rows": out}
