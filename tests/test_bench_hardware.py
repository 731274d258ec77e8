"""Against a real bench: ``pytest -m hardware --visa-resource BENCH.yaml`` (or one VISA resource name).

Nothing is armed or pulsed: identification, the configuration with its limits
read back, one full read, and the safe state (relays opened, outputs off,
checked by querying the instruments).  Skipped unless ``--visa-resource`` is
given; not even collected by the default run (``-m 'not slow and not hardware'``).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.hardware


@pytest.fixture
def visa_target(request: pytest.FixtureRequest) -> str:
    target = request.config.getoption("--visa-resource")
    if not target:
        pytest.skip("no bench: give --visa-resource BENCH.yaml (or a VISA resource of a 2600B/707B/33500B)")
    return target


@pytest.fixture
def bench_file(visa_target: str) -> str:
    if not visa_target.endswith((".yaml", ".yml", ".json")):
        pytest.skip(f"--visa-resource {visa_target!r} is one instrument, not a bench file (BENCH.yaml)")
    return visa_target


def test_real_instrument_identifies(visa_target: str) -> None:
    """One resource: ``*IDN?`` answers; a bench file: every instrument answers."""
    if visa_target.endswith((".yaml", ".yml", ".json")):
        from hil.drivers.bench import BenchCrossbar

        with BenchCrossbar(visa_target, arm=False) as xb:
            assert all(xb.identities.values()), xb.identities
        return
    import pyvisa

    rm = pyvisa.ResourceManager()
    res = rm.open_resource(visa_target, read_termination="\n", timeout=5000)
    try:
        assert res.query("*IDN?").strip()
    finally:
        res.close()
        rm.close()


def test_real_bench_reads(bench_file: str) -> None:
    from hil.drivers.bench import BenchCrossbar

    with BenchCrossbar(bench_file, arm=False) as xb:
        w = xb.read()
        assert w.shape == xb.shape and bool(torch.isfinite(w).all())
        assert xb.guard.state_known and xb.full_reads == 1


def test_real_bench_safe_state(bench_file: str) -> None:
    """Route one device and switch the SMU on, then safe_state(): the instruments confirm it."""
    from hil.drivers.bench import BenchCrossbar

    with BenchCrossbar(bench_file, arm=False) as xb:
        mc = xb.config.matrix
        xb.matrix.route([xb.matrix.channel(mc.smu_row, mc.array_rows[0]), xb.matrix.channel(mc.ground_row, mc.array_cols[0])])
        xb.smu.output = True  # at the read voltage, within the limits
        assert xb.safe_state()
        assert xb.matrix.closed_channels() == []
        assert xb.smu.output is False
        if xb.pulser is not None:
            assert xb.pulser.output is False
