"""Replays of a measurement file on a simulated device model, in memory (the calibration's
own use of the simulator: the held-out check and the noise match).

:func:`replay_copies` runs independent copies of every measured device side by side on one
:class:`~hil.simulated.SimulatedCrossbar` (one simulated device per copy) with the same
row-by-row code as ``hil characterize --replay``
(:func:`hil.characterization.runner.replay_to_set`).  The simulator reads devices as a
single-device measurement would: the model's read noise, no DAC/ADC
(:func:`device_periphery`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hil.calibration.mapping import Mapping
from hil.calibration.measurements import MeasurementSet
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


def device_interleave(ms: MeasurementSet) -> np.ndarray:
    """Row order that takes the k-th row of every device before any device's (k+1)-th
    (``[N]`` indices into ``ms``; each device's rows keep their order).

    A simulated replay applies one group of rows (one row of each device) per
    ``pulse()``/``read()``; in file order a file sorted by device makes every group a single
    row.  The simulator's devices are independent, so the order of rows *across* devices
    changes only which random numbers each device draws, not its statistics."""
    codes, _ = ms.device_codes()
    pos = np.zeros(len(ms), dtype=np.int64)
    for d in np.unique(codes):
        idx = np.nonzero(codes == d)[0]
        pos[idx] = np.arange(len(idx))
    return np.lexsort((codes, pos))


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
    ``restart_rows`` / ``restart_g`` as in :func:`hil.characterization.runner.iter_replay`.

    The rows of different devices are replayed interleaved (:func:`device_interleave`, one
    row of every device and copy per ``pulse()``/``read()``); the replays returned are in
    the order of ``ms``."""
    order = device_interleave(ms)
    inter = ms.subset(order)
    rep_ms, rep_map = replicate(inter, mapping, copies)
    restart = None if restart_rows is None else np.repeat(np.asarray(restart_rows, dtype=bool)[order], copies)
    g = None if restart_g is None else np.repeat(np.asarray(restart_g, dtype=np.float64)[order], copies)
    out = replay_on_simulator(model, rep_ms, rep_map, seed=seed, restart_rows=restart, restart_g=g)
    g_inter = out.conductance.reshape(len(ms), copies)
    g_file = np.empty_like(g_inter)
    g_file[order] = g_inter
    reps = []
    for j in range(copies):
        r = ms.subset(np.ones(len(ms), dtype=bool))
        r.conductance = g_file[:, j].copy()
        r.source = f"replay {j} of {ms.source}"
        reps.append(r)
    return reps
