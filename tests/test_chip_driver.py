"""SerialCrossbar against the chip emulator: in-process URL, pty pair, loopback socket."""

from __future__ import annotations

import pytest
import serial
import torch
from chip_common import LIMITS, register_board

from hil.backends import open_backend
from hil.drivers.chip import (
    ChipEmulator,
    ChipError,
    LinkConfig,
    SerialCrossbar,
    SerialCrossbarConfig,
    Status,
    Window,
    WindowAllocator,
    unregister_emulator,
)
from hil.drivers.chip.frame import decode_frame, encode_frame
from hil.drivers.chip.link import ChipLink
from hil.drivers.chip.protocol import (
    Cmd,
    ProtocolError,
    PulseBatchRequest,
    PulseEncoding,
    PulseRequest,
    pack_limits,
)
from hil.drivers.chip.transports import EmulatorPtyServer, EmulatorTcpServer
from hil.safety import LimitMismatchError, NotArmedError, SafetyError

FAST = SerialCrossbarConfig(link=LinkConfig(latency_s=0.05, poll_s=0.002))


def emulated(rows: int = 6, cols: int = 5, **kw) -> tuple[ChipEmulator, str]:
    return register_board("drv", rows, cols, device=kw.pop("device", "ideal"), **kw)


@pytest.fixture
def board():
    emu, url = emulated()
    xb = SerialCrossbar(url, LIMITS, config=FAST)
    yield emu, xb
    xb.close()
    unregister_emulator(url.split("//")[1])


