"""Backend-spec factory for ``sim:`` specs (see :mod:`hil.backends`)."""

from __future__ import annotations

from typing import Any

from hil.simulated.crossbar import SimulatedCrossbar

DEFAULT_PRESET = "rram-softbounds-20"


def open_simulated(
    rest: str, rows: int | None = None, cols: int | None = None, **kwargs: Any
) -> SimulatedCrossbar:
    """``sim`` -> default preset; ``sim:PRESET`` or ``sim:DEVICE.json`` -> that device model."""
    return SimulatedCrossbar(rows or 8, cols or 8, device=rest or DEFAULT_PRESET, **kwargs)
