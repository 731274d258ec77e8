"""Versioned training checkpoints, written atomically.

A checkpoint is one ``torch.save`` file (loaded with ``weights_only=True``)::

    {"format": "crossbar-hil checkpoint", "schema_version": "1.0",
     "controller": TrainingController.state_dict(), "loop": {...fit's position...}}

It is written to a temporary file in the target folder, flushed to disk and
renamed over the old one, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hil.config import atomic_write

CHECKPOINT_FORMAT = "crossbar-hil checkpoint"
CHECKPOINT_VERSION = "1.0"


def save_checkpoint(path: str | os.PathLike[str], controller: Any, loop: dict[str, Any] | None = None) -> Path:
    """Write ``controller.state_dict()`` and the loop position ``loop`` to ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "schema_version": CHECKPOINT_VERSION,
        "controller": controller.state_dict(),
        "loop": dict(loop or {}),
    }
    return atomic_write(path, lambda fh: torch.save(payload, fh), binary=True)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; ``ValueError`` names the file on failure."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a crossbar-hil checkpoint")
    found = str(payload.get("schema_version", "?"))
    if found.split(".")[0] != CHECKPOINT_VERSION.split(".")[0]:
        raise ValueError(
            f"{path}: checkpoint schema_version {found!r} is not readable by this release "
            f"(expected {CHECKPOINT_VERSION})"
        )
    return payload
