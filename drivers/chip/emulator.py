"""``ChipEmulator``: the test-chip board's firmware in Python, backed by ``SimulatedCrossbar``.

The emulator speaks the board protocol of :mod:`hil.drivers.chip.protocol`
byte for byte.  It is transport-agnostic: :meth:`ChipEmulator.receive` takes
bytes as they arrive and queues reply bytes with a release time;
:meth:`ChipEmulator.pop_due` hands out what is due.  The transports in
:mod:`hil.drivers.chip.transports` (in-process ``xbarsim://`` pyserial URL,
loopback TCP, pty) only move bytes.

Firmware behaviour:

- the array is one ``SimulatedCrossbar`` of the chip's full shape (any device
  model: preset name, JSON file or :class:`~hil.device_model.DeviceModel`);
  array commands address a window of it;
- its own **hard limits** (``EmulatorConfig.hard_limits``) and the active limits
  set by SET_LIMITS (never above the hard ones); a value outside the active
  limits is answered LIMIT_REJECTED and nothing happens;
- writes (PULSE, PULSE_BATCH, UPDATE) need ARM (else INTERLOCK); ARM needs
  SET_LIMITS first; SAFE (and a disconnect) disarms;
- the reply of the last write is cached with its ``(seq, frame CRC)``: an
  identical request is answered from the cache and **never executed twice**;
  LAST_SEQ reports that write;
- every executed write is appended to :attr:`ChipEmulator.pulse_log`.

Faults (:class:`FaultConfig`, rates per frame, seeded; or one-shot with
:meth:`ChipEmulator.inject`): corrupted request / reply bytes, dropped requests,
dropped replies, dropped acknowledgements *after* a write executed, BUSY,
delayed replies, disconnects.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from hil.config import HilModel
from hil.device_model import DeviceModel
from hil.drivers.chip.frame import VERSION, Frame, FrameDecoder, crc16, encode_frame
from hil.drivers.chip.protocol import (
    INFO_FLAG_PARALLEL_UPDATE,
    INFO_FLAG_TRANSPOSED_READ,
    STATUS_FLAG_ARMED,
    STATUS_FLAG_LIMITS_SET,
    WRITE_COMMANDS,
    BoardInfo,
    BoardStatus,
    Cmd,
    LastSeq,
    MvmRequest,
    ProtocolError,
    PulseBatchRequest,
    PulseRequest,
    ReadRequest,
    Status,
    UpdateRequest,
    Window,
    pack_applied,
    pack_floats,
    pack_limits,
    unpack_limits,
)
from hil.safety import SafetyLimits

FaultKind = Literal[
    "corrupt_request", "corrupt_reply", "drop_request", "drop_reply", "drop_ack", "busy", "delay",
    "disconnect",
]


def default_hard_limits() -> SafetyLimits:
    """The emulated board's hard limits (volts, seconds, amperes, pulses per device and call)."""
    return SafetyLimits(
        max_read_voltage_v=0.5,
        max_write_voltage_v=3.0,
        min_pulse_width_s=1e-9,
        max_pulse_width_s=1e-3,
        compliance_current_a=1e-3,
        max_pulses_per_call=32767,
    )


class FaultConfig(HilModel):
    """Fault injection of the emulator; every rate is a probability per frame (0: never)."""

    seed: int = Field(0, description="seed of the fault generator (independent of the array's)")
    corrupt_request_rate: float = Field(0.0, ge=0, le=1, description="flip one byte of a received chunk")
    corrupt_reply_rate: float = Field(0.0, ge=0, le=1, description="flip one byte of a reply frame")
    drop_request_rate: float = Field(0.0, ge=0, le=1, description="lose a received chunk entirely")
    drop_reply_rate: float = Field(0.0, ge=0, le=1, description="lose a reply (any command)")
    drop_ack_rate: float = Field(
        0.0, ge=0, le=1, description="lose the reply of a write after it was executed"
    )
    busy_rate: float = Field(0.0, ge=0, le=1, description="answer BUSY without executing")
    delay_rate: float = Field(0.0, ge=0, le=1, description="hold a reply back by delay_s")
    delay_s: float = Field(0.0, ge=0, description="delay of a held-back reply, seconds")
    disconnect_after_frames: int | None = Field(
        None, ge=1, description="drop the link after this many received frames (once)"
    )


