"""Importers of measurement formats into the pulse-response CSV schema (plug-ins).

Built in: ``schema``, ``updown-columns``, ``crosssim-lut``, ``wgfmu-summary``.
Add one with :func:`register_importer` or the entry-point group
``hil.calibration.importers`` (see :mod:`hil.calibration.importers.base`).
"""

from hil.calibration.importers.base import (
    ENTRY_POINT_GROUP,
    ImportResult,
    NoOptions,
    detect_format,
    get_importer,
    import_measurements,
    list_importers,
    register_importer,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ImportResult",
    "NoOptions",
    "detect_format",
    "get_importer",
    "import_measurements",
    "list_importers",
    "register_importer",
]
