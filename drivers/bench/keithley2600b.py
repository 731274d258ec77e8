"""Keithley Series 2600B System SourceMeter (TSP command set): the bench's read instrument.

The command strings below and where *Series 2600B System SourceMeter
Instrument Reference Manual*, document 2600BS-901-01 Rev. F (August 2021),
Section 9 "TSP command reference", documents them (which pages were actually
read, and what else confirmed a string, is listed under "Verification"):

==========================================  =========================================================
``smuX.reset()``                            SMU reset to defaults (output off, 0 V / 0 A)
``smuX.source.func``                        ``smuX.OUTPUT_DCVOLTS`` selects the voltage source
``smuX.source.levelY`` (``levelv``)         source level, volts (p. 9-243)
``smuX.source.limitY`` (``limiti``)         current compliance, amperes; 0 is an error (p. 9-244)
``smuX.source.output``                      ``smuX.OUTPUT_ON`` / ``smuX.OUTPUT_OFF``; reads 0 or 1 (p. 9-249)
``smuX.source.compliance``                  ``true`` while the source is in compliance (p. 9-240)
``smuX.measure.Y()`` (``measure.i()``)      one current reading, amperes
``smuX.measure.nplc``                       integration aperture, 0.001 to 25 power-line cycles
``smuX.measure.autorangeY``                 ``smuX.AUTORANGE_ON``
``errorqueue.clear()`` / ``errorqueue.next()``  error queue; ``next()`` returns code, message,
                                            severity, node; code 0 "Queue Is Empty" (p. 9-89)
``delay(seconds)``                          pauses the command interpreter (> 0 s; 5-10 us overhead)
==========================================  =========================================================

and Section 11 "Common commands": ``*IDN?`` (identification) and ``*OPC?``
(places "1" in the output queue once previous commands are complete).
Attribute values are read with ``print(...)``, which answers one line; numbers
come back as ``%.5e`` text (``1.00000e-04``).  Pulses are a TSP ``for`` loop
(Lua control structure of the TSP language, Section 6 of the manual) of
``levelv`` settings and ``delay()`` calls, sent as one line and followed by
``*OPC?``; with the interpreter's overhead this suits pulses of 1 ms and
longer (slow ECRAM/ionic devices), not the us-scale pulses of a pulse
generator.

Verification of the command strings (which source confirmed what):

- read in the manual text (2600BS-901-01 Rev. F, pp. 9-244/9-245; Rev. B
  p. 2-28; Rev. C p. 7-236): ``smuX.source.limitY`` (current compliance 10 nA
  to 3 A on the 2601B/2602B/2604B/2611B/2612B/2614B, 100 pA to 1.5 A on the
  2634B/2635B/2636B; a limit of 0 is error 1102 "Parameter too small"),
  ``smuX.source.levelY``, ``print(smuX.source.compliance)`` answering
  ``true``/``false``; the constant ``smuX.OUTPUT_DCVOLTS`` (2606B manual, same
  command set);
- cross-checked with PyMeasure's ``keithley2600`` driver, which sends the same
  strings to real 2600-series SMUs: ``print(smuX.<attribute>)`` for reads,
  ``source.levelv``, ``source.limiti``, ``source.output`` (0/1),
  ``source.func``, ``measure.nplc`` (0.001 to 25), ``measure.autorangei``,
  ``measure.i()``, and ``print(errorqueue.next())`` answering tab-separated
  fields whose first is the code as a number;
- read in the manual text in a second check: ``*IDN?`` and ``*OPC?`` (Rev. F
  Section 11, p. 11-3: ``*OPC?`` puts an ASCII ``1`` in the output queue once
  all previous overlapped commands have completed; Rev. B p. D-2: a common
  command must be sent as a message of its own, which this driver does),
  ``smuX.source.output`` with ``0``/``smuX.OUTPUT_OFF`` and ``1``/``smuX.OUTPUT_ON``
  (Rev. F p. 9-249), ``smuX.measure.autorangeY`` with ``1``/``smuX.AUTORANGE_ON``
  (Rev. F p. 9-217), ``delay()`` (Rev. B p. 7-49: a delay of zero is not
  allowed, 5-10 us typical overhead; *Series 2600 Reference Manual*
  2600S-901-01 Rev. C p. 12-17: delays below about 50 us are dominated by
  overhead, hence :data:`TSP_PULSE_MIN_WIDTH_S`), ``errorqueue.clear()``
  (*Series 2600 Reference Manual* 2600S-901-01 Rev. A, Table D-2),
  ``smuX.OUTPUT_DCVOLTS`` (User's Manual 2600BS-900-01 Rev. A, p. 4-34);
- ``smuX.reset()``: listed in the Rev. F TSP reference (p. 9-236, cited from the
  ``smuX.measure.*`` entries); its own page was not read.
"""

