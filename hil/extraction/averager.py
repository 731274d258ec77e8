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
  receives the average by TTv2's filtered transfer: ``B += z_k / K`` into a
  digital buffer B (``K``: the number of snapshots expected in the window);
  where ``|B| >= threshold * dw_min(D)`` one signed pulse fires on D and B is
  reduced by ``n * threshold * dw_min(D)``.  D is zero-shifted to its
  symmetry point first and its reference ``R_D`` read then, so that
  ``D - R_D`` (one differential read at the end) is the average.  If the
  window held ``k != K`` snapshots the read is rescaled by ``K / k`` (one
  digital scalar per layer).

The digital parameters (biases) are averaged digitally in both variants
(``average_digital_params``): they are digital memory anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    max_pulses: int = Field(1, ge=1, description="analog: most pulses per device of D per snapshot")
    expected_snapshots: int | None = Field(
        None,
        ge=1,
        description="analog: K, the gain 1/K of a read into B; None: estimated from "
        "planned_samples / batch_size (unit steps) or planned transfers (unit transfers)",
    )
    zero_shift_reads: int = Field(
        10, ge=1, description="analog: up/down pairs after which D is read for its reference R_D"
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


class AnalogAccumulator:
    """TTv2-style filtered transfer of reads ``z`` (normalized weight units) onto an array D.

    ``add(z)`` does ``B += gain * z``; ``n = trunc(B / (threshold dw_min))`` clipped
    to ``max_pulses`` fires on D; ``B -= n * threshold * dw_min``.  Returns ``n``.
    """

    def __init__(self, D: CrossbarBackend, gain: float, threshold: float = 1.0, max_pulses: int = 1) -> None:
        self.D = D
        self.gain = float(gain)
        self.thr = float(threshold) * float(D.info.dw_min)
        self.max_pulses = int(max_pulses)
        self.B = torch.zeros(D.shape, device=D.device)
        self.pulses = 0

    def add(self, z: torch.Tensor) -> torch.Tensor:
        self.B += self.gain * z.to(self.B.device)
        n = torch.trunc(self.B / self.thr).clamp_(-self.max_pulses, self.max_pulses)
        self.B -= n * self.thr
        counts = n.to(torch.int64)
        if bool(counts.any()):
            self.D.pulse(counts)
            self.pulses += int(counts.abs().sum())
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
        la.R_D = zero_shift(la.D, self.config.zero_shift_reads)
        la.K = self._expected(la)
        self._acc[la.name] = AnalogAccumulator(la.D, 1.0 / la.K, self.config.threshold, self.config.max_pulses)

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
            w = (r.mean - la.R_D) * (la.K / la.snapshots) * la.out_scale
            out[la.name] = {"weight": w, "reads": r.reads, "read_noise": r.read_noise,
                            "snapshots": la.snapshots, "pulses_on_D": la.pulses, "K": la.K}
        return out