class EmulatorConfig(HilModel):
    """An emulated board: array shape, device model, periphery, DAC, timing, hard limits, faults."""

    rows: int = Field(32, gt=0, le=4096)
    cols: int = Field(32, gt=0, le=4096)
    device: str | DeviceModel = Field(
        "rram-softbounds-20", description="device preset name, device-model JSON path or model"
    )
    periphery: dict[str, Any] | None = Field(
        None, description="PeripheryConfig fields (None: SimulatedCrossbar's default)"
    )
    seed: int = 0
    initial_weight: float | None = 0.0
    hard_limits: SafetyLimits = Field(default_factory=default_hard_limits)
    full_scale_read_v: float = Field(
        0.2, gt=0, description="read voltage of a normalized input of 1.0 (V)"
    )
    dac_lsb_v: float = Field(1.0 / 32767, gt=0, description="volts per MVM input code")
    max_bl: int = Field(255, ge=1, le=4096, description="longest UPDATE pulse train")
    t_vector_s: float = Field(2e-6, ge=0, description="time of one MVM vector / column read")
    t_slot_s: float = Field(1e-6, ge=0, description="time of one pulse slot")
    limit_resolution_v: float | None = Field(
        None,
        gt=0,
        description="voltage limits are rounded to this step when set (models a firmware that "
        "cannot hold the exact value; the driver's read-back then reports a mismatch)",
    )
    fw_version: tuple[int, int] = (1, 0)
    serial_number: str = "XBS-EMU-0001"
    keep_counts: bool = Field(
        True, description="store PULSE/PULSE_BATCH count matrices in the pulse log"
    )
    faults: FaultConfig = Field(default_factory=FaultConfig)


@dataclass
class PulseRecord:
    """One executed write: what it did to which window (pulses up and down in total)."""

    index: int
    seq: int
    cmd: int
    request_crc: int
    window: Window
    n_up: int
    n_down: int
    amplitude_v: float
    width_s: float
    counts: np.ndarray | None = None  # PULSE / PULSE_BATCH (keep_counts)
    time_s: float = field(default_factory=time.monotonic)

    @property
    def pulses(self) -> int:
        return self.n_up + self.n_down

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seq": self.seq,
            "cmd": Cmd(self.cmd).name,
            "request_crc": self.request_crc,
            "window": [self.window.row0, self.window.col0, self.window.rows, self.window.cols],
            "n_up": self.n_up,
            "n_down": self.n_down,
            "amplitude_v": self.amplitude_v,
            "width_s": self.width_s,
        }


