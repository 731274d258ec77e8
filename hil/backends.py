"""Open any backend from one spec string, pyvisa-style.

=================================  =====================================================
``sim``                            SimulatedCrossbar with the default preset
``sim:PRESET`` / ``sim:DEVICE.json``  SimulatedCrossbar with a preset or a device-model file
``serial:///dev/ttyUSB0``          a test-chip board over USB-serial (any pyserial URL
``serial+socket://127.0.0.1:PORT`` after ``serial+``: socket://, loop://, xbarsim://, ...)
``bench:BENCH.yaml``               SMU + pulse source + switch matrix (pyvisa)
=================================  =====================================================

The core never imports a driver or the simulator at module level: each scheme
names a factory ``"module:function"`` that is imported only when used, and
drivers register their own schemes with :func:`register_scheme`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hil.backend import CrossbarBackend

BackendFactory = Callable[..., CrossbarBackend]

_SCHEMES: dict[str, str] = {
    "sim": "hil.simulated.factory:open_simulated",
    "serial": "hil.drivers.chip.factory:open_serial",
    "bench": "hil.drivers.bench.factory:open_bench",
}


def register_scheme(scheme: str, factory: str) -> None:
    """Make ``scheme:...`` specs open through ``factory`` (``"package.module:function"``)."""
    _SCHEMES[scheme] = factory


def known_schemes() -> list[str]:
    return sorted(_SCHEMES)


def split_spec(spec: str) -> tuple[str, str]:
    """``"sim:rram.json"`` -> ``("sim", "rram.json")``; ``"serial+socket://h:1"`` -> ``("serial", "socket://h:1")``."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty backend spec")
    if spec.startswith("serial+"):
        return "serial", spec[len("serial+"):]
    if spec.startswith("serial://"):
        return "serial", spec[len("serial://"):]
    scheme, sep, rest = spec.partition(":")
    return scheme, rest if sep else ""


def open_backend(spec: str, rows: int | None = None, cols: int | None = None, **kwargs: Any) -> CrossbarBackend:
    """Open the backend a spec string names; ``rows``/``cols`` size simulated arrays.

    Raises ``ValueError`` naming the known schemes for an unknown one.
    """
    scheme, rest = split_spec(spec)
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ValueError(
            f"unknown backend spec {spec!r}: scheme {scheme!r} is not one of {', '.join(known_schemes())}"
        )
    module, _, attr = target.partition(":")
    factory: BackendFactory = getattr(importlib.import_module(module), attr)
    return factory(rest, rows=rows, cols=cols, **kwargs)
