"""Backend-spec factory for ``bench:CONFIG.yaml`` specs (see :mod:`hil.backends`)."""

from __future__ import annotations

from typing import Any

from hil.drivers.bench.config import BenchConfig
from hil.drivers.bench.crossbar import BenchCrossbar


def open_bench(rest: str, rows: int | None = None, cols: int | None = None, **kwargs: Any) -> BenchCrossbar:
    """``bench:BENCH.yaml`` -> a :class:`BenchCrossbar` for that bench configuration.

    The array shape comes from the configuration's channel map; ``rows``/``cols``,
    if given, must match it.  Keyword arguments go to :class:`BenchCrossbar`
    (``arm=True`` arms the safety guard).
    """
    if not rest:
        raise ValueError("bench spec needs a configuration file: 'bench:BENCH.yaml'")
    config = BenchConfig.load(rest)
    for what, want, have in (("rows", rows, config.rows), ("cols", cols, config.cols)):
        if want is not None and int(want) != have:
            raise ValueError(
                f"bench {rest}: {what}={want} requested, but the channel map in the file wires {have} {what}"
            )
    kwargs.pop("seed", None)  # simulated-backend option; a bench has its own seed in the file
    return BenchCrossbar(config, **kwargs)
