"""Hardware safety shared by every real backend (serial test chips and bench instruments).

Two pieces, both used by every driver that touches hardware:

- :class:`SafetyLimits`: the absolute limits (volts, seconds, amperes, pulses).
  A value outside them is **refused** with :class:`SafetyError` before anything
  is sent to the hardware; it is never clipped.
- :class:`SafetyGuard`: the rules of a hardware session, in one place:

  1. ``arm()`` is required before the first pulse (``require_armed``);
  2. ``safe_state()`` (the driver's "ground everything" callback) runs on an
     exception, a timeout, a disconnect (``with guard.operation(...)``) and at
     exit (``close()`` and an ``atexit`` hook);
  3. after a timeout on a write the device state is **unknown**
     (``mark_unknown``) and further writes are refused until the array is read
     back (``confirm_state``);
  4. dry-run mode: ``transmit(data, send)`` records the exact bytes that would
     be sent (``guard.recorded``) instead of sending them;
  5. limits written to an instrument are read back and compared
     (``verify_limits``): a mismatch is a :class:`LimitMismatchError`.

A driver's write path therefore looks like::

    guard.check_pulse_counts(counts)          # limits: SafetyError, nothing sent
    guard.require_armed("PULSE_BATCH")        # NotArmedError
    guard.require_known_state("PULSE_BATCH")  # StateUnknownError
    frame = encode(...)
    with guard.operation("PULSE_BATCH"):      # exception -> safe_state(), re-raised
        guard.transmit(frame, port.write)     # dry run: recorded, not sent
"""

from __future__ import annotations

import atexit
import contextlib
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, model_validator

from hil.config import HilModel


class SafetyError(ValueError):
    """An operation would exceed a configured hardware limit or break a safety rule; nothing was sent."""


class NotArmedError(SafetyError):
    """A write (pulse, update, programming) was requested before :meth:`SafetyGuard.arm`."""


class StateUnknownError(SafetyError):
    """A write timed out, so the array state is unknown until it is read back."""


class LimitMismatchError(SafetyError):
    """The limits read back from the hardware differ from the limits that were set."""


class SafetyLimits(HilModel):
    """Absolute limits of one array and its periphery (volts, seconds, amperes)."""

    max_read_voltage_v: float = Field(gt=0, description="largest |V| of a read or MVM input")
    max_write_voltage_v: float = Field(gt=0, description="largest |V| of a programming pulse")
    min_pulse_width_s: float = Field(0.0, ge=0, description="shortest allowed pulse width")
    max_pulse_width_s: float = Field(gt=0, description="longest allowed pulse width")
    compliance_current_a: float = Field(gt=0, description="current compliance of any source")
    max_pulses_per_call: int = Field(gt=0, description="largest |pulse count| per device and call")

    @model_validator(mode="after")
    def _order(self) -> SafetyLimits:
        if self.min_pulse_width_s > self.max_pulse_width_s:
            raise ValueError(
                f"min_pulse_width_s ({self.min_pulse_width_s}) exceeds max_pulse_width_s "
                f"({self.max_pulse_width_s})"
            )
        return self

    # Each check raises SafetyError naming the quantity, the value and the limit.
    def check_read_voltage(self, v: float, what: str = "read voltage") -> float:
        return _check_abs(v, self.max_read_voltage_v, what, "V")

    def check_write_voltage(self, v: float, what: str = "write voltage") -> float:
        return _check_abs(v, self.max_write_voltage_v, what, "V")

    def check_pulse_width(self, w: float, what: str = "pulse width") -> float:
        w = _finite(w, what)
        if not (self.min_pulse_width_s <= w <= self.max_pulse_width_s):
            raise SafetyError(
                f"{what} {w:g} s is outside the limits [{self.min_pulse_width_s:g}, "
                f"{self.max_pulse_width_s:g}] s; nothing was sent"
            )
        return w

    def check_current(self, i: float, what: str = "compliance current") -> float:
        return _check_abs(i, self.compliance_current_a, what, "A")

    def check_pulse_count(self, n: int, what: str = "pulse count") -> int:
        if abs(int(n)) > self.max_pulses_per_call:
            raise SafetyError(
                f"{what} {int(n)} exceeds the limit of {self.max_pulses_per_call} pulses per device "
                "and call; nothing was sent"
            )
        return int(n)

    # Vectorized forms (any array-like with ``abs()``/``max()``: torch tensors, numpy arrays).
    def check_read_voltages(self, v: Any, what: str = "read voltage") -> None:
        """Every element of ``v`` (volts) within +-``max_read_voltage_v``; finite."""
        _check_abs_array(v, self.max_read_voltage_v, what, "V")

    def check_write_voltages(self, v: Any, what: str = "write voltage") -> None:
        """Every element of ``v`` (volts) within +-``max_write_voltage_v``; finite."""
        _check_abs_array(v, self.max_write_voltage_v, what, "V")

    def check_pulse_counts(self, counts: Any, what: str = "pulse counts") -> None:
        """Every ``|count|`` of an integer matrix within ``max_pulses_per_call``."""
        peak, where = _peak(counts)
        if peak is not None and peak > self.max_pulses_per_call:
            raise SafetyError(
                f"{what}: |count| {peak:g} at index {where} exceeds the limit of "
                f"{self.max_pulses_per_call} pulses per device and call; nothing was sent"
            )

    def differences(self, other: SafetyLimits, rel_tol: float = 1e-6) -> list[str]:
        """Fields where ``other`` differs from ``self`` (relative tolerance ``rel_tol``)."""
        out = []
        for name in type(self).model_fields:
            a, b = getattr(self, name), getattr(other, name)
            if not math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=0.0):
                out.append(f"{name}: set {a!r}, read back {b!r}")
        return out


