"""Fault injection: no pulse applied twice, none lost; timeouts, disconnects and unknown state."""

from __future__ import annotations

import pytest
import torch
from chip_common import IDEAL_IO, LIMITS, register_board

from hil.drivers.chip import (
    ChipDisconnectedError,
    ChipEmulator,
    ChipTimeoutError,
    FaultConfig,
    LinkConfig,
    SerialCrossbar,
    SerialCrossbarConfig,
)
from hil.drivers.chip.audit import audit_pulses
from hil.drivers.chip.transports import EmulatorTcpServer
from hil.safety import NotArmedError, StateUnknownError

FAST = SerialCrossbarConfig(link=LinkConfig(latency_s=0.03, poll_s=0.001))


def open_board(faults: FaultConfig | None = None, rows: int = 4, cols: int = 5):
    emu, url = register_board("flt", rows, cols, faults=faults or FaultConfig())
    xb = SerialCrossbar(url, LIMITS, config=FAST)
    xb.arm()
    return emu, xb


def counts_for(i: int, shape: tuple[int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(i)
    return torch.randint(-3, 4, shape, generator=g)


@pytest.mark.parametrize(
    "fault", ["drop_ack", "drop_reply", "corrupt_reply", "corrupt_request", "drop_request", "busy"]
)
def test_one_shot_fault_on_a_write_neither_duplicates_nor_loses_it(fault: str) -> None:
    emu, xb = open_board()
    c = counts_for(0, xb.shape)
    emu.inject(fault)
    xb.pulse(c)
    audit = audit_pulses(xb.link.journal, emu.pulse_log)
    assert audit.clean and audit.writes_executed == 1, audit
    torch.testing.assert_close(emu.weights(), 0.001 * c.float(), atol=1e-6, rtol=0)
    assert emu.stats[f"fault_{fault}"] == 1
    assert xb.link.journal[-1].sends == 2  # one informed re-send, whatever the fault
    if fault in ("drop_ack", "drop_reply", "corrupt_reply"):
        # the board had executed it: the re-send was answered from its cache
        assert emu.stats["duplicates_answered_from_cache"] == 1
    if fault in ("drop_ack", "drop_reply", "drop_request"):
        assert xb.traffic.op("pulse").last_seq_queries == 1


def test_delayed_reply_beyond_the_deadline_is_not_a_second_execution() -> None:
    emu, xb = open_board(FaultConfig(delay_s=0.1))
    emu.inject("delay")
    c = counts_for(1, xb.shape)
    xb.pulse(c)
    xb.update(torch.ones(2, xb.cols), torch.ones(2, xb.rows), 0.01)
    assert audit_pulses(xb.link.journal, emu.pulse_log).clean
    assert len(emu.pulse_log) == 2


def test_random_faults_over_many_writes_no_duplicate_no_loss() -> None:
    faults = FaultConfig(
        seed=3,
        corrupt_request_rate=0.05,
        corrupt_reply_rate=0.05,
        drop_request_rate=0.03,
        drop_reply_rate=0.03,
        drop_ack_rate=0.05,
        busy_rate=0.03,
    )
    emu, xb = open_board(faults)
    expected = torch.zeros(xb.shape)
    for i in range(150):
        c = counts_for(i, xb.shape)
        xb.pulse(c)
        expected += 0.001 * c
        if i % 10 == 0:
            xb.forward(torch.rand(3, xb.cols) * 0.5)
    audit = audit_pulses(xb.link.journal, emu.pulse_log)
    assert audit.clean and audit.writes_acknowledged == 150 and audit.writes_executed == 150, audit
    torch.testing.assert_close(emu.weights(), expected, atol=1e-5, rtol=0)
    injected = sum(v for k, v in emu.stats.items() if k.startswith("fault_"))
    assert injected > 20
    assert xb.traffic.op("pulse").retries >= injected // 2


def test_board_unreachable_during_a_write_marks_state_unknown_until_read_back() -> None:
    emu, xb = open_board()
    emu.faults = FaultConfig(drop_reply_rate=1.0)  # nothing comes back any more
    with pytest.raises(ChipTimeoutError):
        xb.pulse(counts_for(2, xb.shape))
    guard = xb.guard
    assert not guard.state_known and not guard.armed
    emu.faults = FaultConfig()
    xb.arm()
    with pytest.raises(StateUnknownError, match="unknown"):
        xb.pulse(counts_for(3, xb.shape))
    xb.read()
    assert guard.state_known
    xb.pulse(counts_for(3, xb.shape))
    # the write that timed out had executed: it is in the log, unacknowledged, not lost
    audit = audit_pulses(xb.link.journal, emu.pulse_log)
    assert audit.unacknowledged_ops == 1 and audit.lost_ops == 0 and audit.duplicate_ops == 0


def test_disconnect_raises_grounds_and_disarms() -> None:
    emu, xb = open_board(FaultConfig(disconnect_after_frames=7))
    before = len(emu.pulse_log)
    with pytest.raises(ChipDisconnectedError):
        for i in range(10):
            xb.pulse(counts_for(i, xb.shape))
    assert emu.disconnected and not emu.armed  # the firmware's link-loss watchdog
    assert not xb.guard.armed
    assert xb.guard.last_safe_state_error is not None  # SAFE could not be sent: recorded
    assert len(emu.pulse_log) - before <= 10


def test_disconnect_over_tcp_then_reconnect_finds_the_array_disarmed() -> None:
    emu = ChipEmulator(rows=3, cols=3, device="ideal", periphery=IDEAL_IO)
    with EmulatorTcpServer(emu) as srv:
        xb = SerialCrossbar(srv.url, LIMITS, config=FAST)
        xb.arm()
        xb.pulse(torch.full((3, 3), 4))
        emu.disconnect()
        with pytest.raises((ChipDisconnectedError, ChipTimeoutError)):
            xb.forward(torch.zeros(3))
        xb.close()
        xb2 = SerialCrossbar(srv.url, LIMITS, config=FAST)
        torch.testing.assert_close(xb2.read(), torch.full((3, 3), 0.004), atol=1e-6, rtol=0)
        with pytest.raises(NotArmedError):
            xb2.pulse(torch.ones(3, 3, dtype=torch.int64))
        xb2.close()
