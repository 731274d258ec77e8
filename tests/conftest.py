"""Shared pytest fixtures and options (no hardware needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--serial-url", default=None, help="pyserial URL of a real test-chip board")
    parser.addoption("--visa-resource", default=None, help="VISA resource or bench config of a real bench")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip with a message when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"measured data not found at {SHARED_DATA} (shared/ beside the checkout)")
    return SHARED_DATA
