"""``BenchCrossbar``: an SMU, a switch matrix and a pulse source as one :class:`CrossbarBackend`.

Bench instruments see one device at a time (one SMU, one pulse output), so
every contract operation is built device by device, and :attr:`info` says so
(``parallel_update=False``, ``transposed_read=False``, ``details``):

=============  ==================================================================================
``read``       device by device: the matrix routes SMU HI to word line ``i`` and ground to bit
               line ``j`` (``channel.exclusiveclose``), the SMU turns its output on at the read
               voltage, measures the current, turns it off; ``G = I / V_read`` is mapped to a
               weight with ``conductance`` (``g_min_s``/``g_max_s`` <-> ``w_min``/``w_max``).
               2 commands per device + 3 per read.
``forward``    one full ``read`` (column reads, one device per SMU measurement), then ``x W^T``
               computed digitally.  ``backward``: the same read, ``d W``.
``pulse``      batched per row: for word line ``i`` and one polarity, the devices that need at
               least ``k`` more pulses are grounded together and one burst of the increment is
               fired, so a row costs one burst per distinct count.  Up pulses: generator on the
               word line, bit lines grounded; down pulses: the routing is swapped (generator on
               the bit lines, word line grounded), so the device sees the opposite polarity
               while the generator only makes positive pulses.  With ``pulses.source: smu`` the
               SMU makes the pulses (TSP loop, sign = polarity, normal routing).
``update``     per-device pulse counts: the expected change ``-lr sum_b d_b x_b^T`` divided by
               ``dw_nominal``, stochastically rounded (seeded), applied with ``pulse``.
``program``    the base class's closed-loop write-verify on top of ``read`` and ``pulse``.
=============  ==================================================================================

Safety: one :class:`~hil.safety.SafetyGuard` per bench.  Pulses need
:meth:`arm` first; every voltage, width, current and count is checked against
``limits`` before anything is sent; any exception or timeout inside an
operation calls :meth:`safe_state` (generator output off, SMU output off, all
relays open) and re-raises; a timeout during pulses marks the array state
unknown until the next full read (as does a lost connection); :meth:`close`
and interpreter exit run the safe state once more.  A read that stops part-way
keeps what it measured: the exception carries ``partial_conductances_s`` (see
:meth:`read_conductances`).

Dry run (``dry_run=True`` or ``dry_run: true`` in the bench file): no VISA
resource is opened and nothing is sent; every operation runs through the same
checks and refuses the same values, and every command it would send (queries
and the safe state included) is recorded in :attr:`dry_run_commands`.  Queries
get the instruments' nominal replies (see
:meth:`~hil.drivers.bench.instrument.Instrument.dry_run_reply`); reads return
NaN, since nothing is measured.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hil.backend import BackendInfo, CrossbarBackend
from hil.drivers.bench.config import BenchConfig, PulseShape
from hil.drivers.bench.instrument import (
    DryRunResource,
    InstrumentConnectionLost,
    InstrumentTimeout,
    visa_socket,
)
from hil.drivers.bench.keithley707b import Keithley707B
from hil.drivers.bench.keithley2600b import Keithley2600B
from hil.drivers.bench.keysight33500b import Keysight33500B
from hil.safety import SafetyGuard

#: longest wait for each confirmation inside the safe state (seconds)
SAFE_STATE_SYNC_S = 1.0


def open_visa_resource(resource: str, visa_library: str, timeout_s: float, managers: dict[str, Any]) -> Any:
    """Open one message-based VISA resource with ``\\n`` terminations and the given timeout."""
    import pyvisa

    rm = managers.get(visa_library)
    if rm is None:
        rm = pyvisa.ResourceManager(visa_library) if visa_library else pyvisa.ResourceManager()
        managers[visa_library] = rm
    try:
        res = rm.open_resource(resource)
    except Exception as exc:
        raise ValueError(f"cannot open VISA resource {resource!r} with library {visa_library!r}: {exc}") from exc
    res.read_termination = "\n"
    res.write_termination = "\n"
    res.timeout = max(1, int(timeout_s * 1000))
    if resource.upper().endswith("::SOCKET"):
        _disable_nagle(res)
    return res


def _disable_nagle(res: Any) -> bool:
    """Turn Nagle's algorithm off on a raw-socket session (VISA's default for VI_ATTR_TCPIP_NODELAY).

    pyvisa-py leaves it on and does not accept the attribute, so a write followed
    by a query waits for the peer's delayed ACK (about 40 ms per command on
    Linux).  Falls back to the session's socket; returns whether it worked.
    """
    from pyvisa import constants

    try:
        res.set_visa_attribute(constants.VI_ATTR_TCPIP_NODELAY, constants.VI_TRUE)
        return True
    except Exception:
        pass
    sock = visa_socket(res)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True
    return False


class BenchCrossbar(CrossbarBackend):
    """A ``rows x cols`` array on a bench: Keithley 2600B SMU, Keithley 707B/708B matrix, pulse source.

    Parameters
    ----------
    config:
        A :class:`BenchConfig` or the path of a bench YAML/JSON file.
    arm:
        Arm the safety guard at once (``None``: ``config.arm_on_open``).  Without
        arming, reads work and pulses/updates raise :class:`~hil.safety.NotArmedError`.
    resources:
        Already opened VISA resources by instrument (``smu``, ``matrix``,
        ``pulse_generator``); the config's resource names are then not opened.
    dry_run:
        Open nothing, send nothing: record every command in :attr:`dry_run_commands`
        (``None``: ``config.dry_run``).  Checks and refusals are those of a real run.
    """

    def __init__(
        self,
        config: BenchConfig | str | Path,
        *,
        arm: bool | None = None,
        resources: dict[str, Any] | None = None,
        torch_device: str | torch.device = "cpu",
        dry_run: bool | None = None,
    ) -> None:
        cfg = config if isinstance(config, BenchConfig) else BenchConfig.load(config)
        super().__init__(cfg.rows, cfg.cols, torch_device)
        self.config = cfg
        self.dry_run = bool(cfg.dry_run if dry_run is None else dry_run)
        if self.dry_run and resources:
            raise ValueError(
                f"bench {cfg.name!r}: dry run opens and uses no VISA resource, but resources "
                f"{sorted(resources)} were given"
            )
        self.guard = SafetyGuard(
            cfg.limits, self._safe_state_instruments, name=f"bench {cfg.name!r}", dry_run=self.dry_run
        )
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self._managers: dict[str, Any] = {}
        self._resources: dict[str, Any] = {}
        self.identities: dict[str, str] = {}
        self.smu: Keithley2600B | None = None
        self.matrix: Keithley707B | None = None
        self.pulser: Keysight33500B | None = None
        self.full_reads = 0
        #: the devices measured by a full read that stopped part-way (NaN elsewhere), else None
        self.last_partial_read: torch.Tensor | None = None
        try:
            self._open(resources or {})
            with self.guard.operation("configure"):
                self._configure()
        except BaseException:
            self._release()
            raise
        if arm or (arm is None and cfg.arm_on_open):
            self.arm()

    # ---------------------------------------------------------------- set-up
    def _open(self, given: dict[str, Any]) -> None:
        cfg = self.config
        sections: dict[str, Any] = {"smu": cfg.smu, "matrix": cfg.matrix}
        if cfg.pulses.source == "generator":
            sections["pulse_generator"] = cfg.pulse_generator
        for key, sec in sections.items():
            res = given.get(key)
            if self.dry_run:
                res = DryRunResource(f"{key} ({sec.resource})")
            elif res is None:
                res = open_visa_resource(sec.resource, sec.visa_library, sec.timeout_s, self._managers)
            self._resources[key] = res
        lim = cfg.limits
        self.smu = Keithley2600B(self._resources["smu"], limits=lim, channel=cfg.smu.channel, guard=self.guard)
        self.matrix = Keithley707B(
            self._resources["matrix"], limits=lim, slot=cfg.matrix.slot, guard=self.guard,
            max_closed=cfg.matrix.max_closed or (cfg.cols + 1),
        )
        if "pulse_generator" in self._resources:
            assert cfg.pulse_generator is not None
            self.pulser = Keysight33500B(
                self._resources["pulse_generator"], limits=lim, channel=cfg.pulse_generator.channel, guard=self.guard
            )

    def _instruments(self) -> list[Any]:
        return [x for x in (self.pulser, self.smu, self.matrix) if x is not None]

    def _configure(self) -> None:
        cfg = self.config
        assert self.smu is not None and self.matrix is not None
        for inst in self._instruments():
            self.identities[inst.name] = inst.identify()
        self.matrix.clear_errors()
        self.matrix.open_all_verified()
        self.smu.configure_voltage_source(cfg.read.voltage_v, cfg.read.compliance_a, cfg.smu.nplc)
        if self.pulser is not None:
            up = cfg.pulses.up
            self.pulser.configure(up.amplitude_v, up.width_s, cfg.pulses.period_s)
        self.matrix.check_errors()

    # ---------------------------------------------------------------- safety
    def arm(self) -> None:
        """Allow pulses (required once per session and again after :meth:`safe_state`)."""
        self.guard.arm()

    def disarm(self) -> None:
        self.guard.disarm()

    def safe_state(self) -> bool:
        """Generator output off, SMU output off, all relays open; disarms.  True if all succeeded."""
        return self.guard.safe_state()

    def _safe_state_instruments(self) -> None:
        """Sources off at once (plain writes), confirm, then open every relay (confirmed if possible).

        Every step is tried even if an earlier one fails (a dead instrument must not
        keep the others live); the first failure is re-raised at the end and the
        guard records it.  Confirmations wait at most ``SAFE_STATE_SYNC_S`` each.
        """
        errors: list[Exception] = []

        def attempt(step: Any, *args: Any) -> bool:
            try:
                step(*args)
                return True
            except Exception as exc:
                errors.append(exc)
                return False

        if self.pulser is not None:
            attempt(self.pulser.output_off)
        if self.smu is not None:
            attempt(self.smu.output_off)
        if self.pulser is not None:
            attempt(self.pulser.sync, SAFE_STATE_SYNC_S)
        if self.smu is not None:
            attempt(self.smu.sync, SAFE_STATE_SYNC_S)
        if self.matrix is not None and not attempt(self.matrix.open_all_verified):
            attempt(self.matrix.open_all)
        if errors:
            raise errors[0]

    # ------------------------------------------------------------ primitives
    def _ch(self, row: str, column: int) -> str:
        assert self.matrix is not None
        return self.matrix.channel(row, column)

    def read_conductances(self) -> torch.Tensor:
        """All device conductances ``[rows, cols]`` in siemens (float64), device by device.

        If the read stops part-way (instrument error, timeout, lost connection, Ctrl-C),
        nothing already measured is lost: the exception carries ``partial_conductances_s``
        (``[rows, cols]``, NaN where not measured) and a note saying how many devices were
        read, and :attr:`last_partial_read` keeps the same tensor.
        """
        self._check_open()
        cfg = self.config
        m, smu = self.matrix, self.smu
        assert m is not None and smu is not None
        v = cfg.read.voltage_v
        g = torch.full((self.rows, self.cols), float("nan"), dtype=torch.float64)
        with self.guard.operation("read"):
            try:
                for i in range(self.rows):
                    word = cfg.matrix.array_rows[i]
                    for j in range(self.cols):
                        m.route([self._ch(cfg.matrix.smu_row, word), self._ch(cfg.matrix.ground_row, cfg.matrix.array_cols[j])])
                        g[i, j] = smu.read_current() / v
                m.open_all_verified()
                smu.check_errors()
                m.check_errors()
            except BaseException as exc:
                self._keep_partial_read(g, exc)
                raise
        self.last_partial_read = None
        self.full_reads += 1
        self.guard.confirm_state()
        return g

    def _keep_partial_read(self, g: torch.Tensor, exc: BaseException) -> None:
        """Attach the devices measured before ``exc`` to it (and to :attr:`last_partial_read`)."""
        done = int((~torch.isnan(g)).sum())
        self.last_partial_read = g
        with contextlib.suppress(AttributeError, TypeError):  # exceptions without a __dict__
            exc.partial_conductances_s = g  # type: ignore[attr-defined]
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(
                f"bench {self.config.name!r}: read interrupted after {done} of {g.numel()} devices; the values "
                "measured (siemens, NaN where not measured) are in exc.partial_conductances_s and "
                "BenchCrossbar.last_partial_read"
            )

    def conductance_to_weight(self, g: torch.Tensor) -> torch.Tensor:
        c = self.config.conductance
        return c.w_min + (g - c.g_min_s) / (c.g_max_s - c.g_min_s) * (c.w_max - c.w_min)

    def _read(self) -> torch.Tensor:
        w = self.conductance_to_weight(self.read_conductances())
        return w.to(device=self.device, dtype=torch.float32)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._read()
        return x.to(w.dtype) @ w.T

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        w = self._read()
        return d.to(w.dtype) @ w

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        dw = -lr * (d.detach().double().cpu().T @ x.detach().double().cpu())
        n = dw / self.config.dw_nominal
        base = torch.floor(n)
        u = torch.rand(n.shape, generator=self.generator, dtype=torch.float64)
        counts = (base + (u < (n - base)).double()).to(torch.int64)
        self.guard.check_pulse_counts(counts, "update: pulse counts (-lr sum d x^T / dw_nominal)")
        self._pulse(counts)

    def _pulse(self, counts: torch.Tensor) -> None:
        self._pulse_groups(counts.detach().cpu().to(torch.int64), [(None, None)])

    def _pulse_shapes(self) -> bool:
        return True  # the generator / SMU sets amplitude and width per burst, within the limits

    def _pulse_shaped(
        self, counts: torch.Tensor, amplitude_v: torch.Tensor | None, width_s: torch.Tensor | None
    ) -> None:
        """Pulses of the given |amplitude| / width (``[rows, cols]``; None: the configured shape of
        each polarity): the pulsed devices are grouped by shape, each group pulsed as :meth:`_pulse`
        pulses (row-batched bursts), after every group's shape was checked against the limits."""
        c = counts.detach().cpu().to(torch.int64)
        cfg = self.config.pulses
        amp = None if amplitude_v is None else amplitude_v.detach().cpu().double()
        wid = None if width_s is None else width_s.detach().cpu().double()
        groups: dict[tuple[int, float, float], torch.Tensor] = {}
        for i, j in torch.nonzero(c).tolist():
            pol = 1 if int(c[i, j]) > 0 else -1
            base = cfg.up if pol > 0 else cfg.down
            key = (pol, float(amp[i, j]) if amp is not None else base.amplitude_v,
                   float(wid[i, j]) if wid is not None else base.width_s)
            groups.setdefault(key, torch.zeros_like(c))[i, j] = c[i, j]
        lim = self.config.limits
        for pol, a, w in groups:  # all of them before anything is sent
            tag = "up" if pol > 0 else "down"
            lim.check_write_voltage(a, f"pulse: {tag} amplitude_v")
            lim.check_pulse_width(w, f"pulse: {tag} width_s")
        ordered = sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1], kv[0][2]))
        plan = [(PulseShape(amplitude_v=a, width_s=w), gc) for (_, a, w), gc in ordered]
        if plan:
            self._pulse_groups(c, [(shape, gc) for shape, gc in plan])

    def _period(self, width_s: float) -> float:
        """Burst period of pulses ``width_s`` wide: the configured period (which the config checks
        to exceed its own widths), or twice the width for a pulse at least as long as it."""
        p = self.config.pulses.period_s
        return p if width_s < p else 2.0 * width_s

    def _pulse_groups(
        self, c: torch.Tensor, groups: list[tuple[PulseShape | None, torch.Tensor | None]]
    ) -> None:
        """Pulse ``c`` (``[rows, cols]``, int64) as groups ``(shape, counts)``: a shape of None is the
        configured one of each polarity, counts of None all of ``c``."""
        self.guard.check_pulse_counts(c)
        self.guard.require_write("pulse")
        if not bool(c.any()):
            return
        with self.guard.operation("pulse"):
            try:
                for shape, gc in groups:
                    part = c if gc is None else gc
                    if self.pulser is not None:
                        self._pulse_generator(part, shape)
                    else:
                        self._pulse_smu(part, shape)
            except (InstrumentTimeout, InstrumentConnectionLost) as exc:
                self.guard.mark_unknown(f"{type(exc).__name__} while pulsing ({exc})")
                raise

    def _row_bursts(self, row_counts: list[int]) -> list[tuple[list[int], int]]:
        """Bursts for one row and polarity: ``(columns, pulses)`` with increments of the sorted counts."""
        out = []
        prev = 0
        for level in sorted({n for n in row_counts if n > 0}):
            cols = [j for j, n in enumerate(row_counts) if n >= level]
            out.append((cols, level - prev))
            prev = level
        return out

    def _bursts(
        self, c: torch.Tensor, shape_of: PulseShape | None = None
    ) -> Iterator[tuple[int, PulseShape, list[tuple[int, list[int], int]]]]:
        """Per polarity (+1 up, then -1 down) that has pulses: its shape and its bursts.

        A burst is ``(word, bits, n)``: matrix column of the word line, matrix columns
        of the bit lines pulsed together, and the pulse count (see :meth:`_row_bursts`).
        ``shape_of``: the shape of every pulse (None: the configured one of each polarity).
        """
        cfg = self.config
        mc = cfg.matrix
        for polarity, configured in ((1, cfg.pulses.up), (-1, cfg.pulses.down)):
            shape = configured if shape_of is None else shape_of
            pc = (c * polarity).clamp(min=0)
            if not bool(pc.any()):
                continue
            bursts = [
                (mc.array_rows[i], [mc.array_cols[j] for j in cols], n)
                for i in range(self.rows)
                for cols, n in self._row_bursts(pc[i].tolist())
            ]
            yield polarity, shape, bursts

    def _pulse_route(self, source_row: str, word: int, bits: list[int], swap: bool) -> list[str]:
        """Source on the word line and the bit lines grounded (``swap``: the other way round)."""
        ground = self.config.matrix.ground_row
        if swap:
            return [self._ch(source_row, b) for b in bits] + [self._ch(ground, word)]
        return [self._ch(source_row, word)] + [self._ch(ground, b) for b in bits]

    def _pulse_generator(self, c: torch.Tensor, shape_of: PulseShape | None = None) -> None:
        cfg = self.config
        m, gen = self.matrix, self.pulser
        assert m is not None and gen is not None
        for polarity, shape, bursts in self._bursts(c, shape_of):
            gen.set_pulse(shape.amplitude_v, shape.width_s, self._period(shape.width_s))
            gen.set_output(True)  # idles at 0 V: relays switch only between completed bursts
            for word, bits, n in bursts:  # down pulses: generator on the bit lines (positive pulses only)
                m.route(self._pulse_route(cfg.matrix.pulse_row, word, bits, swap=polarity < 0))
                gen.fire(n)
            gen.set_output(False)
        m.open_all_verified()
        gen.check_errors()
        m.check_errors()

    def _pulse_smu(self, c: torch.Tensor, shape_of: PulseShape | None = None) -> None:
        cfg = self.config
        m, smu = self.matrix, self.smu
        assert m is not None and smu is not None
        for polarity, shape, bursts in self._bursts(c, shape_of):
            for word, bits, n in bursts:  # the SMU makes both polarities: normal routing
                m.route(self._pulse_route(cfg.matrix.smu_row, word, bits, swap=False))
                smu.pulse_train(polarity * shape.amplitude_v, shape.width_s, self._period(shape.width_s), n)
        m.open_all_verified()
        smu.source_voltage = cfg.read.voltage_v
        smu.check_errors()
        m.check_errors()

    # ------------------------------------------------------------------ info
    @property
    def commands_sent(self) -> int:
        """Commands sent to all instruments so far (writes and queries; 0 in a dry run)."""
        return sum(inst.commands_sent for inst in self._instruments())

    @property
    def dry_run_commands(self) -> list[tuple[str, str]]:
        """Dry run: every command that would have been sent, in order, as ``(instrument, command)``."""
        return [
            (r.label, r.data.decode("ascii", "replace").rstrip("\r\n")) for r in self.guard.recorded
        ]

    def _info(self) -> BackendInfo:
        cfg = self.config
        c = cfg.conductance
        return BackendInfo(
            name="BenchCrossbar",
            kind="bench",
            rows=self.rows,
            cols=self.cols,
            w_min=float(c.w_min),
            w_max=float(c.w_max),
            dw_min=float(cfg.dw_nominal),
            parallel_update=False,
            transposed_read=False,
            max_pulses_per_call=int(cfg.limits.max_pulses_per_call),
            pulse_shapes=True,
            hardware_id="; ".join(f"{k}: {v}" for k, v in self.identities.items()) or cfg.name,
            details={
                "bench": cfg.name,
                "read": "device by device: matrix routes SMU to one word line and ground to one bit line, "
                "one current measurement per device (2 commands per device)",
                "forward": "one full device-by-device read per call, x W^T computed digitally",
                "backward": "one full device-by-device read per call, d W computed digitally (no physical "
                "transposed read)",
                "update": "per-device pulse counts: -lr sum_b d_b x_b^T / dw_nominal, stochastically rounded, "
                "applied with pulse()",
                "pulse": "batched per row: one burst per distinct count per row and polarity, columns that "
                "share it grounded together; down pulses swap the routing"
                if cfg.pulses.source == "generator"
                else "batched per row: one SMU TSP pulse train per distinct count per row and polarity",
                "pulse_shapes": "pulse(counts, amplitude_v, width_s): the pulsed devices grouped by shape, each "
                "shape checked against the limits before anything is sent and pulsed with its own generator "
                "(or SMU) setting; period: the configured one, or twice a width that reaches it",
                "pulse_source": cfg.pulses.source,
                "read_voltage_v": cfg.read.voltage_v,
                "up": cfg.pulses.up.model_dump(),
                "down": cfg.pulses.down.model_dump(),
                "program": "the contract's write-verify loop: full device-by-device reads and row-batched pulses",
                "emulated": "no operation is array-parallel on a bench: forward/backward are digital products of "
                "a full device-by-device read, update is per-device pulse counts applied with pulse(), "
                "program is read/pulse write-verify",
                "conductance": {"g_min_s": c.g_min_s, "g_max_s": c.g_max_s},
                "g_min_s": c.g_min_s,
                "g_max_s": c.g_max_s,
                "commands_sent": self.commands_sent,
                "armed": self.guard.armed,
                "dry_run": self.dry_run,
                "commands_recorded": len(self.guard.recorded),
            },
        )

    # -------------------------------------------------------------- lifecycle
    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self.guard.close()  # safe state once more, then no more arming
        for inst in self._instruments():
            inst.close()
        for rm in self._managers.values():
            with contextlib.suppress(Exception):
                rm.close()
        self._managers.clear()

    def _close(self) -> None:
        self._release()

    def __repr__(self) -> str:
        dry = ", dry_run=True" if self.dry_run else ""
        return (
            f"BenchCrossbar({self.config.name!r}, rows={self.rows}, cols={self.cols}, "
            f"armed={self.guard.armed}{dry})"
        )


__all__ = ["BenchCrossbar", "open_visa_resource"]