from __future__ import annotations

import re
from typing import Any

from hil.drivers.bench.instrument import (
    InstrumentError,
    TSPInstrument,
    control,
    format_int,
    format_number,
    measurement,
    setting,
    strict_range,
)
from hil.safety import SafetyError, SafetyGuard, SafetyLimits

#: shortest pulse the TSP loop is used for (interpreter and source settling overhead)
TSP_PULSE_MIN_WIDTH_S = 1e-3
#: smallest current compliance the 2600B family accepts (2634B/2635B/2636B: 100 pA)
MIN_CURRENT_LIMIT_A = 1e-10

# dry run: the assignments a recorded TSP chunk makes, and the values of the constants it uses
_TSP_ASSIGN = re.compile(r"\b(smu[ab]\.[\w.]+)\s*=\s*(\S+)")
_TSP_PRINT = re.compile(r"print\((smu[ab]\.[\w.]+)\)")
_TSP_CONSTANTS = {
    "OUTPUT_ON": 1.0, "OUTPUT_OFF": 0.0, "OUTPUT_DCVOLTS": 1.0, "OUTPUT_DCAMPS": 0.0,
    "AUTORANGE_ON": 1.0, "AUTORANGE_OFF": 0.0,
}


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "false"):
        return t == "true"
    raise ValueError(text)


