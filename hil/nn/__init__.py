"""Analog torch layers (``AnalogLinear``, ``AnalogConv2d``) and ``convert_to_analog``.

The layers' matrix products run on :class:`~hil.backend.CrossbarBackend` arrays
through a custom autograd Function; biases stay digital.  See
:mod:`hil.nn.layers` for the conventions (noise management, ``out_scale``) and
docs/training.md for training them.
"""

from hil.nn.convert import convert_to_analog
from hil.nn.layers import AnalogConv2d, AnalogLayer, AnalogLinear, analog_layers

__all__ = ["AnalogConv2d", "AnalogLayer", "AnalogLinear", "analog_layers", "convert_to_analog"]
