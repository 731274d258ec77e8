"""Backend-spec factory for ``serial`` specs (see :mod:`hil.backends`).

=============================================  ==========================================
``serial:///dev/ttyUSB0``                      a board on a USB-serial port
``serial+socket://127.0.0.1:PORT``             a board (or ``hil emulator``) on TCP
``serial+xbarsim://NAME?rows=16&cols=16``      an in-process emulator
=============================================  ==========================================

Options go after ``#`` (never to pyserial): ``#limits=PATH.json`` (a
:class:`~hil.safety.SafetyLimits` JSON file) or ``#limits=board`` (adopt the
board's hard limits explicitly), ``&window=ROW0,COL0``, ``&dry_run=1``.  The
``limits=`` keyword of :func:`open_serial` (a SafetyLimits, a path or
``"board"``) does the same.  Without limits the spec is refused: a real backend
needs them.  ``rows``/``cols`` select a window of that size (default: the whole
array).
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from hil.drivers.chip.link import ChipLink
from hil.drivers.chip.protocol import Window
from hil.drivers.chip.serial_crossbar import SerialCrossbar, SerialCrossbarConfig, WindowAllocator
from hil.safety import SafetyLimits


def _limits(value: Any, spec: str) -> SafetyLimits | str:
    if isinstance(value, SafetyLimits) or value == "board":
        return value
    if isinstance(value, dict):
        return SafetyLimits.model_validate(value)
    path = Path(str(value))
    if not path.exists():
        raise ValueError(f"serial backend {spec!r}: limits file {path} does not exist")
    try:
        return SafetyLimits.model_validate(json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"serial backend {spec!r}: {path} is not a SafetyLimits JSON file: {exc}") from None


def _parse(rest: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, str], SafetyLimits | str, bool]:
    """``(url, options, limits, dry_run)`` of a serial spec's ``rest``; pops ``limits`` and
    ``dry_run`` from ``kwargs``."""
    url, _, fragment = rest.partition("#")
    if not url:
        raise ValueError("serial backend spec needs a port: serial:///dev/ttyUSB0, serial+socket://host:port, ...")
    opts = {k: v[-1] for k, v in urllib.parse.parse_qs(fragment, keep_blank_values=True).items()}
    unknown = set(opts) - {"limits", "window", "dry_run"}
    if unknown:
        raise ValueError(f"serial backend {rest!r}: unknown option(s) {sorted(unknown)} (known: limits, window, dry_run)")
    limits = kwargs.pop("limits", None) or opts.get("limits")
    if limits is None:
        raise ValueError(
            f"serial backend {rest!r} needs safety limits: add '#limits=LIMITS.json' (a SafetyLimits "
            "file) or '#limits=board' to the spec, or pass limits=SafetyLimits(...)"
        )
    dry_run = bool(kwargs.pop("dry_run", False)) or opts.get("dry_run", "0") in ("1", "true", "yes")
    return url, opts, _limits(limits, rest), dry_run


def open_serial(
    rest: str, rows: int | None = None, cols: int | None = None, **kwargs: Any
) -> SerialCrossbar:
    """``rest`` is a pyserial URL (after ``serial+`` / ``serial://``), options after ``#``."""
    url, opts, limits, dry_run = _parse(rest, kwargs)
    config = kwargs.pop("config", None)
    if config is not None and not isinstance(config, SerialCrossbarConfig):
        config = SerialCrossbarConfig.model_validate(config)
    role = kwargs.pop("role", "")
    if kwargs:
        raise ValueError(f"serial backend: unexpected keyword(s) {sorted(kwargs)}")
    window = None
    if rows is not None or cols is not None or "window" in opts:
        r0, c0 = 0, 0
        if "window" in opts:
            try:
                r0, c0 = (int(v) for v in opts["window"].split(","))
            except ValueError:
                raise ValueError(f"serial backend {rest!r}: window must be ROW0,COL0, got {opts['window']!r}") from None
        if rows is None or cols is None:
            raise ValueError("serial backend: give both rows and cols to select a window")
        window = Window(r0, c0, int(rows), int(cols))
    return SerialCrossbar(url, limits, window=window, config=config, dry_run=dry_run, role=role)


def open_serial_allocator(rest: str, config: SerialCrossbarConfig | None = None, **kwargs: Any) -> WindowAllocator:
    """One link to the board of a serial spec and a :class:`WindowAllocator` on it: an array
    factory ``(rows, cols, role) -> SerialCrossbar`` that packs every array the training
    controller asks for into non-overlapping windows of the board's one array.  The spec's
    ``window`` option does not apply (the allocator places the windows)."""
    url, opts, limits, dry_run = _parse(rest, kwargs)
    if "window" in opts:
        raise ValueError(f"serial backend {rest!r}: the training arrays are placed by the allocator; drop '&window='")
    if kwargs:
        raise ValueError(f"serial backend: unexpected keyword(s) {sorted(kwargs)}")
    config = config or SerialCrossbarConfig()
    link = ChipLink.open(url, limits, config.link, dry_run=dry_run)
    return WindowAllocator(link, config)
