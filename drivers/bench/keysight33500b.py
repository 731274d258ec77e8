"""Keysight (Agilent) 33500B-class waveform generator (SCPI): the bench's pulse source.

Command strings checked against the *Agilent/Keysight 33500 Series Operating
and Service Guide* (Trueform 33500B/33600A documentation, also served as the
instrument's SCPI web help):

============================================  =================================================
``[SOURce[1|2]:]FUNCtion PULSe``              pulse waveform (Features and Functions: Pulse Waveforms)
``[SOURce[1|2]:]FUNCtion:PULSe:WIDTh``        pulse width, 16 ns to 1,000,000 s, 50 %-50 % (p. 69)
``[SOURce[1|2]:]FUNCtion:PULSe:PERiod``       pulse period
``[SOURce[1|2]:]VOLTage:HIGH`` / ``:LOW``     high / low level, volts (VOLTage subsystem)
``[SOURce[1|2]:]VOLTage:LIMit:HIGH`` / ``:LOW`` / ``:STATe``
                                              output voltage limits; while on, levels beyond them
                                              are refused by the instrument (VOLTage subsystem;
                                              "Output Termination": no LOAD change while on)
``OUTPut[1|2]:LOAD INFinity``                 high-impedance load setting (Features and Functions: Output Termination)
``OUTPut[1|2] ON|OFF``                        channel output
``[SOURce[1|2]:]BURSt:MODE TRIGgered``        "N Cycle" burst (BURSt subsystem)
``[SOURce[1|2]:]BURSt:NCYCles``               cycles per burst, 1 to 100,000,000
``[SOURce[1|2]:]BURSt:STATe ON``              enable the burst after configuring it
``TRIGger[1|2]:SOURce BUS``                   software trigger (TRIGger subsystem)
``*TRG`` then ``*OPC?``                       trigger; ``*OPC?`` answers 1 when the burst is complete (TRIGger subsystem, p. 318)
``SYSTem:ERRor?``                             error queue, ``+0,"No error"`` when empty
============================================  =================================================

Verification of the command strings (which source confirmed what):

- read in the manual text (*Agilent 33500 Series Operating and Service Guide*):
  ``FUNCtion:PULSe:WIDTh`` (p. 69, "Pulse Waveforms": 16 ns to 1,000,000 s,
  less than the period minus the minimum width), ``TRIGger[1|2]:SOURce BUS``,
  ``*TRG`` and "the ``*OPC?`` query returns 1 to the output buffer when the
  sweep or burst is complete" (p. 318, TRIGger subsystem), ``BURSt`` subsystem
  (p. 177: the internal burst period is ignored with bus triggering);
- ``FUNCtion:PULSe:PERiod`` (sent as ``SOUR1:FUNC:PULS:PER``, not the
  33220A/33250A-generation ``PULSe:PERiod``): PyMeasure's ``agilent33500``
  driver uses the same ``SOUR{ch}:FUNC:PULS:PER`` (33 ns to 1e6 s), as do the
  33500 ``FUNC:PULS:WIDT``/``VOLT:HIGH``/``VOLT:LOW``/``OUTP{ch}:LOAD``/``BURS``
  strings; the manual page itself was not retrieved;
- ``VOLTage:LIMit:HIGH``/``:LOW``/``:STATe``: the hyperion ``Agilent33522A``
  controller (a 33500-series instrument) sends ``SOUR{ch}:VOLT:LIM:HIGH``,
  ``:LOW`` and ``:STATe`` and notes that setting the limits does not enable
  them; a Trueform EDU33210 driver cites the same commands; the 33500 manual
  page itself was not retrieved;
- ``SYSTem:ERRor?`` answering ``<code>,"<message>"`` (``+0,"No error"`` when
  empty): QCoDeS ``WaveformGenerator_33XXX`` (33522B) and hyperion; the same
  query and reply form are documented for the previous generation (33210A
  user's guide, "System-Related Commands", p. 237); the
  ``OUTPut{n} ON|OFF`` (answering 1/0), ``OUTPut{n}:LOAD?`` answering
  ``9.9E+37`` for INFinity, ``BURSt:MODE TRIG``, ``BURSt:NCYCles``,
  ``BURSt:STATe``, ``TRIGger{n}:SOURce BUS`` strings: QCoDeS and PyMeasure.

A second search of the manual text (this check) found the pulse-width page
again (p. 69) but not the ``FUNCtion:PULSe:PERiod``, ``VOLTage:LIMit:*`` or
``SYSTem:ERRor?`` pages; those three stay confirmed by the drivers above,
which send them to real 33500-series instruments, not by the manual itself.

The short forms (upper-case part of each keyword) are sent.  The generator
makes unipolar pulses (low level 0 V, high level = amplitude); the bench
backend reverses a pulse's polarity by swapping the routing in the switch
matrix, so the generator never idles at a non-zero level.
"""

