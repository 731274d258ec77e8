"""Commands, status codes and payload layouts of the test-chip board protocol (version 1).

Every request gets exactly one reply echoing its ``seq`` and ``cmd`` (with the
reply bit) and carrying a :class:`Status`.  A non-OK reply's payload is a UTF-8
message.  All numbers are little-endian; floats are IEEE-754.  The byte-level
description is docs/protocol.md; this module is its executable form, shared by
the driver (:mod:`hil.drivers.chip.link`) and the emulator
(:mod:`hil.drivers.chip.emulator`).

Array commands address a *window* ``(row0, col0, rows, cols)`` of the one
physical array, so that several logical arrays (TTv2's A and C) tile one chip
without sharing a device; see docs/protocol.md, "Windows".
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

from hil.safety import SafetyLimits


class Cmd(enum.IntEnum):
    """Command codes (one byte, bit 7 clear; the reply sets bit 7)."""

    INFO = 0x01
    GET_LIMITS = 0x02
    SET_LIMITS = 0x03
    SAFE = 0x04
    ARM = 0x05
    STATUS = 0x06
    LAST_SEQ = 0x07
    READ = 0x10
    MVM = 0x11
    PULSE = 0x20
    PULSE_BATCH = 0x21
    UPDATE = 0x22


#: Commands that change the array: the firmware caches their reply by (seq, frame CRC),
#: executes a duplicate never twice, and the driver never re-sends them blindly.
WRITE_COMMANDS = frozenset({Cmd.PULSE, Cmd.PULSE_BATCH, Cmd.UPDATE})


class Status(enum.IntEnum):
    """Reply status codes (one byte)."""

    OK = 0
    BAD_CRC = 1  # request header valid, frame CRC wrong: not executed, re-send
    BAD_CMD = 2  # unknown command code
    BAD_PAYLOAD = 3  # payload length or content does not fit the command
    BUSY = 4  # firmware busy: not executed, re-send after a back-off
    LIMIT_REJECTED = 5  # a value outside the board's active limits: not executed
    INTERLOCK = 6  # a write while disarmed (after SAFE, before ARM): not executed
    BAD_VERSION = 7  # protocol version not spoken by this firmware
    OUT_OF_RANGE = 8  # window or device address outside the array
    INTERNAL = 9  # firmware fault


#: Statuses after which the request was certainly not executed and may be sent again.
RETRYABLE = frozenset({Status.BAD_CRC, Status.BUSY})


class PulseEncoding(enum.IntEnum):
    """Body encodings of PULSE_BATCH counts (the driver picks the shortest)."""

    DENSE_I8 = 1
    DENSE_I16 = 2
    SPARSE = 3  # u32 n, then n x (u16 row, u16 col, i16 count), window-relative


class ProtocolError(ValueError):
    """A payload that does not match its command's layout."""


# ------------------------------------------------------------------ window
_WINDOW = struct.Struct("<HHHH")


@dataclass(frozen=True)
class Window:
    """A rectangle of the physical array: rows ``row0 .. row0+rows-1``, cols ``col0 ..``."""

    row0: int
    col0: int
    rows: int
    cols: int

    def pack(self) -> bytes:
        return _WINDOW.pack(self.row0, self.col0, self.rows, self.cols)

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> Window:
        return cls(*_WINDOW.unpack_from(data, offset))

    def fits(self, rows: int, cols: int) -> bool:
        return (
            self.rows > 0
            and self.cols > 0
            and self.row0 + self.rows <= rows
            and self.col0 + self.cols <= cols
        )

    def contains(self, other: Window) -> bool:
        return (
            self.row0 <= other.row0
            and self.col0 <= other.col0
            and other.row0 + other.rows <= self.row0 + self.rows
            and other.col0 + other.cols <= self.col0 + self.cols
        )

    def overlaps(self, other: Window) -> bool:
        return not (
            other.row0 >= self.row0 + self.rows
            or self.row0 >= other.row0 + other.rows
            or other.col0 >= self.col0 + self.cols
            or self.col0 >= other.col0 + other.cols
        )

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def __str__(self) -> str:
        return f"rows {self.row0}..{self.row0 + self.rows - 1}, cols {self.col0}..{self.col0 + self.cols - 1}"


# ------------------------------------------------------------------ limits
_LIMITS = struct.Struct("<dddddI")
LIMITS_SIZE = _LIMITS.size  # 44


def pack_limits(lim: SafetyLimits) -> bytes:
    return _LIMITS.pack(
        lim.max_read_voltage_v,
        lim.max_write_voltage_v,
        lim.min_pulse_width_s,
        lim.max_pulse_width_s,
        lim.compliance_current_a,
        lim.max_pulses_per_call,
    )


