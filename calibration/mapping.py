"""Conductance (siemens) <-> normalized weight, the mapping stored in every fitted device model.

Two kinds (:class:`hil.device_model.ConductanceMapping`):

- ``gmin_gmax`` (one device per weight): ``w = w_min + (G - g_min) / (g_max - g_min) * (w_max - w_min)``
  with ``[w_min, w_max] = [-1, 1]``.
- ``differential`` (the conductance column already holds ``G+ - G-``):
  ``w = w_max * G / (g_max - g_min)``; the stored ``g_min_s`` is 0 and ``g_max_s`` the
  conductance difference that maps to ``w_max = 1``.

``g_min``/``g_max`` come from ``g_range`` when given, else from the 1st and 99th
percentile of the conductances (of ``|G|`` for ``differential``): the fitted
bounds ``w_min``/``w_max`` of the step model then land near -1/+1 without being
forced there.  With ``normalize="per_device"`` each device gets its own range
(for populations whose conductance scales differ by orders of magnitude, like
the ferroelectric set); the model's mapping is then the median device range and
the per-device ranges are kept in ``provenance["mapping"]["per_device"]``, which
``hil characterize --replay`` uses for devices of the same id.  ``auto`` picks
``per_device`` when the largest device range exceeds the smallest by more than
``auto_ratio`` (10x: one order of magnitude), else ``pooled``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from hil.calibration.measurements import MeasurementSet
from hil.config import HilModel
from hil.device_model import ConductanceMapping


class MappingSpec(HilModel):
    """How calibration chooses the conductance mapping."""

    kind: Literal["gmin_gmax", "differential"] = "gmin_gmax"
    normalize: Literal["auto", "pooled", "per_device"] = "auto"
    g_range: tuple[float, float] | None = Field(
        None, description="(g_min, g_max) in siemens; None: percentiles of the data"
    )
    percentiles: tuple[float, float] = (1.0, 99.0)
    auto_ratio: float = Field(10.0, gt=1)

    @model_validator(mode="after")
    def _check(self) -> MappingSpec:
        if self.g_range is not None and not self.g_range[0] < self.g_range[1]:
            raise ValueError(f"g_range must be (g_min, g_max) with g_min < g_max, got {self.g_range}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        return self


class Mapping(HilModel):
    """The mapping chosen for one data set (pooled, or one range per device)."""

    model: ConductanceMapping
    per_device: dict[str, tuple[float, float]] | None = None
    rule: str = ""

    def range_of(self, device: str) -> tuple[float, float]:
        if self.per_device is not None and device in self.per_device:
            return self.per_device[device]
        return (self.model.g_min_s, self.model.g_max_s)

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.model.kind, "rule": self.rule}
        out["g_min_s"] = self.model.g_min_s
        out["g_max_s"] = self.model.g_max_s
        if self.per_device is not None:
            out["per_device"] = {k: [v[0], v[1]] for k, v in self.per_device.items()}
        return out

    @classmethod
    def from_model(cls, model: ConductanceMapping, provenance: dict[str, Any] | None = None) -> Mapping:
        """The mapping of a fitted device model (with its per-device ranges, when it has them)."""
        per = None
        if provenance:
            m = provenance.get("mapping") or {}
            raw = m.get("per_device") if isinstance(m, dict) else None
            if isinstance(raw, dict):
                per = {str(k): (float(v[0]), float(v[1])) for k, v in raw.items()}
        return cls(model=model, per_device=per, rule="from device model")

    # ------------------------------------------------------------ conversion
    def to_weight(self, g: np.ndarray, devices: np.ndarray | None = None) -> np.ndarray:
        """Weights of conductances ``g`` (siemens); ``devices`` selects per-device ranges."""
        g = np.asarray(g, dtype=np.float64)
        lo, hi = self._ranges(g, devices)
        m = self.model
        if m.kind == "differential":
            return m.w_max * g / (hi - lo)
        return m.w_min + (g - lo) / (hi - lo) * (m.w_max - m.w_min)

    def to_conductance(self, w: np.ndarray, devices: np.ndarray | None = None) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        lo, hi = self._ranges(w, devices)
        m = self.model
        if m.kind == "differential":
            return w / m.w_max * (hi - lo)
        return lo + (w - m.w_min) / (m.w_max - m.w_min) * (hi - lo)

    def scale(self, devices: np.ndarray | None = None, like: np.ndarray | None = None) -> np.ndarray:
        """Siemens per weight unit (per row when ``devices`` is given)."""
        base = np.zeros(1) if like is None else np.asarray(like, dtype=np.float64)
        lo, hi = self._ranges(base, devices)
        if self.model.kind == "differential":
            return (hi - lo) / self.model.w_max
        return (hi - lo) / (self.model.w_max - self.model.w_min)

    def _ranges(self, like: np.ndarray, devices: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self.per_device is None or devices is None:
            return (np.full(like.shape, self.model.g_min_s), np.full(like.shape, self.model.g_max_s))
        names, inverse = np.unique(np.asarray(devices, dtype=object).astype(str), return_inverse=True)
        table = np.array([self.range_of(str(d)) for d in names]).reshape(-1, 2)
        return table[inverse, 0].reshape(like.shape), table[inverse, 1].reshape(like.shape)


def _range(g: np.ndarray, spec: MappingSpec) -> tuple[float, float]:
    lo_p, hi_p = spec.percentiles
    if spec.kind == "differential":
        d = float(np.percentile(np.abs(g), hi_p))
        return (0.0, d if d > 0 else 1.0)
    lo, hi = (float(v) for v in np.percentile(g, [lo_p, hi_p]))
    if not hi > lo:
        span = abs(lo) * 1e-3 or 1e-12
        lo, hi = lo - span, hi + span
    return lo, hi


def choose_mapping(ms: MeasurementSet, spec: MappingSpec | None = None) -> Mapping:
    """The mapping for ``ms`` by the rule of ``spec`` (see the module docstring)."""
    spec = spec or MappingSpec()
    w_min, w_max = (-1.0, 1.0)
    if spec.g_range is not None:
        g_min, g_max = spec.g_range
        if spec.kind == "differential":
            g_min, g_max = 0.0, g_max - g_min
        model = ConductanceMapping(kind=spec.kind, g_min_s=g_min, g_max_s=g_max, w_min=w_min, w_max=w_max)
        return Mapping(model=model, rule=f"given range {spec.g_range} S")
    ranges: dict[str, tuple[float, float]] = {}
    for d in ms.devices:
        ranges[d] = _range(ms.conductance[ms.device == d], spec)
    spans = np.array([hi - lo for lo, hi in ranges.values()])
    ratio = float(spans.max() / spans.min()) if spans.min() > 0 else float("inf")
    normalize = spec.normalize
    if normalize == "auto":
        normalize = "per_device" if ratio > spec.auto_ratio else "pooled"
    pct = f"percentiles {spec.percentiles[0]:g} and {spec.percentiles[1]:g}"
    if normalize == "pooled" or len(ranges) == 1:
        g_min, g_max = _range(ms.conductance, spec)
        model = ConductanceMapping(kind=spec.kind, g_min_s=g_min, g_max_s=g_max, w_min=w_min, w_max=w_max)
        return Mapping(model=model, rule=f"pooled {pct} of all conductances (device range ratio {ratio:.3g})")
    med = int(np.argsort(spans)[len(spans) // 2])
    g_min, g_max = list(ranges.values())[med]
    model = ConductanceMapping(kind=spec.kind, g_min_s=g_min, g_max_s=g_max, w_min=w_min, w_max=w_max)
    return Mapping(
        model=model,
        per_device=ranges,
        rule=(
            f"per device: {pct} of each device's conductances (largest/smallest device range "
            f"{ratio:.3g}); model mapping = the median device's range"
        ),
    )
