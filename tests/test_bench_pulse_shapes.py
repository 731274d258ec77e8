"""Pulses of other amplitude and width on the bench: limits first, grouped bursts, the emulated law."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hil.device_model import DeviceModel, SoftBoundsStep
from hil.drivers.bench import BenchConfig, BenchCrossbar, BenchEmulator
from hil.pulse_response import PulseResponse, PulseShape, SwitchingLaw
from hil.safety import SafetyError
from hil.simulated import PeripheryConfig, SimulatedCrossbar

CONFIG = Path(__file__).parent / "bench_sim" / "bench_emulated.yaml"
LAW = PulseResponse(
    up=SwitchingLaw(log10_t0_s=-6.0, activation_v=2.0, exponent=0.5),
    down=SwitchingLaw(log10_t0_s=-6.0, activation_v=2.0, exponent=0.5),
    nominal_up=PulseShape(amplitude_v=1.2, width_s=1e-6),
    nominal_down=PulseShape(amplitude_v=1.4, width_s=1e-6),
)
FERRO = DeviceModel(name="law", step=SoftBoundsStep(dw_up=0.1, dw_down=0.1), pulse_response=LAW)


@pytest.fixture
def config() -> BenchConfig:
    return BenchConfig.load(CONFIG)


def test_shaped_pulses_reach_the_emulated_devices_through_their_law(config: BenchConfig) -> None:
    amp = torch.tensor([[0.8, 1.2, 1.8, 1.2]] * 4, dtype=torch.float64)
    width = torch.tensor([[1e-6, 1e-5, 1e-6, 1e-4]] * 4, dtype=torch.float64)
    counts = torch.tensor([[1, 1, 1, 1], [-1, -1, -1, -1], [2, 0, 3, 0], [0, 0, 0, 0]])
    with BenchEmulator.from_config(config, FERRO, seed=3) as emu:
        with BenchCrossbar(config.with_resources(emu.resources), arm=True) as xb:
            assert xb.info.pulse_shapes
            xb.pulse(counts, amplitude_v=amp, width_s=width)
            ref = SimulatedCrossbar(4, 4, device=FERRO, periphery=PeripheryConfig.ideal(), seed=3)
            ref.pulse(counts, amplitude_v=amp, width_s=width)
            assert torch.allclose(emu.crossbar.true_weights(), ref.true_weights(), atol=1e-6)
            # the law makes a difference: the weak and the long pulses moved their devices differently
            w = emu.crossbar.true_weights()
            assert w[0, 0] < w[0, 1] < w[0, 3] and emu.stats.out_of_limit == []
            # without shapes: the configured pulses, the nominal step
            before = w.clone()
            xb.pulse(torch.tensor([[0, 0, 0, 0]] * 3 + [[1, 0, 0, 0]]))
            assert float(emu.crossbar.true_weights()[3, 0] - before[3, 0]) == pytest.approx(0.1, rel=1e-4)


def test_shapes_outside_the_limits_send_nothing(config: BenchConfig) -> None:
    with BenchEmulator.from_config(config, FERRO, seed=3) as emu:
        with BenchCrossbar(config.with_resources(emu.resources), arm=True) as xb:
            sent = dict(emu.stats.commands)
            counts = torch.zeros(4, 4, dtype=torch.int64)
            counts[0, 0], counts[1, 1] = 1, -1
            amp = torch.full((4, 4), 1.0, dtype=torch.float64)
            amp[1, 1] = 2.5  # the down pulse of one device beyond max_write_voltage_v 2.0
            with pytest.raises(SafetyError, match="down amplitude_v 2.5 V"):
                xb.pulse(counts, amplitude_v=amp)
            with pytest.raises(SafetyError, match="up width_s 0.1 s is outside"):
                xb.pulse(counts, width_s=torch.where(counts > 0, 0.1, 1e-6).double())
            with pytest.raises(ValueError, match="NaN/inf"):
                xb.pulse(counts, amplitude_v=torch.full((4, 4), float("nan"), dtype=torch.float64))
            assert emu.stats.commands == sent and emu.crossbar.true_weights().abs().max() == 0


def test_one_generator_setting_per_shape_and_a_longer_period_for_long_pulses(config: BenchConfig) -> None:
    xb = BenchCrossbar(config.with_resources({}), dry_run=True, arm=True)
    start = len(xb.dry_run_commands)
    counts = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    width = torch.tensor([[1e-6, 5e-5, 1e-6, 1e-6]] + [[1e-6] * 4] * 3, dtype=torch.float64)
    xb.pulse(counts, width_s=width)
    sent = [c for _, c in xb.dry_run_commands[start:]]
    widths = [c for c in sent if "FUNC:PULS:WIDT" in c]
    periods = [c for c in sent if "FUNC:PULS:PER" in c]
    # two shapes -> two bursts with their own settings; the 50 us pulse gets a 100 us period
    assert any("5.000000e-05" in c for c in widths) and any("1.000000e-04" in c for c in periods), (widths, periods)
    assert sum("*TRG" in c for c in sent) == 2
    xb.close()
