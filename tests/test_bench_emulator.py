"""BenchCrossbar end to end through pyvisa-py and the loopback bench emulator.

The emulator serves the instruments' command subsets on 127.0.0.1 (opened as
``TCPIP::127.0.0.1::PORT::SOCKET``) and is backed by a hidden SimulatedCrossbar,
so reads, pulses, updates and write-verify can be checked against the truth,
and the traffic is audited (no value beyond the limits, no hot switching).
The safe state is checked after an instrument error, a timeout, Ctrl-C, a
dropped connection, ``close()``, the end of a ``with`` block and interpreter exit.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from hil.backends import open_backend
from hil.device_model import ConstantStep, DeviceModel, SoftBoundsStep
from hil.drivers.bench import (
    BenchConfig,
    BenchCrossbar,
    BenchEmulator,
    InstrumentConnectionLost,
    InstrumentError,
    InstrumentTimeout,
)
from hil.safety import NotArmedError, SafetyError, StateUnknownError
from hil.simulated import PeripheryConfig, SimulatedCrossbar

CONFIG = Path(__file__).parent / "bench_sim" / "bench_emulated.yaml"
CLEAN = DeviceModel(name="clean-softbounds", step=SoftBoundsStep(dw_up=0.1, dw_down=0.1))


@pytest.fixture
def config() -> BenchConfig:
    return BenchConfig.load(CONFIG)


@pytest.fixture
def bench(config: BenchConfig):
    """(emulator, backend) on the clean soft-bounds device; both closed afterwards."""
    emu = BenchEmulator.from_config(config, CLEAN, seed=3)
    emu.start()
    xb = BenchCrossbar(config.with_resources(emu.resources), arm=True)
    yield emu, xb
    xb.close()
    emu.stop()


# ------------------------------------------------------------------ config
def test_config_round_trips_yaml_and_json(config: BenchConfig, tmp_path: Path) -> None:
    for name in ("b.yaml", "b.json"):
        path = config.save(tmp_path / name)
        assert BenchConfig.load(path) == config
    assert (config.rows, config.cols) == (4, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"read": {"voltage_v": 0.6, "compliance_a": 1e-4}}, "read.voltage_v"),
        ({"pulses": {"up": {"amplitude_v": 2.5, "width_s": 1e-6}, "down": {"amplitude_v": 1.0, "width_s": 1e-6},
                     "period_s": 1e-5}}, "pulses.up.amplitude_v"),
        ({"pulses": {"up": {"amplitude_v": 1.0, "width_s": 1e-6}, "down": {"amplitude_v": 1.0, "width_s": 1e-8},
                     "period_s": 1e-5}}, "pulses.down.width_s"),
        ({"read": {"voltage_v": 0.2, "compliance_a": 2e-3}}, "compliance"),
        ({"read": {"voltage_v": 0.5, "compliance_a": 6e-5}}, "headroom"),
        ({"pulse_generator": None}, "no pulse_generator"),
    ],
)
def test_config_refuses_inconsistent_files(config: BenchConfig, tmp_path: Path, change: dict, message: str) -> None:
    data = config.model_dump(mode="json")
    data.update(change)
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message) as info:
        BenchConfig.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ({"array_rows": [1, 2], "array_cols": [2, 3]}, "more than one array line"),
        ({"array_rows": [1], "array_cols": [13]}, "outside 1..12"),
        ({"array_rows": [1], "array_cols": [2], "pulse_row": "A"}, "three different"),
        ({"array_rows": [1], "array_cols": [2], "ground_row": "Z"}, "one letter"),
    ],
)
def test_config_refuses_bad_wiring(config: BenchConfig, matrix: dict, message: str) -> None:
    data = config.model_dump(mode="json")
    data["matrix"].update(matrix)
    with pytest.raises(ValueError, match=message):
        BenchConfig.model_validate(data)


# ------------------------------------------------------------------ contract
def test_read_matches_the_hidden_array(bench) -> None:
    emu, xb = bench
    truth = torch.linspace(-0.8, 0.8, 16).reshape(4, 4)
    emu.crossbar.set_weights(truth)
    w = xb.read()
    assert torch.allclose(w, truth, atol=1e-4)
    g = xb.read_conductances()
    assert torch.allclose(g, emu.true_conductances(), rtol=1e-4)
    x = torch.randn(3, 4)
    assert torch.allclose(xb.forward(x), x @ truth.T, atol=1e-3)
    d = torch.randn(2, 4)
    assert torch.allclose(xb.backward(d), d @ truth, atol=1e-3)
    # 2 commands per device + open-all + two error checks per read
    info = xb.info
    assert info.kind == "bench" and not info.parallel_update and not info.transposed_read
    assert "device by device" in info.details["read"]
    assert emu.stats.out_of_limit == [] and emu.stats.hot_switches == 0 and emu.stats.shorts == 0


def test_read_costs_two_commands_per_device(bench) -> None:
    emu, xb = bench
    before = xb.commands_sent
    xb.read()
    assert xb.commands_sent - before == 2 * 16 + 3


def test_pulse_is_batched_per_row_and_matches_the_simulator(bench) -> None:
    emu, xb = bench
    counts = torch.tensor([[1, 2, 3, 0], [0, -1, -2, 5], [0, 0, 0, 0], [4, 4, 4, -4]])
    ref = SimulatedCrossbar(4, 4, device=CLEAN, periphery=PeripheryConfig.ideal(), seed=3)
    bursts0 = emu.stats.bursts
    xb.pulse(counts)
    ref.pulse(counts)
    assert torch.allclose(emu.crossbar.true_weights(), ref.true_weights(), atol=1e-6)
    # one burst per distinct count per row and polarity: row0 {1,2,3}, row1 {5} and {1,2}, row3 {4} and {4}
    assert emu.stats.bursts - bursts0 == 3 + 1 + 2 + 1 + 1
    assert emu.stats.device_pulses == int(counts.abs().sum())
    assert emu.stats.out_of_limit == [] and emu.stats.hot_switches == 0


def test_update_applies_rounded_expected_counts(config: BenchConfig) -> None:
    model = DeviceModel(name="const", step=ConstantStep(dw_up=0.1, dw_down=0.1))
    with BenchEmulator.from_config(config, model) as emu:
        with BenchCrossbar(config.with_resources(emu.resources), arm=True) as xb:
            x = torch.tensor([[1.0, -0.5, 0.0, 0.25]])
            d = torch.tensor([[0.5, -1.0, 0.2, 0.0]])
            lr = 0.4
            xb.update(x, d, lr)
            expected = -lr * d.T @ x
            moved = emu.crossbar.true_weights()
            assert (moved - expected).abs().max() <= config.dw_nominal + 1e-6
            assert xb.counts.update_calls == 1


def test_program_converges(bench) -> None:
    emu, xb = bench
    target = torch.tensor([[0.3, -0.3, 0.0, 0.5], [-0.5, 0.2, 0.4, -0.1], [0.0, 0.0, 0.6, -0.6], [0.1, -0.2, 0.3, -0.4]])
    report = xb.program(target, tol=0.06, max_iter=30)
    assert report.converged, report
    assert (emu.crossbar.true_weights() - target).abs().max() <= 0.06 + 1e-4
    assert emu.stats.out_of_limit == []


def test_smu_pulse_source(config: BenchConfig) -> None:
    data = config.model_dump(mode="json")
    data["pulses"] = {"source": "smu", "up": {"amplitude_v": 1.2, "width_s": 1e-3},
                      "down": {"amplitude_v": 1.4, "width_s": 1e-3}, "period_s": 2e-3}
    cfg = BenchConfig.model_validate(data)
    with BenchEmulator.from_config(cfg, CLEAN) as emu:
        with BenchCrossbar(cfg.with_resources(emu.resources), arm=True) as xb:
            assert xb.pulser is None
            xb.pulse(torch.tensor([[2, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
            w = emu.crossbar.true_weights()
            assert w[0, 0] > 0.15 and w[1, 1] < -0.05 and w[2:].abs().max() == 0
            assert xb.read()[0, 0] == pytest.approx(float(w[0, 0]), abs=1e-4)  # read level restored
            assert emu.stats.out_of_limit == [] and emu.stats.hot_switches == 0


def test_open_backend_spec(config: BenchConfig, tmp_path: Path) -> None:
    with BenchEmulator.from_config(config, CLEAN) as emu:
        path = config.with_resources(emu.resources).save(tmp_path / "bench.yaml")
        with open_backend(f"bench:{path}") as xb:
            assert isinstance(xb, BenchCrossbar) and xb.shape == (4, 4)
            assert not xb.guard.armed
        with pytest.raises(ValueError, match="rows=8"):
            open_backend(f"bench:{path}", rows=8)


# ------------------------------------------------------------------ safety
def test_pulse_needs_arming_and_sends_nothing(config: BenchConfig) -> None:
    with BenchEmulator.from_config(config, CLEAN) as emu:
        with BenchCrossbar(config.with_resources(emu.resources)) as xb:
            sent = dict(emu.stats.commands)
            with pytest.raises(NotArmedError):
                xb.pulse(torch.ones(4, 4, dtype=torch.int64))
            assert emu.stats.commands == sent


def test_out_of_limit_counts_send_nothing(bench) -> None:
    emu, xb = bench
    sent = dict(emu.stats.commands)
    counts = torch.zeros(4, 4, dtype=torch.int64)
    counts[2, 1] = 101
    with pytest.raises(SafetyError, match="101"):  # the contract's own check, before the driver's
        xb.pulse(counts)
    with pytest.raises(SafetyError, match="update"):
        xb.update(torch.ones(1, 4), torch.ones(1, 4), lr=20.0)  # 200 pulses per device expected
    assert emu.stats.commands == sent
    assert emu.crossbar.true_weights().abs().max() == 0


def _assert_safe(emu: BenchEmulator) -> None:
    assert emu.physics.closed == set()
    assert not emu.smu.output and not emu.generator.output


def test_instrument_error_puts_the_bench_in_its_safe_state(bench) -> None:
    emu, xb = bench
    real = emu.matrix._closed_text
    calls = {"n": 0}

    def wrong() -> str:  # the matrix "forgets" one relay in its read-back, once
        calls["n"] += 1
        return "1B01" if calls["n"] == 1 else real()

    emu.matrix._closed_text = wrong
    with pytest.raises(InstrumentError, match="differs"):
        xb.pulse(torch.tensor([[1, 1, 0, 0], [0] * 4, [0] * 4, [0] * 4]))
    _assert_safe(emu)
    assert not xb.guard.armed and xb.guard.safe_state_calls >= 1
    with pytest.raises(NotArmedError):
        xb.pulse(torch.ones(4, 4, dtype=torch.int64))


def test_timeout_during_pulses_marks_state_unknown(bench) -> None:
    emu, xb = bench
    real = emu.generator.one
    triggered = {"flag": False}

    def mute(line: str):  # the generator never reports a triggered burst as complete
        if line == "*TRG":
            triggered["flag"] = True
        elif line == "*OPC?" and triggered["flag"]:
            triggered["flag"] = False
            return None
        return real(line)

    emu.generator.one = mute
    xb.pulser.completion_margin_s = 0.2
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout, match="no reply"):
        xb.pulse(torch.eye(4, dtype=torch.int64))
    assert time.monotonic() - t0 < 3.0
    emu.generator.one = real
    _assert_safe(emu)
    assert not xb.guard.state_known and not xb.guard.armed
    xb.arm()
    with pytest.raises(StateUnknownError):
        xb.pulse(torch.eye(4, dtype=torch.int64))
    xb.read()  # a full read-back makes the state known again
    assert xb.guard.state_known
    # the late "1" of the muted *OPC? never came, so the link is in step again
    xb.pulse(torch.eye(4, dtype=torch.int64))
    assert emu.crossbar.true_weights().diag().min() > 0


def test_close_runs_the_safe_state(config: BenchConfig) -> None:
    with BenchEmulator.from_config(config, CLEAN) as emu:
        xb = BenchCrossbar(config.with_resources(emu.resources), arm=True)
        emu.physics.closed = {("B", 1), ("C", 5)}
        emu.generator.output = True
        xb.close()
        _assert_safe(emu)
        with pytest.raises(RuntimeError, match="closed"):
            xb.read()


def test_interpreter_exit_runs_the_safe_state(config: BenchConfig) -> None:
    """The guard's atexit hook (what runs when a script ends without close()) opens relays, sources off."""
    with BenchEmulator.from_config(config, CLEAN) as emu:
        xb = BenchCrossbar(config.with_resources(emu.resources), arm=True)
        emu.physics.closed = {("B", 1), ("C", 5)}
        emu.generator.output = True
        xb.guard._atexit()  # exactly what atexit calls at interpreter exit
        _assert_safe(emu)
        assert xb.guard.closed and not xb.guard.armed
        xb.close()


