"""In-memory pulse-response measurements, as the validation statistics read them.

:class:`Measurements` holds the five columns of the measurement schema of
:mod:`hil.calibration` (one row per read): ``device`` (id), ``cycle`` (int),
``pulse`` (int, order within the device), ``polarity`` (+1 potentiation, -1
depression, 0 a read without a pulse) and ``conductance`` (siemens).  Files are
read by the calibration package's loader, the one source of truth for the CSV
format (:func:`load_measurements`); this module only turns its result into
plain numpy arrays sorted by device, cycle and pulse.

What the statistics derive from the rows:

- a **step** is the conductance change between a pulse row and the previous
  row of the same device and cycle (``G[k] - G[k-1]``), attributed to the
  pulse's polarity, at the **state** ``G[k-1]`` read before the pulse; a jump
  of more than 1 in ``pulse`` marks unrecorded events (schema rule), so no step
  is taken across it;
- a **read group** is a row followed by one or more polarity-0 rows of the same
  device (repeated reads of one state): their scatter is the read noise;
- a **block** is one ``(device, cycle)`` pair, the unit a protocol repeats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class UnusableInputError(ValueError):
    """Input that cannot be validated (unreadable file, too little data, different protocols)."""


@dataclass(frozen=True)
class Measurements:
    """Pulse-response measurements of one or more devices, rows sorted by device, cycle, pulse.

    ``device`` ``[n]`` (str), ``cycle`` ``[n]`` (int64), ``pulse`` ``[n]`` (int64),
    ``polarity`` ``[n]`` (int8 in {-1, 0, +1}), ``conductance`` ``[n]`` (float64, siemens).
    """

    device: np.ndarray
    cycle: np.ndarray
    pulse: np.ndarray
    polarity: np.ndarray
    conductance: np.ndarray
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_columns(
        cls,
        device: Any,
        cycle: Any,
        pulse: Any,
        polarity: Any,
        conductance: Any,
        source: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Measurements:
        """Build from five equally long sequences; validates values and sorts the rows."""
        dev = np.asarray([str(d) for d in np.asarray(device, dtype=object).ravel()], dtype=object)
        n = dev.size
        where = source or "measurements"
        cols: dict[str, np.ndarray] = {}
        for name, values, dtype in (
            ("cycle", cycle, np.float64),
            ("pulse", pulse, np.float64),
            ("polarity", polarity, np.float64),
            ("conductance", conductance, np.float64),
        ):
            try:
                arr = np.asarray(values, dtype=dtype).ravel()
            except (TypeError, ValueError) as exc:
                raise UnusableInputError(f"{where}: column {name!r} is not numeric ({exc})") from exc
            if arr.size != n:
                raise UnusableInputError(
                    f"{where}: column {name!r} has {arr.size} values, column 'device' has {n}"
                )
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                raise UnusableInputError(
                    f"{where}: column {name!r} has {bad.size} NaN/inf value(s), first at data row {bad[0]}"
                )
            cols[name] = arr
        pol = cols["polarity"]
        bad = np.flatnonzero(~np.isin(pol, (-1.0, 0.0, 1.0)))
        if bad.size:
            raise UnusableInputError(
                f"{where}: polarity must be -1, 0 or +1, found {float(pol[bad[0]]):g} at data row {bad[0]}"
            )
        for name in ("cycle", "pulse"):
            arr = cols[name]
            bad = np.flatnonzero(arr != np.round(arr))
            if bad.size:
                raise UnusableInputError(
                    f"{where}: column {name!r} must hold integers, found {float(arr[bad[0]]):g} at data row {bad[0]}"
                )
        # stable sort by device (first appearance order kept), cycle, pulse
        _, first = np.unique(dev, return_index=True)
        order_of = {d: i for i, d in enumerate(dev[np.sort(first)])}
        dev_rank = np.fromiter((order_of[d] for d in dev), dtype=np.int64, count=n)
        idx = np.lexsort((cols["pulse"], cols["cycle"], dev_rank))
        return cls(
            device=dev[idx],
            cycle=cols["cycle"][idx].astype(np.int64),
            pulse=cols["pulse"][idx].astype(np.int64),
            polarity=cols["polarity"][idx].astype(np.int8),
            conductance=cols["conductance"][idx],
            source=source,
            meta=dict(meta or {}),
        )

    # ----------------------------------------------------------- summaries
    def __len__(self) -> int:
        return int(self.device.size)

    @property
    def devices(self) -> list[str]:
        """Device ids in file order."""
        _, first = np.unique(self.device, return_index=True)
        return [str(d) for d in self.device[np.sort(first)]]

    def select(self, mask: np.ndarray, source: str | None = None) -> Measurements:
        """The rows where ``mask`` is true (order kept)."""
        mask = np.asarray(mask, dtype=bool)
        return Measurements(
            device=self.device[mask],
            cycle=self.cycle[mask],
            pulse=self.pulse[mask],
            polarity=self.polarity[mask],
            conductance=self.conductance[mask],
            source=self.source if source is None else source,
            meta=dict(self.meta),
        )

    def summary(self) -> dict[str, Any]:
        """Counts a report prints: rows, devices, cycles (blocks), up/down pulses, reads."""
        if len(self):
            _, dev = np.unique(self.device, return_inverse=True)
            span = int(self.cycle.max() - self.cycle.min()) + 1
            n_blocks = int(np.unique(dev.ravel() * span + (self.cycle - self.cycle.min())).size)
        else:
            n_blocks = 0
        return {
            "source": self.source,
            "rows": len(self),
            "devices": len(self.devices),
            "blocks": n_blocks,
            "up_pulses": int((self.polarity == 1).sum()),
            "down_pulses": int((self.polarity == -1).sum()),
            "reads": int((self.polarity == 0).sum()),
        }


def from_loaded(obj: Any, source: str = "") -> Measurements:
    """Convert a loaded measurement set into :class:`Measurements`.

    Accepts a :class:`Measurements` or any object with the attributes ``device,
    cycle, pulse, polarity`` and ``conductance`` (siemens), such as
    :class:`hil.calibration.measurements.MeasurementSet`.
    """
    if isinstance(obj, Measurements):
        return obj
    missing = [c for c in ("device", "cycle", "pulse", "polarity", "conductance") if not hasattr(obj, c)]
    if missing:
        raise UnusableInputError(
            f"{source or type(obj).__name__}: loaded measurements lack column(s) {', '.join(missing)}"
        )
    return Measurements.from_columns(
        obj.device, obj.cycle, obj.pulse, obj.polarity, obj.conductance,
        source=source or str(getattr(obj, "source", "")),
    )


def load_measurements(path: str | os.PathLike[str]) -> Measurements:
    """Read a measurement file with the calibration package's loader.

    Raises :class:`UnusableInputError` (a ``ValueError``) with the loader's
    message (file, row, problem) when the file cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise UnusableInputError(f"measurement file {path} does not exist")
    loader = _calibration_loader()
    try:
        loaded = loader(path)
    except UnusableInputError:
        raise
    except (ValueError, OSError) as exc:
        raise UnusableInputError(str(exc)) from exc
    return from_loaded(loaded, source=str(path))


def _calibration_loader() -> Any:
    """The measurement-CSV loader of :mod:`hil.calibration` (imported lazily)."""
    from hil.calibration.measurements import load_measurements as loader

    return loader