def unpack_limits(data: bytes, offset: int = 0) -> SafetyLimits:
    if len(data) - offset < LIMITS_SIZE:
        raise ProtocolError(f"limits block needs {LIMITS_SIZE} bytes, got {len(data) - offset}")
    v = _LIMITS.unpack_from(data, offset)
    try:
        return SafetyLimits(
            max_read_voltage_v=v[0],
            max_write_voltage_v=v[1],
            min_pulse_width_s=v[2],
            max_pulse_width_s=v[3],
            compliance_current_a=v[4],
            max_pulses_per_call=v[5],
        )
    except ValueError as exc:
        raise ProtocolError(f"limits block is not valid: {exc}") from None


# -------------------------------------------------------------------- INFO
_INFO = struct.Struct("<HHHHdddddddHB")
INFO_FLAG_PARALLEL_UPDATE = 0x01
INFO_FLAG_TRANSPOSED_READ = 0x02


@dataclass(frozen=True)
class BoardInfo:
    """The INFO reply: firmware, array, DAC, timing and the board's hard limits."""

    fw_major: int
    fw_minor: int
    rows: int
    cols: int
    w_min: float  # normalized weight units
    w_max: float
    dw_min: float  # nominal weight change of one pulse
    full_scale_read_v: float  # read voltage of a normalized input of 1.0 (V)
    dac_lsb_v: float  # volts per MVM input code (V)
    t_vector_s: float  # execution time of one MVM vector or one column read (s)
    t_slot_s: float  # execution time of one pulse slot (one pulse on all selected devices) (s)
    max_bl: int  # longest stochastic pulse train of UPDATE
    flags: int
    hard_limits: SafetyLimits
    hardware_id: str

    @property
    def parallel_update(self) -> bool:
        return bool(self.flags & INFO_FLAG_PARALLEL_UPDATE)

    @property
    def transposed_read(self) -> bool:
        return bool(self.flags & INFO_FLAG_TRANSPOSED_READ)

    def pack(self) -> bytes:
        ident = self.hardware_id.encode("utf-8")[:255]
        return (
            _INFO.pack(
                self.fw_major,
                self.fw_minor,
                self.rows,
                self.cols,
                self.w_min,
                self.w_max,
                self.dw_min,
                self.full_scale_read_v,
                self.dac_lsb_v,
                self.t_vector_s,
                self.t_slot_s,
                self.max_bl,
                self.flags,
            )
            + pack_limits(self.hard_limits)
            + bytes([len(ident)])
            + ident
        )

    @classmethod
    def unpack(cls, data: bytes) -> BoardInfo:
        need = _INFO.size + LIMITS_SIZE + 1
        if len(data) < need:
            raise ProtocolError(f"INFO reply needs at least {need} bytes, got {len(data)}")
        v = _INFO.unpack_from(data, 0)
        lim = unpack_limits(data, _INFO.size)
        n = data[_INFO.size + LIMITS_SIZE]
        ident = data[need : need + n]
        if len(ident) != n:
            raise ProtocolError(f"INFO reply: hardware id of {n} bytes is truncated")
        return cls(*v, hard_limits=lim, hardware_id=ident.decode("utf-8", "replace"))


# ------------------------------------------------------------------ STATUS
_STATUS = struct.Struct("<BBIIQ")
STATUS_FLAG_ARMED = 0x01
STATUS_FLAG_LIMITS_SET = 0x02


@dataclass(frozen=True)
class BoardStatus:
    flags: int
    last_status: int
    frames_ok: int
    frames_bad: int
    pulses_applied: int

    @property
    def armed(self) -> bool:
        return bool(self.flags & STATUS_FLAG_ARMED)

    def pack(self) -> bytes:
        return _STATUS.pack(
            self.flags, self.last_status, self.frames_ok, self.frames_bad, self.pulses_applied
        )

    @classmethod
    def unpack(cls, data: bytes) -> BoardStatus:
        _exact(data, _STATUS.size, "STATUS reply")
        return cls(*_STATUS.unpack(data))


# ---------------------------------------------------------------- LAST_SEQ
_LASTSEQ = struct.Struct("<BHBBH")


@dataclass(frozen=True)
class LastSeq:
    """The last write request the firmware executed (or rejected): seq, cmd, status, frame CRC."""

    valid: bool
    seq: int
    cmd: int
    status: int
    request_crc: int

    def pack(self) -> bytes:
        return _LASTSEQ.pack(int(self.valid), self.seq, self.cmd, self.status, self.request_crc)

    @classmethod
    def unpack(cls, data: bytes) -> LastSeq:
        _exact(data, _LASTSEQ.size, "LAST_SEQ reply")
        v = _LASTSEQ.unpack(data)
        return cls(bool(v[0]), v[1], v[2], v[3], v[4])


