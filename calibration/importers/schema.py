"""``schema``: files already in the pulse-response measurement schema (see ``hil.calibration.schema``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from hil.calibration.importers.base import ImportResult, read_head
from hil.calibration.measurements import load_measurements
from hil.calibration.schema import MIN_PULSES_PER_DEVICE, REQUIRED_COLUMNS
from hil.config import HilModel


class SchemaOptions(HilModel):
    min_pulses: int = Field(MIN_PULSES_PER_DEVICE, ge=1, description="pulse rows a device needs")
    drop_short_devices: bool = Field(False, description="exclude (and count) devices with fewer pulse rows")


class SchemaImporter:
    name = "schema"
    description = "the crossbar-hil pulse-response CSV schema (device,cycle,pulse,polarity,conductance,...)"
    Options = SchemaOptions

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        for line in read_head(path).splitlines():
            if line.startswith("#") or not line.strip():
                continue
            cols = [c.strip() for c in line.split(",")]
            return all(c in cols for c in REQUIRED_COLUMNS)
        return False

    def load(self, path: Path, options: HilModel) -> ImportResult:
        assert isinstance(options, SchemaOptions)
        ms = load_measurements(path, min_pulses=options.min_pulses, drop_short_devices=options.drop_short_devices)
        return ImportResult(measurements=ms, inputs=ms.inputs)


IMPORTER = SchemaImporter()
