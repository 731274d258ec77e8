"""The closed loop (hil.validation.loop, ``hil loop``) on the chip emulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hil.characterization.protocol import PulseProtocol
from hil.cli.main import cli
from hil.device_model import DeviceModel, DeviceVariation, SoftBoundsStep
from hil.simulated import PeripheryConfig
from hil.validation.loop import LoopConfig, LoopResult, constant_control, run_loop


def _hidden() -> DeviceModel:
    return DeviceModel(
        name="hidden-softbounds",
        step=SoftBoundsStep(dw_up=0.06, dw_down=0.04),
        variation=DeviceVariation(c2c=0.3, d2d={"dw_up": 0.1, "dw_down": 0.1}),
        read_noise=0.01,
    )


def _emulator(name: str, rows: int, cols: int) -> str:
    from hil.drivers.chip import ChipEmulator, EmulatorConfig, register_emulator

    periphery = PeripheryConfig.ideal().model_copy(update={"w_noise": 0.01}).model_dump()
    register_emulator(name, ChipEmulator(EmulatorConfig(rows=rows, cols=cols, device=_hidden(),
                                                        periphery=periphery, seed=5, keep_counts=False)))
    return f"serial+xbarsim://{name}#limits=board"


def test_constant_control_keeps_the_fitted_scale() -> None:
    ctl = constant_control(_hidden())
    assert ctl.step.model == "constant"
    assert ctl.step.dw_up == ctl.step.dw_down == pytest.approx(0.048, rel=0.01)  # 2 * 0.06 * 0.04 / 0.1
    assert ctl.variation.c2c == 0.3 and ctl.read_noise == 0.01


def test_loop_cli_unusable_backend_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["loop", "--backend", "nonsense:thing", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "unknown backend spec" in res.output


def test_loop_cli_on_a_small_emulated_chip(tmp_path: Path) -> None:
    # mechanics of ``hil loop``: every file, the JSON result, the exit status of the verdict;
    # and the MVM check programs the fitted simulator from the state the protocol left the chip
    # in (write-verify's precision depends on it), not from weight 0
    spec = _emulator("loop-cli-chip", 4, 4)
    proto = tmp_path / "protocol.json"
    PulseProtocol(n_up=30, n_down=30, cycles=4, repeated_reads=3).save(proto)
    res = CliRunner().invoke(cli, ["loop", "--backend", spec, "--rows", "4", "--cols", "4", "--protocol", str(proto),
                                   "--out", str(tmp_path / "out"), "--json", str(tmp_path / "loop.json"),
                                   "--mvm", "--no-progress"])
    assert res.exit_code in (0, 1), res.output
    result = LoopResult.load(tmp_path / "loop.json")
    assert res.exit_code == (0 if result.passed else 1)
    assert "verdict: the fitted" in res.output and "[5/5] validate" in res.output
    assert result.validation.reference.devices == 16 and result.validation.candidate.devices == 16
    for name in ("chip.csv", "simulated.csv", "device.json", "report/report.md", "report/trajectories.png"):
        assert (tmp_path / "out" / name).exists(), name
    assert result.mvm is not None
    ref, cand = result.mvm["reference"], result.mvm["candidate"]
    assert ref["start_weight_mean"] < -0.3  # the chip is near its lower bound after the down pulses
    assert abs(cand["start_weight_mean"] - ref["start_weight_mean"]) <= result.mvm["config"]["program_tol"]
    assert result.mvm["warnings"] == [] and "MVM warning" not in res.output
    assert "MVM validation: " in res.output


@pytest.mark.slow
def test_loop_on_the_emulator_passes_and_a_constant_model_fails(tmp_path: Path) -> None:
    spec = _emulator("loop-test-chip", 6, 6)
    cfg = LoopConfig(rows=6, cols=6, protocol=PulseProtocol(n_up=40, n_down=40, cycles=6, repeated_reads=4),
                     control="constant", mvm=True, progress=False)
    res = run_loop(spec, tmp_path, cfg, log=lambda *_: None)
    assert res.passed, res.validation.failed()
    assert res.control is not None and not res.control.passed
    assert res.mvm is not None and res.mvm["passed"]
    res.save(tmp_path / "loop.json")
    assert LoopResult.load(tmp_path / "loop.json") == res
    for name in ("chip.csv", "simulated.csv", "device.json", "report/report.md", "report/trajectories.png"):
        assert (tmp_path / name).exists(), name