def check_contract(emu: ChipEmulator, xb: SerialCrossbar) -> None:
    """forward/backward/read are exact on an ideal device, pulse moves by counts * dw."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.rand(xb.rows, xb.cols, generator=g) - 0.5
    emu.sim.set_weights(w0)
    x = torch.rand(3, xb.cols, generator=g) * 2 - 1
    d = torch.rand(2, xb.rows, generator=g) * 2 - 1
    tol = 2 * xb.board.dac_lsb_v / xb.board.full_scale_read_v * xb.cols + 1e-5
    torch.testing.assert_close(xb.forward(x), x @ w0.T, atol=tol, rtol=0)
    torch.testing.assert_close(xb.backward(d), d @ w0, atol=tol, rtol=0)
    torch.testing.assert_close(xb.read(), w0, atol=1e-5, rtol=0)
    xb.arm()
    counts = torch.zeros(xb.rows, xb.cols, dtype=torch.int64)
    counts[0, 0], counts[2, 1], counts[-1, -1] = 7, -3, 150
    xb.pulse(counts)
    torch.testing.assert_close(emu.weights(), w0 + 0.001 * counts, atol=1e-5, rtol=0)
    assert emu.pulse_log[-1].n_up == 157 and emu.pulse_log[-1].n_down == 3


def test_in_process_url(board) -> None:
    emu, xb = board
    check_contract(emu, xb)
    info = xb.info
    assert info.kind == "serial" and info.max_pulses_per_call == 200
    assert "xbarsim" in info.hardware_id


def test_pty_pair() -> None:
    emu, _ = emulated()
    with EmulatorPtyServer(emu) as srv:
        xb = SerialCrossbar(srv.url, LIMITS, config=FAST)
        check_contract(emu, xb)
        xb.close()
    assert emu.stats["safe_state"] == 1


def test_loopback_socket() -> None:
    emu, _ = emulated()
    with EmulatorTcpServer(emu) as srv:
        with SerialCrossbar(srv.url, LIMITS, config=FAST) as xb:
            check_contract(emu, xb)
        assert srv.connections == 1


def test_open_backend_specs() -> None:
    emu, url = emulated(rows=8, cols=8)
    with open_backend(f"serial+{url}#limits=board", rows=4, cols=3) as b:
        assert b.shape == (4, 3) and b.info.max_pulses_per_call == emu.config.hard_limits.max_pulses_per_call
    with open_backend(f"serial+{url}#window=2,4", rows=3, cols=4, limits=LIMITS) as b:
        assert b.window == Window(2, 4, 3, 4)
    with pytest.raises(ValueError, match="needs safety limits"):
        open_backend(f"serial+{url}")
    with pytest.raises(ValueError, match="does not fit"):
        open_backend(f"serial+{url}#window=6,6", rows=4, cols=4, limits=LIMITS)
    with EmulatorTcpServer(emu) as srv, open_backend(f"serial+{srv.url}#limits=board") as b:
        assert b.shape == (8, 8)


def test_one_pulse_uses_pulse_and_empty_counts_send_nothing(board) -> None:
    emu, xb = board
    xb.arm()
    before = emu.stats["frames_ok"]
    xb.pulse(torch.zeros(xb.shape, dtype=torch.int64))
    assert emu.stats["frames_ok"] == before
    c = torch.zeros(xb.shape, dtype=torch.int64)
    c[1, 2] = -4
    xb.pulse(c)
    assert emu.stats["cmd_PULSE"] == 1 and emu.pulse_log[-1].n_down == 4


def test_update_is_one_frame_and_moves_weights_along_minus_d_x(board) -> None:
    emu, xb = board
    xb.arm()
    x = torch.ones(4, xb.cols)
    d = torch.ones(4, xb.rows)
    xb.update(x, d, lr=0.02)
    assert xb.traffic.op("update").frames_sent == 1
    assert float(emu.weights().mean()) < -0.01  # E[dW] = -lr * 4 = -0.08
    # a batch too big for max_pulses_per_call (BL 31 x 10 > 200) is split, never clipped
    xb.update(torch.ones(10, xb.cols), torch.ones(10, xb.rows), lr=0.001)
    assert xb.traffic.op("update").frames_sent == 3  # 6 + 4 samples


def test_inputs_exactly_at_the_read_limit_are_accepted(board) -> None:
    emu, xb = board
    # |x| = 2 -> 0.4 V = max_read_voltage_v; the nearest DAC code would be 0.400006 V
    y = xb.forward(torch.full((xb.cols,), -2.0))
    assert y.shape == (xb.rows,)
    with pytest.raises(SafetyError, match="0.4"):
        xb.forward(torch.full((xb.cols,), 2.0001))


def test_traffic_counters_per_operation(board) -> None:
    _, xb = board
    xb.forward(torch.zeros(5, xb.cols))
    xb.read()
    t = xb.traffic.as_dict()
    assert t["forward"]["frames_sent"] == 1 and t["forward"]["round_trips"] == 1
    assert t["forward"]["bytes_sent"] == 15 + 11 + 2 * 5 * xb.cols
    assert t["forward"]["bytes_received"] == 15 + 4 * 5 * xb.rows
    assert t["read"]["frames_received"] == 1
    assert t["total"]["frames_sent"] == 2


def test_windows_tile_one_array_without_interference() -> None:
    emu, url = emulated(rows=8, cols=10)
    link = ChipLink.open(url, LIMITS, FAST.link)
    alloc = WindowAllocator(link, FAST)
    a = alloc(4, 6, "A")
    c = alloc(4, 4, "C")
    e = alloc(3, 10, "E")
    assert (a.window, c.window, e.window) == (Window(0, 0, 4, 6), Window(0, 6, 4, 4), Window(4, 0, 3, 10))
    with pytest.raises(ValueError, match="no room"):
        alloc(2, 2, "F")
    a.arm()
    a.update(torch.ones(2, 6), torch.ones(2, 4), lr=0.05)
    c.pulse(torch.full((4, 4), 5, dtype=torch.int64))
    w = emu.weights()
    assert bool((w[:4, :6] < 0).all())
    torch.testing.assert_close(w[:4, 6:], torch.full((4, 4), 0.005))
    assert float(w[4:].abs().max()) == 0.0
    for b in (a, c, e):
        b.close()
    assert link.closed


def test_limits_beyond_the_board_are_refused_before_sending() -> None:
    emu, url = emulated()
    too_high = LIMITS.model_copy(update={"max_write_voltage_v": 5.0})
    with pytest.raises(SafetyError, match="max_write_voltage_v=5.0"):
        SerialCrossbar(url, too_high, config=FAST)
    assert emu.stats["cmd_SET_LIMITS"] == 0


def test_limit_read_back_mismatch_is_an_error_and_grounds_the_board() -> None:
    emu, url = emulated(limit_resolution_v=0.25)  # firmware rounds 0.4 V -> 0.5 V
    with pytest.raises(LimitMismatchError, match="max_read_voltage_v: set 0.4, read back 0.5"):
        SerialCrossbar(url, LIMITS, config=FAST)
    assert emu.stats["safe_state"] >= 1


def test_config_outside_limits_is_refused() -> None:
    _, url = emulated()
    bad = SerialCrossbarConfig(pulse_amplitude_v=2.0, link=FAST.link)
    with pytest.raises(SafetyError, match="pulse amplitude"):
        SerialCrossbar(url, LIMITS, config=bad)


def test_arm_required_and_safe_state_disarms_both_ends(board) -> None:
    emu, xb = board
    one = torch.ones(xb.shape, dtype=torch.int64)
    with pytest.raises(NotArmedError):
        xb.pulse(one)
    xb.arm()
    assert emu.armed
    xb.pulse(one)
    assert xb.safe_state() is True
    assert not emu.armed and not xb.guard.armed
    with pytest.raises(NotArmedError):
        xb.update(torch.ones(1, xb.cols), torch.ones(1, xb.rows), 0.1)
    assert len(emu.pulse_log) == 1


def test_firmware_enforces_its_own_limits_and_interlock() -> None:
    emu, _ = emulated()
    lim = emu.config.hard_limits

    def send(seq: int, cmd: Cmd, payload: bytes) -> int:
        return decode_frame(emu.transact(encode_frame(seq, cmd, payload))).status

    pulse = PulseRequest(0, 0, 1, 1.0, 1e-7).pack()
    assert send(1, Cmd.PULSE, pulse) == Status.INTERLOCK
    assert send(2, Cmd.ARM, b"") == Status.INTERLOCK  # limits first
    assert send(3, Cmd.SET_LIMITS, pack_limits(lim.model_copy(update={"max_read_voltage_v": 9.0}))) == Status.LIMIT_REJECTED
    assert send(4, Cmd.SET_LIMITS, pack_limits(lim)) == Status.OK
    assert send(5, Cmd.ARM, b"") == Status.OK
    assert send(6, Cmd.PULSE, PulseRequest(0, 0, 1, 3.5, 1e-7).pack()) == Status.LIMIT_REJECTED
    assert send(7, Cmd.PULSE, PulseRequest(0, 0, 1, 1.0, 1.0).pack()) == Status.LIMIT_REJECTED
    assert send(8, Cmd.PULSE, PulseRequest(99, 0, 1, 1.0, 1e-7).pack()) == Status.OUT_OF_RANGE
    big = PulseBatchRequest(Window(0, 0, 1, 1), 1.0, 1e-7, torch.tensor([[40000]]).numpy())
    with pytest.raises(ProtocolError, match="does not fit"):
        big.pack(encoding=PulseEncoding.SPARSE)  # never wrapped around into int16
    small = PulseBatchRequest(Window(0, 0, 1, 2), 1.0, 1e-7, torch.tensor([[5, 6]]).numpy())
    assert send(9, Cmd.PULSE_BATCH, small.pack()[:-1]) == Status.BAD_PAYLOAD  # truncated body
    assert send(10, 0x55, b"") == Status.BAD_CMD
    assert decode_frame(emu.transact(encode_frame(11, Cmd.INFO, b"", version=2))).status == Status.BAD_VERSION
    assert emu.pulse_log == []
    assert send(12, Cmd.PULSE, pulse) == Status.OK
    assert send(12, Cmd.PULSE, pulse) == Status.OK  # duplicate: answered from cache
    assert len(emu.pulse_log) == 1 and emu.stats["duplicates_answered_from_cache"] == 1


def test_dry_run_records_exact_bytes_and_changes_nothing() -> None:
    emu, url = emulated()
    xb = SerialCrossbar(url, LIMITS, config=FAST, dry_run=True)
    xb.arm()
    counts = torch.zeros(xb.shape, dtype=torch.int64)
    counts[1, 1], counts[2, 3] = 2, -1
    xb.pulse(counts)
    xb.update(torch.ones(1, xb.cols), torch.ones(1, xb.rows), 0.1)
    labels = [r.label for r in xb.guard.recorded]
    assert labels == ["SET_LIMITS", "ARM", "PULSE_BATCH", "UPDATE"]
    frame = decode_frame(xb.guard.recorded[2].data)
    assert frame.cmd == Cmd.PULSE_BATCH
    assert PulseBatchRequest.unpack(frame.payload).counts.tolist() == counts.tolist()
    assert xb.forward(torch.zeros(xb.cols)).shape == (xb.rows,)  # reads still go to the board
    assert emu.pulse_log == [] and not emu.armed and not emu.limits_set
    xb.close()


def test_board_status_replies_are_errors_with_names() -> None:
    emu, url = emulated()
    xb = SerialCrossbar(url, LIMITS, config=FAST)
    xb.arm()
    emu.armed = False  # the board dropped out of armed state on its own (an interlock tripped)
    with pytest.raises(ChipError, match="INTERLOCK") as err:
        xb.pulse(torch.ones(xb.shape, dtype=torch.int64))
    assert err.value.status == Status.INTERLOCK
    assert not xb.guard.armed  # the failure grounded the board and disarmed the guard
    xb.close()


def test_pyserial_knows_the_xbarsim_scheme() -> None:
    emu, url = emulated()
    port = serial.serial_for_url(url, timeout=0.01)
    port.write(encode_frame(0, Cmd.STATUS, b""))
    assert decode_frame(port.read(100)).status == Status.OK
    port.close()
