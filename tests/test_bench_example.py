"""examples/bench_characterize.py: the --quick run end to end (slow), and its data surviving a dropped instrument."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hil.drivers.bench import BenchConfig, BenchCrossbar, BenchEmulator, InstrumentConnectionLost

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bench_characterize.py"


def _example():
    spec = importlib.util.spec_from_file_location("bench_characterize", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_characterize_quick(tmp_path: Path) -> None:
    module = _example()
    out = tmp_path / "result.json"
    code = module.main(["--quick", "--json", str(out), "--workdir", str(tmp_path / "work")])
    result = json.loads(out.read_text())
    assert set(result) == {"devices", "commands_sent", "fit_relative_error", "out_of_limit_sent"}
    assert result["devices"] == 16
    assert result["out_of_limit_sent"] == 0
    assert result["commands_sent"] > 0
    assert set(result["fit_relative_error"]) >= {"dw_up", "dw_down", "w_min", "w_max"}
    assert all(e <= 0.15 for e in result["fit_relative_error"].values()), result
    assert code == 0


def test_characterization_keeps_what_was_measured_when_the_smu_drops(tmp_path: Path) -> None:
    """The SMU goes away during the third full read: the two reads written stay in the CSV."""
    module = _example()
    data = module.bench_config().model_dump(mode="json")
    for key in ("smu", "matrix", "pulse_generator"):
        data[key]["timeout_s"] = 0.3
    cfg = BenchConfig.model_validate(data)
    csv_path = tmp_path / "pulse_response.csv"
    with BenchEmulator.from_config(cfg, module.HIDDEN, seed=11, initial_weight=-1.0) as emu:
        with BenchCrossbar(cfg.with_resources(emu.resources), arm=True) as xb:
            per_read = xb.rows * xb.cols + 1  # one message per device + one error check
            emu.disconnect("smu", after_commands=2 * per_read + 3)
            with pytest.raises(InstrumentConnectionLost, match="smu") as info:
                module.characterize(xb, csv_path, cycles=1, n_pulses=3)
    partial = info.value.partial_conductances_s
    assert int((~torch.isnan(partial)).sum()) == 3  # the third read's first devices, not lost either
    with csv_path.open() as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert len(rows) == 2 * 16  # the initial read and the read after the first pulse
    assert {int(r["pulse"]) for r in rows} == {0, 1}
    assert all(float(r["conductance"]) > 0 for r in rows)