def _finite(v: float, what: str) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise SafetyError(f"{what} must be a number, got {v!r}; nothing was sent") from None
    if not math.isfinite(v):
        raise SafetyError(f"{what} must be finite, got {v}; nothing was sent")
    return v


def _peak(v: Any) -> tuple[float | None, tuple[int, ...]]:
    """Largest absolute value of an array-like and its index; raises SafetyError on NaN/inf."""
    try:
        import numpy as np

        if hasattr(v, "detach"):  # torch tensor
            v = v.detach().cpu().double().numpy()
        a = np.abs(np.asarray(v, dtype=np.float64))
    except (TypeError, ValueError):
        raise SafetyError(f"expected an array of numbers, got {type(v).__name__}; nothing was sent") from None
    if a.size == 0:
        return None, ()
    if not np.isfinite(a).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise SafetyError(f"non-finite value at index {idx}; nothing was sent")
    flat = int(a.argmax())
    return float(a.flat[flat]), tuple(int(i) for i in np.unravel_index(flat, a.shape))


def _check_abs_array(v: Any, limit: float, what: str, unit: str) -> None:
    try:
        peak, where = _peak(v)
    except SafetyError as exc:
        raise SafetyError(f"{what}: {exc}") from None
    if peak is not None and peak > limit:
        raise SafetyError(
            f"{what}: |{peak:g}| {unit} at index {where} exceeds the limit of +-{limit:g} {unit}; "
            "nothing was sent"
        )


def _check_abs(v: float, limit: float, what: str, unit: str) -> float:
    v = _finite(v, what)
    if abs(v) > limit:
        raise SafetyError(f"{what} {v:g} {unit} exceeds the limit of +-{limit:g} {unit}; nothing was sent")
    return v


# --------------------------------------------------------------------------- session guard
@dataclass
class DryRunRecord:
    """One transmission that dry-run mode held back: its exact bytes and what it was."""

    label: str
    data: bytes
    time_s: float = field(default_factory=time.monotonic)


