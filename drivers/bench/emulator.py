"""A stateful bench emulator: SMU, switch matrix and pulse generator on loopback TCP sockets.

pyvisa-sim answers fixed dialogues; it cannot say what current flows through
the device a matrix routes.  :class:`BenchEmulator` can: it serves the command
subsets the bench drivers use (Keithley 2600B TSP, Keithley 707B TSP, Keysight
33500B SCPI) on ``127.0.0.1``, one TCP port per instrument, opened through
pyvisa-py as ``TCPIP::127.0.0.1::PORT::SOCKET``, and it is backed by a hidden
:class:`~hil.simulated.SimulatedCrossbar` built from a device-model JSON:

- the matrix keeps the set of closed crosspoints (row letter x column number);
  a DUT line is "on" an instrument when its column is closed to that
  instrument's matrix row;
- the SMU's measured current is ``V x sum G`` over the devices whose word line
  is on the SMU row and bit line on the ground row (or the reverse), plus read
  noise (the device model's ``read_noise`` mapped to siemens, plus
  ``current_noise_a``), clipped at the compliance;
- a generator burst (``*TRG`` with output on, bus trigger, burst on) gives every
  device between the generator row and the ground row ``NCYC`` pulses through
  ``SimulatedCrossbar.pulse`` on a count matrix that is non-zero only there:
  ``+`` if the generator drives the word line, ``-`` if it drives the bit line;
  devices whose voltage stays below ``switching_threshold_v`` are untouched;
- an SMU TSP pulse loop does the same with the SMU row and the loop amplitude.

The emulator also audits the traffic: every command is counted per instrument,
every value beyond the bench's :class:`~hil.safety.SafetyLimits` is recorded
in :attr:`EmulatorStats.out_of_limit`, relay changes while the SMU drives a
non-zero voltage are "hot switches", a line on two instrument rows at once is a
"short".  Unknown commands and out-of-range values go to the instrument's error
queue, as on the real instruments.  Sneak paths through half-selected devices
are not modelled (floating lines carry no current).

Servers stop by themselves after ``idle_timeout_s`` without traffic, and on
:meth:`BenchEmulator.stop` (also the context-manager exit).
"""

from __future__ import annotations

import abc
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hil.config import HilModel
from hil.device_model import ConductanceMapping, DeviceModel
from hil.drivers.bench.instrument import TSP_EMPTY_ERROR_ENTRY
from hil.safety import SafetyLimits

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_CHANNEL = re.compile(r"^([1-6])([A-H])(\d{2})$")


class BenchWiring(HilModel):
    """How the emulated matrix is wired (same meaning as the bench configuration's ``matrix``)."""

    slot: int = 1
    smu_row: str = "A"
    pulse_row: str = "B"
    ground_row: str = "C"
    array_rows: list[int]
    array_cols: list[int]
    smu_channel: str = "a"
    generator_channel: int = 1


@dataclass
class EmulatorStats:
    """What the emulator saw."""

    commands: dict[str, int] = field(default_factory=lambda: {"smu": 0, "matrix": 0, "pulse_generator": 0})
    out_of_limit: list[str] = field(default_factory=list)
    device_pulses: int = 0
    bursts: int = 0
    measurements: int = 0
    relay_operations: int = 0
    hot_switches: int = 0
    shorts: int = 0
    read_disturbs: int = 0
    internal_errors: list[str] = field(default_factory=list)

    @property
    def total_commands(self) -> int:
        return sum(self.commands.values())


def _fmt_tsp(v: float) -> str:
    return f"{v:.5e}"


def _fmt_scpi(v: float) -> str:
    return f"{v:+.14E}"


