"""Backend-spec factory for ``bench:CONFIG.yaml`` specs (see :mod:`hil.backends`)."""

from __future__ import annotations

from typing import Any

from hil.drivers.bench.config import BenchConfig
from hil.drivers.bench.crossbar import BenchCrossbar

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def open_bench(rest: str, rows: int | None = None, cols: int | None = None, **kwargs: Any) -> BenchCrossbar:
    """``bench:BENCH.yaml[?dry_run=1]`` -> a :class:`BenchCrossbar` for that bench configuration.

    The array shape comes from the configuration's channel map; ``rows``/``cols``,
    if given, must match it.  ``?dry_run=1`` opens nothing and records every
    command instead of sending it (as ``dry_run: true`` in the file does).
    Keyword arguments go to :class:`BenchCrossbar` (``arm=True`` arms the safety
    guard, ``dry_run=True``).
    """
    path, _, query = rest.partition("?")
    if not path:
        raise ValueError("bench spec needs a configuration file: 'bench:BENCH.yaml'")
    for option in filter(None, query.split("&")):
        key, _, value = option.partition("=")
        if key != "dry_run" or value.lower() not in _TRUE + _FALSE:
            raise ValueError(
                f"bench {rest!r}: unknown option {option!r} (known: dry_run=1 or dry_run=0)"
            )
        kwargs.setdefault("dry_run", value.lower() in _TRUE)
    config = BenchConfig.load(path)
    for what, want, have in (("rows", rows, config.rows), ("cols", cols, config.cols)):
        if want is not None and int(want) != have:
            raise ValueError(
                f"bench {path}: {what}={want} requested, but the channel map in the file wires {have} {what}"
            )
    kwargs.pop("seed", None)  # simulated-backend option; a bench has its own seed in the file
    return BenchCrossbar(config, **kwargs)
