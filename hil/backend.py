"""The one interface every analog array implements: :class:`CrossbarBackend`.

A backend is one physical (or simulated) array of ``rows x cols`` analog
weights, expressed in **normalized weight units** (the backend maps weights to
conductances: a differential pair ``G+ - G-`` or one device against a
reference column).  Shapes follow ``torch.nn.Linear``: the array holds ``W``
with shape ``[rows, cols]``, an input batch ``x`` is ``[batch, cols]`` and the
output ``y = x W^T`` is ``[batch, rows]``.

Subclasses implement the underscore methods (``_forward``, ``_backward``,
``_update``, ``_pulse``, ``_info``); the public methods validate every input
(shape, dtype, device, NaN/inf) and count every call, so that all backends
refuse bad input the same way and report their hardware cost the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from pydantic import Field

from hil.checks import check_matrix, check_scalar, check_vectors
from hil.config import HilModel
from hil.safety import SafetyError

BackendKind = Literal["simulated", "serial", "bench", "emulated", "other"]


class BackendInfo(HilModel):
    """What a backend is and what it can do.  Controllers adapt to it; logs record it."""

    name: str = Field(description="backend class or product name")
    kind: BackendKind = "other"
    rows: int = Field(gt=0, description="output lines (W has shape [rows, cols])")
    cols: int = Field(gt=0, description="input lines")
    w_min: float = Field(description="lowest weight the array holds, normalized units")
    w_max: float = Field(description="highest weight the array holds, normalized units")
    dw_min: float = Field(gt=0, description="nominal weight change of one pulse, normalized units")
    parallel_update: bool = Field(
        True, description="update() is one array-parallel stochastic pulse operation"
    )
    transposed_read: bool = Field(
        True, description="backward() is a physical transposed read (else emulated)"
    )
    max_pulses_per_call: int | None = Field(
        None, description="largest |count| pulse() accepts per device and call (None: no limit)"
    )
    pulse_shapes: bool = Field(
        False,
        description="pulse() accepts an amplitude and width per call (else every pulse is the "
        "backend's nominal pulse)",
    )
    hardware_id: str = Field("", description="serial number, firmware, resource or model name")
    details: dict[str, Any] = Field(default_factory=dict)


class ProgramReport(HilModel):
    """Result of a closed-loop write-verify (:meth:`CrossbarBackend.program`)."""

    converged: bool = Field(description="every device within tol of its target")
    iterations: int = Field(description="read-pulse rounds used")
    tol: float = Field(description="requested tolerance, normalized units")
    max_error: float = Field(description="max |target - read| after the last round")
    rms_error: float = Field(description="rms of target - read after the last round")
    converged_fraction: float = Field(description="fraction of devices within tol")
    unconverged_devices: int = Field(description="devices still outside tol")
    pulses_spent: int = Field(description="total number of single pulses applied")
    reads: int = Field(description="full-array reads used")


def verify_pulse_counts(err: torch.Tensor, step: torch.Tensor, todo: torch.Tensor, cap: int) -> torch.Tensor:
    """Signed pulse counts ``[rows, cols]`` (int64) of one write-verify round: the error
    ``err`` (target - read, normalized units) over each device's step estimate ``step``,
    rounded, at most ``cap`` pulses, at least one on every device in ``todo`` and none
    elsewhere."""
    n = torch.round(err / step).clamp(-cap, cap)
    n = torch.where(todo & (n == 0), torch.sign(err), n)
    return torch.where(todo, n, torch.zeros_like(n)).to(torch.int64)


def refine_step_estimate(
    step: torch.Tensor, n: torch.Tensor, w_old: torch.Tensor, w_new: torch.Tensor, dw_min: float
) -> torch.Tensor:
    """Each device's step estimate ``[rows, cols]`` after ``n`` pulses moved its read from
    ``w_old`` to ``w_new``: averaged with the measured step only where at least 2 pulses
    moved the weight the intended way by more than read noise would (0.2 ``dw_min``),
    capped at 10 ``dw_min``."""
    moved = n != 0
    nf = torch.where(moved, n, torch.ones_like(n)).to(w_old.dtype)
    measured = (w_new - w_old) / nf
    ok = moved & (measured > 0.2 * dw_min) & (n.abs() >= 2)
    return torch.where(ok, 0.5 * step + 0.5 * measured.clamp(max=10 * dw_min), step)


@dataclass
class OperationCounts:
    """Calls made to a backend, by operation, so the hardware cost of an algorithm is known."""

    forward_calls: int = 0
    forward_vectors: int = 0
    backward_calls: int = 0
    backward_vectors: int = 0
    update_calls: int = 0
    update_vectors: int = 0
    pulse_calls: int = 0
    pulses_requested: int = 0
    read_calls: int = 0
    program_calls: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def reset(self) -> None:
        for k in self.as_dict():
            setattr(self, k, 0)


class CrossbarBackend(abc.ABC):
    """Abstract analog crossbar array in normalized weight units.

    Operations (all tensors live on :attr:`device`, dtype float unless stated):

    - ``forward(x)``: ``y = x W^T`` (+ read noise, DAC/ADC quantization, saturation);
      x ``[batch, cols]`` or ``[cols]`` -> y ``[batch, rows]`` or ``[rows]``.
    - ``backward(d)``: transposed read ``z = d W``; d ``[batch, rows]`` -> z ``[batch, cols]``.
    - ``update(x, d, lr)``: parallel rank-one update by coincident stochastic pulse
      trains; its expected weight change is ``-lr * sum_b outer(d_b, x_b)`` on an
      ideal constant-step device.
    - ``pulse(counts, amplitude_v=None, width_s=None)``: signed integer pulse counts
      ``[rows, cols]`` applied as single pulses (+: potentiation, weight up; -: depression),
      each of the backend's nominal shape, or of the given |amplitude| (volts) and width
      (seconds) where ``info.pulse_shapes`` says the backend can apply other shapes.
    - ``read(n_reads=1)``: estimate of all weights ``[rows, cols]`` by column reads
      (forward with one-hot inputs), averaged over ``n_reads`` full reads.
    - ``forward_columns(columns)``: ``forward`` of the one-hot inputs ``e_k`` (k in
      ``columns``) -> ``[m, rows]``, counted as one forward call of ``m`` vectors.
    - ``pulse_columns(columns, counts)``: ``pulse`` of counts that are zero outside
      ``columns`` (distinct), given only there: ``counts`` ``[rows, m]``.
    - ``program(target, tol, max_iter)``: closed-loop write-verify, returns a
      :class:`ProgramReport`.
    - ``info``: a :class:`BackendInfo`; ``close()`` (also via ``with``).
    """

    def __init__(self, rows: int, cols: int, device: str | torch.device = "cpu") -> None:
        if int(rows) <= 0 or int(cols) <= 0:
            raise ValueError(f"array shape must be positive, got rows={rows}, cols={cols}")
        self.rows = int(rows)
        self.cols = int(cols)
        self.device = torch.device(device)
        self.counts = OperationCounts()
        self._closed = False

    # ------------------------------------------------------------------ info
    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def info(self) -> BackendInfo:
        return self._info()

    @abc.abstractmethod
    def _info(self) -> BackendInfo: ...

    # -------------------------------------------------------------- contract
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = x W^T``: x ``[batch, cols]`` or ``[cols]``, y ``[batch, rows]`` or ``[rows]``."""
        self._check_open()
        x2, squeeze = check_vectors(
            x, "x", self.cols, device=self.device, where=f"{type(self).__name__}.forward"
        )
        self.counts.forward_calls += 1
        self.counts.forward_vectors += x2.shape[0]
        y = self._forward(x2)
        return y.squeeze(0) if squeeze else y

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        """Transposed read ``z = d W``: d ``[batch, rows]`` or ``[rows]`` -> z ``[batch, cols]``."""
        self._check_open()
        d2, squeeze = check_vectors(
            d, "d", self.rows, device=self.device, where=f"{type(self).__name__}.backward"
        )
        self.counts.backward_calls += 1
        self.counts.backward_vectors += d2.shape[0]
        z = self._backward(d2)
        return z.squeeze(0) if squeeze else z

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """Pulsed rank-one update, ``E[dW] = -lr * sum_b outer(d_b, x_b)`` (ideal device).

        x: ``[batch, cols]`` (or ``[cols]``), d: ``[batch, rows]`` (or ``[rows]``),
        lr: learning rate in normalized weight units per unit ``|x||d|``.
        """
        self._check_open()
        where = f"{type(self).__name__}.update"
        x2, _ = check_vectors(x, "x", self.cols, device=self.device, where=where)
        d2, _ = check_vectors(d, "d", self.rows, device=self.device, where=where)
        if x2.shape[0] != d2.shape[0]:
            raise ValueError(
                f"{where}: x and d must have the same batch size, got {x2.shape[0]} and {d2.shape[0]}"
            )
        lr = check_scalar(lr, "lr", where=where)
        self.counts.update_calls += 1
        self.counts.update_vectors += x2.shape[0]
        if lr == 0.0:
            return
        self._update(x2, d2, lr)

    def pulse(
        self,
        counts: torch.Tensor,
        amplitude_v: float | torch.Tensor | None = None,
        width_s: float | torch.Tensor | None = None,
    ) -> None:
        """Apply signed integer pulse counts ``[rows, cols]`` (+ potentiate, - depress).

        ``amplitude_v`` / ``width_s`` (optional): the pulses' |amplitude| (volts, > 0) and width
        (seconds, > 0), a number or a ``[rows, cols]`` tensor (one shape per device for this
        call); None: the backend's nominal pulse of each direction.  Only a backend whose
        ``info.pulse_shapes`` is True accepts them; any other refuses before anything is sent.
        """
        self._check_open()
        where = f"{type(self).__name__}.pulse"
        counts = check_matrix(
            counts, "counts", self.shape, device=self.device, where=where, integer=True
        )
        shaped = amplitude_v is not None or width_s is not None
        if shaped:
            if not self._pulse_shapes():
                raise ValueError(
                    f"{where}: this backend applies its nominal pulse only (info.pulse_shapes is "
                    "False); amplitude_v / width_s cannot be given; nothing was sent"
                )
            amplitude_v = self._pulse_shape_arg(amplitude_v, "amplitude_v", where)
            width_s = self._pulse_shape_arg(width_s, "width_s", where)
        limit = self._pulse_limit()
        if limit is not None and counts.numel():
            peak = int(counts.abs().max())
            if peak > limit:  # a hardware limit: refused like every SafetyLimits check, nothing sent
                raise SafetyError(
                    f"{where}: |counts| up to {peak} requested, this backend accepts at most "
                    f"{limit} pulses per device and call; nothing was sent"
                )
        self.counts.pulse_calls += 1
        self.counts.pulses_requested += int(counts.abs().sum())
        if shaped:
            self._pulse_shaped(counts, amplitude_v, width_s)
        else:
            self._pulse(counts)

    def _pulse_shape_arg(self, value: float | torch.Tensor | None, name: str, where: str) -> torch.Tensor | None:
        """``amplitude_v`` / ``width_s`` of :meth:`pulse` as a float tensor ``[rows, cols]``, or None."""
        if value is None:
            return None
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            t = check_matrix(value, name, self.shape, device=self.device, where=where)
        else:
            v = check_scalar(value, name, where=where)
            t = torch.full(self.shape, v, device=self.device, dtype=torch.float64)
        if bool((t <= 0).any()):
            raise ValueError(
                f"{where}: {name} must be > 0 ({'the |amplitude|, volts' if name == 'amplitude_v' else 'seconds'}), "
                f"got {float(t.min()):g}; nothing was sent"
            )
        return t

    def forward_columns(self, columns: Sequence[int]) -> torch.Tensor:
        """Column reads: ``forward`` of the one-hot inputs ``e_k`` for ``k`` in ``columns``
        (a list of column indices, repeats allowed) -> ``[m, rows]``, row ``i`` the read of
        column ``columns[i]``.  The same result (values and random draws) as
        ``forward(torch.eye(cols)[columns])`` and counted the same (one forward call of
        ``m`` vectors), without building and checking the one-hot inputs: the default
        builds them for :meth:`_forward`; backends may override :meth:`_forward_columns`."""
        self._check_open()
        ks = self._columns(columns, f"{type(self).__name__}.forward_columns", distinct=False)
        self.counts.forward_calls += 1
        self.counts.forward_vectors += len(ks)
        return self._forward_columns(ks)

    def pulse_columns(self, columns: Sequence[int], counts: torch.Tensor) -> None:
        """``pulse`` of counts that are zero outside ``columns`` (distinct column indices):
        ``counts`` ``[rows, m]`` integer, column ``i`` the counts of column ``columns[i]``.
        Checked and counted as :meth:`pulse` (one call; the backend's
        ``max_pulses_per_call`` applies).  The default pulses the full ``[rows, cols]``
        counts with :meth:`_pulse`; backends may override :meth:`_pulse_columns`."""
        self._check_open()
        where = f"{type(self).__name__}.pulse_columns"
        ks = self._columns(columns, where, distinct=True)
        counts = check_matrix(
            counts, "counts", (self.rows, len(ks)), device=self.device, where=where, integer=True
        )
        magnitude = counts.abs()
        limit = self._pulse_limit()
        if limit is not None and counts.numel():
            peak = int(magnitude.max())
            if peak > limit:
                raise SafetyError(
                    f"{where}: |counts| up to {peak} requested, this backend accepts at most "
                    f"{limit} pulses per device and call; nothing was sent"
                )
        self.counts.pulse_calls += 1
        self.counts.pulses_requested += int(magnitude.sum())
        self._pulse_columns(ks, counts)

    def _columns(self, columns: Sequence[int], where: str, *, distinct: bool) -> list[int]:
        """``columns`` as a list of ints in ``[0, cols)`` (``distinct``: no repeats), else ValueError."""
        if isinstance(columns, torch.Tensor):
            if columns.dim() != 1 or columns.is_floating_point() or columns.dtype == torch.bool:
                raise ValueError(f"{where}: columns must be a 1-D integer tensor or a list of ints, got {columns.dtype} {list(columns.shape)}")
            columns = columns.tolist()
        try:
            ks = [int(k) for k in columns]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: columns must be a list of column indices, got {columns!r}") from None
        if not ks:
            raise ValueError(f"{where}: columns is empty")
        bad = [k for k in ks if not 0 <= k < self.cols]
        if bad:
            raise ValueError(f"{where}: column indices {bad[:5]} outside [0, {self.cols})")
        if distinct and len(set(ks)) != len(ks):
            raise ValueError(f"{where}: columns must be distinct, got {ks}")
        return ks

    def read(self, n_reads: int = 1) -> torch.Tensor:
        """All weights ``[rows, cols]``, averaged over ``n_reads`` noisy full-array reads."""
        self._check_open()
        if int(n_reads) < 1:
            raise ValueError(f"{type(self).__name__}.read: n_reads must be >= 1, got {n_reads}")
        self.counts.read_calls += 1
        acc = self._read()
        for _ in range(int(n_reads) - 1):
            acc = acc + self._read()
        return acc / int(n_reads)

    def program(
        self,
        target: torch.Tensor,
        tol: float = 0.02,
        max_iter: int = 50,
        *,
        n_reads: int = 1,
        max_pulses_per_iter: int = 32,
        freeze: bool = False,
        confirm_reads: int = 0,
        confirm_passes: int = 2,
    ) -> ProgramReport:
        """Closed-loop write-verify of ``target`` ``[rows, cols]`` (normalized units).

        Each round reads the array (``n_reads`` averaged reads), and gives every
        device outside ``tol`` a signed pulse count estimated from its error and
        its own measured step size (learned from the previous rounds), at most
        ``max_pulses_per_iter`` (and the backend's ``max_pulses_per_call``).  Devices
        inside ``tol`` are left alone.  Stops when all are inside ``tol`` or after
        ``max_iter`` rounds, and reports honestly how many did not make it (stuck or
        too noisy devices).  Only :meth:`read` and :meth:`pulse` are used, so the same
        loop runs on every backend.

        ``freeze=True`` is the program-and-verify rule of the bench: a device whose
        verify read falls inside ``tol`` is done and gets no further pulse.  Use it on
        devices whose single-pulse noise exceeds ``tol`` (e.g. ``pcm-noisy``): without it a
        converged device that one noisy verify read puts outside ``tol`` is pulsed again,
        and such a pulse can throw it far off (docs/extraction.md).  ``confirm_reads > 0``
        (with ``freeze``): when every device is done, one read of ``confirm_reads``
        averaged reads re-examines the frozen devices and reopens those outside ``tol``
        (false passes of a noisy verify read), at most ``confirm_passes`` times; the
        confirmation reads are the report's last reads.
        """
        self._check_open()
        where = f"{type(self).__name__}.program"
        target = check_matrix(target, "target", self.shape, device=self.device, where=where)
        tol = check_scalar(tol, "tol", where=where, positive=True)
        for name, value, least in (("max_iter", max_iter, 0), ("n_reads", n_reads, 1),
                                   ("max_pulses_per_iter", max_pulses_per_iter, 1),
                                   ("confirm_reads", confirm_reads, 0), ("confirm_passes", confirm_passes, 0)):
            if int(value) < least:
                raise ValueError(f"{where}: {name} must be >= {least}, got {value}")
        self.counts.program_calls += 1
        info = self.info
        limit = info.max_pulses_per_call
        cap = int(max_pulses_per_iter) if limit is None else min(int(max_pulses_per_iter), limit)
        target = target.to(torch.float32)
        step = torch.full(self.shape, info.dw_min, device=self.device)
        done = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        w = self.read(n_reads)
        reads, pulses, iterations, confirms = int(n_reads), 0, 0, 0
        while True:
            while iterations < int(max_iter):
                err = target - w
                inside = err.abs() <= tol
                if freeze:
                    done |= inside
                todo = ~(done | inside)
                if not bool(todo.any()):
                    break
                iterations += 1
                n = verify_pulse_counts(err, step, todo, cap)
                self.pulse(n)
                pulses += int(n.abs().sum())
                w_new = self.read(n_reads)
                reads += int(n_reads)
                step = refine_step_estimate(step, n, w, w_new, info.dw_min)
                w = w_new
            if not (freeze and int(confirm_reads) > 0) or confirms >= int(confirm_passes):
                break
            confirms += 1
            w = self.read(confirm_reads)
            reads += int(confirm_reads)
            reopen = done & ((target - w).abs() > tol)
            if not bool(reopen.any()) or iterations >= int(max_iter):
                break
            done &= ~reopen
        err = target - w
        inside = err.abs() <= tol
        return ProgramReport(
            converged=bool(inside.all()),
            iterations=iterations,
            tol=tol,
            max_error=float(err.abs().max()),
            rms_error=float(err.pow(2).mean().sqrt()),
            converged_fraction=float(inside.float().mean()),
            unconverged_devices=int((~inside).sum()),
            pulses_spent=pulses,
            reads=reads,
        )

    # ------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release the hardware (drivers put it in a safe state first).  Idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Subclass hook for :meth:`close`."""

    def __enter__(self) -> CrossbarBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any] | None:
        """The array state needed to resume, or ``None`` when the hardware keeps its own."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`.  Hardware backends ignore it (their state is physical)."""

    # ------------------------------------------------- subclass primitives
    @abc.abstractmethod
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[batch, cols]`` (validated) -> y ``[batch, rows]``."""

    @abc.abstractmethod
    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        """d ``[batch, rows]`` (validated) -> z ``[batch, cols]``."""

    @abc.abstractmethod
    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """Pulsed outer-product update with validated 2-D inputs."""

    @abc.abstractmethod
    def _pulse(self, counts: torch.Tensor) -> None:
        """Apply validated integer pulse counts ``[rows, cols]``."""

    def _pulse_shapes(self) -> bool:
        """Whether :meth:`_pulse_shaped` applies pulses of other shapes (``info.pulse_shapes``)."""
        return False

    def _pulse_shaped(
        self, counts: torch.Tensor, amplitude_v: torch.Tensor | None, width_s: torch.Tensor | None
    ) -> None:
        """Pulses of a given shape (``[rows, cols]`` tensors, or None: nominal); called only
        when :meth:`_pulse_shapes` is True, so a backend that says True overrides it."""
        raise TypeError(f"{type(self).__name__} says it applies pulse shapes but does not override _pulse_shaped")

    def _pulse_limit(self) -> int | None:
        """``info.max_pulses_per_call`` (backends whose ``info`` is costly to build may return
        a cached value; it must be the same)."""
        return self.info.max_pulses_per_call

    def _forward_columns(self, ks: list[int]) -> torch.Tensor:
        """Reads of columns ``ks`` (validated) ``[m, rows]``; default: :meth:`_forward` of one-hot inputs."""
        e = torch.zeros(len(ks), self.cols, device=self.device)
        e[torch.arange(len(ks), device=self.device), torch.tensor(ks, device=self.device)] = 1.0
        return self._forward(e)

    def _pulse_columns(self, ks: list[int], counts: torch.Tensor) -> None:
        """Counts ``[rows, m]`` (validated) on columns ``ks`` (distinct); default: :meth:`_pulse`
        of the full ``[rows, cols]`` counts, zero elsewhere."""
        full = torch.zeros(self.shape, dtype=counts.dtype, device=self.device)
        full[:, torch.tensor(ks, device=self.device)] = counts
        self._pulse(full)

    def _read(self) -> torch.Tensor:
        """One full-array read ``[rows, cols]``; default: forward of the identity, column by column."""
        eye = torch.eye(self.cols, device=self.device)
        return self._forward(eye).T.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rows={self.rows}, cols={self.cols}, device={self.device})"
