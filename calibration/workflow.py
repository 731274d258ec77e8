"""``hil calibrate`` as a function: import -> fit -> held-out replay -> device model + report.

The held-out replay check builds a :class:`~hil.simulated.SimulatedCrossbar` from the
model fitted on the **fitting rows only**, replays the whole measured pulse
sequence on it with the same code as ``hil characterize --replay
--restart-at-holdout`` (:func:`hil.characterization.runner.replay_to_set`), with one
difference: at its first held-out read every device is written to the fitted model's
*prediction* of that read from the earlier reads (:func:`predicted_reads`, the
Kalman filter of the fit), not to the read itself, so the held-out rows are predicted
from where the device was without using any held-out read (the CLI, which may run
without a model, writes the measured read).  Independent copies of
every device (:func:`replay_count`: about ``REPLAYS`` replayed devices in all)
are replayed side by side (:func:`hil.calibration.simreplay.replay_copies`), and the
held-out rows are scored (:mod:`hil.calibration.compare`) with the copies' mean
trajectory, i.e. the model's expected trajectory, not one noisy realization of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.calibration.compare import device_ranges, holdout_starts, protocol_shift, replay_metrics
from hil.calibration.filter import run_filter
from hil.calibration.importers.base import import_measurements
from hil.calibration.measurements import MeasurementSet
from hil.calibration.pipeline import Calibration, CalibrationConfig, calibrate, jsonable
from hil.calibration.simreplay import (  # noqa: F401  (re-exported: the replay helpers' old home)
    REPLAY_DEFAULTS,
    REPLAY_ROWS,
    REPLAYS,
    device_periphery,
    replay_copies,
    replay_count,
    replay_on_simulator,
    replicate,
)
from hil.device_model import DeviceModel


def predicted_reads(cal: Calibration) -> np.ndarray:
    """Conductance (siemens) of every row as the model fitted on the fitting rows predicts it
    from the earlier reads of the same sequence (the filter's one-step prediction
    ``E[y_k | y_1..y_{k-1}]``, each device with its own fitted parameters); NaN where the
    filter has no earlier read to predict from (the first read of a segment or of a chunk)
    and for rows that are in no sequence."""
    fit = cal.train_per_device if cal.train_per_device is not None else cal.train_pooled
    p, c2c, rv = fit.param_arrays(cal.seq)
    out = run_filter(cal.seq, cal.family, p, c2c, rv, **fit.write_arrays(cal.seq))
    ms = cal.measurements
    w = np.full(len(ms), np.nan)
    first = np.zeros_like(cal.seq.valid)
    first[:, 0] = True
    valid = cal.seq.valid & (cal.seq.row >= 0) & ~first & ~cal.seq.reset
    w[cal.seq.row[valid]] = (cal.seq.y - out.nu[0])[valid]
    g = np.full(len(ms), np.nan)
    ok = np.isfinite(w)
    g[ok] = cal.mapping.to_conductance(w[ok], ms.device[ok])
    return g


def replay_check(cal: Calibration, seed: int = 0, replays: int | None = None) -> dict[str, Any]:
    """Held-out figures of merit of the model fitted on the fitting rows (see the module doc).

    ``replays`` copies of every device (default :func:`replay_count`)."""
    ms = cal.measurements
    if replays is None:
        replays = replay_count(ms)
    held = cal.heldout.any()
    rows = cal.heldout if held else np.ones(len(ms), dtype=bool)
    restart = holdout_starts(ms, cal.heldout) if held else None
    restart_g = None
    if restart is not None:
        restart_g = np.where(restart, predicted_reads(cal), np.nan)
    reps = replay_copies(cal.train_model, ms, cal.mapping, replays, seed=seed, restart_rows=restart,
                         restart_g=restart_g)
    metrics = replay_metrics(ms, reps, rows)
    metrics["scored_on"] = cal.heldout_unit if held else "all rows (nothing held out)"
    if restart is not None and restart_g is not None:
        # held-out starts inside a segment with a prediction (elsewhere the measured read is written)
        k = np.nonzero(restart & ~ms.segment_starts() & np.isfinite(restart_g))[0]
        ranges = device_ranges(ms)
        span = np.array([ranges[d] for d in ms.device[k]])
        metrics["restart"] = {
            "rule": "the fitted model's prediction of the first held-out read from the earlier reads",
            "rows": int(len(k)),
            # how far each predicted restart is from the read it replaces (fraction of the device's range)
            "measured_minus_predicted": [round(float(v), 4) for v in (ms.conductance[k] - restart_g[k]) / span],
        }
    shift = protocol_shift(ms, cal.heldout) if held else None
    if shift is not None:
        metrics["protocol_shift"] = shift
    metrics["seed"] = seed
    mean = reps[0].subset(np.ones(len(ms), dtype=bool))
    mean.conductance = np.mean([r.conductance for r in reps], axis=0)
    metrics["trajectory"] = _mean_trajectory(ms, mean, rows)
    return metrics


def _mean_trajectory(ms: MeasurementSet, rep: MeasurementSet, rows: np.ndarray) -> dict[str, list[float]]:
    """Population mean of the range-normalized conductance by position in the cycle (plot data)."""
    codes, names = ms.device_codes()
    pos_all, m_all, s_all = [], [], []
    for d, _name in enumerate(names):
        idx = np.nonzero((codes == d) & rows)[0]
        if not len(idx):
            continue
        g = ms.conductance[codes == d]
        lo, hi = np.percentile(g, [1.0, 99.0])
        span = hi - lo if hi > lo else 1.0
        counter: dict[int, int] = {}
        for i in idx:
            c = int(ms.cycle[i])
            pos_all.append(counter.get(c, 0))
            counter[c] = counter.get(c, 0) + 1
        m_all.append((ms.conductance[idx] - lo) / span)
        s_all.append((rep.conductance[idx] - lo) / span)
    if not pos_all:
        return {"measured": [], "replayed": []}
    pos = np.array(pos_all)
    cnt = np.bincount(pos)
    ok = cnt > 0
    m = np.bincount(pos, weights=np.concatenate(m_all))[ok] / cnt[ok]
    s = np.bincount(pos, weights=np.concatenate(s_all))[ok] / cnt[ok]
    return {"measured": m.tolist(), "replayed": s.tolist()}


@dataclass
class CalibrationRun:
    """Result of :func:`calibrate_path`."""

    format: str
    model: DeviceModel
    calibration: Calibration | None
    measurements: MeasurementSet | None
    reference: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def calibrate_path(
    path: str | Path,
    fmt: str = "auto",
    options: dict[str, str] | None = None,
    config: CalibrationConfig | None = None,
    replay: bool = True,
    seed: int = 0,
    fit_samples: bool = False,
    jobs: int = 1,
) -> CalibrationRun:
    """Import ``path`` and calibrate it.

    A lookup-table import (``crosssim-lut``) with ``model`` ``auto`` or ``table`` returns the
    table model directly, unless ``fit_samples``; with another model, or ``fit_samples``,
    pulse trains sampled from it are fitted.  ``jobs``: worker processes for the candidate
    models' fits (:func:`hil.calibration.pipeline.calibrate`: 0 auto, 1 none; the same result
    with any number).
    """
    t0 = time.perf_counter()
    cfg = config or CalibrationConfig()
    name, result = import_measurements(path, fmt, options)
    ms = result.measurements
    if ms is None:
        if result.device_model is None:
            raise ValueError(f"{path}: the {name!r} importer returned neither measurements nor a model")
        if (cfg.model in ("auto", "table") and not fit_samples) or result.sampler is None:
            model = result.device_model
            prov = dict(model.provenance)
            import datetime as _dt

            import hil

            prov.update(
                {
                    "tool": "hil calibrate",
                    "hil_version": hil.__version__,
                    "fit_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "inputs": result.inputs,
                    "format": name,
                    "chosen_model": "table",
                    "selection": "imported lookup table (no fit)",
                    "score": None,
                    "notes": result.notes,
                }
            )
            model = model.model_copy(update={"provenance": prov})
            return CalibrationRun(format=name, model=model, calibration=None, measurements=None,
                                  notes=result.notes, seconds=time.perf_counter() - t0)
        ms = result.sampler()
    cal = calibrate(ms, cfg, fmt=name, jobs=jobs)
    if replay:
        cal.replay = replay_check(cal, seed=seed)
        prov = dict(cal.model.provenance)
        prov["replay_check"] = jsonable({k: v for k, v in cal.replay.items() if k not in ("trajectory", "per_device")})
        cal.model = cal.model.model_copy(update={"provenance": prov})
    if cfg.final_fit == "train":
        cal.model = cal.train_model.model_copy(update={"provenance": {**cal.model.provenance, "fitted_on": "fitting rows only"}})
    return CalibrationRun(
        format=name,
        model=cal.model,
        calibration=cal,
        measurements=ms,
        reference=result.reference,
        notes=result.notes,
        seconds=time.perf_counter() - t0,
    )
