"""Property: no sequence of driver calls with out-of-limit arguments ever puts a frame on the wire."""

from __future__ import annotations

import pytest
import torch
from chip_common import LIMITS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.drivers.chip import (
    ChipEmulator,
    LinkConfig,
    SerialCrossbar,
    SerialCrossbarConfig,
    register_emulator,
)
from hil.safety import SafetyError

ROWS, COLS = 4, 5


class Wire:
    """Counts every byte the driver writes to the port."""

    def __init__(self, port) -> None:
        self.port = port
        self.frames = 0
        self.bytes = 0
        self._write = port.write
        port.write = self._count

    def _count(self, data: bytes) -> int:
        self.frames += 1
        self.bytes += len(data)
        return self._write(data)


@pytest.fixture(scope="module")
def rig():
    emu = ChipEmulator(rows=ROWS, cols=COLS, device="ideal")
    url = register_emulator("limits-property", emu)
    xb = SerialCrossbar(url, LIMITS, config=SerialCrossbarConfig(link=LinkConfig(latency_s=0.05)))
    wire = Wire(xb.link.port)
    yield emu, xb, wire
    xb.close()


big = st.floats(2.0001, 1e6) | st.floats(-1e6, -2.0001)


def bad_forward(data: st.DataObject):
    x = torch.zeros(2, COLS)
    x[data.draw(st.integers(0, 1)), data.draw(st.integers(0, COLS - 1))] = data.draw(big)
    return lambda xb: xb.forward(x)


def bad_backward(data: st.DataObject):
    d = torch.zeros(ROWS)
    d[data.draw(st.integers(0, ROWS - 1))] = data.draw(big)
    return lambda xb: xb.backward(d)


def bad_pulse_count(data: st.DataObject):
    c = torch.zeros(ROWS, COLS, dtype=torch.int64)
    c[data.draw(st.integers(0, ROWS - 1)), data.draw(st.integers(0, COLS - 1))] = data.draw(
        st.integers(201, 10**9) | st.integers(-(10**9), -201)
    )
    return lambda xb: xb.pulse(c)


def _with_config(field: str, value: float, action):
    def run(xb: SerialCrossbar) -> None:
        old = getattr(xb.config, field)
        setattr(xb.config, field, value)
        try:
            action(xb)
        finally:
            setattr(xb.config, field, old)

    return run


def bad_amplitude(data: st.DataObject):
    v = data.draw(st.floats(1.5001, 100))
    op = data.draw(st.sampled_from(["pulse", "update"]))
    if op == "pulse":
        return _with_config("pulse_amplitude_v", v, lambda xb: xb.pulse(torch.ones(ROWS, COLS, dtype=torch.int64)))
    return _with_config("pulse_amplitude_v", v, lambda xb: xb.update(torch.ones(1, COLS), torch.ones(1, ROWS), 0.1))


def bad_width(data: st.DataObject):
    w = data.draw(st.floats(1e-12, 0.99e-8) | st.floats(1.01e-6, 10))
    return _with_config("pulse_width_s", w, lambda xb: xb.pulse(torch.ones(ROWS, COLS, dtype=torch.int64)))


def bad_read_voltage(data: st.DataObject):
    v = data.draw(st.floats(0.4001, 50))
    return _with_config("read_voltage_v", v, lambda xb: xb.read())


def bad_limits(data: st.DataObject):
    field = data.draw(st.sampled_from(["max_read_voltage_v", "max_write_voltage_v", "max_pulse_width_s"]))
    hard = {"max_read_voltage_v": 0.5, "max_write_voltage_v": 3.0, "max_pulse_width_s": 1e-3}[field]
    lim = LIMITS.model_copy(update={field: hard * data.draw(st.floats(1.001, 100))})
    return lambda xb: xb.set_limits(lim)


BAD = [bad_forward, bad_backward, bad_pulse_count, bad_amplitude, bad_width, bad_read_voltage, bad_limits]


def good(data: st.DataObject):
    kind = data.draw(st.sampled_from(["forward", "pulse", "read"]))
    if kind == "forward":
        return lambda xb: xb.forward(torch.full((COLS,), data.draw(st.floats(-2, 2))))
    if kind == "read":
        return lambda xb: xb.read()
    n = data.draw(st.integers(-200, 200))
    return lambda xb: xb.pulse(torch.full((ROWS, COLS), n, dtype=torch.int64))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_out_of_limit_calls_never_reach_the_wire(rig, data: st.DataObject) -> None:
    emu, xb, wire = rig
    xb.arm()
    for _ in range(data.draw(st.integers(1, 8), label="calls")):
        if data.draw(st.booleans(), label="bad?"):
            action = data.draw(st.sampled_from(BAD), label="bad call")(data)
            frames, nbytes, executed = wire.frames, wire.bytes, len(emu.pulse_log)
            with pytest.raises(SafetyError):
                action(xb)
            assert (wire.frames, wire.bytes) == (frames, nbytes), "a refused call put bytes on the wire"
            assert len(emu.pulse_log) == executed
            assert xb.guard.armed  # a refusal before sending is not a hardware fault
        else:
            frames = wire.frames
            good(data)(xb)
            assert wire.frames >= frames
    assert xb.limits == LIMITS
