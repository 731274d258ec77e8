"""The bench configuration file (``BENCH.yaml``): instruments, wiring, voltages, limits, mapping.

One pydantic model, :class:`BenchConfig`, validated as a whole: every voltage,
width and current in it must lie inside its own ``limits`` (a
:class:`~hil.safety.SafetyLimits`), the channel map must be a proper
one-to-one wiring, and the pulse source must exist.  ``docs/bench.md`` is the
field-by-field reference.  Files are YAML (``.yaml``/``.yml``) or JSON, with a
``schema_version``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hil.config import HilModel, VersionedFile, atomic_write_text
from hil.device_model import ConductanceMapping
from hil.drivers.bench.keithley707b import MAX_COLUMN, ROWS
from hil.safety import SafetyError, SafetyLimits


class VisaResource(HilModel):
    """Where an instrument is and how to open it."""

    resource: str = Field(
        description="VISA resource name, e.g. 'TCPIP0::192.168.1.20::5025::SOCKET' or 'GPIB0::26::INSTR'"
    )
    visa_library: str = Field(
        "@py", description="pyvisa back end: '@py' (pyvisa-py), '' (the vendor VISA), 'FILE.yaml@sim'"
    )
    timeout_s: float = Field(5.0, gt=0, le=600, description="reply timeout, seconds")


class SMUConfig(VisaResource):
    """The source-measure unit that reads the devices (Keithley 2600B, TSP)."""

    model: Literal["keithley2600b"] = "keithley2600b"
    channel: Literal["a", "b"] = "a"
    nplc: float = Field(1.0, ge=0.001, le=25, description="integration aperture, power-line cycles")


class MatrixConfig(VisaResource):
    """The switch matrix (Keithley 707B/708B) and the channel map.

    Matrix rows (letters) are wired to the instruments, matrix columns (numbers)
    to the array's lines: ``array_rows[i]`` is the column wired to word line
    (weight row) ``i``, ``array_cols[j]`` the column wired to bit line ``j``.
    """

    model: Literal["keithley707b"] = "keithley707b"
    slot: int = Field(1, ge=1, le=6)
    smu_row: str = Field("A", description="matrix row wired to the SMU HI terminal")
    pulse_row: str = Field("B", description="matrix row wired to the pulse generator output")
    ground_row: str = Field("C", description="matrix row wired to ground (SMU LO / generator shield)")
    array_rows: list[int] = Field(description="matrix column of each array row (word line)")
    array_cols: list[int] = Field(description="matrix column of each array column (bit line)")
    max_closed: int | None = Field(
        None, ge=2, description="most crosspoints closed at once (None: array cols + 1)"
    )

    @field_validator("smu_row", "pulse_row", "ground_row")
    @classmethod
    def _row(cls, v: str) -> str:
        if len(v) != 1 or v not in ROWS:
            raise ValueError(f"matrix row must be one letter of {ROWS}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _wiring(self) -> MatrixConfig:
        rows = {"smu_row": self.smu_row, "pulse_row": self.pulse_row, "ground_row": self.ground_row}
        if len(set(rows.values())) != 3:
            raise ValueError(f"smu_row, pulse_row and ground_row must be three different matrix rows, got {rows}")
        if not self.array_rows or not self.array_cols:
            raise ValueError("array_rows and array_cols must each name at least one matrix column")
        lines = self.array_rows + self.array_cols
        for c in lines:
            if not 1 <= c <= MAX_COLUMN:
                raise ValueError(f"matrix column {c} is outside 1..{MAX_COLUMN}")
        dup = sorted({c for c in lines if lines.count(c) > 1})
        if dup:
            raise ValueError(f"matrix columns {dup} are used for more than one array line")
        return self


class PulseGeneratorConfig(VisaResource):
    """The pulse source (Keysight 33500B-class waveform generator, SCPI)."""

    model: Literal["keysight33500b"] = "keysight33500b"
    channel: int = Field(1, ge=1, le=2)


class PulseShape(HilModel):
    amplitude_v: float = Field(gt=0, description="pulse amplitude across the device, volts (magnitude)")
    width_s: float = Field(gt=0, description="pulse width, seconds")


class PulseConfig(HilModel):
    """Programming pulses: up (potentiation) and down (depression)."""

    source: Literal["generator", "smu"] = Field(
        "generator", description="'generator': the pulse generator; 'smu': SMU TSP pulse loop (>= 1 ms)"
    )
    up: PulseShape
    down: PulseShape
    period_s: float = Field(gt=0, description="pulse repetition period inside a burst, seconds")

    @model_validator(mode="after")
    def _period(self) -> PulseConfig:
        w = max(self.up.width_s, self.down.width_s)
        if not self.period_s > w:
            raise ValueError(f"pulses.period_s ({self.period_s}) must exceed the longest width ({w})")
        return self


class ReadConfig(HilModel):
    voltage_v: float = Field(gt=0, description="read voltage applied by the SMU, volts")
    compliance_a: float = Field(gt=0, description="SMU current compliance during reads and SMU pulses, amperes")


class BenchConfig(VersionedFile):
    """A complete bench: instruments, channel map, read and pulse settings, limits, mapping."""

    SCHEMA_VERSION = "1.0"
    name: str = "bench"
    description: str = ""
    smu: SMUConfig
    matrix: MatrixConfig
    pulse_generator: PulseGeneratorConfig | None = None
    read: ReadConfig
    pulses: PulseConfig
    limits: SafetyLimits
    conductance: ConductanceMapping = Field(description="g_min_s/g_max_s <-> w_min/w_max (one device per weight)")
    dw_nominal: float = Field(
        gt=0, description="mean weight change of one pulse, normalized units (from a characterization)"
    )
    seed: int = Field(0, description="seed of the stochastic rounding in update()")
    arm_on_open: bool = Field(False, description="arm the safety guard when the backend opens")
    dry_run: bool = Field(
        False, description="open no instrument and send nothing: record every command (all checks still run)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> BenchConfig:
        lim = self.limits
        try:
            lim.check_read_voltage(self.read.voltage_v, "read.voltage_v")
            lim.check_current(self.read.compliance_a, "read.compliance_a")
            for tag, shape in (("up", self.pulses.up), ("down", self.pulses.down)):
                lim.check_write_voltage(shape.amplitude_v, f"pulses.{tag}.amplitude_v")
                lim.check_pulse_width(shape.width_s, f"pulses.{tag}.width_s")
        except SafetyError as exc:
            raise ValueError(f"outside the configured limits: {exc}") from None
        if self.pulses.source == "generator" and self.pulse_generator is None:
            raise ValueError("pulses.source is 'generator' but no pulse_generator section is given")
        c = self.conductance
        if c.kind != "gmin_gmax":
            raise ValueError(f"conductance.kind must be 'gmin_gmax' (one device per weight), got {c.kind!r}")
        if not 0 < c.g_min_s < c.g_max_s:
            raise ValueError(f"conductance needs 0 < g_min_s < g_max_s, got {c.g_min_s}, {c.g_max_s}")
        if not c.w_min < c.w_max:
            raise ValueError(f"conductance needs w_min < w_max, got {c.w_min}, {c.w_max}")
        peak_a = self.read.voltage_v * c.g_max_s
        if peak_a * 1.5 > self.read.compliance_a:
            raise ValueError(
                f"read.compliance_a ({self.read.compliance_a:g} A) is too close to the largest read current "
                f"read.voltage_v x g_max_s = {peak_a:g} A: leave at least 50 % headroom"
            )
        return self

    @property
    def rows(self) -> int:
        return len(self.matrix.array_rows)

    @property
    def cols(self) -> int:
        return len(self.matrix.array_cols)

    def with_resources(self, resources: dict[str, str], visa_library: str | None = None) -> BenchConfig:
        """A copy whose instruments point at ``resources`` (keys ``smu``, ``matrix``, ``pulse_generator``)."""
        data = self.model_dump(mode="python")
        for key, res in resources.items():
            if key not in ("smu", "matrix", "pulse_generator"):
                raise ValueError(f"unknown instrument {key!r} (expected smu, matrix, pulse_generator)")
            if data.get(key) is None:
                if key == "pulse_generator":
                    data[key] = {"resource": res}
                else:  # pragma: no cover - smu and matrix are required fields
                    raise ValueError(f"{key} section missing")
            else:
                data[key]["resource"] = res
            if visa_library is not None:
                data[key]["visa_library"] = visa_library
        return BenchConfig.model_validate(data)

    # ----------------------------------------------------------------- files
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BenchConfig:  # type: ignore[override]
        """Read a YAML (``.yaml``/``.yml``) or JSON bench file; errors name the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read bench configuration {path}: {exc}") from exc
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data: Any = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
            try:
                return cls.model_validate(data)
            except Exception as exc:
                raise ValueError(f"{path}: not a valid bench configuration:\n{exc}") from exc
        try:
            return cls.model_validate_json(text)
        except Exception as exc:
            raise ValueError(f"{path}: not a valid bench configuration:\n{exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write YAML (by suffix ``.yaml``/``.yml``) or JSON, atomically."""
        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return atomic_write_text(path, yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        return super().save(path)
