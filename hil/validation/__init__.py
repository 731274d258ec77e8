"""Simulator-to-silicon validation: statistical comparison of two measurement files."""