class _Reject(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


class EmulatorDisconnected(ConnectionError):
    """The emulated link is down (fault injection or :meth:`ChipEmulator.disconnect`)."""


class ChipEmulator:
    """The board firmware, backed by a ``SimulatedCrossbar`` of the whole chip.

    ``ChipEmulator(EmulatorConfig(...))`` or ``ChipEmulator(rows=.., cols=.., device=..)``.
    Thread-safe: transports call :meth:`receive` / :meth:`pop_due` from their own
    threads; tests read :attr:`pulse_log` and :attr:`stats` at any time.
    """

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        from hil.simulated.crossbar import SimulatedCrossbar
        from hil.simulated.periphery import PeripheryConfig

        if config is None:
            config = EmulatorConfig(**overrides)
        elif overrides:
            config = config.model_copy(update=overrides)
            config = EmulatorConfig.model_validate(config.model_dump())
        self.config = config
        device = config.device
        if isinstance(device, str) and device.lower().endswith(".json"):
            device = DeviceModel.load(Path(device))
        periphery = PeripheryConfig(**config.periphery) if config.periphery is not None else None
        self.sim = SimulatedCrossbar(
            config.rows,
            config.cols,
            device=device,
            periphery=periphery,
            seed=config.seed,
            initial_weight=config.initial_weight,
        )
        self.lock = threading.RLock()
        self.decoder = FrameDecoder(stale_after_s=0.2)
        self.faults = config.faults
        self._rng = random.Random(config.faults.seed)
        self._oneshot: deque[FaultKind] = deque()
        self._outbox: list[tuple[float, int, bytes]] = []
        self._order = 0
        self.armed = False
        self.limits_set = False
        self.active_limits = config.hard_limits
        self._cache: tuple[int, int, bytes] | None = None  # (seq, request crc, reply bytes)
        self.last = LastSeq(False, 0, 0, 0, 0)
        self.pulse_log: list[PulseRecord] = []
        self.stats: Counter[str] = Counter()
        self.disconnected = False
        self._frames_received = 0
        self._disconnect_done = False
        self._last_status = Status.OK

    # ---------------------------------------------------------------- info
    @property
    def info(self) -> BoardInfo:
        step = self.sim.config.device.step
        cfg = self.config
        return BoardInfo(
            fw_major=cfg.fw_version[0],
            fw_minor=cfg.fw_version[1],
            rows=cfg.rows,
            cols=cfg.cols,
            w_min=float(step.w_min),
            w_max=float(step.w_max),
            dw_min=float(self.sim.dw_nominal),
            full_scale_read_v=cfg.full_scale_read_v,
            dac_lsb_v=cfg.dac_lsb_v,
            t_vector_s=cfg.t_vector_s,
            t_slot_s=cfg.t_slot_s,
            max_bl=cfg.max_bl,
            flags=INFO_FLAG_PARALLEL_UPDATE | INFO_FLAG_TRANSPOSED_READ,
            hard_limits=cfg.hard_limits,
            hardware_id=f"xbarsim {cfg.serial_number} fw {cfg.fw_version[0]}.{cfg.fw_version[1]} "
            f"device {self.sim.config.device.name}",
        )

    def weights(self) -> torch.Tensor:
        """The exact simulated weights of the whole chip ``[rows, cols]`` (tests only)."""
        with self.lock:
            return self.sim.true_weights()

    # -------------------------------------------------------------- faults
    def inject(self, kind: FaultKind, times: int = 1) -> None:
        """Schedule a one-shot fault for the next frame(s) where it applies."""
        with self.lock:
            self._oneshot.extend([kind] * int(times))

    def _fault(self, kind: FaultKind, rate: float) -> bool:
        if kind in self._oneshot:
            self._oneshot.remove(kind)
            self.stats[f"fault_{kind}"] += 1
            return True
        if rate > 0 and self._rng.random() < rate:
            self.stats[f"fault_{kind}"] += 1
            return True
        return False

    def _flip(self, data: bytes) -> bytes:
        b = bytearray(data)
        i = self._rng.randrange(len(b))
        b[i] ^= self._rng.randrange(1, 256)
        return bytes(b)

    def disconnect(self) -> None:
        """Drop the link now (the transport closes it); the firmware disarms (link-loss watchdog)."""
        with self.lock:
            self.disconnected = True
            self.armed = False
            self._outbox.clear()
            self.decoder.reset()
            self.stats["disconnects"] += 1

    def reconnect(self) -> None:
        """A new connection (the cable plugged back in): the array keeps its state, disarmed."""
        with self.lock:
            self.disconnected = False
            self.decoder.reset()
            self._outbox.clear()

    # ---------------------------------------------------------------- bytes
    def receive(self, data: bytes, now: float | None = None) -> None:
        """Bytes from the host.  Replies are queued for :meth:`pop_due`."""
        now = time.monotonic() if now is None else now
        with self.lock:
            if self.disconnected:
                raise EmulatorDisconnected("xbarsim: the emulated link is disconnected")
            if not data:
                return
            self.stats["bytes_in"] += len(data)
            f = self.faults
            if self._fault("drop_request", f.drop_request_rate):
                return
            if self._fault("corrupt_request", f.corrupt_request_rate):
                data = self._flip(data)
            frames = self.decoder.feed(data, now)
            bad, self.decoder.bad_frames = self.decoder.bad_frames, []
            for exc in bad:
                self.stats["frames_bad_crc"] += 1
                self._emit(
                    Frame(exc.seq, exc.cmd, str(exc).encode(), Status.BAD_CRC, True), now, False
                )
            for frame in frames:
                if frame.is_reply:
                    self.stats["frames_ignored"] += 1
                    continue
                self._frames_received += 1
                reply, executed_write = self._execute(frame)
                self._emit(reply, now, executed_write)
                n = f.disconnect_after_frames
                if (
                    (n is not None and not self._disconnect_done and self._frames_received >= n)
                    or self._fault("disconnect", 0.0)
                ):
                    self._disconnect_done = True
                    self.disconnect()
                    return

    def _emit(self, reply: Frame | bytes, now: float, executed_write: bool) -> None:
        data = reply if isinstance(reply, bytes) else reply.encode()
        f = self.faults
        if executed_write and self._fault("drop_ack", f.drop_ack_rate):
            return
        if self._fault("drop_reply", f.drop_reply_rate):
            return
        release = now
        if self._fault("delay", f.delay_rate):
            release = now + f.delay_s
        if self._fault("corrupt_reply", f.corrupt_reply_rate):
            data = self._flip(data)
        self._order += 1
        heapq.heappush(self._outbox, (release, self._order, data))
        self.stats["bytes_out"] += len(data)

    def pop_due(self, now: float | None = None) -> bytes:
        """Reply bytes whose release time has come, in release order."""
        now = time.monotonic() if now is None else now
        out = bytearray()
        with self.lock:
            while self._outbox and self._outbox[0][0] <= now:
                out += heapq.heappop(self._outbox)[2]
        return bytes(out)

    def next_due(self) -> float | None:
        """Release time of the next queued reply (monotonic seconds), or None."""
        with self.lock:
            return self._outbox[0][0] if self._outbox else None

    def transact(self, request: bytes) -> bytes:
        """Feed one request and return whatever is due at once (tests without a transport)."""
        self.receive(request)
        return self.pop_due(float("inf"))

    # ------------------------------------------------------------ firmware
    def _execute(self, frame: Frame) -> tuple[bytes, bool]:
        """(reply bytes, whether a write was executed now)."""
        self.stats["frames_ok"] += 1
        if frame.version != VERSION:
            msg = f"protocol version {frame.version} not supported (firmware speaks {VERSION})"
            return self._reply(frame, Status.BAD_VERSION, msg.encode()), False
        try:
            cmd = Cmd(frame.cmd)
        except ValueError:
            return self._reply(frame, Status.BAD_CMD, f"unknown command 0x{frame.cmd:02x}".encode()), False
        self.stats[f"cmd_{cmd.name}"] += 1
        is_write = cmd in WRITE_COMMANDS
        req_crc = 0
        if is_write:
            req_crc = crc16(frame.encode()[2:-2])
            if self._cache is not None and self._cache[:2] == (frame.seq, req_crc):
                self.stats["duplicates_answered_from_cache"] += 1
                return self._cache[2], False
        if cmd not in (Cmd.LAST_SEQ, Cmd.STATUS, Cmd.SAFE, Cmd.INFO) and self._fault(
            "busy", self.faults.busy_rate
        ):
            return self._reply(frame, Status.BUSY, b"firmware busy"), False
        handler = getattr(self, f"_cmd_{cmd.name.lower()}")
        executed = False
        try:
            payload = handler(frame, req_crc)
            status = Status.OK
            executed = is_write
        except _Reject as exc:
            status, payload = exc.status, str(exc).encode()
        except ProtocolError as exc:
            status, payload = Status.BAD_PAYLOAD, str(exc).encode()
        except Exception as exc:  # a firmware bug must still answer
            status, payload = Status.INTERNAL, f"{type(exc).__name__}: {exc}".encode()
        self._last_status = status
        reply = self._reply(frame, status, payload)
        if is_write:
            self._cache = (frame.seq, req_crc, reply)
            self.last = LastSeq(True, frame.seq, int(cmd), int(status), req_crc)
        return reply, executed

    @staticmethod
    def _reply(frame: Frame, status: Status, payload: bytes) -> bytes:
        return encode_frame(frame.seq, frame.cmd, payload, int(status), True)

    # checks
    def _window(self, win: Window) -> Window:
        if not win.fits(self.config.rows, self.config.cols):
            raise _Reject(
                Status.OUT_OF_RANGE,
                f"window {win} is outside the {self.config.rows}x{self.config.cols} array",
            )
        return win

    def _check_write(self, amplitude_v: float, width_s: float, peak: int) -> None:
        if not self.armed:
            raise _Reject(Status.INTERLOCK, "write refused: the board is not armed (ARM after SAFE)")
        lim = self.active_limits
        if not (np.isfinite(amplitude_v) and abs(amplitude_v) <= lim.max_write_voltage_v):
            raise _Reject(
                Status.LIMIT_REJECTED,
                f"pulse amplitude {amplitude_v:g} V exceeds +-{lim.max_write_voltage_v:g} V",
            )
        if not (np.isfinite(width_s) and lim.min_pulse_width_s <= width_s <= lim.max_pulse_width_s):
            raise _Reject(
                Status.LIMIT_REJECTED,
                f"pulse width {width_s:g} s outside [{lim.min_pulse_width_s:g}, "
                f"{lim.max_pulse_width_s:g}] s",
            )
        if peak > lim.max_pulses_per_call:
            raise _Reject(
                Status.LIMIT_REJECTED,
                f"{peak} pulses on one device exceed {lim.max_pulses_per_call} per call",
            )

    def _check_read(self, peak_v: float) -> None:
        lim = self.active_limits.max_read_voltage_v
        if not (np.isfinite(peak_v) and peak_v <= lim):
            raise _Reject(Status.LIMIT_REJECTED, f"read voltage {peak_v:g} V exceeds +-{lim:g} V")

    # handlers: each returns the OK reply payload or raises _Reject / ProtocolError
    def _cmd_info(self, frame: Frame, crc: int) -> bytes:
        return self.info.pack()

    def _cmd_get_limits(self, frame: Frame, crc: int) -> bytes:
        return pack_limits(self.active_limits)

    def _cmd_set_limits(self, frame: Frame, crc: int) -> bytes:
        if len(frame.payload) != 44:
            raise ProtocolError(f"SET_LIMITS: expected 44 bytes, got {len(frame.payload)}")
        new = unpack_limits(frame.payload)
        hard = self.config.hard_limits
        over = [
            name
            for name in (
                "max_read_voltage_v",
                "max_write_voltage_v",
                "max_pulse_width_s",
                "compliance_current_a",
                "max_pulses_per_call",
            )
            if getattr(new, name) > getattr(hard, name)
        ]
        if new.min_pulse_width_s < hard.min_pulse_width_s:
            over.append("min_pulse_width_s")
        if over:
            raise _Reject(
                Status.LIMIT_REJECTED,
                "limits beyond the board's hard limits: "
                + ", ".join(f"{n}={getattr(new, n)!r} (hard {getattr(hard, n)!r})" for n in over),
            )
        step = self.config.limit_resolution_v
        if step is not None:
            new = new.model_copy(
                update={
                    "max_read_voltage_v": max(step, round(new.max_read_voltage_v / step) * step),
                    "max_write_voltage_v": max(step, round(new.max_write_voltage_v / step) * step),
                }
            )
        self.active_limits = new
        self.limits_set = True
        self.armed = False  # new limits: arm again
        return pack_limits(new)

    def _cmd_safe(self, frame: Frame, crc: int) -> bytes:
        self.armed = False
        self.stats["safe_state"] += 1
        return b""

    def _cmd_arm(self, frame: Frame, crc: int) -> bytes:
        if not self.limits_set:
            raise _Reject(Status.INTERLOCK, "ARM refused: set the limits (SET_LIMITS) first")
        self.armed = True
        return b""

    def _cmd_status(self, frame: Frame, crc: int) -> bytes:
        flags = (STATUS_FLAG_ARMED if self.armed else 0) | (
            STATUS_FLAG_LIMITS_SET if self.limits_set else 0
        )
        return BoardStatus(
            flags,
            int(self._last_status),
            self.stats["frames_ok"] & 0xFFFFFFFF,
            self.stats["frames_bad_crc"] & 0xFFFFFFFF,
            sum(r.pulses for r in self.pulse_log),
        ).pack()

    def _cmd_last_seq(self, frame: Frame, crc: int) -> bytes:
        return self.last.pack()

    def _cmd_read(self, frame: Frame, crc: int) -> bytes:
        from hil.simulated.periphery import analog_mvm

        req = ReadRequest.unpack(frame.payload)
        win = self._window(req.window)
        v = float(req.read_voltage_v)
        if not v > 0:
            raise _Reject(Status.LIMIT_REJECTED, f"read voltage must be > 0 V, got {v:g} V")
        self._check_read(v)
        if not 1 <= req.n_reads <= 1024:
            raise ProtocolError(f"READ: n_reads must be in 1..1024, got {req.n_reads}")
        w = self._win_weights(win)
        x = v / self.config.full_scale_read_v
        eye = torch.eye(win.cols, dtype=w.dtype) * x
        acc = torch.zeros(win.cols, win.rows, dtype=w.dtype)
        for _ in range(req.n_reads):
            acc += analog_mvm(eye, w, self.sim.config.periphery, self.sim.generator)
        est = (acc / (req.n_reads * x)).T
        return pack_floats(est.numpy())

    def _cmd_mvm(self, frame: Frame, crc: int) -> bytes:
        from hil.simulated.periphery import analog_mvm

        req = MvmRequest.unpack(frame.payload)
        win = self._window(req.window)
        volts = req.codes.astype(np.float64) * self.config.dac_lsb_v
        self._check_read(float(np.abs(volts).max()) if volts.size else 0.0)
        w = self._win_weights(win)
        x = torch.from_numpy(volts / self.config.full_scale_read_v).to(w.dtype)
        y = analog_mvm(x, w.T if req.transposed else w, self.sim.config.periphery, self.sim.generator)
        return pack_floats(y.numpy())

    def _cmd_pulse(self, frame: Frame, crc: int) -> bytes:
        req = PulseRequest.unpack(frame.payload)
        self._window(Window(req.row, req.col, 1, 1))
        self._check_write(req.amplitude_v, req.width_s, abs(req.count))
        counts = np.zeros((1, 1), dtype=np.int64)
        counts[0, 0] = req.count
        return self._apply_counts(frame, crc, Window(req.row, req.col, 1, 1), counts, req.amplitude_v, req.width_s)

    def _cmd_pulse_batch(self, frame: Frame, crc: int) -> bytes:
        req = PulseBatchRequest.unpack(frame.payload)
        win = self._window(req.window)
        peak = int(np.abs(req.counts).max()) if req.counts.size else 0
        self._check_write(req.amplitude_v, req.width_s, peak)
        return self._apply_counts(frame, crc, win, req.counts, req.amplitude_v, req.width_s)

    def _cmd_update(self, frame: Frame, crc: int) -> bytes:
        from hil.simulated.pulse_trains import UpdateConfig, coincidence_counts

        req = UpdateRequest.unpack(frame.payload)
        win = self._window(req.window)
        batch = req.x.shape[0]
        if not 1 <= req.bl <= self.config.max_bl:
            raise ProtocolError(f"UPDATE: BL must be in 1..{self.config.max_bl}, got {req.bl}")
        self._check_write(req.amplitude_v, req.width_s, batch * req.bl)
        if not (np.isfinite(req.x).all() and np.isfinite(req.d).all() and np.isfinite(req.lr)):
            raise ProtocolError("UPDATE: x, d and lr must be finite")
        if batch == 0 or req.lr == 0:
            return self._log_and_reply(frame, crc, win, 0, 0, req.amplitude_v, req.width_s, None)
        cfg = UpdateConfig(
            bl=req.bl,
            update_management=req.update_management,
            max_chunks=self.sim.config.update.max_chunks,
        )
        dtype = self.sim.weights.dtype
        n_up, n_down = coincidence_counts(
            torch.from_numpy(req.x.astype(np.float32)).to(dtype),
            torch.from_numpy(req.d.astype(np.float32)).to(dtype),
            float(req.lr),
            self.sim.dw_nominal,
            cfg,
            self.sim.generator,
        )
        self._apply_window(win, n_up, n_down, req.amplitude_v, req.width_s)
        return self._log_and_reply(
            frame, crc, win, int(n_up.sum()), int(n_down.sum()), req.amplitude_v, req.width_s, None
        )

    # array access
    def _win_weights(self, win: Window) -> torch.Tensor:
        # true_weights: what reads and MVMs see (hidden weights plus a write-noise offset, if any)
        return self.sim.true_weights()[win.row0 : win.row0 + win.rows, win.col0 : win.col0 + win.cols]

    def _apply_window(
        self, win: Window, n_up: torch.Tensor, n_down: torch.Tensor, amp: float | None = None,
        width: float | None = None,
    ) -> None:
        """Apply up / down counts of a window; a device model with a pulse response sees the frame's
        |amplitude| ``amp`` (volts) and ``width`` (seconds): the law scales its steps."""
        sim = self.sim
        if (win.rows, win.cols) == sim.shape:
            up, down = n_up, n_down
        else:
            up = torch.zeros(sim.shape, dtype=sim.weights.dtype)
            down = torch.zeros(sim.shape, dtype=sim.weights.dtype)
            sl = (slice(win.row0, win.row0 + win.rows), slice(win.col0, win.col0 + win.cols))
            up[sl], down[sl] = n_up, n_down
        law = sim.config.device.pulse_response
        if law is None or amp is None or width is None:
            sim.weights = sim.devices.apply(sim.weights, up, down, sim.generator, sim.config.update.max_chunks)
            return
        a = torch.tensor(abs(float(amp)), dtype=torch.float64)
        t = torch.tensor(float(width), dtype=torch.float64)
        s_up, s_dn = (law.scale_torch(a, t, u).to(sim.weights.dtype).expand(sim.shape) for u in (True, False))
        with sim.devices.scaled_steps(s_up, s_dn):
            sim.weights = sim.devices.apply(sim.weights, up, down, sim.generator, sim.config.update.max_chunks)

    def _apply_counts(
        self, frame: Frame, crc: int, win: Window, counts: np.ndarray, amp: float, width: float
    ) -> bytes:
        c = torch.from_numpy(np.asarray(counts, dtype=np.int64)).to(self.sim.weights.dtype)
        self._apply_window(win, c.clamp(min=0), (-c).clamp(min=0), amp, width)
        n_up = int(counts[counts > 0].sum())
        n_down = int(-counts[counts < 0].sum())
        keep = np.array(counts, dtype=np.int64) if self.config.keep_counts else None
        return self._log_and_reply(frame, crc, win, n_up, n_down, amp, width, keep)

    def _log_and_reply(
        self,
        frame: Frame,
        crc: int,
        win: Window,
        n_up: int,
        n_down: int,
        amp: float,
        width: float,
        counts: np.ndarray | None,
    ) -> bytes:
        self.pulse_log.append(
            PulseRecord(len(self.pulse_log), frame.seq, frame.cmd, crc, win, n_up, n_down, amp, width, counts)
        )
        return pack_applied(n_up, n_down)

    def __repr__(self) -> str:
        c = self.config
        return f"ChipEmulator({c.rows}x{c.cols}, device={self.sim.config.device.name!r}, armed={self.armed})"


# ------------------------------------------------------------- registry
_REGISTRY: dict[str, ChipEmulator] = {}
_REGISTRY_LOCK = threading.Lock()


def register_emulator(name: str, emulator: ChipEmulator) -> str:
    """Make ``xbarsim://NAME`` open this emulator instance.  Returns the URL."""
    if not name or "/" in name or "?" in name:
        raise ValueError(f"emulator name must be a non-empty word without '/' or '?', got {name!r}")
    with _REGISTRY_LOCK:
        _REGISTRY[name] = emulator
    return f"xbarsim://{name}"


def unregister_emulator(name: str) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.pop(name, None)


def get_emulator(name: str) -> ChipEmulator | None:
    with _REGISTRY_LOCK:
        return _REGISTRY.get(name)
