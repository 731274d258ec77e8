"""Pulses of other amplitude and width on the serial test chip: one frame per shape, limits first."""

from __future__ import annotations

import pytest
import torch
from chip_common import IDEAL_IO, LIMITS

from hil.device_model import ConstantStep, DeviceModel
from hil.drivers.chip import (
    ChipEmulator,
    LinkConfig,
    SerialCrossbar,
    SerialCrossbarConfig,
    register_emulator,
    unregister_emulator,
)
from hil.pulse_response import PulseResponse, PulseShape, SwitchingLaw
from hil.safety import SafetyError
from hil.simulated import PeripheryConfig, SimulatedCrossbar

FAST = SerialCrossbarConfig(link=LinkConfig(latency_s=0.05, poll_s=0.002))  # pulses 1.0 V x 100 ns
LAW = PulseResponse(
    up=SwitchingLaw(log10_t0_s=-8.0, activation_v=1.0, exponent=0.5),
    down=SwitchingLaw(log10_t0_s=-8.0, activation_v=1.0, exponent=0.5),
    nominal_up=PulseShape(amplitude_v=1.0, width_s=1e-7),
    nominal_down=PulseShape(amplitude_v=1.0, width_s=1e-7),
)
MODEL = DeviceModel(name="law", step=ConstantStep(dw_up=0.01, dw_down=0.01), pulse_response=LAW)


@pytest.fixture
def chip():
    emu = ChipEmulator(rows=4, cols=3, device=MODEL, periphery=IDEAL_IO)
    url = register_emulator("shapes0", emu)
    xb = SerialCrossbar(url, LIMITS, config=FAST)
    xb.arm()
    yield emu, xb
    xb.close()
    unregister_emulator("shapes0")


def test_shaped_pulses_travel_in_their_frames_and_reach_the_law(chip) -> None:
    emu, xb = chip
    assert xb.info.pulse_shapes
    counts = torch.tensor([[3, 3, 0], [-2, 0, 1], [0, 0, 0], [1, 1, 1]])
    amp = torch.tensor([[0.5, 1.0, 1.0], [1.2, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.4]], dtype=torch.float64)
    width = torch.tensor([[1e-7, 1e-8, 1e-7], [1e-6, 1e-7, 1e-7], [1e-7, 1e-7, 1e-7], [1e-7, 1e-7, 1e-7]],
                         dtype=torch.float64)
    before = len(emu.pulse_log)
    xb.pulse(counts, amplitude_v=amp, width_s=width)
    frames = emu.pulse_log[before:]
    # shapes among the pulsed devices: (0.5, 1e-7), (1.0, 1e-8), (1.2, 1e-6), (1.0, 1e-7), (1.4, 1e-7)
    assert sorted((r.amplitude_v, r.width_s) for r in frames) == sorted(
        [(0.5, 1e-7), (1.0, 1e-8), (1.2, 1e-6), (1.0, 1e-7), (1.4, 1e-7)])
    assert sum(r.n_up for r in frames) == 10 and sum(r.n_down for r in frames) == 2
    ref = SimulatedCrossbar(4, 3, device=MODEL, periphery=PeripheryConfig.ideal())
    ref.pulse(counts, amplitude_v=amp, width_s=width)
    torch.testing.assert_close(emu.weights(), ref.true_weights(), atol=1e-6, rtol=0)
    # unshaped pulses: the configured 1.0 V x 100 ns, the model's nominal pulse (scale 1)
    w0 = emu.weights().clone()
    xb.pulse(torch.tensor([[0, 0, 5], [0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    assert float(emu.weights()[0, 2] - w0[0, 2]) == pytest.approx(0.05, abs=1e-6)


def test_out_of_limit_shapes_send_no_frame(chip) -> None:
    emu, xb = chip
    sent = emu.stats["frames_ok"]
    counts = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    amp = torch.full((4, 3), 1.0, dtype=torch.float64)
    amp[0, 1] = 1.6  # beyond max_write_voltage_v 1.5 V, in the second of two groups
    with pytest.raises(SafetyError, match="1.6"):
        xb.pulse(counts, amplitude_v=amp)
    with pytest.raises(SafetyError, match="width"):
        xb.pulse(counts, width_s=2e-6)  # beyond max_pulse_width_s 1 us
    assert emu.stats["frames_ok"] == sent and emu.weights().abs().max() == 0