# =========================================================================== physics
class BenchPhysics:
    """Shared state of the emulated bench: relays, source levels and the hidden array."""

    def __init__(
        self,
        rows: int,
        cols: int,
        device: DeviceModel | str | Path,
        wiring: BenchWiring,
        conductance: ConductanceMapping,
        limits: SafetyLimits | None,
        *,
        seed: int = 0,
        switching_threshold_v: float = 0.6,
        current_noise_a: float = 0.0,
        initial_weight: float | None = 0.0,
    ) -> None:
        from hil.simulated import PeripheryConfig, SimulatedCrossbar

        if len(wiring.array_rows) != rows or len(wiring.array_cols) != cols:
            raise ValueError(
                f"emulator wiring has {len(wiring.array_rows)} x {len(wiring.array_cols)} lines, "
                f"the array is {rows} x {cols}"
            )
        self.rows, self.cols = rows, cols
        self.wiring = wiring
        self.mapping = conductance
        self.limits = limits
        self.threshold = float(switching_threshold_v)
        self.current_noise_a = float(current_noise_a)
        self.crossbar = SimulatedCrossbar(
            rows, cols, device=device, periphery=PeripheryConfig.ideal(), seed=seed, initial_weight=initial_weight
        )
        self.model = self.crossbar.config.device
        self.noise_gen = torch.Generator().manual_seed(int(seed) + 7919)
        self.lock = threading.RLock()
        self.closed: set[tuple[str, int]] = set()
        self.stats = EmulatorStats()
        # column number -> ("r", i) | ("c", j)
        self.line_of: dict[int, tuple[str, int]] = {}
        for i, c in enumerate(wiring.array_rows):
            self.line_of[c] = ("r", i)
        for j, c in enumerate(wiring.array_cols):
            self.line_of[c] = ("c", j)
        self.smu_on = False
        self.smu_level = 0.0

    # ------------------------------------------------------------ helpers
    def violation(self, who: str, command: str, why: str) -> None:
        self.stats.out_of_limit.append(f"{who}: {command!r}: {why}")

    def lines_on(self, row_letter: str) -> set[tuple[str, int]]:
        return {self.line_of[c] for (r, c) in self.closed if r == row_letter and c in self.line_of}

    def conductances(self) -> torch.Tensor:
        """Exact device conductances ``[rows, cols]`` (siemens, float64)."""
        w = self.crossbar.true_weights().double()
        m = self.mapping
        return m.g_min_s + (w - m.w_min) / (m.w_max - m.w_min) * (m.g_max_s - m.g_min_s)

    def routed(self, source_row: str) -> list[tuple[int, int, int]]:
        """Devices between ``source_row`` and ground: ``(i, j, sign)``, sign +1 if the source drives the word line."""
        src = self.lines_on(source_row)
        gnd = self.lines_on(self.wiring.ground_row)
        out = []
        for i in range(self.rows):
            for j in range(self.cols):
                if ("r", i) in src and ("c", j) in gnd:
                    out.append((i, j, 1))
                elif ("c", j) in src and ("r", i) in gnd:
                    out.append((i, j, -1))
        return out

    def check_shorts(self) -> None:
        seen: dict[int, str] = {}
        for r, c in self.closed:
            if c in seen and seen[c] != r:
                self.stats.shorts += 1
            seen[c] = r

    def relays_changed(self, before: set[tuple[str, int]]) -> None:
        if before == self.closed:
            return
        self.stats.relay_operations += 1
        changed = before ^ self.closed
        if self.smu_on and self.smu_level != 0.0 and any(r == self.wiring.smu_row for r, _ in changed):
            self.stats.hot_switches += 1
        self.check_shorts()

    # ------------------------------------------------------------ physics
    def apply_pulses(self, source_row: str, volts: float, n: int, width_s: float | None = None) -> None:
        """``n`` pulses of ``volts`` (and ``width_s`` seconds) from ``source_row`` on every routed device
        above the threshold.  A device model with a pulse response sees the pulses' |amplitude| and
        width (the law scales its step); any other one moves by its nominal step."""
        if n <= 0:
            return
        counts = torch.zeros(self.rows, self.cols, dtype=torch.int64)
        for i, j, sign in self.routed(source_row):
            v_dev = sign * volts
            if abs(v_dev) >= self.threshold:
                counts[i, j] = n if v_dev > 0 else -n
        if bool(counts.any()):
            if self.model.pulse_response is not None and width_s is not None:
                self.crossbar.pulse(counts, amplitude_v=abs(volts), width_s=width_s)
            else:
                self.crossbar.pulse(counts)
            self.stats.device_pulses += int(counts.abs().sum())

    def smu_current(self, level: float, compliance: float) -> float:
        """Current the SMU measures at ``level`` volts with its output on (amperes)."""
        g = self.conductances()
        m = self.mapping
        g_noise = float(self.model.read_noise) * (m.g_max_s - m.g_min_s) / (m.w_max - m.w_min)
        total = 0.0
        devices = self.routed(self.wiring.smu_row)
        for i, j, _sign in devices:
            gij = float(g[i, j])
            if g_noise > 0:
                gij += g_noise * float(torch.randn((), generator=self.noise_gen, dtype=torch.float64))
            total += level * gij
        if devices and abs(level) >= self.threshold:  # a "read" strong enough to program
            self.stats.read_disturbs += 1
            self.apply_pulses(self.wiring.smu_row, level, 1)
        if self.current_noise_a > 0:
            total += self.current_noise_a * float(torch.randn((), generator=self.noise_gen, dtype=torch.float64))
        on_smu = {c for (r, c) in self.closed if r == self.wiring.smu_row}
        on_gnd = {c for (r, c) in self.closed if r == self.wiring.ground_row}
        if on_smu & on_gnd:  # SMU HI shorted to ground through the matrix
            total = math.copysign(compliance, level if level else 1.0)
        if abs(total) > compliance:
            total = math.copysign(compliance, total)
        return total


