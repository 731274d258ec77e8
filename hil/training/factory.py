"""Array factories for :class:`~hil.training.TrainingController`: ``(rows, cols, role) -> backend``.

:func:`simulated_factory` makes :class:`hil.simulated.SimulatedCrossbar` arrays
(imported when called: the core does not depend on the simulator).  Drivers
provide their own factories with the same signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hil.backend import CrossbarBackend
from hil.device_model import DeviceModel


class simulated_factory:  # noqa: N801 - used like a function
    """Make ``SimulatedCrossbar(rows, cols, device=..., periphery=..., update=UpdateConfig(bl=bl), seed=...)``.

    Every call gets its own seed, ``seed + index`` (index = calls so far), so
    the arrays of one run are independent and the whole run is reproducible.

    device:
        Device model, preset name or JSON path, or a mapping role -> one of these
        (e.g. another device for A than for C).
    periphery:
        ``PeripheryConfig`` (or a role mapping); None: the simulator's default.
    bl:
        Bit length of the stochastic pulse trains (``TrainingConfig.bl``).
    created:
        ``(role, backend)`` of every array made, in order.
    """

    def __init__(
        self,
        device: DeviceModel | str | Path | Mapping[str, Any] = "rram-softbounds-20",
        periphery: Any = None,
        *,
        bl: int = 31,
        seed: int = 0,
        torch_device: str = "cpu",
    ) -> None:
        self.device = device
        self.periphery = periphery
        self.bl = int(bl)
        self.seed = int(seed)
        self.torch_device = torch_device
        self.created: list[tuple[str, CrossbarBackend]] = []

    @staticmethod
    def _pick(value: Any, role: str) -> Any:
        if isinstance(value, Mapping):
            if role not in value:
                raise ValueError(f"simulated_factory: no entry for role {role!r} in {sorted(value)}")
            return value[role]
        return value

    def __call__(self, rows: int, cols: int, role: str) -> CrossbarBackend:
        from hil.simulated import SimulatedCrossbar, UpdateConfig

        backend = SimulatedCrossbar(
            rows,
            cols,
            device=self._pick(self.device, role),
            periphery=self._pick(self.periphery, role),
            update=UpdateConfig(bl=self.bl),
            seed=self.seed + len(self.created),
            torch_device=self.torch_device,
        )
        self.created.append((role, backend))
        return backend


def array_factory(
    spec: str,
    *,
    bl: int = 31,
    seed: int = 0,
    device: DeviceModel | str | Path | Mapping[str, Any] | None = None,
    periphery: Any = None,
    torch_device: str = "cpu",
) -> Any:
    """An array factory for a backend spec (:func:`hil.open_backend`'s syntax).

    - ``sim``: :class:`simulated_factory` with ``device`` / ``periphery`` (None: the
      simulator's defaults); ``sim:PRESET`` or ``sim:DEVICE.json``: that device model.
    - ``serial...``: one link to the board and a window allocator on it
      (:func:`hil.drivers.chip.factory.open_serial_allocator`): every array is a window of
      the board's one array; ``bl`` is the board's UPDATE bit length.

    A bench setup (``bench:``) is one array behind a switch matrix, opened whole, with no
    allocator for the several arrays (A and C per layer) training needs: ``ValueError``.
    """
    from hil.backends import split_spec

    scheme, rest = split_spec(spec)
    if scheme == "sim":
        return simulated_factory(rest or device or "rram-softbounds-20", periphery, bl=bl, seed=seed,
                                 torch_device=torch_device)
    if scheme == "serial":
        from hil.drivers.chip.factory import open_serial_allocator
        from hil.drivers.chip.serial_crossbar import SerialCrossbarConfig

        return open_serial_allocator(rest, SerialCrossbarConfig(bl=bl))
    if scheme == "bench":
        raise ValueError(
            f"backend {spec!r}: a bench setup is one array behind a switch matrix, with no allocator "
            "for the several arrays training needs (A and C per layer); train on a sim or serial "
            "backend, and characterize bench devices with 'hil characterize'"
        )
    raise ValueError(f"backend {spec!r}: training needs a sim or serial backend, not scheme {scheme!r}")