# -------------------------------------------------------------------- READ
_READ = struct.Struct("<8sdH")


@dataclass(frozen=True)
class ReadRequest:
    window: Window
    read_voltage_v: float
    n_reads: int = 1

    def pack(self) -> bytes:
        return _READ.pack(self.window.pack(), self.read_voltage_v, self.n_reads)

    @classmethod
    def unpack(cls, data: bytes) -> ReadRequest:
        _exact(data, _READ.size, "READ request")
        w, v, n = _READ.unpack(data)
        return cls(Window.unpack(w), v, n)


# --------------------------------------------------------------------- MVM
_MVM = struct.Struct("<8sBH")


@dataclass(frozen=True)
class MvmRequest:
    """Inputs as signed DAC codes (volts = code * dac_lsb_v), ``[batch, n_in]`` int16."""

    window: Window
    transposed: bool
    codes: np.ndarray  # int16 [batch, n_in]; n_in = cols (forward) or rows (transposed)

    def pack(self) -> bytes:
        c = np.ascontiguousarray(self.codes, dtype="<i2")
        return _MVM.pack(self.window.pack(), int(self.transposed), c.shape[0]) + c.tobytes()

    @classmethod
    def unpack(cls, data: bytes) -> MvmRequest:
        if len(data) < _MVM.size:
            raise ProtocolError(f"MVM request needs at least {_MVM.size} bytes, got {len(data)}")
        w, t, batch = _MVM.unpack_from(data, 0)
        win = Window.unpack(w)
        n_in = win.rows if t else win.cols
        _exact(data, _MVM.size + 2 * batch * n_in, "MVM request")
        codes = np.frombuffer(data, dtype="<i2", offset=_MVM.size).reshape(batch, n_in)
        return cls(win, bool(t), codes)


# ------------------------------------------------------------------- PULSE
_PULSE = struct.Struct("<HHidd")


@dataclass(frozen=True)
class PulseRequest:
    """``count`` pulses on one device (+: potentiation), amplitude (V, magnitude) and width (s)."""

    row: int
    col: int
    count: int
    amplitude_v: float
    width_s: float

    def pack(self) -> bytes:
        return _PULSE.pack(self.row, self.col, self.count, self.amplitude_v, self.width_s)

    @classmethod
    def unpack(cls, data: bytes) -> PulseRequest:
        _exact(data, _PULSE.size, "PULSE request")
        return cls(*_PULSE.unpack(data))


# ------------------------------------------------------------- PULSE_BATCH
_BATCH = struct.Struct("<8sddB")
_SPARSE_ITEM = np.dtype([("row", "<u2"), ("col", "<u2"), ("count", "<i2")])


@dataclass(frozen=True)
class PulseBatchRequest:
    """Signed pulse counts ``[rows, cols]`` of a window, one frame for any number of devices."""

    window: Window
    amplitude_v: float
    width_s: float
    counts: np.ndarray  # int64 [rows, cols]

    def pack(self, encoding: PulseEncoding | None = None) -> bytes:
        c = np.asarray(self.counts, dtype=np.int64).reshape(self.window.rows, self.window.cols)
        if encoding is None:
            encoding = choose_encoding(c)
        peak = int(np.abs(c).max()) if c.size else 0
        fits = 127 if encoding == PulseEncoding.DENSE_I8 else 32767
        if peak > fits:
            raise ProtocolError(
                f"pulse count {peak} does not fit the {PulseEncoding(encoding).name} encoding (max {fits})"
            )
        head = _BATCH.pack(self.window.pack(), self.amplitude_v, self.width_s, int(encoding))
        if encoding == PulseEncoding.DENSE_I8:
            return head + c.astype("<i1").tobytes()
        if encoding == PulseEncoding.DENSE_I16:
            return head + c.astype("<i2").tobytes()
        r, k = np.nonzero(c)
        items = np.empty(len(r), dtype=_SPARSE_ITEM)
        items["row"], items["col"], items["count"] = r, k, c[r, k]
        return head + struct.pack("<I", len(r)) + items.tobytes()

    @classmethod
    def unpack(cls, data: bytes) -> PulseBatchRequest:
        if len(data) < _BATCH.size:
            raise ProtocolError(f"PULSE_BATCH request needs at least {_BATCH.size} bytes, got {len(data)}")
        w, amp, width, enc = _BATCH.unpack_from(data, 0)
        win = Window.unpack(w)
        body = data[_BATCH.size :]
        if enc == PulseEncoding.DENSE_I8:
            _exact(body, win.size, "PULSE_BATCH dense int8 body")
            counts = np.frombuffer(body, dtype="<i1").astype(np.int64)
        elif enc == PulseEncoding.DENSE_I16:
            _exact(body, 2 * win.size, "PULSE_BATCH dense int16 body")
            counts = np.frombuffer(body, dtype="<i2").astype(np.int64)
        elif enc == PulseEncoding.SPARSE:
            if len(body) < 4:
                raise ProtocolError("PULSE_BATCH sparse body needs a 4-byte item count")
            (n,) = struct.unpack_from("<I", body, 0)
            _exact(body, 4 + n * _SPARSE_ITEM.itemsize, "PULSE_BATCH sparse body")
            items = np.frombuffer(body, dtype=_SPARSE_ITEM, offset=4)
            if n and (items["row"].max() >= win.rows or items["col"].max() >= win.cols):
                raise ProtocolError("PULSE_BATCH sparse item outside its window")
            counts = np.zeros(win.size, dtype=np.int64)
            np.add.at(counts, items["row"].astype(np.int64) * win.cols + items["col"], items["count"])
        else:
            raise ProtocolError(f"PULSE_BATCH: unknown count encoding {enc}")
        return cls(win, amp, width, counts.reshape(win.rows, win.cols))