# =========================================================================== instruments
class _EmulatedInstrument(abc.ABC):
    key = "instrument"

    def __init__(self, physics: BenchPhysics) -> None:
        self.phys = physics
        self.errors: list[tuple[int, str]] = []

    def handle(self, line: str) -> str | None:
        with self.phys.lock:
            self.phys.stats.commands[self.key] += 1
            try:
                return self.dispatch(line.strip())
            except Exception as exc:  # an emulator bug must not kill the server thread
                self.phys.stats.internal_errors.append(f"{self.key}: {line!r}: {exc!r}")
                self.errors.append((-300, f"Emulator internal error: {exc}"))
                return None

    @abc.abstractmethod
    def dispatch(self, line: str) -> str | None:
        """Execute one command line; return the reply line or None."""


class _TSPInstrument(_EmulatedInstrument):
    """A TSP instrument: each message is one chunk of statements, compiled before it runs.

    A chunk with a statement outside the emulated subset is a syntax error (error
    -285, nothing runs); a statement that fails at run time stops the rest of the
    chunk (its prints never come), as in the instrument's Lua interpreter.
    """

    COMMON: dict[str, str] = {}

    def __init__(self, physics: BenchPhysics) -> None:
        super().__init__(physics)
        self.variables: dict[str, float] = {}

    @abc.abstractmethod
    def statements(self) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]]]:
        """The statement table: ``(pattern, action)`` pairs tried in order."""

    def dispatch(self, line: str) -> str | None:
        if line.startswith("*"):
            return self.common(line)
        plan: list[tuple[Callable[[re.Match[str]], str | None], re.Match[str]]] = []
        pos = 0
        table = self.statements()
        while pos < len(line):
            while pos < len(line) and line[pos] == " ":
                pos += 1
            if pos >= len(line):
                break
            for pattern, action in table:
                m = pattern.match(line, pos)
                if m and (m.end() == len(line) or line[m.end()] == " "):
                    plan.append((action, m))
                    pos = m.end()
                    break
            else:
                self.errors.append((-285, f"TSP Syntax error at line 1: unexpected symbol near '{line[pos:pos + 30]}'"))
                return None
        out: list[str] = []
        for action, m in plan:
            try:
                text = action(m)
            except _RuntimeFault as fault:
                self.errors.append((fault.code, fault.message))
                break
            if text is not None:
                out.append(text)
        return "\n".join(out) if out else None

    def common(self, line: str) -> str | None:
        if line in self.COMMON:
            return self.COMMON[line]
        if line == "*OPC?":
            return "1"
        if line == "*RST":
            self.reset()
            return None
        self.errors.append((-113, "Undefined header"))
        return None

    def reset(self) -> None:
        """Instrument reset."""

    def error_entry(self) -> str:
        if not self.errors:
            return TSP_EMPTY_ERROR_ENTRY
        code, msg = self.errors.pop(0)
        return f"{_fmt_tsp(code)}\t{msg}\t{_fmt_tsp(20)}\t{_fmt_tsp(0)}"


