"""crossbar-hil: a hardware-in-the-loop layer for analog in-memory computing.

The public API is small and re-exported here; see docs/architecture.md.  The core names
(the backend contract, configs, device-model format, safety limits) are imported eagerly;
the main classes of the sub-packages (simulator, layers, training, extraction, drivers)
are re-exported lazily, so ``import hil`` stays cheap and never loads a driver stack::

    from hil import SimulatedCrossbar, TrainingController, convert_to_analog
"""

from hil.backend import BackendInfo, CrossbarBackend, OperationCounts, ProgramReport
from hil.backends import open_backend, register_scheme
from hil.config import HilModel, VersionedFile
from hil.device_model import (
    ConductanceMapping,
    ConstantStep,
    DeviceModel,
    DeviceVariation,
    ExpStep,
    LinearStep,
    PowStep,
    SoftBoundsStep,
    TableStep,
)
from hil.pulse_response import PulseResponse, PulseShape, SwitchingLaw
from hil.safety import SafetyError, SafetyLimits

__version__ = "0.1.0"

# name -> sub-package that defines it (imported on first access, PEP 562)
_LAZY = {
    "SimulatedCrossbar": "hil.simulated",
    "PeripheryConfig": "hil.simulated",
    "UpdateConfig": "hil.simulated",
    "AnalogLinear": "hil.nn",
    "AnalogConv2d": "hil.nn",
    "convert_to_analog": "hil.nn",
    "TrainingConfig": "hil.training",
    "TrainingController": "hil.training",
    "fit": "hil.training",
    "ModelAverager": "hil.extraction",
    "extract": "hil.extraction",
    "deploy": "hil.extraction",
    "calibrate_path": "hil.calibration",
    "PulseProtocol": "hil.characterization",
    "run_protocol": "hil.characterization",
    "compare_measurements": "hil.validation",
    "SerialCrossbar": "hil.drivers.chip",
    "BenchCrossbar": "hil.drivers.bench",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hil' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "BackendInfo",
    "ConductanceMapping",
    "ConstantStep",
    "CrossbarBackend",
    "DeviceModel",
    "DeviceVariation",
    "ExpStep",
    "HilModel",
    "LinearStep",
    "OperationCounts",
    "PowStep",
    "ProgramReport",
    "PulseResponse",
    "PulseShape",
    "SafetyError",
    "SafetyLimits",
    "SoftBoundsStep",
    "SwitchingLaw",
    "TableStep",
    "VersionedFile",
    "open_backend",
    "register_scheme",
    "__version__",
    *_LAZY,
]