from __future__ import annotations

import re
from typing import Any

from hil.drivers.bench.instrument import (
    Instrument,
    InstrumentError,
    control,
    format_int,
    setting,
    strict_int_range,
    strict_range,
)
from hil.safety import SafetyError, SafetyGuard, SafetyLimits

MIN_WIDTH_S = 16e-9
MAX_WIDTH_S = 1e6
MAX_BURST_CYCLES = 100_000_000
#: dry run: one ``<header> <value>`` part of a recorded message
_SCPI_SET = re.compile(r"([A-Z][A-Z0-9:]*) (\S+)")


def _parse_int(text: str) -> int:
    return int(round(float(text)))


def _parse_switch(text: str) -> bool:
    """``1``/``0`` as the instrument answers (``ON``/``OFF`` accepted too)."""
    t = text.strip().upper()
    if t in ("1", "ON", "+1"):
        return True
    if t in ("0", "OFF", "+0"):
        return False
    raise ValueError(text)



def _within_write_limit(inst: Keysight33500B) -> tuple[float, float]:
    return (-inst.limits.max_write_voltage_v, inst.limits.max_write_voltage_v)


def _volts(header: str, doc: str, *, values: Any = _within_write_limit, readback: bool = False) -> Any:
    """A voltage setting ``SOUR<ch>:<header>`` (volts), refused outside ``values`` (default +-max_write_voltage_v)."""
    return control(
        f"SOUR{{ch}}:{header}?", f"SOUR{{ch}}:{header} {{value}}", doc,
        validator=strict_range, values=values, units="V", readback=readback,
    )


