"""Instrument and test-chip drivers, each a CrossbarBackend (``hil.drivers``)."""
