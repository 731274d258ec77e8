"""Settings shared by the serial test-chip tests (imported as ``from chip_common import ...``)."""

from __future__ import annotations

import itertools

from hil.drivers.chip import ChipEmulator, register_emulator
from hil.safety import SafetyLimits

#: Periphery of an emulated board with every converter and noise switched off.
IDEAL_IO = {"inp_res_bits": None, "out_res_bits": None, "out_bound": None, "out_noise": 0.0}

#: Board limits: full scale 0.2 V per normalized input (|x| <= 2), write pulses up to 1.5 V, 10 ns - 1 us.
LIMITS = SafetyLimits(
    max_read_voltage_v=0.4,
    max_write_voltage_v=1.5,
    min_pulse_width_s=1e-8,
    max_pulse_width_s=1e-6,
    compliance_current_a=1e-4,
    max_pulses_per_call=200,
)

_names = itertools.count()


def register_board(prefix: str, rows: int, cols: int, device: str = "ideal", **kw) -> tuple[ChipEmulator, str]:
    """An emulated board with ideal periphery, registered under a fresh ``xbarsim://`` name."""
    emu = ChipEmulator(rows=rows, cols=cols, device=device, periphery=IDEAL_IO, **kw)
    return emu, register_emulator(f"{prefix}{next(_names)}", emu)