def choose_encoding(counts: np.ndarray) -> PulseEncoding:
    """The shortest encoding that represents ``counts`` exactly."""
    peak = int(np.abs(counts).max()) if counts.size else 0
    nnz = int(np.count_nonzero(counts))
    if peak > 32767:
        raise ProtocolError(f"pulse count {peak} does not fit the int16 of a PULSE_BATCH frame")
    dense = counts.size * (1 if peak <= 127 else 2)
    sparse = 4 + 6 * nnz
    if sparse < dense:
        return PulseEncoding.SPARSE
    return PulseEncoding.DENSE_I8 if peak <= 127 else PulseEncoding.DENSE_I16


# ------------------------------------------------------------------ UPDATE
_UPDATE = struct.Struct("<8sddfHBH")
UPDATE_FLAG_MANAGEMENT = 0x01


@dataclass(frozen=True)
class UpdateRequest:
    """Parallel stochastic outer-product update: ``E[dW] = -lr * sum_b outer(d_b, x_b)``."""

    window: Window
    amplitude_v: float
    width_s: float
    lr: float
    bl: int
    update_management: bool
    x: np.ndarray  # float32 [batch, cols]
    d: np.ndarray  # float32 [batch, rows]

    def pack(self) -> bytes:
        x = np.ascontiguousarray(self.x, dtype="<f4")
        d = np.ascontiguousarray(self.d, dtype="<f4")
        head = _UPDATE.pack(
            self.window.pack(),
            self.amplitude_v,
            self.width_s,
            self.lr,
            self.bl,
            UPDATE_FLAG_MANAGEMENT if self.update_management else 0,
            x.shape[0],
        )
        return head + x.tobytes() + d.tobytes()

    @classmethod
    def unpack(cls, data: bytes) -> UpdateRequest:
        if len(data) < _UPDATE.size:
            raise ProtocolError(f"UPDATE request needs at least {_UPDATE.size} bytes, got {len(data)}")
        w, amp, width, lr, bl, flags, batch = _UPDATE.unpack_from(data, 0)
        win = Window.unpack(w)
        nx, nd = batch * win.cols, batch * win.rows
        _exact(data, _UPDATE.size + 4 * (nx + nd), "UPDATE request")
        x = np.frombuffer(data, dtype="<f4", offset=_UPDATE.size, count=nx).reshape(batch, win.cols)
        d = np.frombuffer(data, dtype="<f4", offset=_UPDATE.size + 4 * nx, count=nd).reshape(batch, win.rows)
        return cls(win, amp, width, lr, bl, bool(flags & UPDATE_FLAG_MANAGEMENT), x, d)


# ---------------------------------------------------- write replies, floats
_APPLIED = struct.Struct("<QQ")


def pack_applied(n_up: int, n_down: int) -> bytes:
    """Reply of PULSE / PULSE_BATCH / UPDATE: pulses applied up and down (u64 each)."""
    return _APPLIED.pack(int(n_up), int(n_down))


def unpack_applied(data: bytes) -> tuple[int, int]:
    _exact(data, _APPLIED.size, "pulse reply")
    return _APPLIED.unpack(data)


def pack_floats(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def unpack_floats(data: bytes, shape: tuple[int, ...], what: str) -> np.ndarray:
    n = int(np.prod(shape))
    _exact(data, 4 * n, what)
    return np.frombuffer(data, dtype="<f4").reshape(shape).copy()


def _exact(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise ProtocolError(f"{what}: expected {n} bytes, got {len(data)}")