class SafetyGuard:
    """The safety rules of one hardware session, shared by the serial-chip and bench drivers.

    Parameters
    ----------
    limits:
        The :class:`SafetyLimits` every value is checked against before sending.
    safe_state:
        Callback that puts the hardware in its safe state (all sources off /
        all lines grounded).  Called by :meth:`safe_state`; it must be safe to
        call at any time, repeatedly.  ``None``: nothing to call (pure software).
    name:
        What is guarded (instrument or port), used in error messages.
    dry_run:
        If true, :meth:`transmit` records the bytes (``recorded``) and sends nothing.

    Rules (see the module docstring): :meth:`arm` before the first write;
    :meth:`operation` runs :meth:`safe_state` on any exception; :meth:`mark_unknown`
    after a write timeout blocks writes until :meth:`confirm_state`;
    :meth:`verify_limits` compares limits read back with limits set; :meth:`close`
    (and interpreter exit) runs :meth:`safe_state` once more.
    """

    def __init__(
        self,
        limits: SafetyLimits,
        safe_state: Callable[[], None] | None = None,
        *,
        name: str = "hardware",
        dry_run: bool = False,
    ) -> None:
        if not isinstance(limits, SafetyLimits):
            raise TypeError(f"{name}: limits must be a SafetyLimits, got {type(limits).__name__}")
        self.limits = limits
        self.name = name
        self.dry_run = bool(dry_run)
        self.recorded: list[DryRunRecord] = []
        self.safe_state_calls = 0
        self.last_safe_state_error: BaseException | None = None
        self._safe_state_cb = safe_state
        self._armed = False
        self._state_known = True
        self._unknown_reason = ""
        self._closed = False
        self._lock = threading.RLock()
        ref = weakref.ref(self)
        self._atexit = lambda: _atexit_safe_state(ref)
        atexit.register(self._atexit)

    # ------------------------------------------------------------- arming
    @property
    def armed(self) -> bool:
        return self._armed

    def arm(self) -> None:
        """Allow writes (pulses, updates, programming).  Required once per session."""
        if self._closed:
            raise SafetyError(f"{self.name}: cannot arm, the session is closed")
        self._armed = True

    def disarm(self) -> None:
        self._armed = False

    def require_armed(self, what: str) -> None:
        """Raise :class:`NotArmedError` unless :meth:`arm` was called (and not undone by safe_state)."""
        if not self._armed:
            raise NotArmedError(
                f"{self.name}: {what} refused: call arm() before the first pulse "
                "(and again after safe_state()); nothing was sent"
            )

    # ------------------------------------------------------ device state
    @property
    def state_known(self) -> bool:
        return self._state_known

    @property
    def unknown_reason(self) -> str:
        return self._unknown_reason

    def mark_unknown(self, reason: str) -> None:
        """The array state is unknown (a write timed out): writes are refused until read back."""
        self._state_known = False
        self._unknown_reason = reason

    def confirm_state(self) -> None:
        """A full read-back happened: the state is known again."""
        self._state_known = True
        self._unknown_reason = ""

    def require_known_state(self, what: str) -> None:
        if not self._state_known:
            raise StateUnknownError(
                f"{self.name}: {what} refused: the array state is unknown ({self._unknown_reason}); "
                "read the array back first; nothing was sent"
            )

    def require_write(self, what: str) -> None:
        """Both write rules at once: armed and state known."""
        self.require_armed(what)
        self.require_known_state(what)

    # ------------------------------------------------------------- limits
    def check_read_voltage(self, v: float, what: str = "read voltage") -> float:
        return self.limits.check_read_voltage(v, f"{self.name}: {what}")

    def check_write_voltage(self, v: float, what: str = "write voltage") -> float:
        return self.limits.check_write_voltage(v, f"{self.name}: {what}")

    def check_pulse_width(self, w: float, what: str = "pulse width") -> float:
        return self.limits.check_pulse_width(w, f"{self.name}: {what}")

    def check_current(self, i: float, what: str = "compliance current") -> float:
        return self.limits.check_current(i, f"{self.name}: {what}")

    def check_pulse_count(self, n: int, what: str = "pulse count") -> int:
        return self.limits.check_pulse_count(n, f"{self.name}: {what}")

    def check_read_voltages(self, v: Any, what: str = "read voltages") -> None:
        self.limits.check_read_voltages(v, f"{self.name}: {what}")

    def check_write_voltages(self, v: Any, what: str = "write voltages") -> None:
        self.limits.check_write_voltages(v, f"{self.name}: {what}")

    def check_pulse_counts(self, counts: Any, what: str = "pulse counts") -> None:
        self.limits.check_pulse_counts(counts, f"{self.name}: {what}")

    def verify_limits(self, read_back: SafetyLimits | dict[str, Any], rel_tol: float = 1e-6) -> None:
        """Compare limits read back from the hardware with :attr:`limits`.

        Raises :class:`LimitMismatchError` listing every differing field.  Values
        are compared with a relative tolerance ``rel_tol`` (float formatting only;
        a firmware that rounds a limit to its own resolution is a mismatch).
        """
        if isinstance(read_back, dict):
            try:
                read_back = SafetyLimits.model_validate(read_back)
            except Exception as exc:
                raise LimitMismatchError(f"{self.name}: limits read back are not valid: {exc}") from exc
        diffs = self.limits.differences(read_back, rel_tol=rel_tol)
        if diffs:
            raise LimitMismatchError(
                f"{self.name}: limits read back differ from the limits set: " + "; ".join(diffs)
            )

    # ------------------------------------------------------------ sending
    def transmit(self, data: bytes, send: Callable[[bytes], Any], label: str = "") -> bool:
        """Send ``data`` with ``send`` or, in dry-run mode, record it.  Returns True if sent."""
        if self.dry_run:
            self.recorded.append(DryRunRecord(label=label, data=bytes(data)))
            return False
        send(data)
        return True

    @contextlib.contextmanager
    def operation(self, what: str) -> Iterator[None]:
        """Run a hardware operation; on any exception put the hardware in its safe state, re-raise.

        The exception that caused it is re-raised unchanged (a failing safe-state
        callback is recorded in ``last_safe_state_error`` and chained as a note).
        """
        try:
            yield
        except BaseException as exc:
            self.safe_state()
            if self.last_safe_state_error is not None and hasattr(exc, "add_note"):
                exc.add_note(
                    f"{self.name}: safe_state() after {what} failed too: {self.last_safe_state_error!r}"
                )
            raise

    def safe_state(self) -> bool:
        """Call the safe-state callback (never raises), disarm.  Returns True if it succeeded.

        In dry-run mode the callback is still called: it goes through :meth:`transmit`
        like any other command, so its bytes are recorded rather than sent.
        """
        with self._lock:
            self._armed = False
            self.safe_state_calls += 1
            self.last_safe_state_error = None
            if self._safe_state_cb is None:
                return True
            try:
                self._safe_state_cb()
            except Exception as exc:  # the hardware may be gone (disconnect)
                self.last_safe_state_error = exc
                return False
            return True

    def close(self) -> None:
        """Safe state once more, then no more arming.  Idempotent."""
        if self._closed:
            return
        self.safe_state()
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (
            f"SafetyGuard({self.name!r}, armed={self._armed}, state_known={self._state_known}, "
            f"dry_run={self.dry_run})"
        )


def _atexit_safe_state(ref: weakref.ReferenceType[SafetyGuard]) -> None:
    guard = ref()
    if guard is not None and not guard.closed:
        guard.close()
