"""The top-level API: every name in ``hil.__all__`` resolves, and ``import hil`` loads no
simulator or driver stack (the lazy re-exports load them on first use)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hil


@pytest.mark.parametrize("name", hil.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(hil, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        hil.no_such_thing  # noqa: B018


def test_import_hil_is_light() -> None:
    code = (
        "import sys, hil\n"
        "heavy = [m for m in ('hil.simulated', 'hil.drivers', 'hil.training', 'serial', 'pyvisa')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from hil import SimulatedCrossbar\n"
        "assert 'hil.simulated' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
