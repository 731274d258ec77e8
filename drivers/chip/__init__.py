"""Test-chip boards over a framed serial protocol: SerialCrossbar and a chip emulator.

``import hil.drivers.chip`` registers this package in pyserial's
``protocol_handler_packages``, so that ``serial.serial_for_url("xbarsim://...")``
opens an in-process :class:`ChipEmulator` (module ``protocol_xbarsim``).
"""

import serial

from hil.drivers.chip.emulator import (
    ChipEmulator,
    EmulatorConfig,
    FaultConfig,
    PulseRecord,
    get_emulator,
    register_emulator,
    unregister_emulator,
)
from hil.drivers.chip.frame import Frame, FrameDecoder, FrameError, decode_frame, encode_frame
from hil.drivers.chip.link import (
    ChipDisconnectedError,
    ChipError,
    ChipLink,
    ChipTimeoutError,
    LinkConfig,
    LinkCounters,
    Traffic,
)
from hil.drivers.chip.protocol import BoardInfo, Cmd, Status, Window
from hil.drivers.chip.serial_crossbar import SerialCrossbar, SerialCrossbarConfig, WindowAllocator
from hil.drivers.chip.transports import EmulatorPtyServer, EmulatorTcpServer

if __name__ not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append(__name__)

__all__ = [
    "BoardInfo",
    "ChipDisconnectedError",
    "ChipEmulator",
    "ChipError",
    "ChipLink",
    "ChipTimeoutError",
    "Cmd",
    "EmulatorConfig",
    "EmulatorPtyServer",
    "EmulatorTcpServer",
    "FaultConfig",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "LinkConfig",
    "LinkCounters",
    "PulseAudit",
    "PulseRecord",
    "SerialCrossbar",
    "SerialCrossbarConfig",
    "Status",
    "Traffic",
    "Window",
    "WindowAllocator",
    "audit_pulses",
    "decode_frame",
    "encode_frame",
    "get_emulator",
    "register_emulator",
    "unregister_emulator",
]
