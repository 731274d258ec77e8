"""examples/ttv2_on_emulated_chip.py: TTv2 through SerialCrossbar on the emulated chip."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ttv2_on_emulated_chip.py"


def _load():
    spec = importlib.util.spec_from_file_location("ttv2_on_emulated_chip", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("h_reset", ["decrement", "measured"])
def test_faulty_emulated_training_loses_and_duplicates_nothing(h_reset: str) -> None:
    """Also with ``h_reset="measured"``, whose read-backs of C are more frames on the link."""
    from hil.datasets import Split, load_digits_split

    ex = _load()
    full = load_digits_split()
    small = Split(full.x_train[:200], full.y_train[:200], full.x_test[:100], full.y_test[:100])
    faults = ex.FAULTY.model_copy(update={"corrupt_request_rate": 0.03, "drop_reply_rate": 0.03})
    r = ex.run_emulated(0, 2, small, faults, zero_shift_cycles=3, zero_shift_reads=2, h_reset=h_reset)
    assert r["audit"]["duplicate_pulses"] == 0 and r["audit"]["lost_pulses"] == 0, r["audit"]
    assert r["audit"]["writes_executed"] == r["audit"]["writes_acknowledged"] > 50
    assert sum(r["faults_injected"].values()) > 10 and r["retries"] > 5
    # one UPDATE per mini-batch and array, one PULSE_BATCH per transfer: ~0.9 frames per sample
    assert 0.5 < r["frames_per_sample"] < 1.5
    up = r["per_sample"]["update"]
    first_sends = up["frames_sent"] - up["retries"] - up["last_seq_queries"]
    assert first_sends == pytest.approx(2 / 10)  # 2 arrays (A1, A2) per batch of 10
    assert 0.0 <= r["accuracy"] <= 1.0


@pytest.mark.slow
def test_quick_run_matches_direct(tmp_path: Path) -> None:
    out = tmp_path / "ttv2.json"
    subprocess.run([sys.executable, str(EXAMPLE), "--quick", "--json", str(out)], check=True, timeout=900)
    data = json.loads(out.read_text())
    assert set(data) == {"direct", "emulated", "emulated_faulty", "duplicate_pulses", "lost_pulses", "frames_per_sample"}
    assert data["duplicate_pulses"] == 0 and data["lost_pulses"] == 0
    assert abs(data["emulated"] - data["direct"]) < 0.05
    assert abs(data["emulated_faulty"] - data["direct"]) < 0.05
    assert data["frames_per_sample"] < 1.0
