"""Instrument base of the bench drivers: one link per VISA resource, declarative properties.

Three pieces, in the PyMeasure / QCoDeS spirit (see ``../shared/STYLE.md``):

- :class:`Link`: the only place that touches a VISA resource.  It encodes
  every command to ASCII bytes with the write termination, sends it with
  ``write_raw`` (through the session's :class:`~hil.safety.SafetyGuard`, so a
  dry run records instead of sending), reads replies with ``read_raw``, counts
  commands, keeps a bounded log of ``(sent, reply)`` byte pairs, and turns
  pyvisa errors into :class:`InstrumentTimeout` / :class:`InstrumentConnectionLost` /
  :class:`InstrumentError` naming the instrument and the command.
- :class:`Instrument`: the base of every driver (``identify``, ``sync``, dry-run
  replies, ``snapshot``); :class:`TSPInstrument` adds the Keithley TSP error queue
  shared by the 2600B SMU and the 707B/708B matrix.
- :func:`control`, :func:`measurement`, :func:`setting`: declarative
  properties.  The command, the documentation and the limits live in one
  place; a value outside the limits is **refused** with
  :class:`~hil.safety.SafetyError` before anything is sent (never clipped);
  numbers go out in exponent notation (``1.200000e+00``); limits marked
  ``readback=True`` are queried back after being set and compared
  (:class:`~hil.safety.LimitMismatchError` on a difference).
- :func:`expected_protocol`: the exact-exchange test harness.  It builds a
  driver on a scripted resource that checks every byte the driver writes
  against a list of ``(sent, reply)`` pairs and fails on the first difference.
- Dry-run mode (a :class:`~hil.safety.SafetyGuard` with ``dry_run=True``):
  every command, queries included, is recorded in ``guard.recorded`` and
  nothing reaches the resource.  A query is answered by the driver's
  :meth:`Instrument.dry_run_reply`: the instrument's nominal answer
  (``*OPC?`` -> ``1``, empty error queue, a limit read back as the value just
  written, a route read back as requested, a measurement as ``nan``: nothing
  is measured).  A query without an assumed reply raises
  :class:`DryRunQueryError`.

Replies are decoded from ASCII and stripped of the read termination; nothing
else is touched.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import math
import select
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from hil.safety import LimitMismatchError, SafetyError, SafetyGuard, SafetyLimits

__all__ = [
    "DryRunQueryError",
    "DryRunResource",
    "Instrument",
    "InstrumentConnectionLost",
    "InstrumentError",
    "InstrumentTimeout",
    "Link",
    "ScriptedResource",
    "TSPInstrument",
    "TSP_EMPTY_ERROR_ENTRY",
    "control",
    "expected_protocol",
    "format_number",
    "measurement",
    "setting",
    "strict_discrete_set",
    "strict_int_range",
    "strict_range",
]


# --------------------------------------------------------------------------- errors
class InstrumentError(RuntimeError):
    """An instrument reported an error, answered nonsense, or could not be reached.

    Attributes: ``instrument`` (name), ``command`` (the command concerned, may be
    empty), ``problem`` (what went wrong), ``code`` (the instrument's error code,
    if it gave one).
    """

    def __init__(self, instrument: str, command: str, problem: str, code: int | None = None) -> None:
        self.instrument = instrument
        self.command = command
        self.problem = problem
        self.code = code
        where = f" after {command!r}" if command else ""
        super().__init__(f"{instrument}{where}: {problem}")


class InstrumentTimeout(InstrumentError):
    """No reply (or no completion) within the VISA timeout."""


class InstrumentConnectionLost(InstrumentError):
    """The connection to the instrument is gone (switched off, cable or LAN down, peer closed)."""


class DryRunQueryError(InstrumentError):
    """A query in dry-run mode for which the driver has no assumed reply (nothing is sent)."""


class DryRunResource:
    """Stands in for a VISA resource in dry-run mode: nothing may ever reach it.

    The link records every command through the guard instead of writing it, so
    these methods are never called; if one were, that would be a bug that sends
    to hardware, and it fails loudly instead.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.timeout = 0
        self.closed = False

    def write_raw(self, data: bytes) -> int:
        raise RuntimeError(f"{self.name}: dry run: nothing may be sent to the instrument (tried {data!r})")

    def read_raw(self) -> bytes:
        raise RuntimeError(f"{self.name}: dry run: nothing may be read from the instrument")

    def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------- numbers
