"""``hil train``: the digits network on a backend, checkpoints, --resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hil.cli.main import cli
from hil.training.report import TrainingReport

FAST = ["--no-progress", "--set", "zero_shift_reads=2", "--set", "zero_shift_cycles=3"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["train", *args])
    return result.exit_code, result.output


def test_train_on_sim_reproduces_train_digits_and_writes_report(tmp_path: Path) -> None:
    from hil.training import train_digits

    code, out = run("--epochs", "1", "--no-progress", "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    report = TrainingReport.load(tmp_path / "r.json")
    assert report.finished and report.steps == 135 and report.samples == 1347
    # --backend sim is the study's base point: the same run as train_digits
    assert report.test_accuracy == train_digits("ttv2", "mlp", seed=0, epochs=1).test_accuracy
    assert report.cost["per_sample"]["C"]["pulses_requested"] > 0
    assert [(a["layer"], a["role"]) for a in report.arrays] == [("0", "A"), ("0", "C"), ("2", "A"), ("2", "C")]
    assert "test accuracy" in out and "backend calls per training sample" in out


def test_train_at_another_point_of_the_study(tmp_path: Path) -> None:
    from hil.training import train_digits

    code, out = run("--epochs", "1", "--no-progress", "--c2c", "3", "--states", "10",
                    "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    want = train_digits("ttv2", "mlp", seed=0, epochs=1, c2c=3.0, states=10).test_accuracy
    assert TrainingReport.load(tmp_path / "r.json").test_accuracy == want


def test_stop_and_resume_end_bit_identical_on_sim(tmp_path: Path) -> None:
    args = ["--algorithm", "cttv2", "--epochs", "1", *FAST]
    code, out = run(*args, "--json", str(tmp_path / "whole.json"))
    assert code == 0, out
    ckpt = str(tmp_path / "run.ckpt")
    code, out = run(*args, "--checkpoint", ckpt, "--stop-after-steps", "40", "--json", str(tmp_path / "part.json"))
    assert code == 0 and "stopped at step 40" in out, out
    part = TrainingReport.load(tmp_path / "part.json")
    assert not part.finished and part.stopped_by == "stop_after_steps" and part.steps == 40
    # an existing checkpoint is never overwritten without --resume; other settings are refused
    code, out = run(*args, "--checkpoint", ckpt)
    assert code == 2 and "pass --resume" in out
    code, out = run("--algorithm", "cttv2", "--epochs", "2", *FAST, "--checkpoint", ckpt, "--resume")
    assert code == 2 and "epochs=1" in out
    code, out = run(*args, "--checkpoint", ckpt, "--resume", "--json", str(tmp_path / "rest.json"))
    assert code == 0 and "resumed at step 40" in out, out
    whole, rest = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "rest.json"))
    assert rest["resumed_from_step"] == 40
    assert rest["test_accuracy"] == whole["test_accuracy"]
    assert rest["cost"]["total"] == whole["cost"]["total"]
    # c-TTv2 reads C back: its pulse noise, as measured, is reported (and survives the resume)
    assert rest["c_pulse_noise"] == whole["c_pulse_noise"] and len(whole["c_pulse_noise"]) == 2
    assert "C's pulse noise read back" in out


def test_train_on_an_emulated_board_resumes_after_a_dropped_connection(tmp_path: Path) -> None:
    """The board drops the link mid-run: exit 1 naming the last checkpoint; a second
    invocation with --resume reconnects, reads the arrays back (how far each moved since the
    checkpoint is reported) and finishes."""
    from hil.drivers.chip import ChipEmulator, EmulatorConfig, EmulatorTcpServer, FaultConfig

    emu = ChipEmulator(EmulatorConfig(rows=42, cols=128, seed=3, faults=FaultConfig(disconnect_after_frames=400)))
    ckpt = str(tmp_path / "chip.ckpt")
    with EmulatorTcpServer(emu) as srv:
        spec = f"serial+{srv.url}#limits=board"
        args = ["--backend", spec, "--epochs", "1", *FAST, "--checkpoint", ckpt, "--checkpoint-every", "5"]
        code, out = run(*args)
        assert code == 1, out
        assert "array error" in out and "the last checkpoint" in out and "--resume" in out, out
        code, out = run(*args, "--resume", "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    report = TrainingReport.load(tmp_path / "r.json")
    assert report.finished and report.resumed_from_step is not None and report.resumed_from_step >= 5
    assert report.steps == 135 and 0.3 < (report.test_accuracy or 0.0) <= 1.0
    # every array is read back and compared with its read in the checkpoint: the update of
    # the step that was cut off may have reached the board (A moves), and reads are noisy
    drift = {(d["layer"], d["role"]): d for d in report.resume_drift}
    assert set(drift) == {("0", "A"), ("0", "C"), ("2", "A"), ("2", "C")}
    assert all(0.0 < d["rms"] <= d["max_abs"] <= 2.5 for d in drift.values()), drift
    assert "drift since the checkpoint" in out
    assert all("window" in a for a in report.arrays)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "nonsense=1"], "settings"),
        (["--set", "lambda_H"], "KEY=VALUE"),
        (["--set", "h_reset=sometimes"], "settings"),
        (["--resume"], "--resume needs --checkpoint"),
        (["--backend", "bench:setup.yaml"], "switch matrix"),
        (["--backend", "serial+xbarsim://t?rows=42&cols=128"], "safety limits"),
        (["--backend", "serial+xbarsim://small?rows=8&cols=8#limits=board"], "does not fit"),
        (["--backend", "tape:x"], "sim or serial"),
        (["--states", "1"], "states must be > 1"),
        (["--read-noise", "-0.1"], "out_noise"),
        (["--backend", "sim:ideal", "--c2c", "3"], "brings its own device model"),
    ],
)
def test_bad_input_exits_2_with_a_message(args: list[str], message: str) -> None:
    code, out = run("--epochs", "1", "--no-progress", *args)
    assert code == 2, out
    assert message in out, out


def test_ctrl_c_during_preparation_leaves_the_board_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C outside the step loop (here: in the zero-shifting): exit 130, and every window
    is closed, so the board got SAFE and is disarmed."""
    from hil.drivers.chip import get_emulator
    from hil.training.controller import TrainingController

    armed_then = []

    def interrupted_prepare(self: TrainingController) -> None:
        armed_then.append(get_emulator("ctrl-c").armed)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingController, "prepare", interrupted_prepare)
    code, out = run("--epochs", "1", "--no-progress", "--backend",
                    "serial+xbarsim://ctrl-c?rows=42&cols=128#limits=board")
    assert code == 130 and "interrupted at step 0" in out, out
    assert armed_then == [True]  # armed before the first pulse ...
    assert get_emulator("ctrl-c").armed is False  # ... and SAFE after the interruption


