"""Shared settings of the bench-driver tests (pyvisa-sim and scripted exchanges)."""

from __future__ import annotations

from hil.safety import SafetyLimits

# The limits every bench test configures its drivers with (volts, seconds, amperes).
BENCH_LIMITS = SafetyLimits(
    max_read_voltage_v=0.5,
    max_write_voltage_v=2.0,
    min_pulse_width_s=1e-7,
    max_pulse_width_s=1e-2,
    compliance_current_a=1e-3,
    max_pulses_per_call=100,
)