class _RuntimeFault(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _rx(text: str) -> re.Pattern[str]:
    return re.compile(text)


class EmulatedSMU(_TSPInstrument):
    """Keithley 2600B subset (see :mod:`hil.drivers.bench.keithley2600b`)."""

    key = "smu"
    LEVEL_RANGE = 40.0
    LIMIT_RANGE = (1e-8, 3.0)
    COMMON = {"*IDN?": "Keithley Instruments Inc., Model 2602B, EMU2602, 4.0.0-emulated"}

    def __init__(self, physics: BenchPhysics) -> None:
        super().__init__(physics)
        self.ch = physics.wiring.smu_channel
        self.reset()
        p = rf"smu{self.ch}"
        q = re.escape(p)
        self._table = [
            (_rx(rf"{q}\.reset\(\)|reset\(\)"), lambda m: self.reset()),
            (_rx(r"errorqueue\.clear\(\)"), lambda m: self.errors.clear()),
            (_rx(r"print\(errorqueue\.next\(\)\)"), lambda m: self.error_entry()),
            (_rx(r"print\(errorqueue\.count\)"), lambda m: _fmt_tsp(len(self.errors))),
            (_rx(rf"{q}\.source\.func = {q}\.OUTPUT_DCVOLTS"), lambda m: None),
            (_rx(rf"{q}\.measure\.autorangei = {q}\.AUTORANGE_(ON|OFF)"), lambda m: None),
            (_rx(rf"{q}\.source\.output = {q}\.OUTPUT_(ON|OFF)"), self._output),
            (_rx(rf"{q}\.source\.levelv = {_NUM}"), self._level),
            (_rx(rf"{q}\.source\.limiti = {_NUM}"), self._limit),
            (_rx(rf"{q}\.measure\.nplc = {_NUM}"), self._nplc),
            (_rx(rf"print\({q}\.source\.levelv\)"), lambda m: _fmt_tsp(self.level)),
            (_rx(rf"print\({q}\.source\.limiti\)"), lambda m: _fmt_tsp(self.limit)),
            (_rx(rf"print\({q}\.measure\.nplc\)"), lambda m: _fmt_tsp(self.nplc)),
            (_rx(rf"print\({q}\.source\.output\)"), lambda m: _fmt_tsp(1.0 if self.output else 0.0)),
            (_rx(rf"print\({q}\.source\.compliance\)"), lambda m: "true" if self.compliance else "false"),
            (_rx(rf"print\({q}\.measure\.i\(\)\)"), lambda m: _fmt_tsp(self.measure())),
            (_rx(rf"([A-Za-z_]\w*) = {q}\.measure\.i\(\)"), self._assign_measure),
            (_rx(rf"delay\({_NUM}\)"), self._delay),
            (
                _rx(
                    rf"for k = 1, (\d+) do {q}\.source\.levelv = {_NUM} delay\({_NUM}\) "
                    rf"{q}\.source\.levelv = {_NUM} delay\({_NUM}\) end"
                ),
                self._loop,
            ),
            (_rx(r"print\(([A-Za-z_]\w*)\)"), self._print_variable),
        ]

    def statements(self) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]]]:
        return self._table

    def reset(self) -> None:
        self.level = 0.0
        self.limit = 0.1
        self.nplc = 1.0
        self.output = False
        self.compliance = False
        self._sync()

    def _sync(self) -> None:
        self.phys.smu_on = self.output
        self.phys.smu_level = self.level

    # ------------------------------------------------------------ statements
    def _output(self, m: re.Match[str]) -> None:
        self.output = m.group(1) == "ON"
        self._sync()

    def _level(self, m: re.Match[str]) -> None:
        v = float(m.group(1))
        if abs(v) > self.LEVEL_RANGE:
            raise _RuntimeFault(1101, "Parameter too big")
        lim = self.phys.limits
        if lim is not None and abs(v) > max(lim.max_read_voltage_v, lim.max_write_voltage_v):
            self.phys.violation("smu", m.group(0), f"|{v:g}| V beyond the write limit {lim.max_write_voltage_v:g} V")
        self.level = v
        self._sync()

    def _limit(self, m: re.Match[str]) -> None:
        v = float(m.group(1))
        if v < self.LIMIT_RANGE[0]:
            raise _RuntimeFault(1102, "Parameter too small")
        if v > self.LIMIT_RANGE[1]:
            raise _RuntimeFault(1101, "Parameter too big")
        lim = self.phys.limits
        if lim is not None and v > lim.compliance_current_a:
            self.phys.violation("smu", m.group(0), f"compliance {v:g} A beyond {lim.compliance_current_a:g} A")
        self.limit = v

    def _nplc(self, m: re.Match[str]) -> None:
        v = float(m.group(1))
        if not 0.001 <= v <= 25:
            raise _RuntimeFault(1101 if v > 25 else 1102, "Parameter out of range")
        self.nplc = v

    def _delay(self, m: re.Match[str]) -> None:
        if float(m.group(1)) <= 0:
            raise _RuntimeFault(1102, "Parameter too small")

    def _assign_measure(self, m: re.Match[str]) -> None:
        self.variables[m.group(1)] = self.measure()

    def _print_variable(self, m: re.Match[str]) -> str:
        v = self.variables.get(m.group(1))
        return "nil" if v is None else _fmt_tsp(v)

    def measure(self) -> float:
        self.phys.stats.measurements += 1
        if not self.output:
            self.compliance = False
            return 0.0
        lim = self.phys.limits
        if lim is not None and abs(self.level) > lim.max_read_voltage_v:
            self.phys.violation("smu", f"smu{self.ch}.measure.i()", f"measuring at {self.level:g} V, beyond the read limit")
        i = self.phys.smu_current(self.level, self.limit)
        self.compliance = abs(i) >= self.limit
        return i

    def _loop(self, m: re.Match[str]) -> None:
        n, amp, width, rest, gap = int(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5))
        line = m.group(0)
        lim = self.phys.limits
        if lim is not None:
            if abs(amp) > lim.max_write_voltage_v:
                self.phys.violation("smu", line, f"pulse amplitude {amp:g} V beyond {lim.max_write_voltage_v:g} V")
            if not lim.min_pulse_width_s <= width <= lim.max_pulse_width_s:
                self.phys.violation("smu", line, f"pulse width {width:g} s outside the limits")
            if n > lim.max_pulses_per_call:
                self.phys.violation("smu", line, f"{n} pulses beyond {lim.max_pulses_per_call}")
        if width <= 0 or gap <= 0:
            raise _RuntimeFault(1102, "Parameter too small")  # delay(0) is refused by the instrument
        if abs(amp) > self.LEVEL_RANGE or abs(rest) > self.LEVEL_RANGE:
            raise _RuntimeFault(1101, "Parameter too big")
        if n < 1:
            return
        self.phys.stats.bursts += 1
        if self.output:
            self.phys.apply_pulses(self.phys.wiring.smu_row, amp, n, width)
        self.level = rest
        self._sync()


