"""``ChipLink``: one protocol session with a test-chip board over any pyserial port.

The link owns the port, the sequence numbers, the retry rules, the per-command
deadlines, the traffic counters and the board's :class:`~hil.safety.SafetyGuard`.
``SerialCrossbar`` views (windows of the one physical array) share one link.

Retry rules (docs/protocol.md, "Retries"):

- read-only and idempotent commands (INFO, GET_LIMITS, SET_LIMITS, SAFE, ARM,
  STATUS, LAST_SEQ, READ, MVM) are re-sent with a new seq after a timeout, a
  corrupted reply, BAD_CRC or BUSY, up to ``read_retries`` times;
- writes (PULSE, PULSE_BATCH, UPDATE) are **never re-sent blindly**: after a
  timeout or a corrupted reply the link asks LAST_SEQ.  If the board executed
  this very frame (same seq and frame CRC), the identical frame is sent again
  and the firmware answers from its reply cache without executing; otherwise
  the write certainly did not execute and is sent again.  BAD_CRC and BUSY
  replies say "not executed" and allow a re-send too.  If the board cannot be
  reached, the array state is marked unknown (writes refused until read back)
  and :class:`ChipTimeoutError` is raised.

Deadlines: ``latency_s + margin * (transfer time of request and reply at
baudrate + expected execution time)``, the execution time from the board's
INFO timing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import serial
from pydantic import Field

from hil.config import HilModel
from hil.drivers.chip.frame import OVERHEAD, BadCrcError, Frame, FrameDecoder, encode_frame
from hil.drivers.chip.protocol import (
    RETRYABLE,
    WRITE_COMMANDS,
    BoardInfo,
    BoardStatus,
    Cmd,
    LastSeq,
    Status,
    Window,
    pack_limits,
    unpack_applied,
    unpack_limits,
)
from hil.safety import SafetyError, SafetyGuard, SafetyLimits


class ChipError(RuntimeError):
    """The board answered a command with a non-OK status (or not at all)."""

    def __init__(self, message: str, status: Status | None = None, cmd: Cmd | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.cmd = cmd


class ChipTimeoutError(ChipError, TimeoutError):
    """No valid reply within the deadline after all retries."""


class ChipDisconnectedError(ChipError, ConnectionError):
    """The port failed (cable pulled, socket closed, emulator disconnected)."""


class LinkConfig(HilModel):
    """Timing and retry settings of a :class:`ChipLink` (seconds)."""

    latency_s: float = Field(0.2, gt=0, description="fixed allowance per round trip (USB, OS)")
    margin: float = Field(3.0, ge=1, description="factor on transfer + execution time")
    baudrate: int = Field(921_600, gt=0, description="serial baud rate (transfer-time estimate)")
    poll_s: float = Field(0.005, gt=0, description="port read timeout while waiting for a reply")
    read_retries: int = Field(4, ge=0, description="re-sends of a read-only command")
    write_retries: int = Field(4, ge=0, description="re-sends of a write after LAST_SEQ said so")
    busy_backoff_s: float = Field(0.002, ge=0, description="wait before re-sending after BUSY")


@dataclass
class Traffic:
    """What one operation (or a whole link) cost on the wire."""

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    round_trips: int = 0
    retries: int = 0
    timeouts: int = 0
    bad_replies: int = 0
    last_seq_queries: int = 0

    def add(self, other: Traffic) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class LinkCounters:
    """Traffic per backend operation (``forward``, ``update``, ``pulse``, ``read``, ...)."""

    by_op: dict[str, Traffic] = field(default_factory=dict)

    def op(self, name: str) -> Traffic:
        t = self.by_op.get(name)
        if t is None:
            t = self.by_op[name] = Traffic()
        return t

    def total(self) -> Traffic:
        out = Traffic()
        for t in self.by_op.values():
            out.add(t)
        return out

    def as_dict(self) -> dict[str, dict[str, int]]:
        d = {k: v.as_dict() for k, v in sorted(self.by_op.items())}
        d["total"] = self.total().as_dict()
        return d

    def reset(self) -> None:
        self.by_op.clear()


@dataclass
class WriteRecord:
    """The driver's journal entry of one write: which frame, what it asked, what the board said."""

    seq: int
    cmd: int
    request_crc: int
    requested_pulses: int | None  # PULSE / PULSE_BATCH: sum |counts|; UPDATE: None
    status: int | None = None  # None: no reply (raised)
    applied_up: int = 0
    applied_down: int = 0
    sends: int = 1
    dry_run: bool = False


