"""Frames of the test-chip board protocol (version 1): encode, decode, stream decoding.

Byte layout (all integers little-endian; see docs/protocol.md)::

    offset  size  field
    0       2     sync            0xA5 0x5A
    2       1     version         0x01
    3       2     seq             u16, request sequence number (echoed in the reply)
    5       1     cmd             u8, command code; replies set bit 7 (cmd | 0x80)
    6       1     status          u8, 0 in requests; reply status (hil.drivers.chip.protocol.Status)
    7       4     length          u32, payload bytes N (<= MAX_PAYLOAD)
    11      2     header check    u16, CRC-16/CCITT-FALSE of bytes 2..10
    13      N     payload
    13+N    2     frame check     u16, CRC-16/CCITT-FALSE of bytes 2..12+N

The header check lets a receiver trust ``length`` before it waits for the
payload, so a corrupted length never makes it wait for bytes that will not
come; the frame check covers everything after the sync bytes.  Both CRCs detect
every single-byte (indeed every burst <= 16 bit) corruption.
"""

from __future__ import annotations

import binascii
import struct
import time
from dataclasses import dataclass

SYNC = b"\xa5\x5a"
VERSION = 1
HEADER_SIZE = 13
TRAILER_SIZE = 2
OVERHEAD = HEADER_SIZE + TRAILER_SIZE
MAX_PAYLOAD = 1 << 22  # 4 MiB: a 1024 x 1024 array of float32 values
REPLY_BIT = 0x80

_HDR = struct.Struct("<BHBBI")  # version, seq, cmd, status, length (bytes 2..10)


class FrameError(ValueError):
    """Bytes that are not one valid frame (bad sync, version, length, header check or CRC)."""


class BadCrcError(FrameError):
    """A frame whose header is valid but whose payload/frame CRC does not match."""

    def __init__(self, message: str, seq: int, cmd: int) -> None:
        super().__init__(message)
        self.seq = seq
        self.cmd = cmd


