"""Bench instruments over pyvisa (SMU, pulse source, switch matrix) as a CrossbarBackend.

- drivers: :class:`Keithley2600B` (SMU, TSP), :class:`Keithley707B` (switch
  matrix, TSP), :class:`Keysight33500B` (pulse generator, SCPI), built on the
  declarative-property base in :mod:`hil.drivers.bench.instrument`;
- :class:`BenchConfig` (the ``BENCH.yaml`` file) and :class:`BenchCrossbar`
  (the backend; spec ``bench:BENCH.yaml``);
- :class:`BenchEmulator`: the three instruments on loopback sockets, backed by a
  hidden SimulatedCrossbar, for tests and examples.

See ``docs/bench.md``.
"""

from hil.drivers.bench.config import (
    BenchConfig,
    MatrixConfig,
    PulseConfig,
    PulseGeneratorConfig,
    PulseShape,
    ReadConfig,
    SMUConfig,
)
from hil.drivers.bench.crossbar import BenchCrossbar
from hil.drivers.bench.emulator import BenchEmulator, BenchWiring, EmulatorStats
from hil.drivers.bench.factory import open_bench
from hil.drivers.bench.instrument import (
    DryRunQueryError,
    DryRunResource,
    Instrument,
    InstrumentConnectionLost,
    InstrumentError,
    InstrumentTimeout,
    ScriptedResource,
    TSPInstrument,
    control,
    expected_protocol,
    format_number,
    measurement,
    setting,
    strict_discrete_set,
    strict_int_range,
    strict_range,
)
from hil.drivers.bench.keithley707b import Keithley707B
from hil.drivers.bench.keithley2600b import Keithley2600B
from hil.drivers.bench.keysight33500b import Keysight33500B

__all__ = [
    "BenchConfig",
    "BenchCrossbar",
    "BenchEmulator",
    "BenchWiring",
    "DryRunQueryError",
    "DryRunResource",
    "EmulatorStats",
    "Instrument",
    "InstrumentConnectionLost",
    "InstrumentError",
    "InstrumentTimeout",
    "Keithley2600B",
    "Keithley707B",
    "Keysight33500B",
    "MatrixConfig",
    "PulseConfig",
    "PulseGeneratorConfig",
    "PulseShape",
    "ReadConfig",
    "SMUConfig",
    "ScriptedResource",
    "TSPInstrument",
    "control",
    "expected_protocol",
    "format_number",
    "measurement",
    "open_bench",
    "setting",
    "strict_discrete_set",
    "strict_int_range",
    "strict_range",
]