class EmulatedMatrix(_TSPInstrument):
    """Keithley 707B subset (see :mod:`hil.drivers.bench.keithley707b`)."""

    key = "matrix"
    COMMON = {"*IDN?": "Keithley Instruments Inc., Model 707B, EMU707B, 1.0.0-emulated"}

    def __init__(self, physics: BenchPhysics) -> None:
        super().__init__(physics)
        self._table = [
            (_rx(r'channel\.(open|close|exclusiveclose)\("([^"]*)"\)'), self._channel_op),
            (_rx(r'print\(channel\.getclose\("allslots"\)\)'), lambda m: self._closed_text()),
            (_rx(r"errorqueue\.clear\(\)"), lambda m: self.errors.clear()),
            (_rx(r"print\(errorqueue\.next\(\)\)"), lambda m: self.error_entry()),
            (_rx(r"reset\(\)"), lambda m: self._set(set())),
        ]

    def statements(self) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]]]:
        return self._table

    def reset(self) -> None:
        self._set(set())

    def _closed_text(self) -> str:
        items = sorted(f"{self.phys.wiring.slot}{r}{c:02d}" for r, c in self.phys.closed)
        return ";".join(items) if items else "nil"

    def _channel_op(self, m: re.Match[str]) -> None:
        op, text = m.group(1), m.group(2)
        if op == "open" and text.strip() == "allslots":
            self._set(set())
            return
        if op == "exclusiveclose" and not text.strip():
            self._set(set())
            return
        chans = self._parse(text)
        if op == "open":
            self._set(self.phys.closed - chans)
        elif op == "close":
            self._set(self.phys.closed | chans)
        else:
            self._set(set(chans))

    def _parse(self, text: str) -> set[tuple[str, int]]:
        out: set[tuple[str, int]] = set()
        for item in (t.strip() for t in text.split(",")):
            mm = _CHANNEL.match(item)
            if mm is None:
                raise _RuntimeFault(1115, f"Parameter error: invalid channel list {text!r}")
            slot, row, col = int(mm.group(1)), mm.group(2), int(mm.group(3))
            if slot != self.phys.wiring.slot:
                raise _RuntimeFault(1115, f"Parameter error: slot {slot} is empty")
            if not 1 <= col <= 12:
                raise _RuntimeFault(1115, f"Parameter error: channel {item} does not exist")
            out.add((row, col))
        return out

    def _set(self, new: set[tuple[str, int]]) -> None:
        before = set(self.phys.closed)
        self.phys.closed = set(new)
        self.phys.relays_changed(before)


