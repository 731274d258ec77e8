"""Device-model calibration from measured pulse-response curves (``hil.calibration``).

measurements (CSV schema or a lab format via an importer) -> fit of every step
model (pooled and per device) -> model selection (BIC + held-out cycles) ->
:class:`~hil.device_model.DeviceModel` JSON + fit report.  See docs/calibration.md.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hil.calibration.compare import replay_metrics
from hil.calibration.importers.base import (
    ImportResult,
    detect_format,
    get_importer,
    import_measurements,
    list_importers,
    register_importer,
)
from hil.calibration.mapping import Mapping, MappingSpec, choose_mapping
from hil.calibration.measurements import (
    Exclusion,
    MeasurementError,
    MeasurementSet,
    MeasurementWriter,
    load_measurements,
)
from hil.calibration.pipeline import (
    MODEL_KINDS,
    Calibration,
    CalibrationConfig,
    CandidateScore,
    calibrate,
)
from hil.calibration.schema import SCHEMA_VERSION, MeasurementHeader, MeasurementRow
from hil.calibration.split import holdout_rows
from hil.calibration.workflow import CalibrationRun, calibrate_path, replay_check


def example_data(name: str = "gong_et_al.csv") -> Path:
    """Path of a data file shipped with the package (``gong_et_al.csv``: HfO2 ReRAM, MIT)."""
    path = Path(str(resources.files("hil.calibration") / "data" / name))
    if not path.is_file():
        raise ValueError(f"no example data file {name!r} in {path.parent}")
    return path


__all__ = [
    "MODEL_KINDS",
    "SCHEMA_VERSION",
    "Calibration",
    "CalibrationConfig",
    "CalibrationRun",
    "CandidateScore",
    "Exclusion",
    "ImportResult",
    "Mapping",
    "MappingSpec",
    "MeasurementError",
    "MeasurementHeader",
    "MeasurementRow",
    "MeasurementSet",
    "MeasurementWriter",
    "calibrate",
    "calibrate_path",
    "choose_mapping",
    "detect_format",
    "example_data",
    "get_importer",
    "holdout_rows",
    "import_measurements",
    "list_importers",
    "load_measurements",
    "register_importer",
    "replay_check",
    "replay_metrics",
]
