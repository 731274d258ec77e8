"""Splitting one device's measurements into two halves (specificity checks on real data).

``halves``: the earlier and the later cycles (runs) of the device, in time order;
``interleaved``: even and odd cycles, so that both halves span the same period
(and share the slow drift and any run-to-run change of conditions).

An earlier/later split tests "the same device under the same protocol, later"
only when the runs repeat one protocol: :func:`run_protocols` gives every run's
pulse program (pulse width and the applied amplitude of every pulse) and
:func:`same_setting_groups` finds the runs of one device that share it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from hil.validation.measurements import Measurements, UnusableInputError

SplitMode = Literal["halves", "interleaved"]


def split_cycles(m: Measurements, device: str, mode: SplitMode = "halves") -> tuple[Measurements, Measurements]:
    """The rows of ``device`` split by cycle into (first, second) by ``mode``."""
    sel = m.device == device
    if not sel.any():
        raise UnusableInputError(f"{m.source}: no device {device!r} (have {', '.join(m.devices)})")
    cycles = np.unique(m.cycle[sel])
    if cycles.size < 2:
        raise UnusableInputError(f"{m.source}: device {device!r} has {cycles.size} cycle; need 2 to split")
    if mode == "halves":
        first = cycles[: cycles.size // 2]
    elif mode == "interleaved":
        first = cycles[::2]
    else:
        raise ValueError(f"unknown split mode {mode!r}; expected 'halves' or 'interleaved'")
    in_first = np.isin(m.cycle, first)
    label = f"{m.source}:{device}"
    return (
        m.select(sel & in_first, source=f"{label}:{mode}[0] cycles {first.tolist()}"),
        m.select(sel & ~in_first, source=f"{label}:{mode}[1] cycles {np.setdiff1d(cycles, first).tolist()}"),
    )


def select_cycles(m: Measurements, device: str, cycles: list[int] | np.ndarray, label: str = "") -> Measurements:
    """The rows of ``device`` in ``cycles`` (a named subset for a like-for-like comparison)."""
    sel = (m.device == device) & np.isin(m.cycle, np.asarray(cycles, dtype=np.int64))
    if not sel.any():
        raise UnusableInputError(f"{m.source}: device {device!r} has no rows in cycles {list(cycles)}")
    return m.select(sel, source=f"{m.source}:{device}:{label or 'cycles'} {np.unique(m.cycle[sel]).tolist()}")


def cycle_settings(loaded: Any, columns: tuple[str, ...] = ("width_s",), digits: int = 3) -> dict[tuple[str, int], tuple]:
    """Per (device, cycle) the pulse settings of a loaded measurement set, for grouping runs.

    ``loaded`` is a :class:`hil.calibration.measurements.MeasurementSet` whose
    ``optional`` columns hold the settings (e.g. ``width_s`` and ``amplitude_v``
    of the ``wgfmu-summary`` importer).  A setting is the run's median of a
    column (``width_s``) or, for ``amplitude_v``, the sweep's range (lowest and
    highest amplitude), rounded to ``digits`` significant digits.  Runs with equal
    settings are one protocol.
    """
    dev = np.asarray(loaded.device, dtype=object)
    cyc = np.asarray(loaded.cycle, dtype=np.int64)
    opt = {c: np.asarray(loaded.optional[c], dtype=np.float64) for c in columns}
    out: dict[tuple[str, int], tuple] = {}

    def r(x: float) -> float:
        return float(f"{x:.{digits}g}") if np.isfinite(x) else float("nan")

    for d in dict.fromkeys(dev.tolist()):
        for c in np.unique(cyc[dev == d]):
            s = (dev == d) & (cyc == c)
            key: list[float] = []
            for name, v in opt.items():
                vals = v[s][np.isfinite(v[s])]
                if name == "amplitude_v":
                    key += [r(vals.min()), r(vals.max())] if vals.size else [float("nan")] * 2
                else:
                    key.append(r(float(np.median(vals))) if vals.size else float("nan"))
            out[(str(d), int(c))] = tuple(key)
    return out


def same_setting_groups(settings: dict[tuple[str, int], tuple], min_runs: int = 2) -> list[tuple[str, tuple, list[int]]]:
    """(device, setting, cycles) of every group of at least ``min_runs`` runs of one device with one setting."""
    groups: dict[tuple[str, tuple], list[int]] = {}
    for (d, c), key in settings.items():
        groups.setdefault((d, key), []).append(c)
    return [(d, key, sorted(cs)) for (d, key), cs in groups.items() if len(cs) >= min_runs]


def run_protocols(loaded: Any, digits: int = 3) -> dict[tuple[str, int], tuple]:
    """Per (device, cycle) the run's pulse program: ``(width_s, ((polarity, amplitude_v), ...))``.

    ``loaded`` is a :class:`hil.calibration.measurements.MeasurementSet` with the optional
    columns ``width_s`` and ``amplitude_v`` (``wgfmu-summary`` importer).  Two runs repeat
    one protocol when they apply the same pulses in the same order: equal keys
    (width and amplitudes rounded to ``digits`` significant digits).
    """
    dev = np.asarray(loaded.device, dtype=object)
    cyc = np.asarray(loaded.cycle, dtype=np.int64)
    pol = np.asarray(loaded.polarity, dtype=np.int64)
    width = np.asarray(loaded.optional["width_s"], dtype=np.float64)
    amp = np.asarray(loaded.optional["amplitude_v"], dtype=np.float64)

    def r(x: float) -> float:
        return float(f"{x:.{digits}g}") if np.isfinite(x) else float("nan")

    out: dict[tuple[str, int], tuple] = {}
    for d in dict.fromkeys(dev.tolist()):
        for c in np.unique(cyc[dev == d]):
            s = np.flatnonzero((dev == d) & (cyc == c))
            s = s[pol[s] != 0]
            w = width[s][np.isfinite(width[s])]
            out[(str(d), int(c))] = (
                r(float(np.median(w))) if w.size else float("nan"),
                tuple((int(p), r(float(a))) for p, a in zip(pol[s], amp[s], strict=True)),
            )
    return out