class EmulatedGenerator(_EmulatedInstrument):
    """Keysight 33500B subset (see :mod:`hil.drivers.bench.keysight33500b`)."""

    key = "pulse_generator"
    V_RANGE = 10.0  # high-impedance load

    def __init__(self, physics: BenchPhysics) -> None:
        super().__init__(physics)
        self.n = physics.wiring.generator_channel
        self.reset()

    def reset(self) -> None:
        self.output = False
        self.load_inf = False
        self.func = "SIN"
        self.high = 0.05
        self.low = -0.05
        self.lim_high = 5.0
        self.lim_low = -5.0
        self.lim_on = False
        self.width = 1e-4
        self.period = 1e-3
        self.burst_mode = "TRIG"
        self.ncyc = 1
        self.burst_on = False
        self.trig_bus = False

    def dispatch(self, line: str) -> str | None:
        replies = [r for r in (self.one(part.strip()) for part in line.split(";")) if r is not None]
        return ";".join(replies) if replies else None

    def one(self, line: str) -> str | None:
        n = self.n
        s = f"SOUR{n}:"
        if line == "*IDN?":
            return "Agilent Technologies,33522B,EMU33522,4.00-emulated"
        if line == "*CLS":
            self.errors.clear()
            return None
        if line == "*RST":
            self.reset()
            return None
        if line == "*OPC?":
            return "1"
        if line == "SYST:ERR?":
            if not self.errors:
                return '+0,"No error"'
            code, msg = self.errors.pop(0)
            return f'{code:+d},"{msg}"'
        if line == "*TRG":
            self.trigger()
            return None
        states = {
            f"OUTP{n}?": lambda: "1" if self.output else "0",
            f"OUTP{n}:LOAD?": lambda: "+9.9E+37" if self.load_inf else "+5.0E+01",
            f"{s}FUNC?": lambda: self.func,
            f"{s}VOLT:HIGH?": lambda: _fmt_scpi(self.high),
            f"{s}VOLT:LOW?": lambda: _fmt_scpi(self.low),
            f"{s}VOLT:LIM:HIGH?": lambda: _fmt_scpi(self.lim_high),
            f"{s}VOLT:LIM:LOW?": lambda: _fmt_scpi(self.lim_low),
            f"{s}VOLT:LIM:STAT?": lambda: "1" if self.lim_on else "0",
            f"{s}FUNC:PULS:WIDT?": lambda: _fmt_scpi(self.width),
            f"{s}FUNC:PULS:PER?": lambda: _fmt_scpi(self.period),
            f"{s}BURS:NCYC?": lambda: _fmt_scpi(self.ncyc),
        }
        if line in states:
            return states[line]()
        simple: dict[str, Callable[[], None]] = {
            f"OUTP{n} ON": lambda: setattr(self, "output", True),
            f"OUTP{n} OFF": lambda: setattr(self, "output", False),
            f"OUTP{n}:LOAD INF": self._load_inf,
            f"{s}FUNC PULS": lambda: setattr(self, "func", "PULS"),
            f"{s}VOLT:LIM:STAT ON": lambda: self._lim_state(True),
            f"{s}VOLT:LIM:STAT OFF": lambda: self._lim_state(False),
            f"{s}BURS:MODE TRIG": lambda: setattr(self, "burst_mode", "TRIG"),
            f"{s}BURS:STAT ON": lambda: setattr(self, "burst_on", True),
            f"{s}BURS:STAT OFF": lambda: setattr(self, "burst_on", False),
            f"TRIG{n}:SOUR BUS": lambda: setattr(self, "trig_bus", True),
        }
        if line in simple:
            simple[line]()
            return None
        m = re.fullmatch(rf"{s}(VOLT:HIGH|VOLT:LOW|VOLT:LIM:HIGH|VOLT:LIM:LOW|FUNC:PULS:WIDT|FUNC:PULS:PER|BURS:NCYC) {_NUM}", line)
        if m:
            self.set_value(line, m.group(1), float(m.group(2)))
            return None
        self.errors.append((-113, "Undefined header"))
        return None

    def _load_inf(self) -> None:
        if self.lim_on:
            self.errors.append((-221, "Settings conflict; cannot change load with voltage limits on"))
            return
        self.load_inf = True

    def _lim_state(self, on: bool) -> None:
        if on and not (self.lim_low <= self.low and self.high <= self.lim_high):
            self.errors.append((-221, "Settings conflict; levels outside the voltage limits"))
            return
        self.lim_on = on

    def set_value(self, line: str, key: str, v: float) -> None:
        lim = self.phys.limits
        if key in ("VOLT:HIGH", "VOLT:LOW", "VOLT:LIM:HIGH", "VOLT:LIM:LOW"):
            if abs(v) > self.V_RANGE:
                self.errors.append((-222, "Data out of range"))
                return
            if lim is not None and abs(v) > lim.max_write_voltage_v:
                self.phys.violation("pulse_generator", line, f"|{v:g}| V beyond {lim.max_write_voltage_v:g} V")
        if key == "VOLT:HIGH":
            if v <= self.low or (self.lim_on and v > self.lim_high):
                self.errors.append((-222 if self.lim_on else -221, "Data out of range" if self.lim_on else "Settings conflict"))
                return
            self.high = v
        elif key == "VOLT:LOW":
            if v >= self.high or (self.lim_on and v < self.lim_low):
                self.errors.append((-222 if self.lim_on else -221, "Data out of range" if self.lim_on else "Settings conflict"))
                return
            self.low = v
        elif key == "VOLT:LIM:HIGH":
            if v < self.lim_low:
                self.errors.append((-221, "Settings conflict"))
                return
            self.lim_high = v
        elif key == "VOLT:LIM:LOW":
            if v > self.lim_high:
                self.errors.append((-221, "Settings conflict"))
                return
            self.lim_low = v
        elif key == "FUNC:PULS:WIDT":
            if lim is not None and not lim.min_pulse_width_s <= v <= lim.max_pulse_width_s:
                self.phys.violation("pulse_generator", line, f"width {v:g} s outside the limits")
            if not 16e-9 <= v <= 1e6 or v >= self.period - 16e-9:
                self.errors.append((-221, "Settings conflict; pulse width"))
                return
            self.width = v
        elif key == "FUNC:PULS:PER":
            if v <= self.width + 16e-9 or v > 1e6:
                self.errors.append((-221, "Settings conflict; pulse period"))
                return
            self.period = v
        elif key == "BURS:NCYC":
            k = int(round(v))
            if k != v or not 1 <= k <= 100_000_000:
                self.errors.append((-222, "Data out of range"))
                return
            if lim is not None and k > lim.max_pulses_per_call:
                self.phys.violation("pulse_generator", line, f"{k} pulses beyond {lim.max_pulses_per_call}")
            self.ncyc = k

    def trigger(self) -> None:
        if not (self.burst_on and self.trig_bus and self.burst_mode == "TRIG"):
            self.errors.append((-211, "Trigger ignored"))
            return
        self.phys.stats.bursts += 1
        if self.output and self.func == "PULS":
            self.phys.apply_pulses(self.phys.wiring.pulse_row, self.high - self.low, self.ncyc, self.width)