def test_context_manager_exit_runs_the_safe_state(config: BenchConfig) -> None:
    """A normal end of a ``with BenchCrossbar(...)`` block: sources off, relays open, no more pulses."""
    with BenchEmulator.from_config(config, CLEAN) as emu:
        with BenchCrossbar(config.with_resources(emu.resources), arm=True) as xb:
            xb.pulse(torch.eye(4, dtype=torch.int64))
            emu.physics.closed = {("B", 1), ("C", 5)}  # as if a route were still closed
            emu.generator.output = True
        _assert_safe(emu)
        assert xb.guard.closed and not xb.guard.armed


def _interrupt_on_call(target: object, name: str, call: int) -> None:
    """Make ``target.name`` raise KeyboardInterrupt on its ``call``-th call (Ctrl-C mid-operation)."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    setattr(target, name, wrapper)


def test_keyboard_interrupt_mid_read_runs_the_safe_state_and_keeps_the_reads(bench) -> None:
    emu, xb = bench
    truth = torch.linspace(-0.8, 0.8, 16).reshape(4, 4)
    emu.crossbar.set_weights(truth)
    _interrupt_on_call(xb.smu, "read_current", 7)  # Ctrl-C while the 7th device is routed
    with pytest.raises(KeyboardInterrupt) as info:
        xb.read()
    _assert_safe(emu)
    assert not xb.guard.armed and xb.guard.safe_state_calls >= 1
    partial = info.value.partial_conductances_s
    assert partial is xb.last_partial_read
    measured = ~torch.isnan(partial)
    assert int(measured.sum()) == 6 and bool(measured.flatten()[:6].all())
    assert torch.allclose(partial[measured], emu.true_conductances()[measured], rtol=1e-4)
    assert sys.version_info < (3, 11) or any("6 of 16 devices" in note for note in info.value.__notes__)


def test_keyboard_interrupt_mid_pulse_runs_the_safe_state(bench) -> None:
    emu, xb = bench
    _interrupt_on_call(xb.pulser, "fire", 2)  # Ctrl-C after the first burst, generator output on
    with pytest.raises(KeyboardInterrupt):
        xb.pulse(torch.ones(4, 4, dtype=torch.int64))
    _assert_safe(emu)
    assert not xb.guard.armed
    with pytest.raises(NotArmedError):
        xb.pulse(torch.ones(4, 4, dtype=torch.int64))


@pytest.fixture
def fast_timeouts(config: BenchConfig) -> BenchConfig:
    """The bench file with 0.3 s VISA timeouts (a dropped instrument is noticed within one timeout)."""
    data = config.model_dump(mode="json")
    for key in ("smu", "matrix", "pulse_generator"):
        data[key]["timeout_s"] = 0.3
    return BenchConfig.model_validate(data)


def test_dropped_connection_mid_read_is_clear_and_keeps_the_reads(fast_timeouts: BenchConfig) -> None:
    with BenchEmulator.from_config(fast_timeouts, CLEAN) as emu:
        truth = torch.linspace(-0.8, 0.8, 16).reshape(4, 4)
        emu.crossbar.set_weights(truth)
        xb = BenchCrossbar(fast_timeouts.with_resources(emu.resources), arm=True)
        emu.disconnect("matrix", after_commands=5)  # the matrix goes away after routing 5 devices
        t0 = time.monotonic()
        with pytest.raises(InstrumentConnectionLost, match="matrix.*connection lost.*switched off") as info:
            xb.read()
        assert time.monotonic() - t0 < 5.0
        partial = info.value.partial_conductances_s
        measured = ~torch.isnan(partial)
        assert int(measured.sum()) == 5
        assert torch.allclose(partial[measured], emu.true_conductances()[measured], rtol=1e-4)
        assert sys.version_info < (3, 11) or any("5 of 16 devices" in note for note in info.value.__notes__)
        # the safe state still reached the instruments that are there
        assert not emu.smu.output and not emu.generator.output and not xb.guard.armed
        assert isinstance(xb.guard.last_safe_state_error, InstrumentConnectionLost)
        with pytest.raises(InstrumentConnectionLost):  # no silent retry on a dead link
            xb.read()
        xb.close()


def test_dropped_connection_mid_pulse_marks_the_state_unknown(fast_timeouts: BenchConfig) -> None:
    with BenchEmulator.from_config(fast_timeouts, CLEAN) as emu:
        xb = BenchCrossbar(fast_timeouts.with_resources(emu.resources), arm=True)
        xb.pulser.completion_margin_s = 0.2  # a burst's *OPC? waits its duration plus this margin
        emu.disconnect("pulse_generator", after_commands=2)  # output on, one burst, then gone
        with pytest.raises(InstrumentConnectionLost, match="pulse"):
            xb.pulse(torch.ones(4, 4, dtype=torch.int64))
        assert not xb.guard.state_known and "InstrumentConnectionLost" in xb.guard.unknown_reason
        assert emu.physics.closed == set() and not emu.smu.output  # matrix and SMU made safe
        assert emu.stats.bursts == 1
        xb.close()


def test_capabilities_say_device_by_device(bench) -> None:
    _, xb = bench
    info = xb.info
    assert (info.parallel_update, info.transposed_read, info.max_pulses_per_call) == (False, False, 100)
    for op in ("read", "forward", "backward", "update", "pulse", "program"):
        assert info.details[op]
    assert "batched per row" in info.details["pulse"] and info.details["dry_run"] is False
    assert "no operation is array-parallel" in info.details["emulated"]
    assert info.details["conductance"] == {"g_min_s": 1e-5, "g_max_s": 1e-4}  # read by hil characterize


def test_short_circuit_is_refused_and_would_read_as_compliance(bench) -> None:
    emu, xb = bench
    with pytest.raises(SafetyError, match="shorted"):
        xb.matrix.route(["1A01", "1C01"])  # SMU HI and ground on the same line
    assert emu.stats.shorts == 0
    xb.matrix.write('channel.exclusiveclose("1A01,1C01")')  # what a driver without the check would send
    assert xb.matrix.closed_channels() == ["1A01", "1C01"]  # a query: the switch has happened
    with pytest.raises(InstrumentError, match="compliance"):
        xb.smu.read_current()
    assert emu.stats.shorts == 1


# ------------------------------------------------------------------ emulator
def test_emulator_refuses_unknown_commands_and_audits_limits(config: BenchConfig) -> None:
    import pyvisa

    with BenchEmulator.from_config(config, CLEAN) as emu:
        rm = pyvisa.ResourceManager("@py")
        try:
            res = rm.open_resource(emu.resources["pulse_generator"], read_termination="\n", timeout=2000)
            res.write("SOUR1:VOLT:HIGH 3.000000e+00")  # beyond the 2 V write limit
            res.write("SOUR1:VOLT:HIGHH 1")
            assert res.query("SYST:ERR?") == '-113,"Undefined header"'
            assert res.query("SYST:ERR?") == '+0,"No error"'
            res.close()
        finally:
            rm.close()
        assert len(emu.stats.out_of_limit) == 1 and "3" in emu.stats.out_of_limit[0]


def test_emulator_servers_stop_by_themselves(config: BenchConfig) -> None:
    emu = BenchEmulator.from_config(config, CLEAN, idle_timeout_s=0.3)
    emu.start()
    threads = [s.thread for s in emu._servers.values()]
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in threads)
    emu.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("bench-emulator") and t.is_alive()]
