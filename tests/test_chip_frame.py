"""Frame codec and payload layouts of the test-chip protocol (property-based)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.drivers.chip.frame import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    OVERHEAD,
    SYNC,
    Frame,
    FrameDecoder,
    FrameError,
    crc16,
    crc16_ccitt_false,
    decode_frame,
    encode_frame,
)
from hil.drivers.chip.protocol import (
    BoardInfo,
    LastSeq,
    MvmRequest,
    PulseBatchRequest,
    PulseEncoding,
    PulseRequest,
    ReadRequest,
    UpdateRequest,
    Window,
    choose_encoding,
    pack_limits,
    unpack_limits,
)
from hil.safety import SafetyLimits

frames = st.builds(
    Frame,
    seq=st.integers(0, 0xFFFF),
    cmd=st.integers(0, 0x7F),
    payload=st.binary(max_size=300),
    status=st.integers(0, 255),
    is_reply=st.booleans(),
)


def test_crc16_check_value_and_table_version_agree() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE catalogue check value
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


@given(st.binary(max_size=200))
def test_crc16_fast_equals_bitwise(data: bytes) -> None:
    assert crc16(data) == crc16_ccitt_false(data)


@given(frames)
def test_any_frame_round_trips(frame: Frame) -> None:
    data = frame.encode()
    assert data[:2] == SYNC
    assert len(data) == OVERHEAD + len(frame.payload)
    assert decode_frame(data) == frame


@settings(max_examples=300)
@given(frames, st.data())
def test_any_single_byte_corruption_is_detected(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(frame.encode())
    i = data.draw(st.integers(0, len(raw) - 1), label="position")
    raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(FrameError):
        decode_frame(bytes(raw))
    # a stream decoder never yields the corrupted frame, and still finds the next good one
    nxt = Frame(seq=(frame.seq + 1) & 0xFFFF, cmd=frame.cmd, payload=b"next")
    got = FrameDecoder(stale_after_s=None).feed(bytes(raw) + nxt.encode())
    assert got == [nxt]


@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_stream_decoder_handles_any_chunking_and_garbage(fs: list[Frame], data: st.DataObject) -> None:
    garbage = data.draw(st.binary(max_size=20).filter(lambda b: SYNC[:1] not in b), label="garbage")
    stream = garbage + b"".join(f.encode() for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    dec = FrameDecoder(stale_after_s=None)
    out: list[Frame] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:c])
        prev = c
    assert out == fs
    assert dec.skipped_bytes == len(garbage)


def test_decode_rejects_truncated_and_oversized() -> None:
    raw = encode_frame(1, 2, b"abc")
    with pytest.raises(FrameError):
        decode_frame(raw[:-1])
    with pytest.raises(FrameError):
        decode_frame(raw + b"\x00")
    with pytest.raises(ValueError):
        encode_frame(1, 0x80, b"")  # reply bit is not a command
    with pytest.raises(ValueError):
        encode_frame(70000, 1, b"")
    assert MAX_PAYLOAD >= 1 << 20


def test_stale_partial_frame_is_abandoned() -> None:
    # a header that passes its check but announces more bytes than ever come (a false sync)
    good = encode_frame(3, 1, b"x")
    partial = encode_frame(9, 1, b"y" * 50)[: HEADER_SIZE + 5]
    dec = FrameDecoder(stale_after_s=0.1)
    assert dec.feed(partial, now=0.0) == []
    assert dec.feed(good, now=0.05) == []  # still waiting for the long frame
    assert [f.seq for f in dec.feed(b"", now=1.0)] == [3]


limits = st.builds(
    SafetyLimits,
    max_read_voltage_v=st.floats(1e-3, 10),
    max_write_voltage_v=st.floats(1e-3, 10),
    min_pulse_width_s=st.just(0.0),
    max_pulse_width_s=st.floats(1e-9, 1),
    compliance_current_a=st.floats(1e-9, 1),
    max_pulses_per_call=st.integers(1, 2**31),
)


@given(limits)
def test_limits_block_round_trips_exactly(lim: SafetyLimits) -> None:
    assert unpack_limits(pack_limits(lim)) == lim


windows = st.builds(Window, st.integers(0, 100), st.integers(0, 100), st.integers(1, 9), st.integers(1, 9))


@given(windows, st.data())
def test_pulse_batch_round_trips_in_every_encoding(win: Window, data: st.DataObject) -> None:
    peak = data.draw(st.sampled_from([1, 127, 32767]))
    counts = np.array(
        data.draw(st.lists(st.integers(-peak, peak), min_size=win.size, max_size=win.size)),
        dtype=np.int64,
    ).reshape(win.rows, win.cols)
    req = PulseBatchRequest(win, 1.25, 1e-7, counts)
    for enc in PulseEncoding:
        if enc == PulseEncoding.DENSE_I8 and np.abs(counts).max() > 127:
            continue
        back = PulseBatchRequest.unpack(req.pack(enc))
        assert back.window == win and back.amplitude_v == 1.25 and back.width_s == 1e-7
        np.testing.assert_array_equal(back.counts, counts)
    valid = [e for e in PulseEncoding if e != PulseEncoding.DENSE_I8 or np.abs(counts).max() <= 127]
    assert len(req.pack()) == min(len(req.pack(e)) for e in valid)


def test_sparse_encoding_is_chosen_for_one_column() -> None:
    c = np.zeros((64, 64), dtype=np.int64)
    c[:, 3] = np.arange(64) - 32
    assert choose_encoding(c) == PulseEncoding.SPARSE
    assert len(PulseBatchRequest(Window(0, 0, 64, 64), 1.0, 1e-7, c).pack()) < 64 * 64 // 2


@given(windows, st.integers(0, 4), st.booleans(), st.data())
def test_mvm_update_read_pulse_round_trip(win: Window, batch: int, t: bool, data: st.DataObject) -> None:
    n_in = win.rows if t else win.cols
    codes = np.array(
        data.draw(st.lists(st.integers(-32767, 32767), min_size=batch * n_in, max_size=batch * n_in)),
        dtype=np.int16,
    ).reshape(batch, n_in)
    m = MvmRequest.unpack(MvmRequest(win, t, codes).pack())
    assert m.window == win and m.transposed == t
    np.testing.assert_array_equal(m.codes, codes)
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, win.cols)).astype(np.float32)
    d = rng.standard_normal((batch, win.rows)).astype(np.float32)
    u = UpdateRequest.unpack(UpdateRequest(win, 1.0, 2e-7, 0.01, 31, True, x, d).pack())
    np.testing.assert_array_equal(u.x, x)
    np.testing.assert_array_equal(u.d, d)
    assert (u.bl, u.update_management, u.width_s) == (31, True, 2e-7)
    r = ReadRequest(win, 0.2, 3)
    assert ReadRequest.unpack(r.pack()) == r
    p = PulseRequest(5, 6, -7, 1.5, 1e-7)
    assert PulseRequest.unpack(p.pack()) == p
    ls = LastSeq(True, 65535, 0x21, 0, 0xBEEF)
    assert LastSeq.unpack(ls.pack()) == ls


def test_board_info_round_trips() -> None:
    from hil.drivers.chip.emulator import ChipEmulator

    info = ChipEmulator(rows=5, cols=7, device="ideal").info
    assert BoardInfo.unpack(info.pack()) == info
    assert info.parallel_update and info.transposed_read
