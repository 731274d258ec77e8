"""examples/bench_characterize.py --quick end to end (emulated bench -> CSV -> hil calibrate -> comparison)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bench_characterize.py"


@pytest.mark.slow
def test_bench_characterize_quick(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_characterize", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
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
