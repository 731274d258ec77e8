"""Compare the driver's write journal with the emulator's pulse log: no pulse twice, none lost.

The driver records every write frame it sends (:class:`~hil.drivers.chip.link.WriteRecord`:
seq, frame CRC, pulses requested, what the board acknowledged); the emulator
records every write it executed (:class:`~hil.drivers.chip.emulator.PulseRecord`).
A write is identified by ``(seq, frame CRC)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from hil.drivers.chip.emulator import PulseRecord
from hil.drivers.chip.link import WriteRecord
from hil.drivers.chip.protocol import Status


@dataclass
class PulseAudit:
    """Result of :func:`audit_pulses` (pulses are single device pulses, ops are write frames)."""

    writes_acknowledged: int
    writes_executed: int
    duplicate_ops: int  # writes the board executed more than once (extra executions)
    duplicate_pulses: int  # pulses of those extra executions
    lost_ops: int  # writes acknowledged OK to the caller that the board never executed
    lost_pulses: int  # their pulses, plus any shortfall between requested and applied
    unacknowledged_ops: int  # executed writes the driver did not see acknowledged (it raised)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def clean(self) -> bool:
        return self.duplicate_pulses == 0 and self.lost_pulses == 0 and self.duplicate_ops == 0 and self.lost_ops == 0


def audit_pulses(journal: Iterable[WriteRecord], pulse_log: Iterable[PulseRecord]) -> PulseAudit:
    """Match driver writes and board executions in order, by ``(seq, frame CRC)``.

    The driver has at most one write in flight, so its writes and the board's
    executions are two ordered lists that must match one to one: an execution
    repeated right after itself is a duplicate; an acknowledged write with no
    execution is lost.  Matching in order (not by key alone) stays correct when
    the 16-bit seq wraps around in a long run.
    """
    log = list(pulse_log)
    writes = [w for w in journal if not w.dry_run]
    p = 0
    acked = dup_ops = dup_pulses = lost_ops = lost_pulses = unacked = 0
    for w in writes:
        key = (w.seq, w.request_crc)
        q = p
        while q < len(log) and (log[q].seq, log[q].request_crc) != key:
            q += 1
        found = q < len(log)
        if found:
            unacked += q - p  # executions the journal has no entry for (should not happen)
            p = q + 1
            while p < len(log) and (log[p].seq, log[p].request_crc) == key:
                dup_ops += 1
                dup_pulses += log[p].pulses
                p += 1
        if w.status != Status.OK:
            if found:
                unacked += 1
            continue
        acked += 1
        want = w.requested_pulses if w.requested_pulses is not None else w.applied_up + w.applied_down
        if not found:
            lost_ops += 1
            lost_pulses += want
        elif log[q].pulses < want:
            lost_pulses += want - log[q].pulses
    unacked += len(log) - p
    return PulseAudit(
        writes_acknowledged=acked,
        writes_executed=len(log),
        duplicate_ops=dup_ops,
        duplicate_pulses=dup_pulses,
        lost_ops=lost_ops,
        lost_pulses=lost_pulses,
        unacknowledged_ops=unacked,
    )
