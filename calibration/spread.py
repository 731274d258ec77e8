"""Device-to-device spread of a fitted parameter, and the pulse conditions that confound it.

A device model's d2d spread is the part of the devices' per-device estimates that their
estimation errors do not explain.  When the devices of a data set were pulsed
differently, part of that spread is the protocol, not the device: a ferroelectric device
driven with 2 ms pulses moves far more per pulse than one driven with 20 ns pulses, and
an identical-pulse step model fitted per device reads that as a spread of the step size.
:func:`pulse_width_groups` puts devices whose pulses had the same widths in one group,
and :func:`device_spread` measures the spread *within* groups only (each device against
its group's mean), so that a difference between groups never counts as device
variation.  With one group (no ``width_s`` column, or every device pulsed with the same
widths) it is the ordinary spread around the mean of all devices.

Only the width is a grouping key, not the amplitude: amplitude-swept protocols give
nearly every device its own set of amplitudes (the shared ferroelectric runs do), which
would leave no two devices to compare, and an identical-pulse model averages over the
amplitudes within every run anyway.  Units: the spread is relative (a fraction of the
population mean of the parameter).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from hil.calibration.measurements import MeasurementSet

D2D_ALPHA = 0.01  # a spread is kept when a chi-square test rejects "no spread" at 1 %
WIDTH_DIGITS = 3  # widths equal to this many significant digits are the same width


def pulse_width_groups(ms: MeasurementSet, rows: np.ndarray, devices: list[str]) -> np.ndarray | None:
    """Group label per device of ``devices`` (integers, in that order): devices whose pulses
    (``polarity`` != 0) among ``rows`` had the same set of widths (``width_s``, seconds, to
    ``WIDTH_DIGITS`` significant digits) share a label.

    None when there is nothing to separate: no ``width_s`` column, or one set of widths for
    every device.  A device with no pulse among ``rows`` has the empty set.
    """
    if "width_s" not in ms.optional:
        return None
    width = np.asarray(ms.optional["width_s"], dtype=np.float64)
    sel = np.asarray(rows, dtype=bool) & (ms.polarity != 0) & np.isfinite(width)
    keys: list[tuple[float, ...]] = []
    for d in devices:
        w = width[sel & (ms.device == d)]
        keys.append(tuple(sorted({float(f"{v:.{WIDTH_DIGITS}g}") for v in w})))
    labels = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    if len(labels) <= 1:
        return None
    return np.array([labels[k] for k in keys], dtype=np.int64)


def device_spread(
    vals: np.ndarray, ses: np.ndarray, groups: np.ndarray | None = None, alpha: float = D2D_ALPHA
) -> dict[str, Any] | None:
    """Relative device-to-device spread of one parameter from per-device estimates.

    ``vals``, ``ses`` ``[devices]``: each device's estimate and its standard error (NaN or
    inf: unknown); ``groups`` ``[devices]`` (or None: one group).  Every device is compared
    with the mean of its group; a group of one device carries no information.  Returns None
    when the groups leave fewer than 2 degrees of freedom, else:

    - ``estimate``: ``sqrt(var_between) / |mean|`` with ``var_between`` the within-group
      variance of the estimates less their mean squared standard error (0 when negative;
      ``mean`` is the mean over all devices);
    - ``chi2``, ``critical``, ``dof``: the test of "no spread" (the estimates differ within
      groups by no more than their standard errors), ``significant`` when it is rejected at
      ``alpha`` with at least 2 degrees of freedom;
    - ``groups_used``: groups of at least two devices; ``raw``: the plain standard deviation
      of all estimates over their mean (information only).
    """
    vals = np.asarray(vals, dtype=np.float64)
    ses = np.asarray(ses, dtype=np.float64)
    g = np.zeros(len(vals), dtype=np.int64) if groups is None else np.asarray(groups)
    finite = np.isfinite(ses) & (ses > 0)
    dev = np.zeros(len(vals))
    dof_all = 0
    dof_q = 0
    used = 0
    for label in np.unique(g):
        m = g == label
        if m.sum() < 2:
            continue
        used += 1
        dev[m] = vals[m] - vals[m].mean()
        dof_all += int(m.sum()) - 1
        dof_q += max(int((m & finite).sum()) - 1, 0)
    if dof_all < 2:
        return None
    mean = float(vals.mean())
    var_b = float(np.sum(dev**2)) / dof_all - float(np.mean(np.where(finite, ses, np.inf) ** 2))
    q = float(np.sum((dev[finite] / ses[finite]) ** 2))
    crit = float(stats.chi2.ppf(1 - alpha, max(dof_q, 1)))
    return {
        "estimate": float(np.sqrt(var_b)) / abs(mean) if var_b > 0 and mean != 0 else 0.0,
        "chi2": q,
        "critical": crit,
        "dof": dof_q,
        "significant": bool(dof_q >= 2 and q > crit),
        "groups_used": used,
        "raw": float(np.std(vals, ddof=1)) / abs(mean) if mean != 0 else float("nan"),
    }