@pytest.mark.parametrize("c2c", [0.5, 2.0])
def test_c_ttv2_reads_back_the_pulse_noise_of_an_emulated_board(tmp_path: Path, c2c: float) -> None:
    """A board whose devices have a constant step of 0.1 (20 states) and c2c noise of 0.5 or
    2 steps, behind the serial protocol with its default read noise: c-TTv2's read-backs
    measure C's pulse noise within 15 % in every layer (pulses that would cross a hard
    bound, where about a fifth of C sits by the end, are left out of the estimate)."""
    from hil.device_model import ConstantStep, DeviceModel, DeviceVariation
    from hil.drivers.chip import ChipEmulator, EmulatorConfig, EmulatorTcpServer

    device = DeviceModel(
        name="constant-20-states", description="constant step, c2c noise", source="test",
        step=ConstantStep(dw_up=0.1, dw_down=0.1), variation=DeviceVariation(c2c=c2c),
    )
    emu = ChipEmulator(EmulatorConfig(rows=42, cols=128, seed=5, device=device))
    with EmulatorTcpServer(emu) as srv:
        code, out = run("--algorithm", "cttv2", "--backend", f"serial+{srv.url}#limits=board",
                        "--epochs", "1", *FAST, "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    noise = TrainingReport.load(tmp_path / "r.json").c_pulse_noise
    assert set(noise) == {"0", "2"}
    assert all(v == pytest.approx(c2c, rel=0.15) for v in noise.values()), noise
