"""pyserial URL handler ``xbarsim://``: an in-process :class:`ChipEmulator` behind a serial port.

pyserial finds this module through ``serial.protocol_handler_packages`` (the
package ``hil.drivers.chip`` adds itself there on import), so that
``serial.serial_for_url("xbarsim://...")`` returns a port whose other end is
the emulated board firmware.  URL forms::

    xbarsim://NAME                      the emulator registered as NAME (register_emulator)
    xbarsim://NAME?rows=16&cols=16&...  create it (and register it as NAME) if it does not exist
    xbarsim://?rows=8&cols=8            a fresh unnamed emulator

Query keys: any field of :class:`EmulatorConfig` with a scalar value (``rows``,
``cols``, ``device``, ``seed``, ``full_scale_read_v``, ...) and any field of
:class:`FaultConfig` (``corrupt_reply_rate``, ``drop_ack_rate``, ``delay_s``, ...;
``fault_seed`` for its ``seed``).

The emulator answers inside ``write()`` (in the caller's thread); delayed
replies are held until their release time, and ``read()`` honours the port
timeout like any pyserial port.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from hil.drivers.chip.emulator import (
    ChipEmulator,
    EmulatorConfig,
    EmulatorDisconnected,
    FaultConfig,
    get_emulator,
    register_emulator,
)


def emulator_from_url(url: str) -> ChipEmulator:
    """The emulator an ``xbarsim://`` URL names (created and registered if new)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "xbarsim":
        raise SerialException(f"expected an xbarsim:// URL, got {url!r}")
    name = parts.netloc or parts.path.strip("/")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if name:
        existing = get_emulator(name)
        if existing is not None:
            return existing
    cfg: dict[str, Any] = {}
    faults: dict[str, Any] = {}
    for key, values in query.items():
        value = values[-1]
        if key == "fault_seed":
            faults["seed"] = value
        elif key in FaultConfig.model_fields:
            faults[key] = value
        elif key in EmulatorConfig.model_fields and key not in ("faults", "hard_limits", "periphery"):
            cfg[key] = value
        else:
            known = sorted(
                [k for k in EmulatorConfig.model_fields if k not in ("faults", "hard_limits", "periphery")]
                + list(FaultConfig.model_fields)
                + ["fault_seed"]
            )
            raise SerialException(f"{url}: unknown option {key!r}; known: {', '.join(known)}")
    if "initial_weight" in cfg and cfg["initial_weight"] in ("", "none", "None"):
        cfg["initial_weight"] = None
    try:
        config = EmulatorConfig(**cfg, faults=FaultConfig(**faults))
    except ValueError as exc:
        raise SerialException(f"{url}: invalid emulator options: {exc}") from None
    emu = ChipEmulator(config)
    if name:
        register_emulator(name, emu)
    return emu


class Serial(SerialBase):
    """A serial port whose far end is an in-process :class:`ChipEmulator`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.emulator: ChipEmulator | None = None
        self._rx = bytearray()
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self.emulator = emulator_from_url(self.port)
        self.emulator.reconnect()
        self._rx.clear()
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self._rx.clear()

    def _reconfigure_port(self) -> None:  # nothing to configure in software
        pass

    def _emu(self) -> ChipEmulator:
        if not self.is_open or self.emulator is None:
            raise PortNotOpenError()
        if self.emulator.disconnected:
            raise SerialException("xbarsim: the emulated board disconnected")
        return self.emulator

    def _pull(self) -> None:
        self._rx += self._emu().pop_due()

    @property
    def in_waiting(self) -> int:
        self._pull()
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            self._pull()
            if len(self._rx) >= size:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            nxt = self._emu().next_due()
            wait = 0.001 if nxt is None else max(0.0, nxt - now)
            if deadline is not None:
                wait = min(wait, deadline - now)
            time.sleep(min(wait, 0.01))
        out = bytes(self._rx[:size])
        del self._rx[:size]
        return out

    def write(self, data: bytes) -> int:
        emu = self._emu()
        data = bytes(data)
        try:
            emu.receive(data)
        except EmulatorDisconnected as exc:
            raise SerialException(str(exc)) from None
        return len(data)

    def reset_input_buffer(self) -> None:
        self._pull()
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        pass

    def flush(self) -> None:
        pass
