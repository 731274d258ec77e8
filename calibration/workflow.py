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
are replayed side by side (one simulated device each, one
``pulse()``/``read()`` per row for all copies), and the held-out rows are scored
(:mod:`hil.calibration.compare`) with the copies' mean trajectory, i.e. the
model's expected trajectory, not one noisy realization of it.  The simulator
reads devices as a single-device measurement would: the model's read noise, no
DAC/ADC (:func:`device_periphery`).
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
from hil.calibration.mapping import Mapping
from hil.calibration.measurements import MeasurementSet
from hil.calibration.pipeline import Calibration, CalibrationConfig, calibrate, jsonable
from hil.device_model import DeviceModel

REPLAY_DEFAULTS: dict[str, Any] = {"reads": 1, "tol": 0.02, "max_iter": 50, "program_reads": 4}


def device_periphery(model: DeviceModel) -> Any:
    """Periphery of a simulated single-device measurement: the model's read noise only."""
    from hil.simulated import PeripheryConfig

    return PeripheryConfig.ideal().model_copy(update={"w_noise": float(model.read_noise)})


def replay_on_simulator(
    model: DeviceModel,
    ms: MeasurementSet,
    mapping: Mapping,
    seed: int = 0,
    **kwargs: Any,
) -> MeasurementSet:
    """Replay ``ms`` on a ``1 x devices`` simulator of ``model`` (in memory)."""
    from hil.characterization.runner import replay_to_set
    from hil.simulated import SimulatedCrossbar

    sim = SimulatedCrossbar(1, len(ms.devices), device=model, periphery=device_periphery(model), seed=seed)
    args = {**REPLAY_DEFAULTS, **kwargs}
    return replay_to_set(sim, ms, mapping, **args)


# The held-out figures are Monte Carlo estimates: the replayed mean trajectory averages
# copies x devices x held-out cycles replayed devices.  The HfO2 file (one device, one cycle)
# with 50 copies gave a held-out NRMSE with a standard deviation of 0.006 over replay seeds
# (0.095-0.114); 400 copies bring it to 0.002 (docs/calibration.md, section 7).
REPLAYS = 400  # replayed devices (copies x devices) at most, so at most this many copies
MIN_REPLAYS = 8  # copies at least
REPLAY_ROWS = 800_000  # copies are reduced so that copies x rows stays below this (time)


def replay_count(ms: MeasurementSet) -> int:
    """Copies of every device that the held-out replay check runs: ``REPLAYS // devices``
    (the mean trajectory then averages about ``REPLAYS`` replayed devices), at most
    ``REPLAY_ROWS // rows`` (time), at least ``MIN_REPLAYS``."""
    n = min(REPLAYS // max(len(ms.devices), 1), REPLAY_ROWS // max(len(ms), 1))
    return int(np.clip(n, MIN_REPLAYS, REPLAYS))


def replicate(ms: MeasurementSet, mapping: Mapping, copies: int) -> tuple[MeasurementSet, Mapping]:
    """``copies`` independent copies of every device (ids ``device#k``), rows interleaved so
    that a replay applies each row to all copies in one ``pulse()``/``read()``."""
    n = len(ms)
    order = np.repeat(np.arange(n), copies)
    rep = ms.subset(order)
    k = np.tile(np.arange(copies), n)
    rep.device = np.array([f"{d}#{j}" for d, j in zip(rep.device, k, strict=True)], dtype=object)
    per = None
    if mapping.per_device is not None:
        per = {f"{d}#{j}": mapping.range_of(d) for d in ms.devices for j in range(copies)}
    return rep, Mapping(model=mapping.model, per_device=per, rule=mapping.rule)


def replay_copies(
    model: DeviceModel,
    ms: MeasurementSet,
    mapping: Mapping,
    copies: int,
    seed: int = 0,
    restart_rows: np.ndarray | None = None,
    restart_g: np.ndarray | None = None,
) -> list[MeasurementSet]:
    """``copies`` replays of ``ms`` run side by side on one simulator (one device per copy);
    ``restart_rows`` / ``restart_g`` as in :func:`hil.characterization.runner.iter_replay`."""
    rep_ms, rep_map = replicate(ms, mapping, copies)
    restart = None if restart_rows is None else np.repeat(np.asarray(restart_rows, dtype=bool), copies)
    g = None if restart_g is None else np.repeat(np.asarray(restart_g, dtype=np.float64), copies)
    out = replay_on_simulator(model, rep_ms, rep_map, seed=seed, restart_rows=restart, restart_g=g)
    g = out.conductance.reshape(len(ms), copies)
    reps = []
    for j in range(copies):
        r = ms.subset(np.ones(len(ms), dtype=bool))
        r.conductance = g[:, j].copy()
        r.source = f"replay {j} of {ms.source}"
        reps.append(r)
    return reps


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
) -> CalibrationRun:
    """Import ``path`` and calibrate it.

    A lookup-table import (``crosssim-lut``) with ``model`` ``auto`` or ``table`` returns the
    table model directly, unless ``fit_samples``; with another model, or ``fit_samples``,
    pulse trains sampled from it are fitted.
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
    cal = calibrate(ms, cfg, fmt=name)
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
