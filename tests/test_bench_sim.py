"""The bench drivers against pyvisa-sim instruments (tests/bench_sim/*.yaml): syntax and error paths.

Each test copies the YAML into its own temporary folder before opening it, so
every test gets a freshly reset instrument (pyvisa caches one simulated
library per file path).  A command the YAML does not know goes to the
instrument's error queue and is reported by the driver's next check_errors().
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from bench_common import BENCH_LIMITS

from hil.drivers.bench.crossbar import open_visa_resource
from hil.drivers.bench.instrument import InstrumentError, InstrumentTimeout
from hil.drivers.bench.keithley707b import Keithley707B
from hil.drivers.bench.keithley2600b import Keithley2600B
from hil.drivers.bench.keysight33500b import Keysight33500B
from hil.safety import SafetyError, SafetyLimits

pytest.importorskip("pyvisa_sim")

SIM = Path(__file__).parent / "bench_sim"
RESOURCES = {
    "keithley2600b": "TCPIP::127.0.0.1::5025::SOCKET",
    "keithley707b": "TCPIP::127.0.0.1::5026::SOCKET",
    "keysight33500b": "TCPIP::127.0.0.1::5024::SOCKET",
}


@pytest.fixture
def limits() -> SafetyLimits:
    return BENCH_LIMITS.model_copy()


@pytest.fixture
def open_sim(tmp_path: Path):
    managers: dict[str, Any] = {}
    opened: list[Any] = []

    def _open(model: str, timeout_s: float = 0.2) -> Any:
        path = tmp_path / f"{model}.yaml"
        shutil.copy(SIM / f"{model}.yaml", path)
        res = open_visa_resource(RESOURCES[model], f"{path}@sim", timeout_s, managers)
        opened.append(res)
        return res

    yield _open
    for res in opened:
        res.close()
    for rm in managers.values():
        rm.close()


def test_smu_configure_and_read(open_sim, limits: SafetyLimits) -> None:
    smu = Keithley2600B(open_sim("keithley2600b"), limits=limits)
    assert "2602B" in smu.identify()
    smu.configure_voltage_source(0.2, 1e-4, 0.5)
    assert smu.source_voltage == pytest.approx(0.2)
    assert smu.nplc == pytest.approx(0.5)
    assert smu.read_current() == pytest.approx(2e-6)
    smu.output = True
    assert smu.measure_current() == pytest.approx(1e-6)
    smu.output_off()
    smu.check_errors()


def test_smu_wrong_command_fails_at_the_next_check(open_sim, limits: SafetyLimits) -> None:
    smu = Keithley2600B(open_sim("keithley2600b"), limits=limits)
    smu.write("smua.source.levelx = 1")  # a typo the instrument does not know
    with pytest.raises(InstrumentError, match="TSP Syntax error") as info:
        smu.check_errors()
    assert "smua.source.levelx = 1" in str(info.value)
    smu.check_errors()  # the queue is empty again


def test_smu_instrument_range_is_checked_by_the_instrument(open_sim) -> None:
    # limits looser than the instrument's own range: the driver sends it, the instrument refuses
    loose = SafetyLimits(
        max_read_voltage_v=50.0, max_write_voltage_v=50.0, max_pulse_width_s=1.0,
        compliance_current_a=1e-3, max_pulses_per_call=10,
    )
    smu = Keithley2600B(open_sim("keithley2600b"), limits=loose)
    smu.write("smua.source.levelv = " + "4.500000e+01")
    with pytest.raises(InstrumentError):
        smu.check_errors()
    assert smu.source_voltage == 0.0  # unchanged


def test_smu_limits_refused_before_the_instrument(open_sim, limits: SafetyLimits) -> None:
    smu = Keithley2600B(open_sim("keithley2600b"), limits=limits)
    with pytest.raises(SafetyError):
        smu.source_voltage = 1.0
    assert smu.commands_sent == 0
    assert smu.source_voltage == 0.0


def test_unknown_query_times_out_fast(open_sim, limits: SafetyLimits) -> None:
    smu = Keithley2600B(open_sim("keithley2600b", timeout_s=0.1), limits=limits)
    with pytest.raises(InstrumentTimeout, match="no reply"):
        smu.query("print(smua.source.levelx)")


def test_matrix_route_and_error_paths(open_sim, limits: SafetyLimits) -> None:
    m = Keithley707B(open_sim("keithley707b"), limits=limits)
    assert "707B" in m.identify()
    m.clear_errors()
    m.open_all_verified()
    m.route(["1A01", "1C05"])
    with pytest.raises(InstrumentError, match="differs"):
        m.route(["1B01", "1C06"])  # the simulated card answers with one relay missing
    m.write('channel.close("1Z01")')
    with pytest.raises(InstrumentError, match="TSP Syntax error"):
        m.check_errors()


def test_generator_configure_and_burst(open_sim, limits: SafetyLimits) -> None:
    gen = Keysight33500B(open_sim("keysight33500b"), limits=limits)
    assert "33522B" in gen.identify()
    gen.configure(1.2, 1e-6, 1e-5)
    assert gen.high_level == pytest.approx(1.2)
    assert gen.low_level == 0.0
    assert gen.pulse_width == pytest.approx(1e-6)
    assert gen.pulse_period == pytest.approx(1e-5)
    assert gen.voltage_limits_enabled is True
    assert gen.load == "inf"
    gen.set_output(True)
    gen.fire(5)
    assert gen.burst_count == 5
    gen.set_output(False)
    gen.check_errors()


def test_generator_wrong_command_is_queued(open_sim, limits: SafetyLimits) -> None:
    gen = Keysight33500B(open_sim("keysight33500b"), limits=limits)
    gen.write("SOUR1:VOLT:HIGHH 1")
    with pytest.raises(InstrumentError, match="Undefined header") as info:
        gen.check_errors()
    assert info.value.code == -113