class Keithley2600B(TSPInstrument):
    """One channel (``smua`` or ``smub``) of a Keithley 2600B SourceMeter, as a voltage source.

    Parameters
    ----------
    resource:
        Opened VISA resource (see :class:`~hil.drivers.bench.instrument.Link`).
    limits:
        :class:`~hil.safety.SafetyLimits`: ``source_voltage`` is limited to
        ``+-max_level_v`` (default ``limits.max_read_voltage_v``), ``current_limit``
        to ``limits.compliance_current_a``, pulses to ``limits.max_write_voltage_v``
        and the pulse-width limits.
    channel:
        ``"a"`` or ``"b"``.

    Nothing is sent by the constructor.  See the module docstring for the manual.
    """

    MODEL = "keithley2600b"
    #: extra wait beyond a pulse train's duration before ``*OPC?`` counts as timed out (seconds)
    completion_margin_s = 5.0

    def __init__(
        self,
        resource: Any,
        *,
        limits: SafetyLimits,
        channel: str = "a",
        name: str | None = "smu",
        guard: SafetyGuard | None = None,
        max_level_v: float | None = None,
    ) -> None:
        if channel not in ("a", "b"):
            raise ValueError(f"{name}: channel must be 'a' or 'b', got {channel!r}")
        super().__init__(resource, limits=limits, name=name, guard=guard)
        self.channel = channel
        self.max_level_v = float(limits.max_read_voltage_v if max_level_v is None else max_level_v)
        if not 0 < self.max_level_v <= max(limits.max_read_voltage_v, limits.max_write_voltage_v):
            raise ValueError(
                f"{self.name}: max_level_v {self.max_level_v} must be in (0, "
                f"{max(limits.max_read_voltage_v, limits.max_write_voltage_v)}] (the SafetyLimits)"
            )
        self._current_limit_a: float | None = None

    def context(self) -> dict[str, Any]:
        return {"ch": self.channel}

    # ----------------------------------------------------------- properties
    source_function = setting(
        "smu{ch}.source.func = {value}",
        "Source function; only the DC voltage source is used.",
        map_values={"voltage": "smu{ch}.OUTPUT_DCVOLTS"},
    )
    source_voltage = control(
        "print(smu{ch}.source.levelv)",
        "smu{ch}.source.levelv = {value}",
        "Voltage source level (the read voltage); refused beyond +-max_level_v.",
        validator=strict_range,
        values=lambda s: (-s.max_level_v, s.max_level_v),
        units="V",
    )
    current_limit = control(
        "print(smu{ch}.source.limiti)",
        "smu{ch}.source.limiti = {value}",
        "Current compliance of the voltage source; refused above SafetyLimits.compliance_current_a.",
        validator=strict_range,
        values=lambda s: (MIN_CURRENT_LIMIT_A, s.limits.compliance_current_a),
        units="A",
        readback=True,
        on_set=lambda s, v: setattr(s, "_current_limit_a", float(v)),
    )
    nplc = control(
        "print(smu{ch}.measure.nplc)",
        "smu{ch}.measure.nplc = {value}",
        "Integration aperture of a measurement in power-line cycles (0.001 to 25).",
        validator=strict_range,
        values=(0.001, 25.0),
    )
    current_autorange = setting(
        "smu{ch}.measure.autorangei = {value}",
        "Current measurement autorange (on).",
        map_values={True: "smu{ch}.AUTORANGE_ON", False: "smu{ch}.AUTORANGE_OFF"},
    )
    output = control(
        "print(smu{ch}.source.output)",
        "smu{ch}.source.output = {value}",
        "Source output on (True) or off (False).",
        map_values={True: "smu{ch}.OUTPUT_ON", False: "smu{ch}.OUTPUT_OFF"},
    )
    current = measurement("print(smu{ch}.measure.i())", "One current measurement.", units="A")
    in_compliance = measurement(
        "print(smu{ch}.source.compliance)",
        "True while the source is limited by its compliance.",
        get_parser=_parse_bool,
    )

    # -------------------------------------------------------------- methods
    def reset(self) -> None:
        """``smuX.reset()``: output off, levels 0, defaults."""
        self.write(self.command("smu{ch}.reset()"))
        self._current_limit_a = None

    # -------------------------------------------------------------- dry run
    def dry_run_note(self, command: str) -> None:
        """Dry run: track ``smuX.reset()`` and every ``smuX.<attribute> = <value>`` of a recorded chunk."""
        if self.command("smu{ch}.reset()") in command:
            self.dry_values.clear()
        for key, value in _TSP_ASSIGN.findall(command):
            const = value.rsplit(".", 1)[-1]
            try:
                number = _TSP_CONSTANTS[const] if const in _TSP_CONSTANTS else float(value)
            except ValueError:
                continue
            self.dry_values[key] = f"{number:.5e}"

    def _dry_reply(self, command: str) -> str | None:
        """Empty error queue; ``nan`` for a current (nothing is measured); read-backs echo what was set."""
        queue = super()._dry_reply(command)
        if queue is not None:
            return queue
        if command.endswith("print(hil_i)") or command == self.command("print(smu{ch}.measure.i())"):
            return "nan"
        if command == self.command("print(smu{ch}.source.compliance)"):
            return "false"
        m = _TSP_PRINT.fullmatch(command)
        if m is not None:
            reset_defaults = {self.command("smu{ch}.source.levelv"): "0.00000e+00",
                              self.command("smu{ch}.source.output"): "0.00000e+00"}
            return self.dry_values.get(m.group(1), reset_defaults.get(m.group(1)))
        return None

    def configure_voltage_source(self, level_v: float, current_limit_a: float, nplc: float = 1.0) -> None:
        """Reset the channel and set it up as a voltage source that measures current.

        Sends, in order: ``smuX.reset()``, ``errorqueue.clear()``, source function,
        ``limiti`` (read back), ``levelv`` (read back), current autorange,
        ``nplc``, then reads the error queue.  Every value is validated first:
        nothing is sent if one is out of limits.
        """
        # validate everything before the first byte goes out
        type(self).source_voltage.prepare(self, level_v)
        type(self).current_limit.prepare(self, current_limit_a)
        type(self).nplc.prepare(self, nplc)
        self.reset()
        self.clear_errors()
        self.source_function = "voltage"
        self.current_limit = current_limit_a
        self.source_voltage = level_v
        type(self).source_voltage.verify(self, level_v)
        self.current_autorange = True
        self.nplc = nplc
        self.check_errors()

    def measure_current(self) -> float:
        """One current reading (A) with the output already on; :class:`InstrumentError` at compliance."""
        return self._check_compliance(self.current)

    def read_current(self) -> float:
        """Output on, one current reading, output off -- in one TSP message; returns amperes.

        Sends ``smuX.source.output = smuX.OUTPUT_ON hil_i = smuX.measure.i()
        smuX.source.output = smuX.OUTPUT_OFF print(hil_i)``.  The instrument runs
        the message as one chunk, so its reply arrives only once the output is
        off again: relays may be switched as soon as the reply is read (cold
        switching without an extra synchronisation query).
        """
        command = self.command(
            "smu{ch}.source.output = smu{ch}.OUTPUT_ON hil_i = smu{ch}.measure.i() "
            "smu{ch}.source.output = smu{ch}.OUTPUT_OFF print(hil_i)"
        )
        reply = self.query(command)
        try:
            value = float(reply)
        except ValueError:
            raise InstrumentError(self.name, command, f"cannot parse the reply {reply!r} as a current") from None
        return self._check_compliance(value)

    def _check_compliance(self, value: float) -> float:
        limit = self._current_limit_a
        if limit is not None and abs(value) >= 0.999 * limit:
            raise InstrumentError(
                self.name, self.link.last_command,
                f"reading {value:g} A is at the current compliance of {limit:g} A: the path conducts "
                "more than the limit allows (short circuit, wrong routing, or read voltage too high)",
            )
        return value

    def output_off(self) -> None:
        """``smuX.source.output = smuX.OUTPUT_OFF``."""
        self.output = False

    def pulse_train(self, amplitude_v: float, width_s: float, period_s: float, count: int) -> None:
        """``count`` voltage pulses of ``amplitude_v`` (sign = polarity), ``width_s`` wide, every ``period_s``.

        Sends one TSP message -- level 0 V, output on,
        ``for k = 1, N do smuX.source.levelv = A delay(W) smuX.source.levelv = 0 delay(P - W) end``,
        output off -- then ``*OPC?``, whose ``1`` arrives once the whole message has
        run (its VISA timeout is extended to the train's duration), so relays can
        be switched right after.  Refused before anything is sent if
        ``|amplitude_v|`` exceeds ``max_write_voltage_v``, the width is outside the
        pulse-width limits or below :data:`TSP_PULSE_MIN_WIDTH_S`, ``period_s <= width_s``,
        or ``count`` is outside ``1..max_pulses_per_call``.
        The source level is left at 0 V: set ``source_voltage`` again before reading.
        """
        where = f"{self.name}: TSP pulse train"
        self.limits.check_write_voltage(amplitude_v, f"{where} amplitude")
        self.limits.check_pulse_width(width_s, f"{where} width")
        if width_s < TSP_PULSE_MIN_WIDTH_S:
            raise SafetyError(
                f"{where}: width {width_s:g} s is below {TSP_PULSE_MIN_WIDTH_S:g} s, the shortest pulse "
                "a TSP delay() loop times reliably; use a pulse generator; nothing was sent"
            )
        if not period_s > width_s:
            raise SafetyError(f"{where}: period {period_s:g} s must exceed the width {width_s:g} s; nothing was sent")
        if isinstance(count, bool) or int(count) != count or not 1 <= int(count) <= self.limits.max_pulses_per_call:
            raise SafetyError(
                f"{where}: count {count!r} must be an integer in 1..{self.limits.max_pulses_per_call}; nothing was sent"
            )
        n = int(count)
        line = self.command(
            "smu{ch}.source.levelv = {z} smu{ch}.source.output = smu{ch}.OUTPUT_ON "
            "for k = 1, {n} do smu{ch}.source.levelv = {a} delay({w}) smu{ch}.source.levelv = {z} delay({g}) end "
            "smu{ch}.source.output = smu{ch}.OUTPUT_OFF",
            n=format_int(n), a=format_number(amplitude_v), w=format_number(width_s),
            z=format_number(0.0), g=format_number(period_s - width_s),
        )
        self.write(line)
        self.sync(timeout_s=n * period_s + self.completion_margin_s)
