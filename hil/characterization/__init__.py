"""Characterization on any backend: pulse protocols and replay of measurement files.

``run_protocol`` and ``replay_to_file`` write the measurement CSV schema of
:mod:`hil.calibration.schema` row by row (``hil characterize``).
"""

from hil.characterization.protocol import PulseProtocol
from hil.characterization.runner import (
    CharacterizationMeta,
    iter_replay,
    meta_path,
    replay_to_file,
    replay_to_set,
    run_protocol,
    set_states,
)

__all__ = [
    "CharacterizationMeta",
    "PulseProtocol",
    "iter_replay",
    "meta_path",
    "replay_to_file",
    "replay_to_set",
    "run_protocol",
    "set_states",
]
