"""Hardware safety limits shared by every real backend (serial test chips and bench instruments).

Rule: a value outside the configured limits is **refused** with
:class:`SafetyError` before anything is sent to the hardware; it is never
clipped.  Drivers call these checks in one place, before encoding a command.
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from hil.config import HilModel


class SafetyError(ValueError):
    """An operation would exceed a configured hardware limit; nothing was sent."""


class SafetyLimits(HilModel):
    """Absolute limits of one array and its periphery (volts, seconds, amperes)."""

    max_read_voltage_v: float = Field(gt=0, description="largest |V| of a read or MVM input")
    max_write_voltage_v: float = Field(gt=0, description="largest |V| of a programming pulse")
    min_pulse_width_s: float = Field(0.0, ge=0, description="shortest allowed pulse width")
    max_pulse_width_s: float = Field(gt=0, description="longest allowed pulse width")
    compliance_current_a: float = Field(gt=0, description="current compliance of any source")
    max_pulses_per_call: int = Field(gt=0, description="largest |pulse count| per device and call")

    @model_validator(mode="after")
    def _order(self) -> SafetyLimits:
        if self.min_pulse_width_s > self.max_pulse_width_s:
            raise ValueError(
                f"min_pulse_width_s ({self.min_pulse_width_s}) exceeds max_pulse_width_s "
                f"({self.max_pulse_width_s})"
            )
        return self

    # Each check raises SafetyError naming the quantity, the value and the limit.
    def check_read_voltage(self, v: float, what: str = "read voltage") -> float:
        return _check_abs(v, self.max_read_voltage_v, what, "V")

    def check_write_voltage(self, v: float, what: str = "write voltage") -> float:
        return _check_abs(v, self.max_write_voltage_v, what, "V")

    def check_pulse_width(self, w: float, what: str = "pulse width") -> float:
        w = _finite(w, what)
        if not (self.min_pulse_width_s <= w <= self.max_pulse_width_s):
            raise SafetyError(
                f"{what} {w:g} s is outside the limits [{self.min_pulse_width_s:g}, "
                f"{self.max_pulse_width_s:g}] s; nothing was sent"
            )
        return w

    def check_current(self, i: float, what: str = "compliance current") -> float:
        return _check_abs(i, self.compliance_current_a, what, "A")

    def check_pulse_count(self, n: int, what: str = "pulse count") -> int:
        if abs(int(n)) > self.max_pulses_per_call:
            raise SafetyError(
                f"{what} {int(n)} exceeds the limit of {self.max_pulses_per_call} pulses per device "
                "and call; nothing was sent"
            )
        return int(n)


def _finite(v: float, what: str) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise SafetyError(f"{what} must be a number, got {v!r}; nothing was sent") from None
    if not math.isfinite(v):
        raise SafetyError(f"{what} must be finite, got {v}; nothing was sent")
    return v


def _check_abs(v: float, limit: float, what: str, unit: str) -> float:
    v = _finite(v, what)
    if abs(v) > limit:
        raise SafetyError(f"{what} {v:g} {unit} exceeds the limit of +-{limit:g} {unit}; nothing was sent")
    return v