# =========================================================================== servers
class _LineServer:
    """One loopback TCP port; each line received is handled and its reply (if any) sent back."""

    def __init__(self, name: str, handler: Callable[[str], str | None], idle_timeout_s: float) -> None:
        self.name = name
        self.handler = handler
        self.idle_timeout_s = float(idle_timeout_s)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.stop_event = threading.Event()
        #: fault injection: lines still handled before the connection is dropped (None: never)
        self.drop_after: int | None = None
        self.dead = False  # dropped: connections are closed at once
        self.last_activity = time.monotonic()
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, name=f"bench-emulator-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _idle(self) -> bool:
        return time.monotonic() - self.last_activity > self.idle_timeout_s

    def _serve(self) -> None:
        try:
            while not self.stop_event.is_set() and not self._idle():
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self.last_activity = time.monotonic()
                if self.dead:  # the instrument is "off": accept and hang up at once
                    conn.close()
                    continue
                t = threading.Thread(target=self._client, args=(conn,), name=f"bench-emulator-{self.name}-conn", daemon=True)
                self.threads.append(t)
                t.start()
        finally:
            self.stop_event.set()
            try:
                self.sock.close()
            except OSError:
                pass

    def _client(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while not self.stop_event.is_set() and not self._idle():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self.last_activity = time.monotonic()
                buf += data
                while b"\n" in buf:
                    if self.dead or self.drop_after == 0:  # the instrument goes away mid-session
                        self.dead = True
                        return
                    if self.drop_after is not None:
                        self.drop_after -= 1
                    raw, buf = buf.split(b"\n", 1)
                    reply = self.handler(raw.decode("ascii", "replace").rstrip("\r"))
                    if reply is not None:
                        try:
                            conn.sendall(reply.encode("ascii", "replace") + b"\n")
                        except OSError:
                            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self, timeout_s: float = 2.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        for t in self.threads:
            t.join(timeout_s)


class BenchEmulator:
    """SMU + matrix + pulse generator on loopback sockets, backed by a hidden SimulatedCrossbar.

    Parameters
    ----------
    rows, cols:
        Array shape (must match ``wiring``).
    device:
        Hidden device model: a :class:`~hil.device_model.DeviceModel`, a preset name
        or a device-model JSON path.
    wiring, conductance, limits:
        Matrix wiring, weight <-> siemens mapping of the devices, and the limits the
        traffic is audited against (``None``: no audit).
    switching_threshold_v:
        Smallest |device voltage| that moves a device (reads stay below it).
    current_noise_a:
        Additive std of every SMU reading (amperes), on top of the model's read noise.
    initial_weight:
        Start weight of every device (``None``: its symmetry point).
    idle_timeout_s:
        Servers stop by themselves after this long without traffic.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        device: DeviceModel | str | Path,
        *,
        wiring: BenchWiring,
        conductance: ConductanceMapping,
        limits: SafetyLimits | None = None,
        seed: int = 0,
        switching_threshold_v: float = 0.6,
        current_noise_a: float = 0.0,
        initial_weight: float | None = 0.0,
        idle_timeout_s: float = 600.0,
    ) -> None:
        self.physics = BenchPhysics(
            rows, cols, device, wiring, conductance, limits, seed=seed,
            switching_threshold_v=switching_threshold_v, current_noise_a=current_noise_a,
            initial_weight=initial_weight,
        )
        self.smu = EmulatedSMU(self.physics)
        self.matrix = EmulatedMatrix(self.physics)
        self.generator = EmulatedGenerator(self.physics)
        self.idle_timeout_s = float(idle_timeout_s)
        self._servers: dict[str, _LineServer] = {}

    @classmethod
    def from_config(cls, config: Any, device: DeviceModel | str | Path, **kwargs: Any) -> BenchEmulator:
        """An emulator wired like a :class:`~hil.drivers.bench.config.BenchConfig` (same limits, mapping)."""
        mc = config.matrix
        wiring = BenchWiring(
            slot=mc.slot, smu_row=mc.smu_row, pulse_row=mc.pulse_row, ground_row=mc.ground_row,
            array_rows=list(mc.array_rows), array_cols=list(mc.array_cols), smu_channel=config.smu.channel,
            generator_channel=config.pulse_generator.channel if config.pulse_generator is not None else 1,
        )
        kwargs.setdefault("limits", config.limits)
        return cls(config.rows, config.cols, device, wiring=wiring, conductance=config.conductance, **kwargs)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> dict[str, str]:
        """Open the three ports; returns :attr:`resources`."""
        if self._servers:
            return self.resources
        for key, inst in (("smu", self.smu), ("matrix", self.matrix), ("pulse_generator", self.generator)):
            server = _LineServer(key, inst.handle, self.idle_timeout_s)
            server.start()
            self._servers[key] = server
        return self.resources

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()

    def disconnect(self, instrument: str, after_commands: int = 0) -> None:
        """Fault injection: ``instrument`` goes away (switched off, cable pulled) mid-session.

        It still handles ``after_commands`` more command lines; then its connection is
        closed without a reply, and any new connection is hung up at once.  ``instrument``
        is ``"smu"``, ``"matrix"`` or ``"pulse_generator"``; the emulator must be started.
        """
        if instrument not in self._servers:
            raise ValueError(f"unknown or not started instrument {instrument!r} (started: {sorted(self._servers)})")
        if int(after_commands) < 0:
            raise ValueError(f"after_commands must be >= 0, got {after_commands}")
        self._servers[instrument].drop_after = int(after_commands)

    def __enter__(self) -> BenchEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def resources(self) -> dict[str, str]:
        """VISA resource names: ``{"smu": "TCPIP::127.0.0.1::PORT::SOCKET", ...}``."""
        return {k: f"TCPIP::127.0.0.1::{s.port}::SOCKET" for k, s in self._servers.items()}

    # ------------------------------------------------------------ inspection
    @property
    def stats(self) -> EmulatorStats:
        return self.physics.stats

    @property
    def crossbar(self) -> Any:
        """The hidden :class:`~hil.simulated.SimulatedCrossbar` (ground truth; not on a real bench)."""
        return self.physics.crossbar

    @property
    def device_model(self) -> DeviceModel:
        return self.physics.model

    def true_conductances(self) -> torch.Tensor:
        with self.physics.lock:
            return self.physics.conductances()
