"""Pulse-response protocols (``PROTOCOL.json``): what ``hil characterize --protocol`` runs.

A protocol is ``cycles`` repetitions of: ``repeated_reads`` reads without a pulse
(polarity 0, for read noise), then ``n_up`` potentiation pulses and ``n_down``
depression pulses (or down first), each followed by one read of the array
(``reads`` full-array reads averaged).  All sampled devices get their pulses at
the same time, one ``pulse()`` and one ``read()`` per step, through the
:class:`~hil.backend.CrossbarBackend` contract only.

Amplitude sweeps (``sweep_up_v`` / ``sweep_down_v``: the |amplitude| ramped over each
cycle's pulses of that direction) and one width per cycle (``widths_s``) need a backend
that applies pulse shapes; any other refuses the protocol before anything is sent.
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
    sweep_up_v: tuple[float, float] | None = Field(
        None,
        description="|amplitude| of the up pulses ramped linearly from the first to the second value over "
        "the n_up pulses of every cycle, volts (amplitude sweeps; only on a backend with pulse shapes)",
    )
    sweep_down_v: tuple[float, float] | None = Field(
        None, description="the same for the down pulses, volts"
    )
    widths_s: list[float] | None = Field(
        None,
        description="one pulse width per cycle, in turn (cycle k: widths_s[k mod len]), seconds (only on a "
        "backend with pulse shapes)",
    )
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
        for tag, sweep, fixed in (("up", self.sweep_up_v, self.amplitude_up_v), ("down", self.sweep_down_v,
                                                                                 self.amplitude_down_v)):
            if sweep is not None:
                if fixed is not None:
                    raise ValueError(f"sweep_{tag}_v and amplitude_{tag}_v both given: one amplitude rule per direction")
                if not (sweep[0] > 0 and sweep[1] > 0):
                    raise ValueError(f"sweep_{tag}_v must be two |amplitudes| > 0 (volts), got {list(sweep)}")
        if self.widths_s is not None:
            if self.width_s is not None:
                raise ValueError("widths_s and width_s both given: one width rule")
            if not self.widths_s or any(not w > 0 for w in self.widths_s):
                raise ValueError(f"widths_s must be a non-empty list of widths > 0 (seconds), got {self.widths_s}")
        return self

    @property
    def sweeps(self) -> bool:
        """Whether the pulses' shape changes along the protocol (amplitude sweeps or several widths)."""
        return self.sweep_up_v is not None or self.sweep_down_v is not None or self.widths_s is not None

    def step_shapes(self) -> list[dict[str, float]]:
        """The shape of every step of :meth:`schedule` (aligned with it): ``amplitude_v`` (recorded
        value: the fixed amplitude as given, or the sweep's |amplitude|) and ``width_s``, each only
        where the protocol sets it; reads (polarity 0) get none."""
        out: list[dict[str, float]] = []
        counts = {1: self.n_up, -1: self.n_down}
        sweep = {1: self.sweep_up_v, -1: self.sweep_down_v}
        k_in = {1: 0, -1: 0}
        last_cycle = -1
        for c, pol in self.schedule():
            if c != last_cycle:
                k_in = {1: 0, -1: 0}
                last_cycle = c
            if pol == 0:
                out.append({})
                continue
            shape: dict[str, float] = {}
            sw = sweep[pol]
            if sw is not None:
                n = counts[pol]
                f = k_in[pol] / (n - 1) if n > 1 else 0.0
                shape["amplitude_v"] = float(sw[0] + f * (sw[1] - sw[0]))
            elif self.amplitude(pol) != 0.0:
                shape["amplitude_v"] = self.amplitude(pol)
            if self.widths_s is not None:
                shape["width_s"] = float(self.widths_s[c % len(self.widths_s)])
            elif self.width_s:
                shape["width_s"] = float(self.width_s)
            k_in[pol] += 1
            out.append(shape)
        return out

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

    def amplitude(self, polarity: int) -> float:
        if polarity > 0:
            return float(self.amplitude_up_v) if self.amplitude_up_v is not None else 0.0
        if polarity < 0:
            return float(self.amplitude_down_v) if self.amplitude_down_v is not None else 0.0
        return 0.0
