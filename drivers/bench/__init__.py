"""Bench instruments over pyvisa (SMU, pulse source, switch matrix) as a CrossbarBackend."""
