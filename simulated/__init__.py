"""Simulated resistive crossbar arrays (``hil.simulated``): device models + periphery, in torch."""

from hil.simulated.crossbar import SimulatedCrossbar, SimulatedCrossbarConfig, resolve_device_model
from hil.simulated.devices import DeviceArray
from hil.simulated.periphery import PeripheryConfig
from hil.simulated.presets import get_preset, list_presets
from hil.simulated.pulse_trains import UpdateConfig

__all__ = [
    "DeviceArray",
    "PeripheryConfig",
    "SimulatedCrossbar",
    "SimulatedCrossbarConfig",
    "UpdateConfig",
    "get_preset",
    "list_presets",
    "resolve_device_model",
]
