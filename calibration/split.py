"""Which rows are held out: later cycles (or, for single-cycle data, the later pulses).

Rule (documented in docs/calibration.md):

- When at least one device has two or more cycles, every such device holds out its
  last ``max(1, round(fraction * n_cycles))`` cycles, keeping at least one cycle for
  fitting; devices with one cycle are used for fitting only.  Unit: ``"cycles"``.
- When every device has a single cycle (the HfO2 file: one up and one down sweep),
  the last ``ceil(fraction * n)`` rows of every run of same-polarity pulses are
  held out instead.  Unit: ``"pulses"``; the report says so, since later pulses of
  one sweep are a weaker test than later cycles.
"""

from __future__ import annotations

import math

import numpy as np

from hil.calibration.measurements import MeasurementSet

DEFAULT_HOLDOUT = 1.0 / 3.0


def holdout_rows(ms: MeasurementSet, fraction: float = DEFAULT_HOLDOUT) -> tuple[np.ndarray, str]:
    """Boolean mask of held-out rows and the unit (``"cycles"``, ``"pulses"`` or ``"none"``)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    n = len(ms)
    held = np.zeros(n, dtype=bool)
    if fraction == 0 or n == 0:
        return held, "none"
    codes, names = ms.device_codes()
    cycles_of = {d: list(dict.fromkeys(ms.cycle[codes == d].tolist())) for d in range(len(names))}
    if any(len(c) >= 2 for c in cycles_of.values()):
        for d, cyc in cycles_of.items():
            if len(cyc) < 2:
                continue
            k = min(len(cyc) - 1, max(1, int(round(fraction * len(cyc)))))
            held |= (codes == d) & np.isin(ms.cycle, cyc[-k:])
        return held, "cycles"
    # single-cycle data: later pulses of every same-polarity run
    starts = ms.segment_starts()
    run_id = np.zeros(n, dtype=np.int64)
    last_pol: dict[int, int] = {}
    current: dict[int, int] = {}
    next_id = 0
    for i in range(n):
        d = int(codes[i])
        p = int(ms.polarity[i])
        new = starts[i] or (p != 0 and last_pol.get(d, 0) not in (0, p))
        if new or d not in current:
            current[d] = next_id
            next_id += 1
        run_id[i] = current[d]
        if p != 0:
            last_pol[d] = p
    for r in range(next_id):
        idx = np.nonzero(run_id == r)[0]
        k = int(math.ceil(fraction * len(idx)))
        if 0 < k < len(idx):
            held[idx[-k:]] = True
    return held, "pulses"
