"""SafetyGuard: the hardware-session rules shared by the serial-chip and bench drivers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hil.safety import (
    LimitMismatchError,
    NotArmedError,
    SafetyError,
    SafetyGuard,
    SafetyLimits,
    StateUnknownError,
)

LIMITS = SafetyLimits(
    max_read_voltage_v=0.3,
    max_write_voltage_v=2.0,
    min_pulse_width_s=1e-8,
    max_pulse_width_s=1e-6,
    compliance_current_a=1e-4,
    max_pulses_per_call=100,
)


def make_guard(**kw):
    calls: list[str] = []
    return SafetyGuard(LIMITS, lambda: calls.append("safe"), name="dut", **kw), calls


def test_arm_is_required_before_writes_and_safe_state_disarms() -> None:
    g, calls = make_guard()
    with pytest.raises(NotArmedError, match="arm"):
        g.require_armed("PULSE")
    g.arm()
    g.require_write("PULSE")
    assert g.safe_state() is True
    assert calls == ["safe"] and not g.armed
    with pytest.raises(NotArmedError):
        g.require_write("PULSE")


def test_operation_runs_safe_state_on_any_exception_and_reraises() -> None:
    g, calls = make_guard()
    g.arm()
    with pytest.raises(TimeoutError, match="slow"), g.operation("READ"):
        raise TimeoutError("slow")
    assert calls == ["safe"] and not g.armed
    with g.operation("READ"):
        pass
    assert calls == ["safe"]


def test_failing_safe_state_is_recorded_not_masking_the_cause() -> None:
    def broken() -> None:
        raise ConnectionError("cable pulled")

    g = SafetyGuard(LIMITS, broken, name="dut")
    with pytest.raises(KeyError), g.operation("PULSE"):
        raise KeyError("original")
    assert isinstance(g.last_safe_state_error, ConnectionError)
    assert g.safe_state() is False


def test_unknown_state_blocks_writes_until_confirmed() -> None:
    g, _ = make_guard()
    g.arm()
    g.mark_unknown("PULSE_BATCH seq 7 timed out")
    with pytest.raises(StateUnknownError, match="seq 7"):
        g.require_write("PULSE_BATCH")
    g.confirm_state()
    g.require_write("PULSE_BATCH")


def test_dry_run_records_exact_bytes_and_sends_nothing() -> None:
    g, _ = make_guard(dry_run=True)
    sent: list[bytes] = []
    assert g.transmit(b"\x01\x02", sent.append, label="X") is False
    assert sent == [] and g.recorded[0].data == b"\x01\x02" and g.recorded[0].label == "X"
    g2, _ = make_guard()
    assert g2.transmit(b"\x03", sent.append) is True and sent == [b"\x03"]


def test_limits_read_back_mismatch_is_an_error() -> None:
    g, _ = make_guard()
    g.verify_limits(LIMITS.model_copy())
    g.verify_limits(LIMITS.model_dump())
    with pytest.raises(LimitMismatchError, match="max_write_voltage_v: set 2.0, read back 1.9"):
        g.verify_limits(LIMITS.model_copy(update={"max_write_voltage_v": 1.9}))


@pytest.mark.parametrize(
    "call",
    [
        lambda g: g.check_read_voltage(0.31),
        lambda g: g.check_write_voltage(-2.5),
        lambda g: g.check_pulse_width(2e-6),
        lambda g: g.check_pulse_width(1e-9),
        lambda g: g.check_current(1e-3),
        lambda g: g.check_pulse_count(-101),
        lambda g: g.check_read_voltages(torch.tensor([[0.0, 0.29], [0.31, 0.0]])),
        lambda g: g.check_read_voltages(np.array([0.1, float("nan")])),
        lambda g: g.check_write_voltages([1.0, 2.01]),
        lambda g: g.check_pulse_counts(torch.tensor([[0, 101]])),
        lambda g: g.check_read_voltage(float("inf")),
    ],
)
def test_out_of_limit_values_are_refused_never_clipped(call) -> None:
    g, _ = make_guard()
    with pytest.raises(SafetyError, match="dut"):
        call(g)


def test_values_at_the_limits_pass_unchanged() -> None:
    g, _ = make_guard()
    assert g.check_read_voltage(-0.3) == -0.3
    assert g.check_pulse_count(100) == 100
    g.check_pulse_counts(torch.full((3, 3), -100))
    g.check_read_voltages(torch.zeros(0))


def test_close_runs_safe_state_once_and_forbids_arming() -> None:
    g, calls = make_guard()
    g.arm()
    g.close()
    g.close()
    assert calls == ["safe"]
    with pytest.raises(SafetyError):
        g.arm()
