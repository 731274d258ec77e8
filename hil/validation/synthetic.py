"""Pulse-response measurements of a backend held in memory, for sensitivity studies and tests.

:func:`measure_protocol` runs a :class:`~hil.characterization.protocol.PulseProtocol`
on any :class:`~hil.backend.CrossbarBackend` exactly as ``hil characterize
--protocol`` does (per cycle: ``repeated_reads`` reads without a pulse, then the
up and down pulses, one ``pulse()`` of all sampled devices and one ``read()``
per step; ``pulse`` numbers the steps), but keeps the rows in memory instead of
writing a CSV, so that thousands of comparisons (20 seeds x several models) stay
fast.  :func:`simulated_measurements` does it on a fresh
:class:`~hil.simulated.SimulatedCrossbar` of a device model.

Weights are mapped to siemens linearly: ``w_min -> g_min_s``, ``w_max -> g_max_s``
(the model's own :class:`~hil.device_model.ConductanceMapping` when it has one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hil.backend import CrossbarBackend
from hil.device_model import DeviceModel
from hil.validation.measurements import Measurements


def measure_protocol(
    backend: CrossbarBackend,
    protocol: Any,
    g_min_s: float = 1e-6,
    g_max_s: float = 1e-5,
    source: str = "",
) -> Measurements:
    """Run ``protocol`` (a ``PulseProtocol``) on ``backend``; rows ``device, cycle, pulse, polarity, conductance``."""
    rows, cols = backend.shape
    positions = protocol.select_devices(rows, cols)
    pr = torch.tensor([p[0] for p in positions], device=backend.device)
    pc = torch.tensor([p[1] for p in positions], device=backend.device)
    ids = np.array([f"r{r}c{c}" for r, c in positions], dtype=object)
    info = backend.info
    scale = (g_max_s - g_min_s) / (info.w_max - info.w_min)
    if protocol.start_weight is not None:
        target = torch.full((rows, cols), float(protocol.start_weight), device=backend.device)
        backend.program(target, tol=protocol.start_tol)
    steps = protocol.schedule()
    n_dev = len(positions)
    g = np.empty((len(steps), n_dev))
    pol = np.empty(len(steps), dtype=np.int64)
    cyc = np.empty(len(steps), dtype=np.int64)
    for k, (c, p) in enumerate(steps):
        if p != 0:
            counts = torch.zeros(rows, cols, dtype=torch.int64, device=backend.device)
            counts[pr, pc] = p
            backend.pulse(counts)
        w = backend.read(protocol.reads)[pr, pc].detach().to("cpu", torch.float64).numpy()
        g[k] = g_min_s + (w - info.w_min) * scale
        pol[k], cyc[k] = p, c
    ks = np.arange(len(steps))
    return Measurements.from_columns(
        np.tile(ids, len(steps)),
        np.repeat(cyc, n_dev),
        np.repeat(ks, n_dev),
        np.repeat(pol, n_dev),
        g.ravel(),
        source=source or f"{info.name}:{protocol.name}",
    )


def simulated_measurements(
    model: DeviceModel,
    protocol: Any,
    rows: int = 16,
    cols: int = 16,
    seed: int = 0,
    read_noise: float | None = None,
) -> Measurements:
    """:func:`measure_protocol` on a fresh ideal-periphery ``SimulatedCrossbar`` of ``model``.

    Reads carry additive weight noise ``read_noise`` (normalized units; default:
    the model's ``read_noise``) and nothing else, so the file shows the device
    model alone.
    """
    from hil.simulated import PeripheryConfig, SimulatedCrossbar

    rn = model.read_noise if read_noise is None else float(read_noise)
    periphery = PeripheryConfig.ideal().model_copy(update={"w_noise": rn})
    xb = SimulatedCrossbar(rows, cols, device=model, periphery=periphery, seed=seed)
    if model.conductance is not None:
        lo = model.conductance.to_conductance(model.step.w_min)
        hi = model.conductance.to_conductance(model.step.w_max)
    else:
        lo, hi = 1e-6, 1e-5
    return measure_protocol(xb, protocol, lo, hi, source=f"simulated:{model.name}:seed{seed}")
