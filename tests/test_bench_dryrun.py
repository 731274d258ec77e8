"""BenchCrossbar in dry-run mode: nothing opened, nothing sent, every command recorded, same refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hil.backends import open_backend
from hil.device_model import DeviceModel, SoftBoundsStep
from hil.drivers.bench import BenchConfig, BenchCrossbar, BenchEmulator
from hil.safety import NotArmedError, SafetyError

CONFIG = Path(__file__).parent / "bench_sim" / "bench_emulated.yaml"
CLEAN = DeviceModel(name="clean-softbounds", step=SoftBoundsStep(dw_up=0.1, dw_down=0.1))
MIXED = torch.tensor([[1, 2, 3, 0], [0, -1, -2, 5], [0, 0, 0, 0], [4, 4, 4, -4]])
UNREACHABLE = {  # TEST-NET-1 addresses: a dry run must never try them
    "smu": "TCPIP::192.0.2.1::5025::SOCKET",
    "matrix": "TCPIP::192.0.2.2::5025::SOCKET",
    "pulse_generator": "TCPIP::192.0.2.3::5025::SOCKET",
}


@pytest.fixture
def config() -> BenchConfig:
    return BenchConfig.load(CONFIG).with_resources(UNREACHABLE)


@pytest.fixture
def no_visa(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run opened a VISA resource: {args}")

    monkeypatch.setattr("hil.drivers.bench.crossbar.open_visa_resource", refuse)


def test_dry_run_opens_and_sends_nothing(config: BenchConfig, no_visa: None) -> None:
    xb = BenchCrossbar(config, dry_run=True, arm=True)
    configure = list(xb.dry_run_commands)
    assert ("smu", "smua.source.limiti = 1.000000e-04") in configure
    assert ("pulse", "SOUR1:VOLT:LIM:HIGH 2.000000e+00") in configure
    assert ("matrix", 'channel.open("allslots") print(channel.getclose("allslots"))') in configure
    w = xb.read()  # nothing is measured: NaN, but every routing and SMU command is recorded
    assert w.shape == (4, 4) and torch.isnan(w).all()
    n_read = len(xb.dry_run_commands) - len(configure)
    assert n_read == 2 * 16 + 3
    xb.pulse(MIXED)
    xb.update(torch.randn(2, 4), torch.randn(2, 4), lr=0.05)
    info = xb.info
    assert info.details["dry_run"] is True and info.details["commands_recorded"] == len(xb.dry_run_commands)
    assert xb.commands_sent == 0
    before = len(xb.dry_run_commands)
    xb.close()  # the safe state is recorded too
    tail = xb.dry_run_commands[before:]
    assert ("pulse", "OUTP1 OFF") in tail and ("smu", "smua.source.output = smua.OUTPUT_OFF") in tail
    assert ("matrix", 'channel.open("allslots") print(channel.getclose("allslots"))') in tail
    assert "dry_run=True" in repr(xb)


def _sent(xb: BenchCrossbar) -> dict[str, list[bytes]]:
    return {inst.name: [sent for sent, _ in inst.link.log] for inst in xb._instruments()}


def test_dry_run_records_exactly_what_a_real_run_sends(config: BenchConfig) -> None:
    """Same operations, dry and against the emulator: the same bytes, instrument by instrument."""

    def session(xb: BenchCrossbar) -> dict[str, list[bytes]]:
        xb.read()
        xb.pulse(MIXED)
        xb.update(torch.tensor([[1.0, -0.5, 0.0, 0.25]]), torch.tensor([[0.5, -1.0, 0.2, 0.0]]), lr=0.4)
        return {inst.name: [sent for sent, _ in inst.link.log] for inst in xb._instruments()}

    with BenchCrossbar(config, dry_run=True, arm=True) as dry:
        dry_sent = session(dry)
    with BenchEmulator.from_config(config, CLEAN) as emu:
        with BenchCrossbar(config.with_resources(emu.resources), arm=True) as real:
            real_sent = session(real)
            assert real.commands_sent == sum(len(v) for v in real_sent.values())
    assert dry_sent == real_sent
    assert sum(len(v) for v in dry_sent.values()) > 100


def test_dry_run_refuses_exactly_like_a_real_run(config: BenchConfig, no_visa: None) -> None:
    xb = BenchCrossbar(config, dry_run=True)
    n = len(xb.dry_run_commands)
    with pytest.raises(NotArmedError):
        xb.pulse(torch.ones(4, 4, dtype=torch.int64))
    xb.arm()
    counts = torch.zeros(4, 4, dtype=torch.int64)
    counts[2, 1] = 101
    with pytest.raises(SafetyError, match="101"):
        xb.pulse(counts)
    with pytest.raises(SafetyError, match="update"):
        xb.update(torch.ones(1, 4), torch.ones(1, 4), lr=20.0)
    with pytest.raises(SafetyError):
        xb.smu.source_voltage = 0.6
    with pytest.raises(SafetyError):
        xb.pulser.high_level = 2.5
    with pytest.raises(SafetyError, match="shorted"):
        xb.matrix.route(["1A01", "1C01"])
    assert len(xb.dry_run_commands) == n  # nothing recorded for any refusal
    assert xb.guard.armed  # refusals are not errors inside an operation: no safe state
    xb.close()


def test_dry_run_from_the_file_and_the_spec(config: BenchConfig, tmp_path: Path, no_visa: None) -> None:
    data = config.model_dump(mode="json")
    data["dry_run"] = True
    path = BenchConfig.model_validate(data).save(tmp_path / "dry.yaml")
    with BenchCrossbar(path) as xb:
        assert xb.dry_run and xb.dry_run_commands
    plain = config.save(tmp_path / "plain.yaml")
    with open_backend(f"bench:{plain}?dry_run=1") as xb:
        assert isinstance(xb, BenchCrossbar) and xb.dry_run
    with pytest.raises(ValueError, match="unknown option"):
        open_backend(f"bench:{plain}?dryrun=1")
    with pytest.raises(ValueError, match="no VISA resource"):
        BenchCrossbar(config, dry_run=True, resources={"smu": object()})