def format_number(value: float) -> str:
    """A number in exponent notation with 7 significant digits: ``1.200000e+00``.

    Both TSP (Lua) and SCPI (IEEE 488.2 <NRf>) accept this form; it never
    switches to fixed notation, so a limit is always sent the same way.
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot send a non-finite number ({value})")
    if value == 0.0:
        value = 0.0  # no "-0.000000e+00"
    return f"{value:.6e}"


def format_int(value: int) -> str:
    return f"{int(value):d}"


# --------------------------------------------------------------------------- validators
def strict_range(value: Any, values: Sequence[float], what: str) -> float:
    """``value`` as a finite float inside ``[values[0], values[1]]``; anything else is refused."""
    lo, hi = float(values[0]), float(values[1])
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SafetyError(f"{what}: expected a number, got {value!r}; nothing was sent") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise SafetyError(f"{what}: expected a finite number, got {value!r}; nothing was sent")
    if not lo <= v <= hi:
        raise SafetyError(
            f"{what}: {v:g} is outside the allowed range [{lo:g}, {hi:g}]; refused (never clipped), "
            "nothing was sent"
        )
    return v


def strict_int_range(value: Any, values: Sequence[int], what: str) -> int:
    """``value`` as an int inside ``[values[0], values[1]]`` (no silent rounding of 2.5)."""
    if isinstance(value, bool):
        raise SafetyError(f"{what}: expected an integer, got {value!r}; nothing was sent")
    try:
        iv = int(value)
    except (TypeError, ValueError):
        raise SafetyError(f"{what}: expected an integer, got {value!r}; nothing was sent") from None
    if iv != value:
        raise SafetyError(f"{what}: expected an integer, got {value!r}; nothing was sent")
    lo, hi = int(values[0]), int(values[1])
    if not lo <= iv <= hi:
        raise SafetyError(
            f"{what}: {iv} is outside the allowed range [{lo}, {hi}]; refused, nothing was sent"
        )
    return iv


def strict_discrete_set(value: Any, values: Iterable[Any], what: str) -> Any:
    """``value`` if it is one of ``values``; anything else is refused."""
    options = list(values)
    if value not in options:
        raise SafetyError(f"{what}: {value!r} is not one of {options!r}; nothing was sent")
    return value


# --------------------------------------------------------------------------- link
def _visa_status(exc: BaseException) -> str | None:
    """``"timeout"``, ``"connection"`` or ``None`` for an exception raised by a VISA call."""
    if isinstance(exc, (ConnectionError, EOFError)):
        return "connection"
    if isinstance(exc, TimeoutError):
        return "timeout"
    try:
        from pyvisa import constants
        from pyvisa.errors import InvalidSession, VisaIOError
    except ImportError:  # pragma: no cover - pyvisa is a dependency
        return None
    if isinstance(exc, InvalidSession):
        return "connection"
    if isinstance(exc, VisaIOError):
        code = exc.error_code
        if code == constants.StatusCode.error_timeout:
            return "timeout"
        if code in (constants.StatusCode.error_connection_lost, constants.StatusCode.error_closing_failed):
            return "connection"
    return None


def visa_socket(resource: Any) -> socket.socket | None:
    """The TCP socket behind a pyvisa-py ``...::SOCKET`` session, or ``None`` (other back ends)."""
    session = getattr(getattr(resource, "visalib", None), "sessions", {}).get(getattr(resource, "session", None))
    sock = getattr(session, "interface", None)
    return sock if isinstance(sock, socket.socket) else None


def peer_closed(resource: Any) -> bool:
    """True if the far end of a raw-socket session has closed it (reads would only time out).

    pyvisa-py reports a socket closed by the instrument as a read timeout; a zero-length
    ``MSG_PEEK`` on a readable socket tells the two apart.  Other back ends: ``False``.
    """
    sock = visa_socket(resource)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):  # closed or invalid descriptor
        return True


class Link:
    """One message-based VISA resource, used by exactly one driver.

    Parameters
    ----------
    resource:
        An opened pyvisa message-based resource, or anything with ``write_raw(bytes)``,
        ``read_raw() -> bytes``, a ``timeout`` attribute (milliseconds) and ``close()``
        (the :class:`ScriptedResource` of the tests).
    name:
        Instrument name used in every error message (``"smu"``, ``"matrix"``, ...).
    guard:
        The session's :class:`SafetyGuard`; writes go through ``guard.transmit`` so
        that dry-run mode records them.  ``None``: send directly.
    log_size:
        How many ``(sent, reply)`` pairs :attr:`log` keeps (oldest dropped first).
    """

    def __init__(
        self,
        resource: Any,
        name: str,
        *,
        guard: SafetyGuard | None = None,
        write_termination: str = "\n",
        read_termination: str = "\n",
        log_size: int = 256,
    ) -> None:
        self.resource = resource
        self.name = name
        self.guard = guard
        self.write_termination = write_termination
        self.read_termination = read_termination
        self.commands_sent = 0
        self.queries_sent = 0
        self.commands_recorded = 0  # dry run: recorded instead of sent
        #: dry run: told every recorded command (to track the state it would set)
        self.dry_observer: Callable[[str], None] | None = None
        #: dry run: the reply assumed for a query (``None``: queries raise DryRunQueryError)
        self.dry_replier: Callable[[str], str] | None = None
        self.log: collections.deque[tuple[bytes, bytes | None]] = collections.deque(maxlen=log_size)
        self.last_command = ""
        self._stale = False  # a query timed out: its reply may still arrive and must be discarded

    # ------------------------------------------------------------- sending
    def _encode(self, command: str) -> bytes:
        try:
            return (command + self.write_termination).encode("ascii")
        except UnicodeEncodeError:
            raise InstrumentError(self.name, command, "command is not plain ASCII; nothing was sent") from None

    def write(self, command: str) -> None:
        """Send one command (no reply expected)."""
        data = self._encode(command)
        self.last_command = command
        try:
            if self.guard is not None:
                sent = self.guard.transmit(data, self.resource.write_raw, label=self.name)
            else:
                self.resource.write_raw(data)
                sent = True
        except AssertionError:  # the exact-exchange harness: report the difference as is
            raise
        except Exception as exc:
            raise self._wrap(exc, command, "write") from exc
        self.log.append((data, None))
        if sent:
            self.commands_sent += 1
        else:
            self.commands_recorded += 1
            if self.dry_observer is not None:
                self.dry_observer(command)

    def query(self, command: str, timeout_s: float | None = None) -> str:
        """Send one command and return its one-line reply (termination stripped).

        ``timeout_s`` temporarily replaces the resource timeout (for operations whose
        completion takes longer than a normal reply, such as a pulse burst).
        """
        if self.guard is not None and self.guard.dry_run:
            return self._dry_query(command)
        data = self._encode(command)
        self.last_command = command
        if self._stale:
            self.drain()
        old = None
        try:
            if timeout_s is not None:
                old = self.resource.timeout
                self.resource.timeout = max(1, int(math.ceil(timeout_s * 1000.0)))
            self.resource.write_raw(data)
            self.commands_sent += 1
            self.queries_sent += 1
            raw = self.resource.read_raw()
        except AssertionError:
            raise
        except Exception as exc:
            wrapped = self._wrap(exc, command, "query")
            if isinstance(wrapped, InstrumentTimeout):
                self._stale = True
            raise wrapped from exc
        finally:
            if old is not None:
                with contextlib.suppress(Exception):
                    self.resource.timeout = old
        self.log.append((data, bytes(raw)))
        try:
            text = bytes(raw).decode("ascii")
        except UnicodeDecodeError:
            raise InstrumentError(self.name, command, f"reply is not ASCII: {bytes(raw)!r}") from None
        if self.read_termination and text.endswith(self.read_termination):
            text = text[: -len(self.read_termination)]
        return text.rstrip("\r")

    def _dry_query(self, command: str) -> str:
        """Dry run: record the query (it is not sent) and return the assumed reply."""
        self.write(command)  # recorded through the guard, and told to the observer
        if self.dry_replier is None:
            raise DryRunQueryError(self.name, command, "dry-run mode: nothing is sent, so nothing answers")
        reply = self.dry_replier(command)
        self.log[-1] = (self.log[-1][0], (reply + self.read_termination).encode("ascii"))
        return reply

    def drain(self, max_replies: int = 32) -> int:
        """Read and discard replies still on the way (after a timeout); returns how many."""
        n = 0
        old = None
        try:
            old = self.resource.timeout
            self.resource.timeout = 50
            for _ in range(max_replies):
                try:
                    self.resource.read_raw()
                except Exception:
                    break
                n += 1
        finally:
            if old is not None:
                with contextlib.suppress(Exception):
                    self.resource.timeout = old
            self._stale = False
        return n

    def _wrap(self, exc: BaseException, command: str, what: str) -> InstrumentError:
        if isinstance(exc, InstrumentError):
            return exc
        status = _visa_status(exc)
        cause = f"{type(exc).__name__}: {exc}"
        if status == "timeout" and peer_closed(self.resource):
            status, cause = "connection", "no reply within the timeout, and the far end has closed the socket"
        if status == "connection":
            return InstrumentConnectionLost(
                self.name, command,
                f"connection lost during {what} ({cause}): the instrument was switched off or its cable or "
                "network link is down; nothing more can be sent to it",
            )
        if status == "timeout":
            return InstrumentTimeout(self.name, command, f"no reply within the timeout during {what}")
        return InstrumentError(self.name, command, f"{what} failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.resource.close()


# --------------------------------------------------------------------------- properties
ValuesSpec = Sequence[Any] | Mapping[Any, str] | Callable[[Any], Sequence[Any]] | None


class InstrumentProperty:
    """A declarative instrument property (see :func:`control`)."""

    def __init__(
        self,
        get_command: str | None,
        set_command: str | None,
        doc: str,
        *,
        validator: Callable[[Any, Any, str], Any] | None = None,
        values: ValuesSpec = None,
        map_values: Mapping[Any, str] | None = None,
        get_parser: Callable[[str], Any] = float,
        set_format: Callable[[Any], str] = format_number,
        units: str = "",
        readback: bool = False,
        on_set: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.get_command = get_command
        self.on_set = on_set
        self.set_command = set_command
        self.validator = validator
        self.values = values
        self.map_values = dict(map_values) if map_values else None
        self.get_parser = get_parser
        self.set_format = set_format
        self.units = units
        self.readback = readback
        self.name = "?"
        parts = [doc.strip()]
        if units:
            parts.append(f"Units: {units}.")
        if get_command:
            parts.append(f"Query: ``{get_command}``.")
        if set_command:
            parts.append(f"Set: ``{set_command}``.")
        if readback:
            parts.append("A limit: read back after setting and compared.")
        self.__doc__ = " ".join(parts)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    # -------------------------------------------------------------- get
    def __get__(self, inst: Instrument | None, owner: type | None = None) -> Any:
        if inst is None:
            return self
        if self.get_command is None:
            raise AttributeError(f"{inst.name}: {self.name} is write-only")
        command = inst.command(self.get_command)
        reply = inst.query(command)
        try:
            if self.map_values is not None:
                return self._unmap(reply, inst, command)
            return self.get_parser(reply)
        except (TypeError, ValueError):
            raise InstrumentError(
                inst.name, command, f"cannot parse the reply {reply!r} as {self.name}"
            ) from None

    def _unmap(self, reply: str, inst: Instrument, command: str) -> Any:
        parsed = self.get_parser(reply)
        for key, text in self.map_values.items():  # type: ignore[union-attr]
            if _same_value(parsed, key):
                return key
            if isinstance(parsed, str) and parsed == inst.command(text):
                return key
        raise InstrumentError(inst.name, command, f"unexpected reply {reply!r} for {self.name}")

    # -------------------------------------------------------------- set
    def __set__(self, inst: Instrument, value: Any) -> None:
        if self.set_command is None:
            raise AttributeError(f"{inst.name}: {self.name} is read-only")
        text = self.prepare(inst, value)
        inst.write(inst.command(self.set_command, value=text))
        if self.readback:
            self.verify(inst, value)
        if self.on_set is not None:
            self.on_set(inst, value)

    def prepare(self, inst: Instrument, value: Any) -> str:
        """Validate ``value`` and return the text that goes into the command (nothing is sent)."""
        what = f"{inst.name}: {self.name}"
        if self.set_command:
            what += f" ({self.set_command.split(' ')[0].format(**inst.context())})"
        if self.validator is not None:
            allowed = self.values(inst) if callable(self.values) else self.values
            value = self.validator(value, allowed, what)
        if self.map_values is not None:
            if value not in self.map_values:
                raise SafetyError(f"{what}: {value!r} is not one of {list(self.map_values)}; nothing was sent")
            return inst.command(self.map_values[value])
        return self.set_format(value)

    def verify(self, inst: Instrument, value: Any) -> None:
        """Read the property back and compare with ``value`` (relative tolerance of the instrument)."""
        back = self.__get__(inst)
        if self.map_values is not None:
            ok = back == value
        else:
            ok = math.isclose(float(back), float(value), rel_tol=inst.readback_rel_tol, abs_tol=1e-15)
        if not ok:
            raise LimitMismatchError(
                f"{inst.name}: {self.name} set to {value!r} but read back {back!r} "
                f"({inst.command(self.get_command or '')}); the instrument did not take the limit"
            )


def _same_value(parsed: Any, key: Any) -> bool:
    if isinstance(key, bool):
        if isinstance(parsed, bool):
            return parsed == key
        try:
            return bool(float(parsed)) == key
        except (TypeError, ValueError):
            return False
    return parsed == key


def control(
    get_command: str,
    set_command: str,
    doc: str,
    **kwargs: Any,
) -> Any:
    """A read-write property: ``get_command`` queries it, ``set_command`` sets it.

    Commands are templates: ``{value}`` is the formatted value, other fields
    (``{ch}``, ``{slot}``) come from :meth:`Instrument.context`.  Keyword
    arguments: ``validator`` (:func:`strict_range`, ...), ``values`` (the
    allowed range or set, or a callable of the instrument returning it, so that
    limits can come from :class:`~hil.safety.SafetyLimits`), ``map_values``
    (value -> command text), ``get_parser``, ``set_format``, ``units``,
    ``readback`` (query back after setting and compare: for limits),
    ``on_set`` (called with the instrument and the value after a successful set).
    """
    return InstrumentProperty(get_command, set_command, doc, **kwargs)


def measurement(get_command: str, doc: str, **kwargs: Any) -> Any:
    """A read-only property (a measurement or a status)."""
    return InstrumentProperty(get_command, None, doc, **kwargs)


def setting(set_command: str, doc: str, **kwargs: Any) -> Any:
    """A write-only property."""
    return InstrumentProperty(None, set_command, doc, **kwargs)


# --------------------------------------------------------------------------- base class
class Instrument(abc.ABC):
    """Base class of the bench drivers.

    A driver is built on an opened resource (``resource``) and sends nothing in
    its constructor; its methods send exactly the commands documented in their
    docstrings.  ``limits`` are the absolute :class:`~hil.safety.SafetyLimits`
    the property validators use; ``guard`` the session guard (optional).
    """

    MODEL = "instrument"
    #: relative tolerance of a read-back limit (TSP prints 6 significant digits)
    readback_rel_tol = 1e-5
    #: what ``*OPC?`` answers once every previous command has completed
    OPC_REPLIES: tuple[str, ...] = ("1",)
    #: largest number of error-queue entries one ``check_errors()`` reads
    MAX_ERRORS_READ = 20

    def __init__(
        self,
        resource: Any,
        *,
        limits: SafetyLimits,
        name: str | None = None,
        guard: SafetyGuard | None = None,
    ) -> None:
        if not isinstance(limits, SafetyLimits):
            raise TypeError(f"{name or self.MODEL}: limits must be a SafetyLimits, got {type(limits).__name__}")
        self.name = name or self.MODEL
        self.limits = limits
        self.guard = guard
        self.link = Link(resource, self.name, guard=guard)
        #: dry run: values the recorded commands would have set (read-backs echo them)
        self.dry_values: dict[str, str] = {}
        self.link.dry_observer = self.dry_run_note
        self.link.dry_replier = self.dry_run_reply

    # ------------------------------------------------------------- commands
    def context(self) -> dict[str, Any]:
        """Template fields for this instrument's commands (``{ch}``, ``{slot}``, ...)."""
        return {}

    def command(self, template: str, **extra: Any) -> str:
        return template.format(**self.context(), **extra)

    def write(self, command: str) -> None:
        self.link.write(command)

    def query(self, command: str, timeout_s: float | None = None) -> str:
        return self.link.query(command, timeout_s=timeout_s)

    @property
    def commands_sent(self) -> int:
        return self.link.commands_sent

    def recent_commands(self, n: int = 6, skip: tuple[str, ...] = ()) -> list[str]:
        """The last ``n`` commands sent (oldest first), leaving out those starting with ``skip``."""
        out: list[str] = []
        for sent, _ in reversed(self.link.log):
            text = sent.decode("ascii", "replace").rstrip("\r\n")
            if skip and text.startswith(skip):
                continue
            out.append(text)
            if len(out) >= n:
                break
        return out[::-1]

    def identify(self) -> str:
        """``*IDN?`` (IEEE 488.2 common command): manufacturer, model, serial number, firmware."""
        return self.query("*IDN?")

    def sync(self, timeout_s: float | None = None) -> None:
        """``*OPC?``: returns once every previous command has completed (:attr:`OPC_REPLIES`).

        ``timeout_s`` replaces the VISA timeout for this one query.
        """
        reply = self.query("*OPC?", timeout_s=timeout_s)
        if reply.strip() not in self.OPC_REPLIES:
            raise InstrumentError(self.name, "*OPC?", f"unexpected reply {reply!r}")

    def raise_queue_errors(self, errors: list[tuple[int, str]], skip: tuple[str, ...] = ()) -> None:
        """Raise :class:`InstrumentError` for entries read from an error queue, naming recent commands."""
        text = "; ".join(f"{code}: {msg}" for code, msg in errors)
        recent = self.recent_commands(skip=skip)
        raise InstrumentError(
            self.name,
            recent[-1] if recent else "",
            f"the instrument reports {len(errors)} error(s): {text} (recent commands: {recent})",
            code=errors[0][0],
        )

    @abc.abstractmethod
    def check_errors(self) -> None:
        """Read the instrument's error queue; raise :class:`InstrumentError` if it holds errors."""

    # ------------------------------------------------------------- dry run
    def dry_run_note(self, command: str) -> None:  # noqa: B027 - optional hook
        """Dry run: remember what a recorded command would have set (see :meth:`dry_run_reply`)."""

    def dry_run_reply(self, command: str) -> str:
        """The reply assumed for ``command`` in dry-run mode, where nothing is sent.

        ``*IDN?`` -> ``dry-run,<MODEL>,0,0``; ``*OPC?`` -> ``1``; anything else is
        up to the driver (:meth:`_dry_reply`); a query it does not know raises
        :class:`DryRunQueryError`.
        """
        if command == "*IDN?":
            return f"dry-run,{self.MODEL},0,0"
        if command == "*OPC?":
            return "1"
        reply = self._dry_reply(command)
        if reply is None:
            raise DryRunQueryError(self.name, command, "dry-run mode: no assumed reply for this query")
        return reply

    def _dry_reply(self, command: str) -> str | None:
        """Driver-specific assumed replies (``None``: unknown)."""
        return None

    def snapshot(self) -> dict[str, Any]:
        """Every readable property, read from the instrument now (for run metadata)."""
        out: dict[str, Any] = {}
        for cls in reversed(type(self).__mro__):
            for key, attr in vars(cls).items():
                if isinstance(attr, InstrumentProperty) and attr.get_command and key not in out:
                    out[key] = getattr(self, key)
        return out

    def close(self) -> None:
        self.link.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


