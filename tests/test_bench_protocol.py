"""Exact-exchange tests of the bench drivers: every byte sent and received, per operation.

Each test lists the ``(sent, reply)`` pairs one driver operation produces
(``reply`` is ``None`` for a command without an answer); the scripted resource
fails at the first byte that differs.  Out-of-limit requests must send nothing
(an empty script).  The last test does the same for ``BenchCrossbar`` on a
1 x 1 bench: configuration, read, up and down pulse, closing safe state.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bench_common import BENCH_LIMITS

from hil.drivers.bench import BenchConfig, BenchCrossbar
from hil.drivers.bench.instrument import (
    DryRunQueryError,
    InstrumentError,
    ScriptedResource,
    expected_protocol,
    format_number,
)
from hil.drivers.bench.keithley707b import Keithley707B, channel_name
from hil.drivers.bench.keithley2600b import Keithley2600B
from hil.drivers.bench.keysight33500b import Keysight33500B
from hil.safety import LimitMismatchError, SafetyError, SafetyGuard, SafetyLimits

EMPTY_TSP = b"0.00000e+00\tQueue Is Empty\t0.00000e+00\t0.00000e+00\n"


@pytest.fixture
def limits() -> SafetyLimits:
    return BENCH_LIMITS.model_copy()


# --------------------------------------------------------------------- helper
def test_format_number_is_exponent_notation() -> None:
    assert format_number(0.2) == "2.000000e-01"
    assert format_number(-1.5) == "-1.500000e+00"
    assert format_number(-0.0) == "0.000000e+00"
    assert format_number(12345678.0) == "1.234568e+07"
    with pytest.raises(ValueError):
        format_number(float("nan"))


def test_harness_fails_on_a_wrong_byte(limits: SafetyLimits) -> None:
    with pytest.raises(AssertionError, match="expected b'smua.reset\\(\\)\\\\n'"):
        with expected_protocol(Keithley2600B, [(b"smua.reset()\n", None)], limits=limits) as smu:
            smu.clear_errors()


def test_harness_fails_on_a_missing_step(limits: SafetyLimits) -> None:
    with pytest.raises(AssertionError, match="never sent"):
        with expected_protocol(Keithley2600B, [(b"smua.reset()\n", None), (b"errorqueue.clear()\n", None)],
                               limits=limits) as smu:
            smu.reset()


# --------------------------------------------------------------------- 2600B
def test_smu_configure_voltage_source(limits: SafetyLimits) -> None:
    script = [
        (b"smua.reset()\n", None),
        (b"errorqueue.clear()\n", None),
        (b"smua.source.func = smua.OUTPUT_DCVOLTS\n", None),
        (b"smua.source.limiti = 1.000000e-04\n", None),
        (b"print(smua.source.limiti)\n", b"1.00000e-04\n"),
        (b"smua.source.levelv = 2.000000e-01\n", None),
        (b"print(smua.source.levelv)\n", b"2.00000e-01\n"),
        (b"smua.measure.autorangei = smua.AUTORANGE_ON\n", None),
        (b"smua.measure.nplc = 1.000000e-01\n", None),
        (b"print(errorqueue.next())\n", EMPTY_TSP),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        smu.configure_voltage_source(0.2, 1e-4, 0.1)
        assert smu.commands_sent == len(script)


def test_smu_channel_b_and_properties(limits: SafetyLimits) -> None:
    script = [
        (b"smub.source.levelv = -3.000000e-01\n", None),
        (b"print(smub.source.levelv)\n", b"-3.00000e-01\n"),
        (b"smub.source.output = smub.OUTPUT_ON\n", None),
        (b"print(smub.source.output)\n", b"1.00000e+00\n"),
        (b"print(smub.measure.i())\n", b"4.20000e-06\n"),
        (b"print(smub.source.compliance)\n", b"false\n"),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits, channel="b") as smu:
        smu.source_voltage = -0.3
        assert smu.source_voltage == pytest.approx(-0.3)
        smu.output = True
        assert smu.output is True
        assert smu.current == pytest.approx(4.2e-6)
        assert smu.in_compliance is False


def test_smu_read_current_is_one_message(limits: SafetyLimits) -> None:
    script = [
        (
            b"smua.source.output = smua.OUTPUT_ON hil_i = smua.measure.i() "
            b"smua.source.output = smua.OUTPUT_OFF print(hil_i)\n",
            b"1.25000e-05\n",
        )
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        assert smu.read_current() == pytest.approx(1.25e-5)


def test_smu_read_at_compliance_is_an_error(limits: SafetyLimits) -> None:
    script = [
        (b"smua.source.limiti = 1.000000e-04\n", None),
        (b"print(smua.source.limiti)\n", b"1.00000e-04\n"),
        (
            b"smua.source.output = smua.OUTPUT_ON hil_i = smua.measure.i() "
            b"smua.source.output = smua.OUTPUT_OFF print(hil_i)\n",
            b"1.00000e-04\n",
        ),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        smu.current_limit = 1e-4  # the compliance check uses the limit last set
        with pytest.raises(InstrumentError, match="compliance"):
            smu.read_current()


@pytest.mark.parametrize(
    "action",
    [
        lambda s: setattr(s, "source_voltage", 0.6),  # beyond max_read_voltage_v
        lambda s: setattr(s, "source_voltage", float("nan")),
        lambda s: setattr(s, "current_limit", 2e-3),  # beyond compliance_current_a
        lambda s: setattr(s, "current_limit", 0.0),
        lambda s: setattr(s, "nplc", 30),
        lambda s: setattr(s, "output", "on"),
        lambda s: s.configure_voltage_source(0.6, 1e-4, 1.0),  # nothing at all, not even the reset
        lambda s: s.pulse_train(2.5, 1e-3, 2e-3, 1),  # amplitude beyond max_write_voltage_v
        lambda s: s.pulse_train(1.0, 1e-4, 2e-3, 1),  # too short for a TSP loop
        lambda s: s.pulse_train(1.0, 1e-3, 1e-3, 1),  # period not above width
        lambda s: s.pulse_train(1.0, 1e-3, 2e-3, 101),  # beyond max_pulses_per_call
        lambda s: s.pulse_train(1.0, 1e-3, 2e-3, 1.5),
    ],
)
def test_smu_out_of_limit_sends_nothing(limits: SafetyLimits, action) -> None:
    with expected_protocol(Keithley2600B, [], limits=limits) as smu:
        with pytest.raises(SafetyError, match="nothing was sent|refused"):
            action(smu)


def test_smu_limit_readback_mismatch(limits: SafetyLimits) -> None:
    script = [
        (b"smua.source.limiti = 1.000000e-04\n", None),
        (b"print(smua.source.limiti)\n", b"1.00000e-03\n"),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        with pytest.raises(LimitMismatchError, match="read back"):
            smu.current_limit = 1e-4


def test_smu_pulse_train(limits: SafetyLimits) -> None:
    script = [
        (
            b"smua.source.levelv = 0.000000e+00 smua.source.output = smua.OUTPUT_ON "
            b"for k = 1, 3 do smua.source.levelv = -1.500000e+00 delay(1.000000e-03) "
            b"smua.source.levelv = 0.000000e+00 delay(4.000000e-03) end smua.source.output = smua.OUTPUT_OFF\n",
            None,
        ),
        (b"*OPC?\n", b"1\n"),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        smu.pulse_train(-1.5, 1e-3, 5e-3, 3)


def test_smu_error_queue_reports_errors_and_recent_commands(limits: SafetyLimits) -> None:
    script = [
        (b"smua.measure.nplc = 1.000000e+00\n", None),
        (b"print(errorqueue.next())\n", b"-2.85000e+02\tTSP Syntax error at line 1\t2.00000e+01\t0.00000e+00\n"),
        (b"print(errorqueue.next())\n", EMPTY_TSP),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        smu.nplc = 1.0
        with pytest.raises(InstrumentError) as info:
            smu.check_errors()
    assert info.value.code == -285
    assert "TSP Syntax error" in str(info.value) and "smua.measure.nplc" in str(info.value)
    assert info.value.instrument == "smu"


def test_smu_snapshot_reads_every_property(limits: SafetyLimits) -> None:
    script = [
        (b"print(smua.source.levelv)\n", b"2.00000e-01\n"),
        (b"print(smua.source.limiti)\n", b"1.00000e-04\n"),
        (b"print(smua.measure.nplc)\n", b"1.00000e+00\n"),
        (b"print(smua.source.output)\n", b"0.00000e+00\n"),
        (b"print(smua.measure.i())\n", b"0.00000e+00\n"),
        (b"print(smua.source.compliance)\n", b"false\n"),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        snap = smu.snapshot()
    assert snap == {"source_voltage": 0.2, "current_limit": 1e-4, "nplc": 1.0, "output": False,
                    "current": 0.0, "in_compliance": False}


def test_property_docs_name_command_and_units() -> None:
    doc = Keithley2600B.source_voltage.__doc__
    assert "smu{ch}.source.levelv = {value}" in doc and "Units: V" in doc
    assert "read back" in Keithley2600B.current_limit.__doc__


def test_dry_run_records_everything_and_answers_nominally(limits: SafetyLimits) -> None:
    guard = SafetyGuard(limits, None, name="dry", dry_run=True)
    res = ScriptedResource([])
    smu = Keithley2600B(res, limits=limits, guard=guard)
    smu.source_voltage = 0.1
    smu.current_limit = 2e-4  # read back: the dry-run reply echoes the value written
    assert smu.identify() == "dry-run,keithley2600b,0,0"
    assert math.isnan(smu.read_current())  # nothing is measured
    assert smu.source_voltage == pytest.approx(0.1)
    smu.check_errors()
    with pytest.raises(SafetyError):
        smu.source_voltage = 0.6  # refused exactly as in a real run: nothing recorded
    with pytest.raises(DryRunQueryError):
        smu.query("print(smua.source.levelx)")  # no assumed reply: refused, not invented
    assert [r.data for r in guard.recorded] == [
        b"smua.source.levelv = 1.000000e-01\n",
        b"smua.source.limiti = 2.000000e-04\n",
        b"print(smua.source.limiti)\n",
        b"*IDN?\n",
        b"smua.source.output = smua.OUTPUT_ON hil_i = smua.measure.i() "
        b"smua.source.output = smua.OUTPUT_OFF print(hil_i)\n",
        b"print(smua.source.levelv)\n",
        b"print(errorqueue.next())\n",
        b"print(smua.source.levelx)\n",
    ]
    assert {r.label for r in guard.recorded} == {"smu"}
    assert smu.commands_sent == 0 and smu.link.commands_recorded == len(guard.recorded)
    res.assert_done()  # nothing reached the resource
    guard.close()


def test_dry_run_matrix_and_generator_track_state(limits: SafetyLimits) -> None:
    guard = SafetyGuard(limits, None, name="dry", dry_run=True)
    m = Keithley707B(ScriptedResource([]), limits=limits, guard=guard)
    m.route(["1A01", "1C05"])  # read back as requested
    m.close_channels(["1B02"])
    assert m.closed_channels() == ["1A01", "1B02", "1C05"]
    m.open_all_verified()
    assert m.closed_channels() == []
    gen = Keysight33500B(ScriptedResource([]), limits=limits, guard=guard)
    gen.configure(1.2, 1e-6, 1e-5)  # every limit read back from the echo
    gen.set_output(True)
    gen.fire(3)
    assert gen.burst_count == 3 and gen.voltage_limits_enabled is True and gen.load == "inf"
    sent = [r.data for r in guard.recorded if r.label == "pulse"]
    assert sent[: len(_configure_script())] == [s for s, _ in _configure_script()]
    guard.close()


# --------------------------------------------------------------------- 707B
def test_channel_names() -> None:
    assert channel_name(1, "A", 1) == "1A01"
    assert channel_name(6, "H", 12) == "6H12"
    for bad in ((0, "A", 1), (1, "I", 1), (1, "A", 13), (1, "a", 1)):
        with pytest.raises(ValueError):
            channel_name(*bad)


def test_matrix_route_and_open(limits: SafetyLimits) -> None:
    script = [
        (b'channel.exclusiveclose("1A01,1C05") print(channel.getclose("allslots"))\n', b"1A01;1C05\n"),
        (b'channel.open("allslots") print(channel.getclose("allslots"))\n', b"nil\n"),
        (b'channel.open("allslots")\n', None),
        (b'channel.close("1B02")\n', None),
        (b'channel.open("1B02")\n', None),
        (b'print(channel.getclose("allslots"))\n', b"nil\n"),
        (b"*IDN?\n", b"Keithley Instruments Inc., Model 707B, 1, 1.5\n"),
        (b"print(errorqueue.next())\n", EMPTY_TSP),
    ]
    with expected_protocol(Keithley707B, script, limits=limits) as m:
        m.route(["1A01", "1C05"])
        m.open_all_verified()
        m.open_all()
        m.close_channels([m.channel("B", 2)])
        m.open_channels(["1B02"])
        assert m.closed_channels() == []
        assert "707B" in m.identify()
        m.check_errors()


def test_matrix_route_read_back_mismatch(limits: SafetyLimits) -> None:
    script = [(b'channel.exclusiveclose("1B01,1C06") print(channel.getclose("allslots"))\n', b"1B01\n")]
    with expected_protocol(Keithley707B, script, limits=limits) as m:
        with pytest.raises(InstrumentError, match="differs"):
            m.route(["1B01", "1C06"])


@pytest.mark.parametrize(
    "channels",
    [[], ["1A1"], ["1I01"], ["1A13"], ["2A01"], ["1A01", "1A01"], ["1A01", "1C01"],
     ["1A01", "1C02", "1C03", "1C04"], ["allslots"]],
)
def test_matrix_bad_channel_lists_send_nothing(limits: SafetyLimits, channels: list[str]) -> None:
    with expected_protocol(Keithley707B, [], limits=limits, slot=1, max_closed=3) as m:
        with pytest.raises(SafetyError, match="nothing was sent"):
            m.route(channels)


# --------------------------------------------------------------------- 33500B
def _configure_script() -> list[tuple[bytes, bytes | None]]:
    return [
        (b"*CLS\n", None),
        (b"OUTP1 OFF\n", None),
        (b"SOUR1:VOLT:LIM:STAT OFF\n", None),
        (b"SOUR1:VOLT:LIM:STAT?\n", b"0\n"),
        (b"OUTP1:LOAD INF\n", None),
        (b"SOUR1:FUNC PULS\n", None),
        (b"SOUR1:VOLT:LOW 0.000000e+00\n", None),
        (b"SOUR1:VOLT:HIGH 1.200000e+00\n", None),
        (b"SOUR1:VOLT:LIM:HIGH 2.000000e+00\n", None),
        (b"SOUR1:VOLT:LIM:HIGH?\n", b"+2.00000000000000E+00\n"),
        (b"SOUR1:VOLT:LIM:LOW -2.000000e+00\n", None),
        (b"SOUR1:VOLT:LIM:LOW?\n", b"-2.00000000000000E+00\n"),
        (b"SOUR1:VOLT:LIM:STAT ON\n", None),
        (b"SOUR1:VOLT:LIM:STAT?\n", b"1\n"),
        (b"SOUR1:FUNC:PULS:PER?\n", b"+1.00000000000000E-03\n"),
        (b"SOUR1:FUNC:PULS:WIDT 1.000000e-06\n", None),
        (b"SOUR1:FUNC:PULS:PER 1.000000e-05\n", None),
        (b"SOUR1:BURS:MODE TRIG\n", None),
        (b"SOUR1:BURS:NCYC 1\n", None),
        (b"TRIG1:SOUR BUS\n", None),
        (b"SOUR1:BURS:STAT ON\n", None),
        (b"SYST:ERR?\n", b'+0,"No error"\n'),
    ]


def test_generator_configure(limits: SafetyLimits) -> None:
    with expected_protocol(Keysight33500B, _configure_script(), limits=limits) as gen:
        gen.configure(1.2, 1e-6, 1e-5)


def test_generator_bursts_and_caching(limits: SafetyLimits) -> None:
    script = _configure_script() + [
        (b"OUTP1 ON;*OPC?\n", b"1\n"),
        (b"*TRG;*OPC?\n", b"1\n"),  # NCYC 1 already set: not sent again
        (b"SOUR1:BURS:NCYC 3\n", None),
        (b"*TRG;*OPC?\n", b"1\n"),
        (b"SOUR1:VOLT:HIGH 1.400000e+00\n", None),  # new amplitude, same timing: only the level
        (b"*TRG;*OPC?\n", b"1\n"),
        (b"SOUR1:FUNC:PULS:PER?\n", b"+1.00000000000000E-05\n"),  # longer period: period first
        (b"SOUR1:FUNC:PULS:PER 1.000000e-04\n", None),
        (b"SOUR1:FUNC:PULS:WIDT 2.000000e-05\n", None),
        (b"OUTP1 OFF;*OPC?\n", b"1\n"),
    ]
    with expected_protocol(Keysight33500B, script, limits=limits) as gen:
        gen.configure(1.2, 1e-6, 1e-5)
        gen.set_output(True)
        gen.set_output(True)  # no change: nothing sent
        gen.fire(1)
        gen.fire(3)
        gen.set_pulse(1.4, 1e-6, 1e-5)
        gen.fire(3)
        gen.set_pulse(1.4, 2e-5, 1e-4)
        gen.set_output(False)


@pytest.mark.parametrize(
    "action",
    [
        lambda g: setattr(g, "high_level", 2.5),
        lambda g: setattr(g, "high_level", -0.1),
        lambda g: setattr(g, "pulse_width", 5e-8),  # below min_pulse_width_s
        lambda g: setattr(g, "pulse_width", 0.1),  # above max_pulse_width_s
        lambda g: setattr(g, "burst_count", 101),
        lambda g: setattr(g, "burst_count", 0),
        lambda g: setattr(g, "voltage_limit_high", 3.0),
        lambda g: g.configure(2.1, 1e-6, 1e-5),
        lambda g: g.configure(1.0, 1e-6, 1e-6),  # period not above width
        lambda g: g.fire(1000),
    ],
)
def test_generator_out_of_limit_sends_nothing(limits: SafetyLimits, action) -> None:
    with expected_protocol(Keysight33500B, [], limits=limits) as gen:
        with pytest.raises(SafetyError):
            action(gen)


def test_generator_error_queue(limits: SafetyLimits) -> None:
    script = [
        (b"SYST:ERR?\n", b'-222,"Data out of range"\n'),
        (b"SYST:ERR?\n", b'+0,"No error"\n'),
    ]
    with expected_protocol(Keysight33500B, script, limits=limits) as gen:
        with pytest.raises(InstrumentError, match="Data out of range") as info:
            gen.check_errors()
    assert info.value.code == -222


def test_generator_limit_readback_mismatch(limits: SafetyLimits) -> None:
    """An output limit the instrument did not take (rounded, refused) is an error, not a warning."""
    script = [
        (b"SOUR1:VOLT:LIM:HIGH 2.000000e+00\n", None),
        (b"SOUR1:VOLT:LIM:HIGH?\n", b"+1.00000000000000E+00\n"),
    ]
    with expected_protocol(Keysight33500B, script, limits=limits) as gen:
        with pytest.raises(LimitMismatchError, match="read back"):
            gen.voltage_limit_high = 2.0


def test_limits_go_out_in_exponent_notation(limits: SafetyLimits) -> None:
    """Small and large limits alike: never fixed notation (no 0.0001 vs 1e-04 ambiguity)."""
    script = [
        (b"smua.source.limiti = 1.000000e-09\n", None),
        (b"print(smua.source.limiti)\n", b"1.00000e-09\n"),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        smu.current_limit = 1e-9


# --------------------------------------------------------------------- every remaining operation
@pytest.mark.parametrize(
    ("cls", "opc_reply"),
    [(Keithley2600B, b"1\n"), (Keithley707B, b"1\n"), (Keysight33500B, b"1\n")],
)
def test_common_commands(limits: SafetyLimits, cls, opc_reply: bytes) -> None:
    script = [
        (b"*IDN?\n", b"Maker,Model,1,1.0\n"),
        (b"*OPC?\n", opc_reply),
        (b"*OPC?\n", b"0\n"),
    ]
    with expected_protocol(cls, script, limits=limits) as inst:
        assert inst.identify() == "Maker,Model,1,1.0"
        inst.sync(timeout_s=0.5)
        with pytest.raises(InstrumentError, match="unexpected reply"):
            inst.sync()


def test_smu_reset_clear_output_off_and_measure(limits: SafetyLimits) -> None:
    script = [
        (b"smua.reset()\n", None),
        (b"errorqueue.clear()\n", None),
        (b"smua.source.limiti = 1.000000e-04\n", None),
        (b"print(smua.source.limiti)\n", b"1.00000e-04\n"),
        (b"print(smua.measure.i())\n", b"-2.50000e-06\n"),
        (b"print(smua.measure.i())\n", b"9.99990e-05\n"),
        (b"smua.source.output = smua.OUTPUT_OFF\n", None),
    ]
    with expected_protocol(Keithley2600B, script, limits=limits) as smu:
        smu.reset()
        smu.clear_errors()
        smu.current_limit = 1e-4
        assert smu.measure_current() == pytest.approx(-2.5e-6)
        with pytest.raises(InstrumentError, match="compliance"):
            smu.measure_current()
        smu.output_off()


def test_matrix_exclusive_close_and_clear(limits: SafetyLimits) -> None:
    script = [
        (b'channel.exclusiveclose("1B03,1C07")\n', None),
        (b"errorqueue.clear()\n", None),
    ]
    with expected_protocol(Keithley707B, script, limits=limits) as m:
        m.exclusive_close(["1B03", "1C07"])
        m.clear_errors()


def test_generator_clear_output_off_and_shorter_period(limits: SafetyLimits) -> None:
    script = [
        (b"*CLS\n", None),
        (b"OUTP1 OFF\n", None),
        (b"SOUR1:FUNC:PULS:PER?\n", b"+1.00000000000000E-03\n"),  # shorter period: width first
        (b"SOUR1:FUNC:PULS:WIDT 2.000000e-07\n", None),
        (b"SOUR1:FUNC:PULS:PER 1.000000e-06\n", None),
        (b"SOUR1:FUNC:PULS:WIDT?\n", b"+2.00000000000000E-07\n"),
    ]
    with expected_protocol(Keysight33500B, script, limits=limits) as gen:
        gen.clear_errors()
        gen.output_off()
        gen.set_timing(2e-7, 1e-6)
        assert gen.pulse_width == pytest.approx(2e-7)


# --------------------------------------------------------------------- BenchCrossbar, byte for byte
def _one_device_bench() -> BenchConfig:
    """The test bench file cut down to one device: word line on column 1, bit line on column 5."""
    data = BenchConfig.load(Path(__file__).parent / "bench_sim" / "bench_emulated.yaml").model_dump(mode="json")
    data["matrix"].update(array_rows=[1], array_cols=[5])
    return BenchConfig.model_validate(data)


def test_bench_crossbar_exchanges_for_every_operation() -> None:
    """Configure, read, an up pulse, a down pulse and the closing safe state of a 1 x 1 bench."""
    idn = (b"*IDN?\n", b"Maker,Model,1,1.0\n")
    no_error = (b"SYST:ERR?\n", b'+0,"No error"\n')
    tsp_ok = (b"print(errorqueue.next())\n", EMPTY_TSP)
    open_all = (b'channel.open("allslots") print(channel.getclose("allslots"))\n', b"nil\n")
    smu = [idn] + [
        (b"smua.reset()\n", None),
        (b"errorqueue.clear()\n", None),
        (b"smua.source.func = smua.OUTPUT_DCVOLTS\n", None),
        (b"smua.source.limiti = 1.000000e-04\n", None),
        (b"print(smua.source.limiti)\n", b"1.00000e-04\n"),
        (b"smua.source.levelv = 2.000000e-01\n", None),
        (b"print(smua.source.levelv)\n", b"2.00000e-01\n"),
        (b"smua.measure.autorangei = smua.AUTORANGE_ON\n", None),
        (b"smua.measure.nplc = 1.000000e-01\n", None),
        tsp_ok,
    ] + [  # read
        (b"smua.source.output = smua.OUTPUT_ON hil_i = smua.measure.i() "
         b"smua.source.output = smua.OUTPUT_OFF print(hil_i)\n", b"2.00000e-06\n"),
        tsp_ok,
    ] + [  # close: output off at once, then confirmed
        (b"smua.source.output = smua.OUTPUT_OFF\n", None),
        (b"*OPC?\n", b"1\n"),
    ]
    matrix = [idn, (b"errorqueue.clear()\n", None), open_all, tsp_ok] + [  # configure
        (b'channel.exclusiveclose("1A01,1C05") print(channel.getclose("allslots"))\n', b"1A01;1C05\n"),
        open_all, tsp_ok,  # read
        (b'channel.exclusiveclose("1B01,1C05") print(channel.getclose("allslots"))\n', b"1B01;1C05\n"),
        open_all, tsp_ok,  # up pulse: generator on the word line
        (b'channel.exclusiveclose("1B05,1C01") print(channel.getclose("allslots"))\n', b"1B05;1C01\n"),
        open_all, tsp_ok,  # down pulse: generator on the bit line
        open_all,  # close
    ]
    pulse = [idn] + _configure_script() + [
        (b"OUTP1 ON;*OPC?\n", b"1\n"), (b"*TRG;*OPC?\n", b"1\n"), (b"OUTP1 OFF;*OPC?\n", b"1\n"), no_error,
        (b"SOUR1:VOLT:HIGH 1.400000e+00\n", None),  # the down amplitude
        (b"OUTP1 ON;*OPC?\n", b"1\n"), (b"*TRG;*OPC?\n", b"1\n"), (b"OUTP1 OFF;*OPC?\n", b"1\n"), no_error,
        (b"OUTP1 OFF\n", None), (b"*OPC?\n", b"1\n"),  # close
    ]
    resources = {"smu": ScriptedResource(smu, "smu"), "matrix": ScriptedResource(matrix, "matrix"),
                 "pulse_generator": ScriptedResource(pulse, "pulse")}
    xb = BenchCrossbar(_one_device_bench(), resources=resources, arm=True)
    assert xb.read_conductances().tolist() == [[pytest.approx(1e-5)]]
    xb.pulse(torch.tensor([[1]]))
    xb.pulse(torch.tensor([[-1]]))
    xb.close()
    for res in resources.values():
        res.assert_done()
    assert xb.commands_sent == len(smu) + len(matrix) + len(pulse)
