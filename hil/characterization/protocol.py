"""Pulse-response protocols (``PROTOCOL.json``): what ``hil characterize --protocol`` runs.

A protocol is ``cycles`` repetitions of: ``repeated_reads`` reads without a pulse
(polarity 0, for read noise), then ``n_up`` potentiation pulses and ``n_down``
depression pulses (or down first), each followed by one read of the array
(``reads`` full-array reads averaged).  All sampled devices get their pulses at
the same time, one ``pulse()`` and one ``read()`` per step, through the
:class:`~hil.backend.CrossbarBackend` contract only.

``amplitude_up_v``, ``amplitude_down_v`` and ``width_s`` are applied on a backend that
can apply pulse shapes (``info.pulse_shapes``: a simulator whose device model has a
pulse response); any other backend applies its own configured pulse, and they are
recorded in the output columns as the conditions the backend was set up with (a
driver's config holds the real values).  ``read_voltage_v`` is always recorded only.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from hil.config import VersionedFile


class PulseProtocol(VersionedFile):
    """A pulse-response characterization protocol (JSON file with ``schema_version``)."""

    SCHEMA_VERSION = "1.0"
    name: str = "pulse-response"
    n_up: int = Field(50, ge=0, description="potentiation pulses per cycle")
    n_down: int = Field(50, ge=0, description="depression pulses per cycle")
    cycles: int = Field(5, ge=1)
    order: Literal["up_first", "down_first"] = "up_first"
    reads: int = Field(1, ge=1, description="full-array reads averaged for every recorded read")
    repeated_reads: int = Field(
        0, ge=0, description="reads without a pulse at the start of every cycle (read noise)"
    )
    amplitude_up_v: float | None = Field(None, description="recorded potentiation amplitude, volts")
    amplitude_down_v: float | None = Field(None, description="recorded depression amplitude, volts")
    width_s: float | None = Field(None, ge=0, description="recorded pulse width, seconds")
    read_voltage_v: float | None = Field(None, description="recorded read voltage, volts")
    devices: Literal["all"] | int | list[tuple[int, int]] = Field(
        "all", description="'all', a number of devices sampled at random (seeded), or [[row, col], ...]"
    )
    seed: int = Field(0, description="seed of the device sample")
    start_weight: float | None = Field(
        None, description="program the sampled devices to this weight before cycle 0 (None: as they are)"
    )
    start_tol: float = Field(0.02, gt=0, description="write-verify tolerance for start/resume, normalized units")

    @model_validator(mode="after")
    def _check(self) -> PulseProtocol:
        if self.n_up + self.n_down + self.repeated_reads == 0:
            raise ValueError("protocol has no steps: n_up + n_down + repeated_reads must be > 0")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"devices must be >= 1 when a number, got {self.devices}")
        if isinstance(self.devices, list) and not self.devices:
            raise ValueError("devices list is empty")
        return self

    def schedule(self) -> list[tuple[int, int]]:
        """``(cycle, polarity)`` of every step, in order."""
        steps: list[tuple[int, int]] = []
        first, second = ((1, self.n_up), (-1, self.n_down))
        if self.order == "down_first":
            first, second = second, first
        for c in range(self.cycles):
            steps += [(c, 0)] * self.repeated_reads
            steps += [(c, first[0])] * first[1]
            steps += [(c, second[0])] * second[1]
        return steps

    def select_devices(self, rows: int, cols: int) -> list[tuple[int, int]]:
        """Array positions measured, in a fixed order (row-major for 'all' and samples)."""
        if self.devices == "all":
            return [(r, c) for r in range(rows) for c in range(cols)]
        if isinstance(self.devices, int):
            if self.devices > rows * cols:
                raise ValueError(f"protocol samples {self.devices} devices, the array has {rows * cols}")
            g = torch.Generator().manual_seed(self.seed)
            idx = sorted(torch.randperm(rows * cols, generator=g)[: self.devices].tolist())
            return [(i // cols, i % cols) for i in idx]
        out = []
        for r, c in self.devices:
            if not (0 <= r < rows and 0 <= c < cols):
                raise ValueError(f"protocol device ({r}, {c}) is outside the {rows}x{cols} array")
            out.append((int(r), int(c)))
        if len(set(out)) != len(out):
            raise ValueError("protocol devices list has duplicates")
        return out

    def pulse_shape(self, polarity: int) -> dict[str, float]:
        """``pulse()`` keyword arguments of this protocol's pulses of ``polarity`` on a backend that
        applies pulse shapes (the values the protocol sets; none: the backend's nominal pulse)."""
        out: dict[str, float] = {}
        amp = self.amplitude(polarity)
        if amp != 0.0:
            out["amplitude_v"] = abs(amp)
        if self.width_s:
            out["width_s"] = float(self.width_s)
        return out

    def amplitude(self, polarity: int) -> float:
        if polarity > 0:
            return float(self.amplitude_up_v) if self.amplitude_up_v is not None else 0.0
        if polarity < 0:
            return float(self.amplitude_down_v) if self.amplitude_down_v is not None else 0.0
        return 0.0
