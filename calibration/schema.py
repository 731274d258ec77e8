"""The pulse-response measurement CSV schema (version 1.0): one row per conductance read.

Long format, one row per read of one device, comma-separated, UTF-8, with a
header row naming the columns.  Units are part of the column names.

==================  ========  =================================================================
column              required  meaning
==================  ========  =================================================================
``device``          yes       device id (text without commas), e.g. ``r0c3`` or ``ID161ZR15000``
``cycle``           yes       cycle number (integer >= 0), non-decreasing along a device
``pulse``           yes       order of the row within its device (integer >= 0, strictly
                              increasing along a device); a jump of more than 1 marks
                              events that happened but were not recorded
``polarity``        yes       +1: a potentiation pulse before this read, -1: a depression
                              pulse, 0: a read without a pulse (repeated reads give read noise)
``conductance``     yes [1]_  conductance read after the pulse, siemens
``amplitude_v``     no        pulse amplitude, volts (signed as applied)
``width_s``         no        pulse width, seconds
``read_voltage_v``  no        read voltage, volts
``time_s``          no        time of the read, seconds from any fixed origin
``current_a``       no        read current, amperes
``x_*``             no        free extra columns (text), carried along unchanged
==================  ========  =================================================================

.. [1] exactly one of ``conductance`` (siemens), ``conductance_s`` (siemens) or
   ``conductance_us`` (microsiemens); any other spelling is refused, so that a
   unit is never guessed.

Optional first lines starting with ``#`` carry metadata as ``# key: value``;
``# schema_version: 1.0`` pins the version (files without it are read as 1.0).
Conductance may be negative only for differential (``G+ - G-``) or offset-removed
data; it must be finite, and its magnitude below ``MAX_CONDUCTANCE_S`` (0.1 S, a
10-ohm device): larger values are refused as implausible, which catches
microsiemens written into a siemens column (name such a column ``conductance_us``).  Rows of one device must appear in pulse order (they
are replayed in file order); devices may interleave.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hil.config import HilModel, VersionedFile

SCHEMA_NAME = "hil-pulse-response"
SCHEMA_VERSION = "1.0"

REQUIRED_COLUMNS: tuple[str, ...] = ("device", "cycle", "pulse", "polarity")
CONDUCTANCE_COLUMNS: dict[str, float] = {
    "conductance": 1.0,
    "conductance_s": 1.0,
    "conductance_us": 1e-6,
}
OPTIONAL_COLUMNS: dict[str, str] = {
    "amplitude_v": "pulse amplitude, volts (signed as applied)",
    "width_s": "pulse width, seconds",
    "read_voltage_v": "read voltage, volts",
    "time_s": "time of the read, seconds",
    "current_a": "read current, amperes",
}
EXTRA_PREFIX = "x_"
MIN_PULSES_PER_DEVICE = 5
# |conductance| at or above this (siemens; a 10-ohm device) is refused as implausible: such
# values are almost always microsiemens (or millisiemens) in a siemens column
MAX_CONDUCTANCE_S = 0.1


class MeasurementRow(HilModel):
    """One row of a pulse-response measurement file (the schema, field by field)."""

    device: str = Field(min_length=1, description="device id (no commas)")
    cycle: int = Field(ge=0, description="cycle number, non-decreasing along a device")
    pulse: int = Field(ge=0, description="order within the device, strictly increasing")
    polarity: Literal[-1, 0, 1] = Field(
        description="+1 potentiation pulse, -1 depression pulse, 0 read without a pulse"
    )
    conductance: float = Field(
        allow_inf_nan=False, description="conductance read after the pulse, siemens"
    )
    amplitude_v: float | None = Field(None, allow_inf_nan=False, description=OPTIONAL_COLUMNS["amplitude_v"])
    width_s: float | None = Field(None, allow_inf_nan=False, ge=0, description=OPTIONAL_COLUMNS["width_s"])
    read_voltage_v: float | None = Field(
        None, allow_inf_nan=False, description=OPTIONAL_COLUMNS["read_voltage_v"]
    )
    time_s: float | None = Field(None, allow_inf_nan=False, description=OPTIONAL_COLUMNS["time_s"])
    current_a: float | None = Field(None, allow_inf_nan=False, description=OPTIONAL_COLUMNS["current_a"])

    @field_validator("device")
    @classmethod
    def _no_comma(cls, v: str) -> str:
        if "," in v or "\n" in v or v != v.strip():
            raise ValueError(f"device id {v!r} must not contain commas, newlines or edge spaces")
        return v


class MeasurementHeader(VersionedFile):
    """What the ``#`` lines and the header row of a measurement file declare."""

    SCHEMA_VERSION = SCHEMA_VERSION
    schema_name: Literal["hil-pulse-response"] = SCHEMA_NAME
    columns: list[str] = Field(description="column names in file order")
    metadata: dict[str, str] = Field(default_factory=dict, description="the other '# key: value' lines")


def schema_table_markdown() -> str:
    """The column table of the schema as Markdown (used by docs/calibration.md)."""
    lines = ["| column | required | unit / meaning |", "|---|---|---|"]
    for name in REQUIRED_COLUMNS:
        desc = MeasurementRow.model_fields[name].description
        lines.append(f"| `{name}` | yes | {desc} |")
    lines.append("| `conductance` / `conductance_s` / `conductance_us` | one of them | siemens / siemens / microsiemens |")
    for name, desc in OPTIONAL_COLUMNS.items():
        lines.append(f"| `{name}` | no | {desc} |")
    lines.append(f"| `{EXTRA_PREFIX}*` | no | free text, carried along |")
    return "\n".join(lines)
