"""The chip emulator behind SerialCrossbar is the simulator of its device model, bit for bit.

The closed-loop validation (docs/validation.md) compares a chip with the simulator of a
model fitted to it; a difference between the emulator path and ``SimulatedCrossbar`` of
the same model would show there as a device difference.  Same model, periphery and seed:
write-verify, read-back and MVMs through the framed serial protocol equal the simulator's.
"""

from __future__ import annotations

import torch

from hil.backends import open_backend
from hil.device_model import DeviceModel, DeviceVariation, SoftBoundsStep
from hil.drivers.chip import ChipEmulator, EmulatorConfig, register_emulator, unregister_emulator
from hil.simulated import PeripheryConfig, SimulatedCrossbar


def test_emulated_chip_programs_reads_and_multiplies_like_the_simulator_of_its_model() -> None:
    model = DeviceModel(name="equiv", step=SoftBoundsStep(dw_up=0.03, dw_down=0.02),
                        variation=DeviceVariation(c2c=0.3, d2d={"dw_up": 0.1, "dw_down": 0.1}),
                        read_noise=0.004)
    periphery = PeripheryConfig.ideal().model_copy(update={"w_noise": 0.004})
    register_emulator("equivalence-chip", ChipEmulator(EmulatorConfig(
        rows=6, cols=5, device=model, periphery=periphery.model_dump(), seed=3, keep_counts=False)))
    try:
        chip = open_backend("serial+xbarsim://equivalence-chip#limits=board")
        chip.arm()
        sim = SimulatedCrossbar(6, 5, device=model, periphery=periphery, seed=3)
        target = torch.linspace(-0.5, 0.5, 30).reshape(6, 5)
        x = torch.linspace(-1.0, 1.0, 20).reshape(4, 5)
        out = []
        for b in (chip, sim):
            down = -torch.full(b.shape, 40, dtype=torch.int64)  # start from the bottom of the range
            b.pulse(down)
            rep = b.program(target, tol=0.05, max_iter=50, n_reads=4)
            out.append((rep, b.read(4), b.forward(x)))
        (rc, wc, yc), (rs, ws, ys) = out
        assert rc == rs and rc.pulses_spent > 0
        assert torch.equal(wc, ws)
        # MVM inputs travel as the board's 16-bit DAC codes (1/32767 of full scale): the
        # only difference, below 1e-3 of the outputs, where read noise of 0.004 per weight
        # would differ by ~0.005 if the two drew different noise
        assert torch.allclose(yc, ys, rtol=0.0, atol=5 * 5 / 32767)
        chip.close()
    finally:
        unregister_emulator("equivalence-chip")