class Keysight33500B(Instrument):
    """One channel of a 33500B-class waveform generator, used as a triggered pulse-burst source.

    Limits: the high level is refused outside ``[0, limits.max_write_voltage_v]``,
    the pulse width outside the :class:`~hil.safety.SafetyLimits` pulse-width range
    (and the instrument's 16 ns .. 1e6 s), a burst count outside
    ``1..limits.max_pulses_per_call``.  The instrument's own output limits are
    set to ``+-max_write_voltage_v`` and read back by :meth:`configure`.
    """

    MODEL = "keysight33500b"

    def __init__(
        self,
        resource: Any,
        *,
        limits: SafetyLimits,
        channel: int = 1,
        name: str | None = "pulse",
        guard: SafetyGuard | None = None,
    ) -> None:
        if channel not in (1, 2):
            raise ValueError(f"{name}: channel must be 1 or 2, got {channel!r}")
        super().__init__(resource, limits=limits, name=name, guard=guard)
        self.channel = channel
        self._cache: dict[str, Any] = {}

    readback_rel_tol = 1e-6
    OPC_REPLIES = ("1", "+1")
    #: extra wait beyond a burst's duration before ``*OPC?`` counts as timed out (seconds)
    completion_margin_s = 5.0

    def context(self) -> dict[str, Any]:
        return {"ch": self.channel}

    def _width_range(self) -> tuple[float, float]:
        return (max(MIN_WIDTH_S, self.limits.min_pulse_width_s), min(MAX_WIDTH_S, self.limits.max_pulse_width_s))

    # ----------------------------------------------------------- properties
    function = control(
        "SOUR{ch}:FUNC?",
        "SOUR{ch}:FUNC {value}",
        "Waveform function; the bench uses the pulse function only.",
        map_values={"pulse": "PULS"},
        get_parser=str,
    )
    high_level = _volts("VOLT:HIGH", "Pulse high level (the pulse amplitude above the 0 V low level).",
                        values=lambda s: (0.0, s.limits.max_write_voltage_v))
    low_level = _volts("VOLT:LOW", "Pulse low level (idle level); the bench keeps it at 0 V.")
    voltage_limit_high = _volts("VOLT:LIM:HIGH", "Instrument-side upper output limit.", readback=True)
    voltage_limit_low = _volts("VOLT:LIM:LOW", "Instrument-side lower output limit.", readback=True)
    voltage_limits_enabled = control(
        "SOUR{ch}:VOLT:LIM:STAT?",
        "SOUR{ch}:VOLT:LIM:STAT {value}",
        "Instrument-side output limits on/off.",
        map_values={True: "ON", False: "OFF"},
        get_parser=_parse_switch,
        readback=True,
    )
    pulse_width = control(
        "SOUR{ch}:FUNC:PULS:WIDT?",
        "SOUR{ch}:FUNC:PULS:WIDT {value}",
        "Pulse width (50 % to 50 %).",
        validator=strict_range,
        values=lambda s: s._width_range(),
        units="s",
    )
    pulse_period = control(
        "SOUR{ch}:FUNC:PULS:PER?",
        "SOUR{ch}:FUNC:PULS:PER {value}",
        "Pulse period inside a burst (start of one pulse to the next).",
        validator=strict_range,
        values=(2 * MIN_WIDTH_S, MAX_WIDTH_S),
        units="s",
    )
    load = control(
        "OUTP{ch}:LOAD?",
        "OUTP{ch}:LOAD {value}",
        "Load setting; the array is a high-impedance load.",
        map_values={"inf": "INF"},
        get_parser=lambda t: "inf" if float(t) > 1e37 else t,
    )
    burst_mode = setting(
        "SOUR{ch}:BURS:MODE {value}",
        "Burst mode: triggered (N cycles per trigger).",
        map_values={"triggered": "TRIG"},
    )
    burst_count = control(
        "SOUR{ch}:BURS:NCYC?",
        "SOUR{ch}:BURS:NCYC {value}",
        "Pulses per burst.",
        validator=strict_int_range,
        values=lambda s: (1, min(MAX_BURST_CYCLES, s.limits.max_pulses_per_call)),
        get_parser=_parse_int,
        set_format=format_int,
    )
    burst_enabled = setting(
        "SOUR{ch}:BURS:STAT {value}",
        "Burst mode on/off.",
        map_values={True: "ON", False: "OFF"},
    )
    trigger_source = setting(
        "TRIG{ch}:SOUR {value}",
        "Trigger source: the bus (*TRG).",
        map_values={"bus": "BUS"},
    )
    output = control(
        "OUTP{ch}?",
        "OUTP{ch} {value}",
        "Channel output on/off.",
        map_values={True: "ON", False: "OFF"},
        get_parser=_parse_switch,
    )

    # -------------------------------------------------------------- methods
    def clear_errors(self) -> None:
        """``*CLS`` (clears the error queue and event registers)."""
        self.write("*CLS")

    def check_errors(self) -> None:
        """``SYST:ERR?`` until ``+0,"No error"``; :class:`InstrumentError` if errors were queued."""
        errors: list[tuple[int, str]] = []
        for _ in range(self.MAX_ERRORS_READ):
            reply = self.query("SYST:ERR?")
            code_text, _, msg = reply.partition(",")
            try:
                code = int(code_text)
            except ValueError:
                raise InstrumentError(self.name, "SYST:ERR?", f"unreadable error entry {reply!r}") from None
            if code == 0:
                break
            errors.append((code, msg.strip().strip('"')))
        if errors:
            self.raise_queue_errors(errors, skip=("SYST:ERR?",))

    # -------------------------------------------------------------- dry run
    def dry_run_note(self, command: str) -> None:
        """Dry run: track every ``<header> <value>`` part of a recorded message."""
        for part in command.split(";"):
            m = _SCPI_SET.fullmatch(part.strip())
            if m is not None:
                self.dry_values[m.group(1)] = m.group(2)

    def _dry_reply(self, command: str) -> str | None:
        """``1`` for ``*OPC?``, no error, read-backs echo what was set (``*RST`` values otherwise)."""
        part = command.split(";")[-1].strip()
        if part == "*OPC?":
            return "1"
        if part == "SYST:ERR?":
            return '+0,"No error"'
        if not part.endswith("?"):
            return None
        key = part[:-1]
        defaults = {  # *RST values of the settings the driver reads before writing them
            self.command("SOUR{ch}:FUNC:PULS:PER"): "1e-3",
            self.command("SOUR{ch}:FUNC:PULS:WIDT"): "1e-4",
        }
        value = self.dry_values.get(key, defaults.get(key))
        if value is None:
            return None
        words = {"ON": "1", "OFF": "0", "INF": "+9.9E+37"}
        if value in words:
            return words[value]
        try:
            return f"{float(value):+.14E}"
        except ValueError:
            return value

    def output_off(self) -> None:
        """``OUTP<ch> OFF``."""
        self.output = False
        self._cache["output"] = False

    def set_output(self, on: bool) -> None:
        """Output on/off and wait for it: ``OUTP<ch> ON;*OPC?`` (sent only when the state changes).

        The compound message (SCPI ``;`` separator, as in the manual's
        ``TRIG:SOUR BUS;*TRG;*WAI`` example) answers ``1`` once the output has
        switched, so relays can be moved right after.
        """
        on = bool(on)
        if self._cache.get("output") is on:
            return
        command = self.command("OUTP{ch} {v};*OPC?", v="ON" if on else "OFF")
        reply = self.query(command)
        if reply.strip() not in ("1", "+1"):
            raise InstrumentError(self.name, command, f"unexpected reply {reply!r}")
        self._cache["output"] = on

    def configure(self, high_v: float, width_s: float, period_s: float) -> None:
        """Set the channel up for bus-triggered pulse bursts; output left off.

        Validates every value first (nothing is sent if one is out of limits), then
        sends: ``*CLS``, output off, output limits off, high-Z load, pulse function,
        low level 0 V, high level, output limits ``+-max_write_voltage_v`` (each read
        back) and on (read back), pulse timing (see :meth:`set_timing`), triggered
        burst of 1 cycle, bus trigger, burst on, and reads the error queue.
        """
        type(self).high_level.prepare(self, high_v)
        self._check_timing(width_s, period_s)
        vmax = self.limits.max_write_voltage_v
        self._cache.clear()
        self.clear_errors()
        self.output_off()
        self.voltage_limits_enabled = False
        self.load = "inf"
        self.function = "pulse"
        self.low_level = 0.0
        self.high_level = high_v
        self.voltage_limit_high = vmax
        self.voltage_limit_low = -vmax
        self.voltage_limits_enabled = True
        self._cache["high"] = float(high_v)
        self.set_timing(width_s, period_s)
        self.burst_mode = "triggered"
        self.burst_count = 1
        self._cache["ncyc"] = 1
        self.trigger_source = "bus"
        self.burst_enabled = True
        self.check_errors()

    def _check_timing(self, width_s: float, period_s: float) -> None:
        type(self).pulse_width.prepare(self, width_s)
        type(self).pulse_period.prepare(self, period_s)
        if not period_s > width_s + MIN_WIDTH_S:
            raise SafetyError(
                f"{self.name}: pulse period {period_s:g} s must exceed the width {width_s:g} s by at least "
                f"{MIN_WIDTH_S:g} s; nothing was sent"
            )

    def set_timing(self, width_s: float, period_s: float) -> None:
        """Pulse width and period, in the order the instrument accepts.

        Queries the present period; if the new period is not shorter it is sent
        first, otherwise the width goes first, so that width < period holds after
        every single command (the instrument would otherwise adjust one of them).
        """
        self._check_timing(width_s, period_s)
        current = self.pulse_period
        if period_s >= current:
            self.pulse_period = period_s
            self.pulse_width = width_s
        else:
            self.pulse_width = width_s
            self.pulse_period = period_s
        self._cache["width"], self._cache["period"] = float(width_s), float(period_s)

    def set_pulse(self, high_v: float, width_s: float, period_s: float) -> None:
        """Amplitude and timing, each sent only when it differs from what was last set."""
        type(self).high_level.prepare(self, high_v)
        self._check_timing(width_s, period_s)
        if self._cache.get("high") != float(high_v):
            self.high_level = high_v
            self._cache["high"] = float(high_v)
        if (self._cache.get("width"), self._cache.get("period")) != (float(width_s), float(period_s)):
            self.set_timing(width_s, period_s)

    def fire(self, count: int) -> None:
        """One burst of ``count`` pulses: ``SOUR<ch>:BURS:NCYC <n>`` (if changed), then ``*TRG;*OPC?``.

        ``*OPC?`` answers when the burst is complete (TRIGger subsystem); the
        query's timeout covers ``count`` periods plus :attr:`completion_margin_s`.  The output must be on
        (:meth:`set_output`).
        """
        type(self).burst_count.prepare(self, count)
        if self._cache.get("ncyc") != int(count):
            self.burst_count = int(count)
            self._cache["ncyc"] = int(count)
        period = float(self._cache.get("period") or 0.0)
        reply = self.query("*TRG;*OPC?", timeout_s=int(count) * period + self.completion_margin_s)
        if reply.strip() not in ("1", "+1"):
            raise InstrumentError(self.name, "*TRG;*OPC?", f"unexpected reply {reply!r} after a burst")
