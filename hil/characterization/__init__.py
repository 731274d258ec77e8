"""Characterization protocols run on any backend (pulse-response, replay of a measurement)."""
