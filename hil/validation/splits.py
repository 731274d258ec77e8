"""Splitting one device's measurements into two halves (specificity checks on real data).

``halves``: the earlier and the later cycles (runs) of the device, in time order;
``interleaved``: even and odd cycles, so that both halves span the same period
(and share the slow drift and any run-to-run change of conditions).
"""

from __future__ import annotations

from typing import Literal

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