def crc16_ccitt_false(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor.

    Check value: ``crc16_ccitt_false(b"123456789") == 0x29B1``.
    """
    for byte in bytes(data):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def crc16(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE through the C implementation in :func:`binascii.crc_hqx`.

    ``crc_hqx`` is the non-reflected CRC-CCITT (poly 0x1021) with a caller-given
    initial value; with init 0xFFFF it is CCITT-FALSE, bit for bit the same as
    :func:`crc16_ccitt_false` (a test pins this).
    """
    return binascii.crc_hqx(bytes(data), crc)


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``cmd`` without the reply bit, ``is_reply`` separately."""

    seq: int
    cmd: int
    payload: bytes = b""
    status: int = 0
    is_reply: bool = False
    version: int = VERSION

    def encode(self) -> bytes:
        return encode_frame(self.seq, self.cmd, self.payload, self.status, self.is_reply, self.version)

    @property
    def crc(self) -> int:
        """The frame check of this frame's encoding (identifies one exact request)."""
        return int.from_bytes(self.encode()[-2:], "little")


def encode_frame(
    seq: int,
    cmd: int,
    payload: bytes = b"",
    status: int = 0,
    is_reply: bool = False,
    version: int = VERSION,
) -> bytes:
    """The bytes of one frame (see the module docstring)."""
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"frame seq must be in 0..65535, got {seq}")
    if not 0 <= cmd < REPLY_BIT:
        raise ValueError(f"frame cmd must be in 0..127, got {cmd}")
    if not 0 <= status <= 0xFF:
        raise ValueError(f"frame status must be in 0..255, got {status}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
    head = _HDR.pack(version, seq, cmd | (REPLY_BIT if is_reply else 0), status, len(payload))
    head += crc16(head).to_bytes(2, "little")
    body = head + bytes(payload)
    return SYNC + body + crc16(body).to_bytes(2, "little")


def _parse_header(buf: bytes | bytearray, start: int) -> tuple[int, int, int, int, int]:
    """(version, seq, cmd_byte, status, length) of the header at ``start`` (sync already matched)."""
    head = bytes(buf[start + 2 : start + 11])
    check = int.from_bytes(buf[start + 11 : start + 13], "little")
    if crc16(head) != check:
        raise FrameError("header check mismatch")
    version, seq, cmd, status, length = _HDR.unpack(head)
    # Another protocol version is still a frame (the firmware answers it BAD_VERSION).
    if length > MAX_PAYLOAD:
        raise FrameError(f"payload length {length} exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
    return version, seq, cmd, status, length


def _finish(buf: bytes | bytearray, start: int, hdr: tuple[int, int, int, int, int]) -> Frame:
    version, seq, cmd, status, length = hdr
    end = start + HEADER_SIZE + length
    body = bytes(buf[start + 2 : end])
    check = int.from_bytes(buf[end : end + 2], "little")
    if crc16(body) != check:
        raise BadCrcError(
            f"frame check mismatch (seq {seq}, cmd 0x{cmd & 0x7F:02x})", seq, cmd & 0x7F
        )
    return Frame(
        seq=seq,
        cmd=cmd & 0x7F,
        payload=bytes(buf[start + HEADER_SIZE : end]),
        status=status,
        is_reply=bool(cmd & REPLY_BIT),
        version=version,
    )


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one frame; raises :class:`FrameError` on any inconsistency."""
    data = bytes(data)
    if len(data) < OVERHEAD:
        raise FrameError(f"{len(data)} bytes is shorter than the {OVERHEAD}-byte frame overhead")
    if data[:2] != SYNC:
        raise FrameError(f"bad sync bytes {data[:2].hex()} (expected {SYNC.hex()})")
    hdr = _parse_header(data, 0)
    if len(data) != OVERHEAD + hdr[4]:
        raise FrameError(f"frame is {len(data)} bytes, its header announces {OVERHEAD + hdr[4]}")
    return _finish(data, 0, hdr)


class FrameDecoder:
    """Incremental decoder of a byte stream into frames, resynchronizing after garbage.

    ``feed(data)`` returns the complete frames found; bytes that are not a valid
    frame are skipped one at a time (counted in ``skipped_bytes``), so a
    corrupted frame never hides the next good one.  Frames whose header is valid
    but whose CRC is not are reported through ``bad_frames`` (seq, cmd) so a
    firmware can answer BAD_CRC.  A partial frame left alone for longer than
    ``stale_after_s`` (its header may have been a false sync) is abandoned at the
    next ``feed``.
    """

    def __init__(self, stale_after_s: float | None = 0.5) -> None:
        self.buffer = bytearray()
        self.stale_after_s = stale_after_s
        self.skipped_bytes = 0
        self.bad_frames: list[BadCrcError] = []
        self._pending_since: float | None = None

    def reset(self) -> None:
        self.buffer.clear()
        self._pending_since = None

    def needed(self) -> int:
        """Bytes still missing for the frame being received (at least 1).

        With a valid header buffered: the rest of that frame; otherwise enough for
        the shortest frame.  A reader may ask its port for this many bytes at once
        without reading past the end of the current frame.
        """
        buf = self.buffer
        if len(buf) >= HEADER_SIZE and buf[:2] == SYNC:
            try:
                hdr = _parse_header(buf, 0)
            except FrameError:
                return 1
            return max(1, OVERHEAD + hdr[4] - len(buf))
        return max(1, OVERHEAD - len(buf))

    def feed(self, data: bytes, now: float | None = None) -> list[Frame]:
        now = time.monotonic() if now is None else now
        if (
            self._pending_since is not None
            and self.stale_after_s is not None
            and now - self._pending_since > self.stale_after_s
            and self.buffer
        ):
            # a stalled partial frame: drop its first byte and rescan what follows
            del self.buffer[0]
            self.skipped_bytes += 1
        self._pending_since = None
        self.buffer += data
        frames: list[Frame] = []
        buf = self.buffer
        while True:
            i = buf.find(SYNC)
            if i < 0:
                keep = 1 if buf.endswith(SYNC[:1]) else 0
                self.skipped_bytes += len(buf) - keep
                del buf[: len(buf) - keep]
                break
            if i:
                self.skipped_bytes += i
                del buf[:i]
            if len(buf) < HEADER_SIZE:
                self._pending_since = now
                break
            try:
                hdr = _parse_header(buf, 0)
            except FrameError:
                del buf[0]
                self.skipped_bytes += 1
                continue
            total = OVERHEAD + hdr[4]
            if len(buf) < total:
                self._pending_since = now
                break
            try:
                frames.append(_finish(buf, 0, hdr))
            except BadCrcError as exc:
                self.bad_frames.append(exc)
                del buf[0]
                self.skipped_bytes += 1
                continue
            del buf[:total]
        return frames