#: what ``print(errorqueue.next())`` answers on a Keithley TSP instrument when the queue is empty
TSP_EMPTY_ERROR_ENTRY = "0.00000e+00\tQueue Is Empty\t0.00000e+00\t0.00000e+00"


class TSPInstrument(Instrument):
    """A Keithley TSP instrument (2600B SMU, 707B/708B matrix): their shared error queue.

    ``errorqueue.clear()`` and ``errorqueue.next()`` (code, message, severity, node;
    code 0 "Queue Is Empty") are the same on both: 2600B reference manual
    2600BS-901-01 Rev. F, Section 9, p. 9-89; 707B reference manual 707B-901-01
    Rev. A, p. 7-86.
    """

    #: ``*OPC?`` answers ``1``; a TSP ``print(1)`` would answer ``1.00000e+00``
    OPC_REPLIES = ("1", "1.00000e+00")

    def clear_errors(self) -> None:
        """``errorqueue.clear()``."""
        self.write("errorqueue.clear()")

    def check_errors(self) -> None:
        """Read ``print(errorqueue.next())`` until it answers code 0; raise if it held errors.

        Exchange when the queue is empty: ``print(errorqueue.next())`` ->
        ``0.00000e+00<TAB>Queue Is Empty<TAB>...``.  At most :attr:`MAX_ERRORS_READ`
        entries are read; :class:`InstrumentError` lists the errors read (and the
        recent commands), or names an entry that is not ``<code><TAB><message>...``.
        """
        errors: list[tuple[int, str]] = []
        for _ in range(self.MAX_ERRORS_READ):
            reply = self.query("print(errorqueue.next())")
            parts = reply.split("\t")
            try:
                code = int(float(parts[0]))
            except ValueError:
                raise InstrumentError(self.name, "print(errorqueue.next())", f"unreadable error entry {reply!r}") from None
            if code == 0:
                break
            errors.append((code, parts[1] if len(parts) > 1 else ""))
        if errors:
            self.raise_queue_errors(errors, skip=("print(errorqueue",))

    def _dry_reply(self, command: str) -> str | None:
        """Dry run: an empty error queue (drivers add their own assumed replies)."""
        if command == "print(errorqueue.next())":
            return TSP_EMPTY_ERROR_ENTRY
        return None


