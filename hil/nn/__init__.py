"""Analog torch layers (AnalogLinear, AnalogConv2d) and convert_to_analog (issue: TTv2 training)."""