_Outcome = Literal["timeout", "corrupt"]


class ChipLink:
    """A protocol session with one board.  Open with :meth:`open` (a pyserial URL).

    Parameters of :meth:`open`: ``url`` (any pyserial URL or device path),
    ``limits`` (a :class:`SafetyLimits`, or ``"board"`` to adopt the board's own
    hard limits explicitly), ``config`` (:class:`LinkConfig`), ``dry_run``
    (writes and SET_LIMITS/ARM/SAFE are recorded in ``guard.recorded``, not sent;
    reads still go to the board).
    """

    def __init__(self, port: serial.SerialBase, config: LinkConfig | None = None, name: str = "") -> None:
        self.port = port
        self.config = config or LinkConfig()
        self.name = name or f"board at {getattr(port, 'port', '?')}"
        self.decoder = FrameDecoder(stale_after_s=None)
        self.counters = LinkCounters()
        self.journal: list[WriteRecord] = []
        self.lock = threading.RLock()
        self._seq = 0
        self.board: BoardInfo | None = None
        self.guard: SafetyGuard | None = None
        self.unknown_window: Window | None = None
        self._users = 0
        self._closed = False
        self._in_safe = False
        if port.timeout != self.config.poll_s:
            port.timeout = self.config.poll_s

    # ----------------------------------------------------------------- open
    @classmethod
    def open(
        cls,
        url: str,
        limits: SafetyLimits | Literal["board"],
        config: LinkConfig | None = None,
        *,
        dry_run: bool = False,
        name: str = "",
    ) -> ChipLink:
        """Open ``url``, read INFO, set the limits and verify them by reading them back."""
        import hil.drivers.chip  # noqa: F401 - registers the xbarsim:// handler

        config = config or LinkConfig()
        if isinstance(limits, str) and limits != "board":
            raise ValueError(f"limits must be a SafetyLimits or 'board', got {limits!r}")
        if not isinstance(limits, (SafetyLimits, str)):
            raise ValueError(
                f"a SafetyLimits is required to open the board at {url}, got {type(limits).__name__}"
            )
        try:
            port = serial.serial_for_url(url, baudrate=config.baudrate, timeout=config.poll_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ChipDisconnectedError(f"cannot open the board at {url}: {exc}") from exc
        link = cls(port, config, name=name or f"board at {url}")
        try:
            link._start(limits, dry_run)
        except BaseException:
            link._close_port()
            raise
        return link

    def _start(self, limits: SafetyLimits | str, dry_run: bool) -> None:
        counters = self.counters.op("open")
        last = LastSeq.unpack(self._query(Cmd.LAST_SEQ, b"", counters).payload)
        self._seq = (last.seq + 1) & 0xFFFF if last.valid else 0
        self.board = BoardInfo.unpack(self._query(Cmd.INFO, b"", counters).payload)
        lim = self.board.hard_limits if limits == "board" else limits
        assert isinstance(lim, SafetyLimits)
        self._check_hard(lim)
        self.guard = SafetyGuard(lim, self._send_safe, name=self.name, dry_run=dry_run)
        self.set_limits(lim)

    def _check_hard(self, lim: SafetyLimits) -> None:
        """Refuse (SafetyError, nothing sent) limits beyond the board's hard limits."""
        assert self.board is not None
        hard = self.board.hard_limits
        problems = [
            f"{n}={getattr(lim, n)!r} (board {getattr(hard, n)!r})"
            for n in ("max_read_voltage_v", "max_write_voltage_v", "max_pulse_width_s",
                      "compliance_current_a", "max_pulses_per_call")
            if getattr(lim, n) > getattr(hard, n)
        ]
        if lim.min_pulse_width_s < hard.min_pulse_width_s:
            problems.append(f"min_pulse_width_s={lim.min_pulse_width_s!r} (board {hard.min_pulse_width_s!r})")
        if problems:
            raise SafetyError(
                f"{self.name}: requested limits exceed the board's hard limits: "
                + ", ".join(problems) + "; nothing was sent"
            )

    # ------------------------------------------------------------ commands
    def set_limits(self, limits: SafetyLimits) -> SafetyLimits:
        """SET_LIMITS, then GET_LIMITS and compare: a mismatch is a LimitMismatchError (safe state).

        In dry-run mode the frame is recorded and nothing is read back.
        """
        guard = self._guard()
        if not isinstance(limits, SafetyLimits):
            raise SafetyError(f"{self.name}: limits must be a SafetyLimits, got {type(limits).__name__}")
        self._check_hard(limits)
        counters = self.counters.op("limits")
        if guard.dry_run:
            guard.transmit(self._frame(Cmd.SET_LIMITS, pack_limits(limits))[1], self._write_port, label="SET_LIMITS")
            guard.limits = limits
            return limits
        with guard.operation("SET_LIMITS"):
            self._check(self._exchange(Cmd.SET_LIMITS, pack_limits(limits), counters))
            back = unpack_limits(self._check(self._query(Cmd.GET_LIMITS, b"", counters)).payload)
            guard.limits = limits
            guard.disarm()  # the firmware disarms on new limits
            guard.verify_limits(back)
        return back

    def arm(self) -> None:
        """ARM the board (firmware interlock) and the guard.  Required before the first write."""
        guard = self._guard()
        if guard.dry_run:
            guard.transmit(self._frame(Cmd.ARM, b"")[1], self._write_port, label="ARM")
            guard.arm()
            return
        with guard.operation("ARM"):
            self._check(self._exchange(Cmd.ARM, b"", self.counters.op("arm")))
        guard.arm()

    def safe_state(self) -> bool:
        """Ground everything (SAFE) and disarm; never raises.  True if the board confirmed."""
        return self._guard().safe_state()

    def _send_safe(self) -> None:
        """The guard's safe-state callback: SAFE with a short deadline, one retry."""
        if self._closed or self._in_safe:
            return
        guard = self.guard
        if guard is not None and guard.dry_run:
            guard.transmit(self._frame(Cmd.SAFE, b"")[1], self._write_port, label="SAFE")
            return
        self._in_safe = True
        try:
            self._check(self._query(Cmd.SAFE, b"", self.counters.op("safe"), retries=1))
        finally:
            self._in_safe = False

    def status(self) -> BoardStatus:
        """The board's STATUS (armed, frame counters, pulses applied since power-up)."""
        with self._guard().operation("STATUS"):
            return BoardStatus.unpack(self._check(self._query(Cmd.STATUS, b"", self.counters.op("status"))).payload)

    def last_seq(self, counters: Traffic | None = None) -> LastSeq:
        t = counters or self.counters.op("status")
        t.last_seq_queries += 1
        return LastSeq.unpack(self._check(self._query(Cmd.LAST_SEQ, b"", t)).payload)

    def request(
        self,
        cmd: Cmd,
        payload: bytes,
        op: str,
        *,
        exec_s: float = 0.0,
        reply_bytes: int = 0,
        extra: Traffic | None = None,
    ) -> Frame:
        """A read-only command with retries, inside the guard (safe state on failure)."""
        counters = _Tee(self.counters.op(op), extra)
        with self._guard().operation(cmd.name):
            return self._check(self._query(cmd, payload, counters, exec_s=exec_s, reply_bytes=reply_bytes))

    def write(
        self,
        cmd: Cmd,
        payload: bytes,
        op: str,
        *,
        window: Window,
        requested_pulses: int | None,
        exec_s: float = 0.0,
        extra: Traffic | None = None,
    ) -> Frame | None:
        """A write (PULSE, PULSE_BATCH, UPDATE) with the LAST_SEQ rule; None in dry-run mode.

        The caller has already checked limits and ``guard.require_write``.
        """
        assert cmd in WRITE_COMMANDS
        guard = self._guard()
        counters = _Tee(self.counters.op(op), extra)
        seq, frame = self._frame(cmd, payload)
        crc = int.from_bytes(frame[-2:], "little")
        record = WriteRecord(seq, int(cmd), crc, requested_pulses)
        self.journal.append(record)
        if guard.dry_run:
            guard.transmit(frame, self._write_port, label=cmd.name)
            record.dry_run = True
            return None
        with guard.operation(cmd.name):
            try:
                reply = self._write_exchange(cmd, seq, frame, crc, counters, record, exec_s, 16)
            except ChipError:
                guard.mark_unknown(f"{cmd.name} seq {seq} on {window} got no reply")
                self.unknown_window = window
                raise
            return self._check(reply)

    # ------------------------------------------------------------ plumbing
    def _guard(self) -> SafetyGuard:
        if self.guard is None:
            raise ChipError(f"{self.name}: the link is not started (open it with ChipLink.open)")
        return self.guard

    def _frame(self, cmd: Cmd, payload: bytes) -> tuple[int, bytes]:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        return seq, encode_frame(seq, int(cmd), payload)

    def _write_port(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise ChipDisconnectedError(f"{self.name}: write failed: {exc}") from exc

    def _send(self, frame: bytes, counters: Traffic) -> None:
        """Put one frame on the wire (dry-run paths record theirs before they get here)."""
        self._write_port(frame)
        counters.frames_sent += 1
        counters.bytes_sent += len(frame)

    def _deadline(self, n_request: int, n_reply: int, exec_s: float) -> float:
        c = self.config
        transfer = 10.0 * (n_request + n_reply + OVERHEAD) / c.baudrate
        return c.latency_s + c.margin * (transfer + exec_s)

    def _await(self, seq: int, cmd: Cmd, timeout_s: float, counters: Traffic) -> Frame | _Outcome:
        """The reply to (seq, cmd), or "corrupt" (a reply to it failed its CRC) or "timeout"."""
        end = time.monotonic() + timeout_s
        port = self.port
        while True:
            try:
                # in_waiting is exact on serial ports and a 0/1 hint on socket://: ask for at
                # least what the frame being received still needs, never more
                data = port.read(max(port.in_waiting, self.decoder.needed()))
            except (serial.SerialException, OSError) as exc:
                raise ChipDisconnectedError(f"{self.name}: read failed: {exc}") from exc
            if data:
                counters.bytes_received += len(data)
            frames = self.decoder.feed(data)
            bad, self.decoder.bad_frames = self.decoder.bad_frames, []
            for f in frames:
                if f.is_reply and f.seq == seq and f.cmd == int(cmd):
                    counters.frames_received += 1
                    return f
            if any(isinstance(b, BadCrcError) and b.seq == seq for b in bad):
                return "corrupt"
            if time.monotonic() >= end:
                return "timeout"

    def _query(
        self,
        cmd: Cmd,
        payload: bytes,
        counters: Traffic,
        *,
        exec_s: float = 0.0,
        reply_bytes: int = 0,
        retries: int | None = None,
    ) -> Frame:
        """Send a read-only/idempotent command; re-send with a new seq until a reply comes."""
        with self.lock:
            n = self.config.read_retries if retries is None else retries
            timeout = self._deadline(len(payload), reply_bytes, exec_s)
            why = "no reply"
            for attempt in range(n + 1):
                seq, frame = self._frame(cmd, payload)
                if attempt:
                    counters.retries += 1
                self._send(frame, counters)
                counters.round_trips += 1
                got = self._await(seq, cmd, timeout, counters)
                if isinstance(got, Frame):
                    if got.status in RETRYABLE:
                        why = f"board answered {Status(got.status).name}"
                        counters.bad_replies += 1
                        if got.status == Status.BUSY:
                            time.sleep(self.config.busy_backoff_s)
                        continue
                    return got
                why = "reply timed out" if got == "timeout" else "reply failed its CRC"
                if got == "timeout":
                    counters.timeouts += 1
                else:
                    counters.bad_replies += 1
            raise ChipTimeoutError(
                f"{self.name}: {cmd.name} failed after {n + 1} attempts ({why}; "
                f"deadline {timeout:.3g} s each)",
                cmd=cmd,
            )

    def _exchange(self, cmd: Cmd, payload: bytes, counters: Traffic) -> Frame:
        return self._query(cmd, payload, counters)

    def _write_exchange(
        self,
        cmd: Cmd,
        seq: int,
        frame: bytes,
        crc: int,
        counters: Traffic,
        record: WriteRecord,
        exec_s: float,
        reply_bytes: int,
    ) -> Frame:
        with self.lock:
            timeout = self._deadline(len(frame), reply_bytes, exec_s)
            self._send(frame, counters)
            counters.round_trips += 1
            for _ in range(self.config.write_retries + 1):
                got = self._await(seq, cmd, timeout, counters)
                if isinstance(got, Frame):
                    if got.status not in RETRYABLE:
                        record.status = got.status
                        if got.status == Status.OK and len(got.payload) == 16:
                            record.applied_up, record.applied_down = unpack_applied(got.payload)
                        return got
                    # BAD_CRC / BUSY: the board says it did not execute it
                    counters.bad_replies += 1
                    if got.status == Status.BUSY:
                        time.sleep(self.config.busy_backoff_s)
                elif got == "timeout":
                    counters.timeouts += 1
                    self._ask_last_seq(seq, crc, counters)
                else:
                    counters.bad_replies += 1
                    self._ask_last_seq(seq, crc, counters)
                # executed (the firmware answers from its cache) or not executed: same frame again
                self._send(frame, counters)
                counters.retries += 1
                counters.round_trips += 1
                record.sends += 1
            raise ChipTimeoutError(
                f"{self.name}: {cmd.name} seq {seq}: no reply after {record.sends} sends",
                cmd=cmd,
            )

    def _ask_last_seq(self, seq: int, crc: int, counters: Traffic) -> bool:
        """Did the board execute write ``seq``?  (Raises ChipTimeoutError if it cannot be asked.)"""
        last = self.last_seq(counters)
        return last.valid and last.seq == seq and last.request_crc == crc

    def _check(self, reply: Frame) -> Frame:
        if reply.status != Status.OK:
            try:
                status = Status(reply.status)
                sname = status.name
            except ValueError:
                status, sname = None, f"status {reply.status}"
            msg = reply.payload.decode("utf-8", "replace")
            cmd = Cmd(reply.cmd) if reply.cmd in Cmd._value2member_map_ else None
            cname = cmd.name if cmd else f"0x{reply.cmd:02x}"
            raise ChipError(f"{self.name}: {cname} answered {sname}: {msg}", status=status, cmd=cmd)
        return reply

    # ------------------------------------------------------------ lifecycle
    def acquire(self) -> ChipLink:
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self.close()

    def close(self) -> None:
        """SAFE (via the guard), then close the port.  Idempotent."""
        if self._closed:
            return
        try:
            if self.guard is not None:
                self.guard.close()
        finally:
            self._closed = True
            self._close_port()

    def _close_port(self) -> None:
        try:
            self.port.close()
        except Exception:  # the port may be gone already
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"ChipLink({self.name!r}, closed={self._closed})"


class _Tee:
    """Counts into a primary :class:`Traffic` and, optionally, a second one (a view's own)."""

    def __init__(self, primary: Traffic, extra: Traffic | None) -> None:
        object.__setattr__(self, "_targets", [t for t in (primary, extra) if t is not None])

    def __getattr__(self, name: str) -> int:
        return getattr(self._targets[0], name)

    def __setattr__(self, name: str, value: int) -> None:
        t0 = self._targets[0]
        delta = value - getattr(t0, name)
        for t in self._targets:
            setattr(t, name, getattr(t, name) + delta)

