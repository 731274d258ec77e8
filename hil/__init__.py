"""crossbar-hil: a hardware-in-the-loop layer for analog in-memory computing.

The public API is small and re-exported here; see docs/architecture.md.
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
from hil.safety import SafetyError, SafetyLimits

__version__ = "0.1.0"

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
    "SafetyError",
    "SafetyLimits",
    "SoftBoundsStep",
    "TableStep",
    "VersionedFile",
    "open_backend",
    "register_scheme",
    "__version__",
]
