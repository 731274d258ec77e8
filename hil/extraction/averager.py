"""``ModelAverager``: hardware-compatible averages of the TTv2 iterates of C.

Attached to a :class:`hil.training.TrainingController` through its public
callbacks (``add_callback("step" | "transfer", ...)``), never by editing it.
Every ``every`` steps (or transfers of a layer) inside the averaging window
(the last ``1 - start`` of the planned training samples), each analog layer's
weights are read (``n_reads`` averaged full-array reads of its tiles, i.e. of
C, times the layer's ``out_scale``) and enter the average:

- ``variant="digital"``: a running mean in one digital matrix per layer,
  ``M_k = M_{k-1} + (z_k - M_{k-1}) / k`` (the average of all ``k`` reads).
- ``variant="analog"``: a third array D per layer (``factory(rows, cols, "D")``)
  receives the average by TTv2's filtered transfer: ``B += z_k / (K d_scale)`` into a
  digital buffer B (``K``: the number of snapshots expected in the window);
  where ``|B| >= threshold * dw_min(D)`` signed pulses fire on D (as many as B holds,
  or at most ``max_pulses``) and B is reduced by ``n * threshold * dw_min(D)``.
  Before the first snapshot D's pulse response is measured (``calibrate``:
  :func:`pulse_response`) and D is zero-shifted; its reference ``R_D`` is a read of the
  state it then starts from.  At the end D is read once (to a precision), ``D - R_D`` is
  mapped back to the net pulse count through the measured response (this undoes the
  soft-bounds compression and the device-to-device spread of the steps) and times
  ``threshold * dw_min * d_scale`` is the average.  If the window held ``k != K``
  snapshots the result is rescaled by ``K / k`` (one digital scalar per layer).

The digital parameters (biases) are averaged digitally in both variants
(``average_digital_params``): they are digital memory anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field

from hil.backend import CrossbarBackend
from hil.config import HilModel

ArrayFactory = Callable[[int, int, str], CrossbarBackend]


class AveragingConfig(HilModel):
    """Window, schedule and variant of :class:`ModelAverager` (all defaults are our own choice)."""

    variant: Literal["digital", "analog"] = Field(
        "digital",
        description="digital: running mean of reads of C in a digital matrix per layer; analog: "
        "filtered transfer of the reads onto a third array D per layer (our choice: digital)",
    )
    start: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="the window opens when this fraction of the planned training samples "
        "(controller.planned_samples, set by fit) has been seen; None planned: open from the "
        "first step [fraction] (our choice: last half of training)",
    )
    unit: Literal["steps", "transfers"] = Field(
        "steps",
        description="what `every` counts: controller steps (all layers read together) or "
        "transfers of each layer (that layer is read) (our choice: steps)",
    )
    every: int = Field(10, ge=1, description="snapshots every this many steps/transfers (our choice: 10)")
    n_reads: int = Field(
        1, ge=1, description="full-array reads averaged per snapshot [reads] (our choice: 1; the "
        "average over snapshots also averages the read noise)"
    )
    threshold: float = Field(
        1.0, gt=0, description="analog: |B| that fires one pulse on D [units of D's dw_min] (as TTv2)"
    )
    max_pulses: int | None = Field(
        None,
        ge=1,
        description="analog: most pulses per device of D per snapshot; None: as many as B holds "
        "(our choice: None; a cap of 1 limits what D can hold to K * dw_min, e.g. 0.1 on a 2000-state D)",
    )
    d_scale: float = Field(
        1.0,
        gt=0,
        description="analog: D holds the average / d_scale (normalized units of the layer's arrays) "
        "[dimensionless] (our choice: 1)",
    )
    calibrate: Literal["none", "array", "device"] = Field(
        "device",
        description="analog: measure D's pulse response before the first snapshot (from its start "
        "state, `calibration_pulses` single pulses up and, back at the start, down, read after each, "
        "`calibration_repeats` times) and map the final read of D back to the net pulse count through "
        "the mean curve of each device (device: corrects soft-bounds compression and the "
        "device-to-device spread) or of the whole array (array: compression only, less read noise); "
        "none: the read of D taken as is (our choice: device)",
    )
    calibration_pulses: int | None = Field(
        None, ge=1, description="analog: pulses per calibration sweep; None: ceil(1.5 (w_max - w_min) / dw_min) of D"
    )
    calibration_repeats: int = Field(4, ge=1, description="analog: calibration sweeps averaged per direction")
    calibration_reads: int = Field(4, ge=1, description="analog: reads averaged per calibration point")
    expected_snapshots: int | None = Field(
        None,
        ge=1,
        description="analog: K, the gain 1/K of a read into B; None: estimated from "
        "planned_samples / batch_size (unit steps) or planned transfers (unit transfers)",
    )
    zero_shift_reads: int = Field(
        10, ge=1, description="analog: up/down pairs at the end of D's zero-shift with a read after each pulse"
    )
    reference_precision: float = Field(
        0.005, gt=0, description="analog: standard error of the reference read R_D of D's start state "
        "(hil.extraction.read_precise) [normalized weight]"
    )
    average_digital_params: bool = Field(
        True, description="also average the digital parameters (biases) over the same snapshots"
    )


class LayerAverage:
    """The running average of one layer (digital matrix or array D with its buffer)."""

    def __init__(self, name: str, rows: int, cols: int, out_scale: float) -> None:
        self.name = name
        self.rows, self.cols = rows, cols
        self.out_scale = out_scale
        self.snapshots = 0
        self.reads = 0
        self.mean: torch.Tensor | None = None  # digital variant
        self.D: CrossbarBackend | None = None  # analog variant
        self.R_D: torch.Tensor | None = None
        self.B: torch.Tensor | None = None
        self.K: int = 0
        self.pulses = 0
        self.response: PulseResponse | None = None  # analog variant with calibrate

class AnalogAccumulator:
    """TTv2-style filtered transfer of reads ``z`` (normalized weight units) onto an array D.

    ``add(z)`` does ``B += gain * z``; ``n = trunc(B / (threshold dw_min))`` clipped
    to ``max_pulses`` (None: only to the backend's ``max_pulses_per_call``, if it has one)
    fires on D; ``B -= n * threshold * dw_min`` (what was not fired stays in B).
    Returns ``n``.
    """

    def __init__(self, D: CrossbarBackend, gain: float, threshold: float = 1.0, max_pulses: int | None = 1) -> None:
        self.D = D
        self.gain = float(gain)
        self.thr = float(threshold) * float(D.info.dw_min)
        limit = D.info.max_pulses_per_call  # the backend's own limit per call, if any
        if max_pulses is None:
            self.max_pulses = limit
        else:
            self.max_pulses = int(max_pulses) if limit is None else min(int(max_pulses), limit)
        self.B = torch.zeros(D.shape, device=D.device)
        self.pulses = 0
        self.net = torch.zeros(D.shape, dtype=torch.int64, device=D.device)

    def add(self, z: torch.Tensor) -> torch.Tensor:
        self.B += self.gain * z.to(self.B.device)
        n = torch.trunc(self.B / self.thr)
        if self.max_pulses is not None:
            n.clamp_(-self.max_pulses, self.max_pulses)
        self.B -= n * self.thr
        counts = n.to(torch.int64)
        if bool(counts.any()):
            self.D.pulse(counts)
            self.pulses += int(counts.abs().sum())
            self.net += counts
        return counts


def zero_shift(backend: CrossbarBackend, reads: int) -> torch.Tensor:
    """Drive every device to its symmetry point by alternating +1/-1 pulses
    (``ceil(1.5 (w_max - w_min) / dw_min)`` pairs) and return the mean of the
    reads taken after each pulse of ``reads`` more pairs (the reference)."""
    info = backend.info
    cycles = math.ceil(1.5 * (info.w_max - info.w_min) / info.dw_min)
    up = torch.ones(backend.shape, dtype=torch.int64, device=backend.device)
    for _ in range(cycles):
        backend.pulse(up)
        backend.pulse(-up)
    acc = torch.zeros(backend.shape, device=backend.device)
    for _ in range(reads):
        backend.pulse(up)
        acc += backend.read()
        backend.pulse(-up)
        acc += backend.read()
    return acc / (2 * reads)


@dataclass
class PulseResponse:
    """Measured mean response of every device of D to single pulses from its symmetry point:
    ``up[n]`` / ``down[n]`` ``[N+1, rows, cols]``, the weight change after ``n`` up / down pulses
    (``up[0] = down[0] = 0``), averaged over ``repeats`` sweeps; ``pulses`` spent per device
    (zero-shifting included) and full-array ``reads``."""

    up: torch.Tensor
    down: torch.Tensor
    pulses: int
    reads: int

    def array_mean(self) -> PulseResponse:
        """The same response with every device's curve replaced by the mean over the array."""
        up = self.up.mean(dim=(1, 2), keepdim=True).expand_as(self.up).contiguous()
        down = self.down.mean(dim=(1, 2), keepdim=True).expand_as(self.down).contiguous()
        return PulseResponse(up, down, self.pulses, self.reads)

    def net_pulses(self, r: torch.Tensor) -> torch.Tensor:
        """Invert the response: the (fractional) net pulse count that moves each device by ``r``
        ``[rows, cols]`` (positive: up curve, negative: down curve; clamped to the sweep length)."""
        return torch.where(r >= 0, _invert(self.up, r.clamp(min=0)), -_invert(-self.down, (-r).clamp(min=0)))


def _invert(curve: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    n_pts = curve.shape[0]
    c = curve.reshape(n_pts, -1).T.contiguous()  # [devices, N+1]
    c = torch.cummax(c, dim=1).values + 1e-9 * torch.arange(n_pts, device=c.device)  # monotone
    x = r.reshape(-1, 1).to(c.dtype)
    hi = torch.searchsorted(c, x).clamp_(1, n_pts - 1)
    lo = hi - 1
    f_lo, f_hi = c.gather(1, lo), c.gather(1, hi)
    t = ((x - f_lo) / (f_hi - f_lo)).clamp_(0.0, 1.0)
    return (lo.to(c.dtype) + t).reshape(r.shape)


def pulse_response(backend: CrossbarBackend, pulses: int, repeats: int = 4, reads: int = 4,
                   zero_reads: int = 10) -> PulseResponse:
    """Measure :class:`PulseResponse`: ``repeats`` times, for each direction, zero-shift the array
    (:func:`zero_shift`), read it (``2 reads`` averaged), apply ``pulses`` single pulses of one
    sign to every device, reading (``reads`` averaged) after each, and as many of the other sign
    to go back.  Ends zero-shifted.  The array's reference is this start state: a device left by
    :func:`zero_shift` (after its last down pulse), not the mean of the states it alternated between."""
    n_pts = int(pulses) + 1
    up = torch.zeros((n_pts, *backend.shape), device=backend.device)
    down = torch.zeros_like(up)
    one = torch.ones(backend.shape, dtype=torch.int64, device=backend.device)
    info = backend.info
    cycles = math.ceil(1.5 * (info.w_max - info.w_min) / info.dw_min)
    sigma = float((backend.read() - backend.read()).std()) / math.sqrt(2)  # per-read noise
    spent, used = 0, 2
    for _ in range(int(repeats)):
        for sign, acc in ((1, up), (-1, down)):
            zero_shift(backend, zero_reads)
            spent += 2 * (cycles + zero_reads)
            used += 2 * zero_reads
            w0 = backend.read(2 * reads)
            used += 2 * reads
            for n in range(1, n_pts):
                backend.pulse(sign * one)
                acc[n] += backend.read(reads) - w0
                used += reads
            spent += int(pulses)
            # back to the start by write-verify (a constant-step device has no symmetry point
            # that zero-shifting would return it to); tolerance: 2 steps or 3 standard errors
            # of a verify read, whichever is larger
            rep = backend.program(w0, tol=max(2 * info.dw_min, 3 * sigma / math.sqrt(reads)),
                                  max_iter=100, n_reads=reads)
            spent += math.ceil(rep.pulses_spent / (backend.rows * backend.cols))
            used += rep.reads
    zero_shift(backend, zero_reads)
    spent += 2 * (cycles + zero_reads)
    used += 2 * zero_reads
    return PulseResponse(up / repeats, down / repeats, spent, used)


class ModelAverager:
    """Averages the weights of a :class:`~hil.training.TrainingController`'s analog layers.

    ``ModelAverager(controller, AveragingConfig(...), factory=None)``; the analog
    variant needs ``factory`` (``(rows, cols, role) -> CrossbarBackend``, called
    with role ``"D"`` once per layer).  It registers its callbacks at once, so
    build it before training.  After training, :meth:`weights` gives the averaged
    effective weights per layer (``[rows, cols]``, normalized units, including
    ``out_scale``) and :meth:`digital_params` the averaged digital parameters;
    :func:`hil.extraction.extract` turns both into a digital model.
    """

    def __init__(self, controller: Any, config: AveragingConfig | None = None, factory: ArrayFactory | None = None) -> None:
        self.controller = controller
        self.config = config or AveragingConfig()
        if self.config.variant == "analog" and factory is None:
            raise ValueError("ModelAverager: variant 'analog' needs an array factory for the D arrays")
        self.factory = factory
        self.layers: list[LayerAverage] = []
        self._acc: dict[str, AnalogAccumulator] = {}
        for st in controller.layers:
            mod = st.module
            la = LayerAverage(st.name, mod.rows, mod.cols, mod.out_scale)
            if self.config.variant == "analog":
                assert factory is not None
                D = factory(mod.rows, mod.cols, "D")
                if not isinstance(D, CrossbarBackend) or D.shape != (mod.rows, mod.cols):
                    raise ValueError(
                        f"ModelAverager: factory returned {D!r} for layer {st.name!r} role 'D'; "
                        f"expected a {mod.rows}x{mod.cols} CrossbarBackend"
                    )
                la.D = D
            self.layers.append(la)
        self._digital: dict[str, torch.Tensor] = {}
        self._digital_n = 0
        self._prepared = False
        if self.config.unit == "steps":
            controller.add_callback("step", self._on_step)
        else:
            controller.add_callback("transfer", self._on_transfer)
            controller.add_callback("step", self._on_step_params)

    # ------------------------------------------------------------ schedule
    def in_window(self) -> bool:
        """Whether the averaging window is open now (see ``AveragingConfig.start``)."""
        planned = self.controller.planned_samples
        if not planned:
            return True
        return self.controller.samples >= self.config.start * planned

    def _expected(self, la: LayerAverage) -> int:
        cfg = self.config
        if cfg.expected_snapshots is not None:
            return cfg.expected_snapshots
        ctl = self.controller
        planned = ctl.planned_samples
        if not planned:
            raise ValueError(
                "ModelAverager (analog): set AveragingConfig.expected_snapshots or "
                "controller.planned_samples (fit sets it) so that the gain 1/K is known"
            )
        window = planned - max(math.ceil(cfg.start * planned), ctl.samples)
        if cfg.unit == "steps":
            units = window / ctl.config.batch_size
        else:
            units = window / ctl.config.n_s * ctl.config.transfer_columns
        return max(1, int(units // cfg.every))

    def _prepare_D(self, la: LayerAverage) -> None:
        assert la.D is not None
        cfg = self.config
        if cfg.calibrate != "none":
            info = la.D.info
            n = cfg.calibration_pulses or math.ceil(1.5 * (info.w_max - info.w_min) / info.dw_min)
            la.response = pulse_response(la.D, n, cfg.calibration_repeats, cfg.calibration_reads,
                                         cfg.zero_shift_reads)
            if cfg.calibrate == "array":
                la.response = la.response.array_mean()
        zero_shift(la.D, cfg.zero_shift_reads)
        # the reference is the state D starts from (zero_shift's own reference is the mean of the
        # two states it alternates between, half a step above where the last down pulse leaves D)
        from hil.extraction.export import read_precise

        la.R_D = read_precise(la.D.read, cfg.reference_precision, 1024).mean
        la.K = self._expected(la)
        self._acc[la.name] = AnalogAccumulator(la.D, 1.0 / (la.K * cfg.d_scale), cfg.threshold, cfg.max_pulses)

    # ------------------------------------------------------------ callbacks
    def _on_step(self, ctl: Any) -> None:
        if ctl.steps % self.config.every or not self.in_window():
            return
        self.snapshot()

    def _on_step_params(self, ctl: Any) -> None:
        if self.config.average_digital_params and ctl.steps % self.config.every == 0 and self.in_window():
            self._snapshot_params()

    def _on_transfer(self, ctl: Any, st: Any, columns: list[int], counts: Any) -> None:  # noqa: ARG002
        if st.transfers % self.config.every or not self.in_window():
            return
        la = next(a for a in self.layers if a.name == st.name)
        self._snapshot(st, la)

    def snapshot(self) -> None:
        """Take one snapshot of every layer (and of the digital parameters) now, window or not."""
        for st, la in zip(self.controller.layers, self.layers, strict=True):
            self._snapshot(st, la)
        self._snapshot_params()

    def _snapshot(self, st: Any, la: LayerAverage) -> None:
        z = st.module.read_weights(self.config.n_reads)  # out_scale * sum coeff * C
        self.add(la, z)

    def add(self, la: LayerAverage | int, z: torch.Tensor) -> None:
        """Enter one read ``z`` (effective weights ``[rows, cols]``) into layer ``la``'s average."""
        if isinstance(la, int):
            la = self.layers[la]
        la.snapshots += 1
        la.reads += self.config.n_reads
        if self.config.variant == "digital":
            if la.mean is None:
                la.mean = z.detach().clone().float()
            else:
                la.mean += (z - la.mean) / la.snapshots
            return
        if la.name not in self._acc:
            self._prepare_D(la)
        acc = self._acc[la.name]
        acc.add(z / la.out_scale)
        la.B = acc.B
        la.pulses = acc.pulses

    def _snapshot_params(self) -> None:
        if not self.config.average_digital_params:
            return
        self._digital_n += 1
        for name, p in self.controller.model.named_parameters():
            v = p.detach()
            if name not in self._digital:
                self._digital[name] = v.clone()
            else:
                self._digital[name] += (v - self._digital[name]) / self._digital_n

    # ------------------------------------------------------------ results
    @property
    def snapshots(self) -> int:
        """Snapshots taken (the smallest count over the layers)."""
        return min((la.snapshots for la in self.layers), default=0)

    def digital_params(self) -> dict[str, torch.Tensor]:
        """Averaged digital parameters by ``named_parameters`` name (empty if none averaged)."""
        return {k: v.clone() for k, v in self._digital.items()}

    def weights(self, precision: float = 0.005, max_reads: int = 1024) -> dict[str, dict[str, Any]]:
        """Per layer name: ``{"weight": [rows, cols] averaged effective weights, "reads": reads
        behind it, "read_noise": per-read std estimate (analog: of D; digital: None), ...}``.

        Analog: D is read once, averaging repeated reads to ``precision`` (standard error,
        normalized units; see :func:`hil.extraction.read_precise`).
        """
        from hil.extraction.export import read_precise

        out: dict[str, dict[str, Any]] = {}
        for la in self.layers:
            if la.snapshots == 0:
                raise ValueError(
                    f"ModelAverager: no snapshot of layer {la.name!r} was taken (window start "
                    f"{self.config.start}, every {self.config.every} {self.config.unit})"
                )
            if self.config.variant == "digital":
                assert la.mean is not None
                out[la.name] = {"weight": la.mean.clone(), "reads": la.reads, "read_noise": None,
                                "snapshots": la.snapshots}
                continue
            assert la.D is not None and la.R_D is not None
            r = read_precise(la.D.read, precision, max_reads)
            held = r.mean - la.R_D  # what D holds, D's normalized units
            if la.response is not None:  # back to the net pulse count through D's measured response
                held = la.response.net_pulses(held) * self._acc[la.name].thr
            w = held * (self.config.d_scale * la.K / la.snapshots * la.out_scale)
            out[la.name] = {"weight": w, "reads": r.reads, "read_noise": r.read_noise,
                            "snapshots": la.snapshots, "pulses_on_D": la.pulses, "K": la.K,
                            "calibration": None if la.response is None else
                            {"pulses_per_device": la.response.pulses, "reads": la.response.reads}}
        return out
