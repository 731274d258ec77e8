"""``bench:CONFIG.yaml`` from the command line, with the example file documented in docs/bench.md."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hil.characterization.protocol import PulseProtocol
from hil.cli.main import cli
from hil.device_model import DeviceModel, SoftBoundsStep
from hil.drivers.bench import BenchConfig, BenchEmulator

DOC = Path(__file__).resolve().parents[1] / "docs" / "bench.md"
CLEAN = DeviceModel(name="clean-softbounds", step=SoftBoundsStep(dw_up=0.1, dw_down=0.1))


def documented_config() -> BenchConfig:
    """The YAML block after ``<!-- example-bench-yaml -->`` in docs/bench.md."""
    text = DOC.read_text()
    m = re.search(r"<!-- example-bench-yaml -->\s*```yaml\n(.*?)```", text, re.S)
    assert m is not None, "docs/bench.md lost its example BENCH.yaml block"
    return BenchConfig.model_validate(yaml.safe_load(m.group(1)))


def test_documented_example_is_a_valid_bench_file(tmp_path: Path) -> None:
    cfg = documented_config()
    assert (cfg.rows, cfg.cols) == (4, 8) and not cfg.arm_on_open and not cfg.dry_run
    assert BenchConfig.load(cfg.save(tmp_path / "bench.yaml")) == cfg


def test_hil_info_shows_the_bench_capabilities_in_a_dry_run(tmp_path: Path) -> None:
    path = documented_config().save(tmp_path / "bench.yaml")
    r = CliRunner().invoke(cli, ["info", "--backend", f"bench:{path}?dry_run=1", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (info["kind"], info["rows"], info["cols"]) == ("bench", 4, 8)
    assert info["parallel_update"] is False and info["transposed_read"] is False
    assert info["details"]["dry_run"] is True and info["details"]["commands_recorded"] > 0
    r = CliRunner().invoke(cli, ["info"])
    assert "bench:" in r.output
    r = CliRunner().invoke(cli, ["info", "--backend", f"bench:{tmp_path / 'missing.yaml'}"])
    assert r.exit_code != 0 and "missing.yaml" in r.output


def test_hil_characterize_on_the_emulated_bench(tmp_path: Path) -> None:
    """``hil characterize --backend bench:BENCH.yaml``: shape from the channel map, mapping from the file."""
    cfg = documented_config()
    with BenchEmulator.from_config(cfg, CLEAN, initial_weight=-0.5) as emu:
        data = cfg.with_resources(emu.resources).model_dump(mode="json")
        data["arm_on_open"] = True  # the characterization pulses
        bench = BenchConfig.model_validate(data).save(tmp_path / "bench.yaml")
        protocol = PulseProtocol(n_up=2, n_down=2, cycles=1).save(tmp_path / "protocol.json")
        out = tmp_path / "pulse_response.csv"
        r = CliRunner().invoke(cli, ["characterize", "--backend", f"bench:{bench}", "--protocol", str(protocol),
                                     "-o", str(out), "--no-progress"])
        assert r.exit_code == 0, r.output
        assert "BenchCrossbar 4x8" in r.output and "the backend's mapping" in r.output
        final = emu.true_conductances()
        assert emu.stats.out_of_limit == [] and emu.stats.hot_switches == 0
    with out.open() as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert len(rows) == 4 * 32
    last = {r["device"]: float(r["conductance"]) for r in rows[-32:]}
    assert len(last) == 32
    # the last read (after 2 up and 2 down pulses) is the emulator's final state, in siemens
    for i in range(4):
        for j in range(8):
            assert last[f"r{i}c{j}"] == pytest.approx(float(final[i, j]), rel=1e-3)