# --------------------------------------------------------------------------- test harness
def _as_bytes(x: bytes | str | None) -> bytes | None:
    if x is None or isinstance(x, bytes):
        return x
    return x.encode("ascii")


class ScriptedResource:
    """A fake VISA resource that plays a script of ``(sent, reply)`` byte pairs.

    Every ``write_raw`` must equal the next ``sent`` exactly; a pair with a reply is
    a query and the following ``read_raw`` returns that reply.  The first
    difference raises ``AssertionError`` naming the step, the expected and the
    actual bytes.  :meth:`assert_done` fails if steps are left over.
    """

    def __init__(self, pairs: Iterable[tuple[bytes | str, bytes | str | None]], name: str = "scripted") -> None:
        self.pairs = [(_as_bytes(s), _as_bytes(r)) for s, r in pairs]
        self.name = name
        self.step = 0
        self.pending: bytes | None = None
        self.timeout = 2000
        self.closed = False
        self.exchanges: list[tuple[bytes, bytes | None]] = []

    def write_raw(self, data: bytes) -> int:
        if self.pending is not None:
            raise AssertionError(
                f"{self.name}: step {self.step}: wrote {data!r} while the reply {self.pending!r} "
                "of the previous query was never read"
            )
        if self.step >= len(self.pairs):
            raise AssertionError(f"{self.name}: unexpected extra write {data!r} (script has {len(self.pairs)} steps)")
        sent, reply = self.pairs[self.step]
        if data != sent:
            raise AssertionError(f"{self.name}: step {self.step}: expected {sent!r}, driver sent {data!r}")
        self.step += 1
        self.exchanges.append((data, reply))
        self.pending = reply
        return len(data)

    def read_raw(self) -> bytes:
        if self.pending is None:
            raise AssertionError(f"{self.name}: step {self.step}: driver read but no reply is scripted")
        reply, self.pending = self.pending, None
        return reply

    def close(self) -> None:
        self.closed = True

    def assert_done(self) -> None:
        if self.step != len(self.pairs):
            left = self.pairs[self.step:]
            raise AssertionError(f"{self.name}: {len(left)} scripted step(s) never sent, next: {left[0][0]!r}")
        if self.pending is not None:
            raise AssertionError(f"{self.name}: reply {self.pending!r} was never read")


@contextlib.contextmanager
def expected_protocol(
    cls: type[Instrument],
    pairs: Iterable[tuple[bytes | str, bytes | str | None]],
    **kwargs: Any,
) -> Iterator[Any]:
    """Build ``cls(resource, **kwargs)`` on a :class:`ScriptedResource` of ``pairs``.

    Inside the ``with`` block use the driver; on exit every scripted pair must
    have been exchanged, byte for byte.  Example::

        with expected_protocol(Keithley2600B, [(b"print(smua.measure.i())\\n", b"1.00000e-05\\n")],
                               limits=limits) as smu:
            assert smu.current == 1e-5
    """
    resource = ScriptedResource(pairs, name=cls.__name__)
    inst = cls(resource, **kwargs)
    yield inst
    resource.assert_done()
