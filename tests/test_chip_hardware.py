"""Against a real test-chip board: run with ``pytest -m hardware --serial-url URL``.

Read-only: INFO, limits read-back, STATUS, READ and MVM.  Nothing is armed or
pulsed; the board's own hard limits are adopted (``limits="board"``) and the
link is closed with SAFE.  Skipped unless ``--serial-url`` is given.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.hardware


@pytest.fixture
def serial_url(request: pytest.FixtureRequest) -> str:
    url = request.config.getoption("--serial-url")
    if not url:
        pytest.skip("no board: give --serial-url (e.g. /dev/ttyUSB0 or socket://host:port)")
    return url


def test_real_board_reads(serial_url: str) -> None:
    from hil.drivers.chip import SerialCrossbar

    with SerialCrossbar(serial_url, "board") as xb:
        info = xb.info
        assert info.rows == xb.board.rows and info.cols == xb.board.cols
        assert xb.link.status().armed is False
        w = xb.read()
        assert w.shape == (info.rows, info.cols) and bool(torch.isfinite(w).all())
        y = xb.forward(torch.zeros(info.cols))
        assert y.shape == (info.rows,) and bool(torch.isfinite(y).all())
        assert xb.traffic.total().timeouts == 0
