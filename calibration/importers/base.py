"""The importer plug-in interface and registry.

An importer turns one lab format into the measurement schema (a
:class:`~hil.calibration.measurements.MeasurementSet`) or, for formats that
already are a device model (a lookup table), into a :class:`~hil.device_model.DeviceModel`.
It is a small object with

- ``name``: the ``--format`` name;
- ``description``: one line for ``hil calibrate --help`` and the docs;
- ``Options``: a pydantic model of its options (``hil calibrate -O key=value``);
- ``detect(path) -> bool``: whether ``path`` looks like this format (for ``--format auto``);
- ``load(path, options) -> ImportResult``.

Register one with :func:`register_importer`, or from another package through the
entry-point group ``hil.calibration.importers`` (``name = "package.module:IMPORTER"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hil.calibration.measurements import MeasurementSet
from hil.config import HilModel
from hil.device_model import DeviceModel

ENTRY_POINT_GROUP = "hil.calibration.importers"


class NoOptions(HilModel):
    """This importer takes no options."""


@dataclass
class ImportResult:
    """What an importer produced: measurements, or a device model, or both."""

    measurements: MeasurementSet | None = None
    device_model: DeviceModel | None = None
    notes: list[str] = field(default_factory=list)
    inputs: list[dict[str, str]] = field(default_factory=list)
    # draws synthetic pulse trains from a model-only import (LUT): (devices, cycles, n, seed) -> set
    sampler: Callable[..., MeasurementSet] | None = None
    reference: dict[str, Any] = field(default_factory=dict)  # published / author fits, for the report


class Importer(Protocol):
    name: str
    description: str
    Options: type[HilModel]

    def detect(self, path: Path) -> bool: ...

    def load(self, path: Path, options: HilModel) -> ImportResult: ...


_REGISTRY: dict[str, Importer] = {}
_BUILTIN = {
    "schema": "hil.calibration.importers.schema:IMPORTER",
    "updown-columns": "hil.calibration.importers.updown_columns:IMPORTER",
    "crosssim-lut": "hil.calibration.importers.crosssim_lut:IMPORTER",
    "wgfmu-summary": "hil.calibration.importers.wgfmu_summary:IMPORTER",
}
_loaded_entry_points = False


def register_importer(importer: Importer) -> None:
    """Make ``importer`` available as ``--format importer.name``."""
    for attr in ("name", "description", "Options", "detect", "load"):
        if not hasattr(importer, attr):
            raise ValueError(f"importer {importer!r} lacks {attr!r} (see hil.calibration.importers.base)")
    _REGISTRY[importer.name] = importer


def _load_target(target: str) -> Importer:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _discover() -> None:
    global _loaded_entry_points
    for name, target in _BUILTIN.items():
        if name not in _REGISTRY:
            _REGISTRY[name] = _load_target(target)
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in _REGISTRY:
                register_importer(ep.load())
    except Exception as exc:  # a broken third-party plug-in must not break the built-in ones
        import warnings

        warnings.warn(f"importer entry points of {ENTRY_POINT_GROUP!r} failed to load: {exc}", stacklevel=2)


def list_importers() -> dict[str, str]:
    """``name -> description`` of every registered importer."""
    _discover()
    return {k: v.description for k, v in _REGISTRY.items()}


def get_importer(name: str) -> Importer:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown measurement format {name!r}; known: {', '.join(_REGISTRY)}") from None


def detect_format(path: str | Path) -> str:
    """The first importer whose ``detect`` accepts ``path`` (built-ins first)."""
    _discover()
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    for name, imp in _REGISTRY.items():
        try:
            if imp.detect(p):
                return name
        except OSError:
            continue
    raise ValueError(
        f"{p}: no importer recognises this file (known formats: {', '.join(_REGISTRY)}); "
        "pass --format explicitly"
    )


def parse_options(importer: Importer, pairs: dict[str, str]) -> HilModel:
    """The importer's options from ``key=value`` strings (validated by its pydantic model)."""
    try:
        return importer.Options.model_validate(pairs)
    except Exception as exc:
        fields = ", ".join(importer.Options.model_fields) or "none"
        raise ValueError(f"bad options for format {importer.name!r} (its options: {fields}):\n{exc}") from exc


def import_measurements(path: str | Path, fmt: str = "auto", options: dict[str, str] | None = None) -> tuple[str, ImportResult]:
    """Detect (or take) the format and import ``path``; returns ``(format, result)``."""
    name = detect_format(path) if fmt == "auto" else fmt
    imp = get_importer(name)
    opts = parse_options(imp, options or {})
    return name, imp.load(Path(path), opts)


def read_head(path: Path, n: int = 4096) -> str:
    """The first ``n`` bytes of a file as text (for ``detect``)."""
    with open(path, "rb") as fh:
        return fh.read(n).decode("utf-8-sig", errors="replace")
