"""``SerialCrossbar``: a window of a test chip's array behind a serial board, as a CrossbarBackend.

One board carries one chip with one physical array.  A ``SerialCrossbar`` is a
*window* ``(row0, col0, rows, cols)`` of that array; several windows (TTv2's A
and C arrays, the layers of a network) share one :class:`ChipLink` and tile the
chip without sharing a device (:class:`WindowAllocator`).  Each operation of the
contract is one frame (or one frame per ``max_pulses_per_call`` chunk of an
UPDATE), so its hardware cost is known:

============  =======================  ==============================================
contract      frame                    notes
============  =======================  ==============================================
forward(x)    MVM (forward)            x -> volts = x * full_scale_read_v (limits apply)
backward(d)   MVM (transposed)         same mapping for d
update        UPDATE                   the board draws the stochastic pulse trains
pulse(counts) PULSE_BATCH (or PULSE)   one frame for the whole matrix
read(n)       READ                     n reads averaged on the board
============  =======================  ==============================================

Safety (:class:`~hil.safety.SafetyGuard`, shared by all windows of a board):
every voltage, width and pulse count is checked against the limits before a
frame is encoded (``SafetyError``, nothing sent); writes need :meth:`arm`; an
exception inside an operation grounds the board (SAFE) and disarms; a write
whose outcome cannot be learned marks the state unknown until a READ covers
the window again.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from hil.backend import BackendInfo, CrossbarBackend
from hil.config import HilModel
from hil.drivers.chip.link import ChipLink, LinkConfig, LinkCounters, Traffic
from hil.drivers.chip.protocol import (
    Cmd,
    MvmRequest,
    PulseBatchRequest,
    PulseRequest,
    ReadRequest,
    UpdateRequest,
    Window,
    unpack_applied,
    unpack_floats,
)
from hil.safety import SafetyError, SafetyGuard, SafetyLimits


class SerialCrossbarConfig(HilModel):
    """Electrical settings of a SerialCrossbar (volts, seconds); all checked against the limits."""

    read_voltage_v: float | None = Field(
        None, gt=0, description="READ voltage (None: the board's full-scale read voltage)"
    )
    pulse_amplitude_v: float = Field(1.0, gt=0, description="programming pulse amplitude |V|")
    pulse_width_s: float = Field(100e-9, gt=0, description="programming pulse width")
    bl: int = Field(31, ge=1, description="UPDATE stochastic pulse-train length")
    update_management: bool = Field(True, description="balance UPDATE row/column probabilities")
    link: LinkConfig = Field(default_factory=LinkConfig)


class SerialCrossbar(CrossbarBackend):
    """A window of a test chip's array over a framed serial protocol.

    Parameters
    ----------
    port:
        A pyserial URL or device path (``/dev/ttyUSB0``, ``socket://127.0.0.1:PORT``,
        ``xbarsim://NAME``, a pty path) or an open :class:`ChipLink` to share.
    limits:
        Required when ``port`` is a URL: a :class:`SafetyLimits` or ``"board"``
        (adopt the board's hard limits, explicitly).  Ignored for a shared link.
    window:
        The part of the array: a :class:`Window`, ``(rows, cols)`` from the
        origin, or ``None`` for the whole array.
    config:
        :class:`SerialCrossbarConfig` (read voltage, pulse amplitude/width, BL, link timing).
    dry_run:
        Writes (and SET_LIMITS/ARM/SAFE) are recorded in ``guard.recorded``, not sent.
    role:
        A label for logs (``"A"``, ``"C"``, ...).
    """

    def __init__(
        self,
        port: str | ChipLink,
        limits: SafetyLimits | Literal["board"] | None = None,
        *,
        window: Window | tuple[int, int] | None = None,
        config: SerialCrossbarConfig | None = None,
        dry_run: bool = False,
        role: str = "",
    ) -> None:
        self.config = config or SerialCrossbarConfig()
        if isinstance(port, ChipLink):
            link = port
        else:
            if limits is None:
                raise ValueError(
                    f"SerialCrossbar({port!r}): a SafetyLimits is required for a real board "
                    "(or limits='board' to adopt the board's own hard limits explicitly)"
                )
            link = ChipLink.open(port, limits, self.config.link, dry_run=dry_run)
        board = link.board
        if board is None:
            raise ValueError("SerialCrossbar: the link has not read the board's INFO")
        if window is None:
            window = Window(0, 0, board.rows, board.cols)
        elif not isinstance(window, Window):
            window = Window(0, 0, int(window[0]), int(window[1]))
        if not window.fits(board.rows, board.cols):
            if not isinstance(port, ChipLink):
                link.close()
            raise ValueError(
                f"SerialCrossbar: window {window} does not fit the board's {board.rows}x{board.cols} array"
            )
        super().__init__(window.rows, window.cols, "cpu")
        self.link = link.acquire()
        self.board = board
        self.window = window
        self.role = role
        self.traffic = LinkCounters()
        try:
            self._check_config()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------- safety
    @property
    def guard(self) -> SafetyGuard:
        """The board's :class:`~hil.safety.SafetyGuard` (shared by all windows of the board)."""
        return self.link._guard()

    @property
    def limits(self) -> SafetyLimits:
        return self.guard.limits

    def arm(self) -> None:
        """Arm the board: required before the first pulse (and after any safe state)."""
        self._check_open()
        self.link.arm()

    def safe_state(self) -> bool:
        """Ground the board (SAFE) and disarm; never raises."""
        return self.link.safe_state()

    def set_limits(self, limits: SafetyLimits) -> SafetyLimits:
        """New limits for the board: set, read back, compared (mismatch: LimitMismatchError)."""
        self._check_open()
        out = self.link.set_limits(limits)
        self._check_config()
        return out

    def _check_config(self) -> None:
        g = self.guard
        c = self.config
        g.check_write_voltage(c.pulse_amplitude_v, "pulse amplitude (SerialCrossbarConfig)")
        g.check_pulse_width(c.pulse_width_s, "pulse width (SerialCrossbarConfig)")
        g.check_read_voltage(self.read_voltage_v, "READ voltage (SerialCrossbarConfig)")
        if c.bl > self.board.max_bl:
            raise SafetyError(
                f"{g.name}: BL {c.bl} exceeds the board's longest pulse train {self.board.max_bl}"
            )

    @property
    def read_voltage_v(self) -> float:
        v = self.config.read_voltage_v
        return self.board.full_scale_read_v if v is None else v

    # --------------------------------------------------------------- info
    def _info(self) -> BackendInfo:
        b = self.board
        return BackendInfo(
            name="SerialCrossbar",
            kind="serial",
            rows=self.rows,
            cols=self.cols,
            w_min=b.w_min,
            w_max=b.w_max,
            dw_min=b.dw_min,
            parallel_update=b.parallel_update,
            transposed_read=b.transposed_read,
            max_pulses_per_call=self.limits.max_pulses_per_call,
            pulse_shapes=True,
            hardware_id=b.hardware_id,
            details={
                "window": [self.window.row0, self.window.col0, self.window.rows, self.window.cols],
                "board_shape": [b.rows, b.cols],
                "firmware": f"{b.fw_major}.{b.fw_minor}",
                "role": self.role,
                "port": str(getattr(self.link.port, "port", "")),
                "limits": self.limits.model_dump(),
                "pulse_amplitude_v": self.config.pulse_amplitude_v,
                "pulse_width_s": self.config.pulse_width_s,
                "pulse_shapes": "pulse(counts, amplitude_v, width_s): one PULSE_BATCH frame per distinct shape, "
                "every shape checked against the limits before the first frame",
                "bl": self.config.bl,
                "dry_run": self.guard.dry_run,
            },
        )

    # ------------------------------------------------------------ reads
    def _mvm(self, v: torch.Tensor, transposed: bool, op: str) -> torch.Tensor:
        b = self.board
        volts = v.detach().to("cpu", torch.float64).numpy() * b.full_scale_read_v
        self.guard.check_read_voltages(volts, f"{op} input (normalized x {b.full_scale_read_v:g} V)")
        codes = np.rint(volts / b.dac_lsb_v)
        # the nearest DAC code may lie up to half an LSB beyond a value that is itself within
        # the limit: there take the next code toward zero (quantization, still < 1 LSB off)
        over = np.abs(codes) * b.dac_lsb_v > self.limits.max_read_voltage_v
        if over.any():
            codes = np.where(over, np.sign(codes) * np.floor(np.abs(volts) / b.dac_lsb_v), codes)
        if codes.size and np.abs(codes).max() > 32767:
            raise SafetyError(
                f"{self.guard.name}: {op} input of {np.abs(volts).max():g} V is beyond the board's "
                f"DAC range (+-{32767 * b.dac_lsb_v:g} V); nothing was sent"
            )
        req = MvmRequest(self.window, transposed, codes.astype(np.int16))
        n_out = self.cols if transposed else self.rows
        batch = codes.shape[0]
        reply = self.link.request(
            Cmd.MVM,
            req.pack(),
            op,
            exec_s=batch * b.t_vector_s,
            reply_bytes=4 * batch * n_out,
            extra=self.traffic.op(op),
        )
        y = unpack_floats(reply.payload, (batch, n_out), "MVM reply")
        return torch.from_numpy(y).to(self.device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mvm(x, False, "forward")

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        return self._mvm(d, True, "backward")

    def read(self, n_reads: int = 1) -> torch.Tensor:
        """All weights of the window ``[rows, cols]``: one READ frame, ``n_reads`` averaged on the board."""
        self._check_open()
        if not 1 <= int(n_reads) <= 1024:
            raise ValueError(f"SerialCrossbar.read: n_reads must be in 1..1024, got {n_reads}")
        self.counts.read_calls += 1
        return self._read_frame(int(n_reads))

    def _read(self) -> torch.Tensor:
        return self._read_frame(1)

    def _read_frame(self, n_reads: int) -> torch.Tensor:
        v = self.guard.check_read_voltage(self.read_voltage_v, "READ voltage")
        req = ReadRequest(self.window, v, n_reads)
        reply = self.link.request(
            Cmd.READ,
            req.pack(),
            "read",
            exec_s=n_reads * self.cols * self.board.t_vector_s,
            reply_bytes=4 * self.window.size,
            extra=self.traffic.op("read"),
        )
        w = unpack_floats(reply.payload, (self.rows, self.cols), "READ reply")
        unknown = self.link.unknown_window
        if unknown is not None and self.window.contains(unknown):
            self.link.unknown_window = None
            self.guard.confirm_state()
        return torch.from_numpy(w).to(self.device)

    # ----------------------------------------------------------- writes
    def pulse(
        self,
        counts: torch.Tensor,
        amplitude_v: float | torch.Tensor | None = None,
        width_s: float | torch.Tensor | None = None,
    ) -> None:
        """Signed pulse counts ``[rows, cols]``; ``|count| > max_pulses_per_call`` is a SafetyError.
        ``amplitude_v`` / ``width_s``: pulses of another |amplitude| / width (see the contract)."""
        if isinstance(counts, torch.Tensor) and not counts.is_floating_point() and counts.numel():
            self.guard.check_pulse_counts(counts, "pulse counts")
        super().pulse(counts, amplitude_v, width_s)

    def _write_checks(self, what: str, amplitude_v: float | None = None, width_s: float | None = None) -> None:
        g = self.guard
        amp = self.config.pulse_amplitude_v if amplitude_v is None else amplitude_v
        wid = self.config.pulse_width_s if width_s is None else width_s
        g.check_write_voltage(amp, f"{what} pulse amplitude")
        g.check_pulse_width(wid, f"{what} pulse width")
        g.require_write(what)

    def _pulse_shapes(self) -> bool:
        return True  # PULSE / PULSE_BATCH frames carry their amplitude and width

    def _pulse_shaped(
        self, counts: torch.Tensor, amplitude_v: torch.Tensor | None, width_s: torch.Tensor | None
    ) -> None:
        """Pulses of the given |amplitude| / width (``[rows, cols]``; None: the configured pulse): one
        frame per distinct shape among the pulsed devices, every shape checked against the limits
        (and the board armed) before the first frame is sent."""
        c = counts.detach().to("cpu", torch.int64).numpy()
        self.guard.check_pulse_counts(c, "pulse counts")
        cfg = self.config
        amp = None if amplitude_v is None else amplitude_v.detach().to("cpu", torch.float64).numpy()
        wid = None if width_s is None else width_s.detach().to("cpu", torch.float64).numpy()
        groups: dict[tuple[float, float], np.ndarray] = {}
        for r, k in np.argwhere(c):
            key = (float(amp[r, k]) if amp is not None else cfg.pulse_amplitude_v,
                   float(wid[r, k]) if wid is not None else cfg.pulse_width_s)
            groups.setdefault(key, np.zeros_like(c))[r, k] = c[r, k]
        for a, w in groups:  # all of them before anything is sent
            self._write_checks("PULSE_BATCH", a, w)
        for (a, w), gc in sorted(groups.items()):
            self._pulse_frame(gc, a, w)

    def _pulse(self, counts: torch.Tensor) -> None:
        c = counts.detach().to("cpu", torch.int64).numpy()
        self.guard.check_pulse_counts(c, "pulse counts")
        self._pulse_frame(c, self.config.pulse_amplitude_v, self.config.pulse_width_s)

    def _pulse_frame(self, c: np.ndarray, amplitude_v: float, width_s: float) -> None:
        """One PULSE (a single device) or PULSE_BATCH frame of counts ``c`` with this pulse shape."""
        nz = np.argwhere(c)
        if len(nz) == 0:
            return  # nothing to apply, nothing to send
        if len(nz) == 1:
            r, k = (int(i) for i in nz[0])
            self._write_checks("PULSE", amplitude_v, width_s)
            req = PulseRequest(self.window.row0 + r, self.window.col0 + k, int(c[r, k]), amplitude_v, width_s)
            cmd, payload, exec_s = Cmd.PULSE, req.pack(), abs(int(c[r, k])) * self.board.t_slot_s
        else:
            self._write_checks("PULSE_BATCH", amplitude_v, width_s)
            req_b = PulseBatchRequest(self.window, amplitude_v, width_s, c)
            cmd, payload = Cmd.PULSE_BATCH, req_b.pack()
            exec_s = int(np.abs(c).max()) * self.rows * self.board.t_slot_s
        requested = int(np.abs(c).sum())
        reply = self.link.write(
            cmd, payload, "pulse", window=self.window, requested_pulses=requested, exec_s=exec_s,
            extra=self.traffic.op("pulse"),
        )
        if reply is not None:
            up, down = unpack_applied(reply.payload)
            want_up, want_down = int(c[c > 0].sum()), int(-c[c < 0].sum())
            if (up, down) != (want_up, want_down):
                raise SafetyError(
                    f"{self.guard.name}: board applied {up} up / {down} down pulses, "
                    f"{want_up} / {want_down} were requested"
                )

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        cfg = self.config
        self._write_checks("UPDATE")
        limit = self.limits.max_pulses_per_call
        if cfg.bl > limit:
            raise SafetyError(
                f"{self.guard.name}: BL {cfg.bl} alone exceeds the limit of {limit} pulses per "
                "device and call; nothing was sent"
            )
        # a device gets at most BL pulses per sample: split the batch so that no frame can
        # exceed max_pulses_per_call on any device (normally one frame per mini-batch)
        chunk = max(1, limit // cfg.bl)
        xs = x.detach().to("cpu", torch.float32).numpy()
        ds = d.detach().to("cpu", torch.float32).numpy()
        for start in range(0, xs.shape[0], chunk):
            xb, db = xs[start : start + chunk], ds[start : start + chunk]
            req = UpdateRequest(
                self.window, cfg.pulse_amplitude_v, cfg.pulse_width_s, float(lr), cfg.bl,
                cfg.update_management, xb, db,
            )
            self.link.write(
                Cmd.UPDATE, req.pack(), "update", window=self.window, requested_pulses=None,
                exec_s=xb.shape[0] * cfg.bl * self.board.t_slot_s, extra=self.traffic.op("update"),
            )

    # -------------------------------------------------------- lifecycle
    def _close(self) -> None:
        self.link.release()

    def traffic_total(self) -> Traffic:
        return self.traffic.total()

    def __repr__(self) -> str:
        return (
            f"SerialCrossbar({self.rows}x{self.cols} at {self.window}, role={self.role!r}, "
            f"{self.link.name})"
        )


class WindowAllocator:
    """Hands out non-overlapping windows of one board's array: a TTv2 array factory.

    ``alloc(rows, cols, role)`` returns a :class:`SerialCrossbar` on the shared
    link; windows are packed in shelves (left to right, then the next shelf
    below).  Windows never share a device, so an UPDATE or PULSE_BATCH on one
    never changes another (the firmware pulses only the addressed rows and
    columns; a half-selected device does not switch).
    """

    def __init__(self, link: ChipLink, config: SerialCrossbarConfig | None = None) -> None:
        if link.board is None:
            raise ValueError("WindowAllocator: the link has not read the board's INFO")
        self.link = link
        self.config = config
        self.windows: list[tuple[Window, str]] = []
        self._shelf_top = 0
        self._shelf_height = 0
        self._x = 0

    def _place(self, rows: int, cols: int) -> Window:
        b = self.link.board
        assert b is not None
        if rows > b.rows or cols > b.cols:
            raise ValueError(f"a {rows}x{cols} array does not fit the {b.rows}x{b.cols} chip")
        if self._x + cols > b.cols:  # next shelf
            self._shelf_top += self._shelf_height
            self._shelf_height = 0
            self._x = 0
        if self._shelf_top + rows > b.rows:
            used = ", ".join(f"{r or '?'} {w.rows}x{w.cols}" for w, r in self.windows)
            raise ValueError(
                f"the {b.rows}x{b.cols} chip has no room left for a {rows}x{cols} array "
                f"(already placed: {used})"
            )
        win = Window(self._shelf_top, self._x, rows, cols)
        self._x += cols
        self._shelf_height = max(self._shelf_height, rows)
        return win

    def __call__(self, rows: int, cols: int, role: str = "") -> SerialCrossbar:
        return self.alloc(rows, cols, role)

    def alloc(self, rows: int, cols: int, role: str = "") -> SerialCrossbar:
        win = self._place(int(rows), int(cols))
        self.windows.append((win, role))
        return SerialCrossbar(self.link, window=win, config=self.config, role=role)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"role": r, "row0": w.row0, "col0": w.col0, "rows": w.rows, "cols": w.cols}
            for w, r in self.windows
        ]
