"""Input checks shared by every backend: shape, dtype, device, finiteness.

Each check raises ``ValueError`` with a message that says what was expected,
what was found and which argument it was.
"""

from __future__ import annotations

import math

import torch


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN/inf in ``t``.  Fast path: a finite sum proves it (a NaN or inf makes the sum
    non-finite); only a non-finite sum (a NaN/inf, or an overflow of huge values) is
    checked element by element."""
    if t.numel() == 0 or math.isfinite(float(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def check_vectors(
    t: object,
    name: str,
    length: int,
    *,
    device: torch.device,
    where: str,
) -> tuple[torch.Tensor, bool]:
    """Validate a batch of vectors ``[batch, length]`` or a single vector ``[length]``.

    Returns the tensor as 2-D and whether the input was 1-D (so the caller can
    squeeze its result back).
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{where}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.device.type != device.type or (
        device.index is not None and t.device.index is not None and t.device.index != device.index
    ):
        raise ValueError(f"{where}: {name} is on {t.device}, the backend is on {device}")
    if t.dim() not in (1, 2) or t.shape[-1] != length:
        raise ValueError(
            f"{where}: {name} must have shape [batch, {length}] or [{length}], got {list(t.shape)}"
        )
    if not _all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{where}: {name} contains {bad} NaN/inf value(s)")
    squeeze = t.dim() == 1
    return (t.unsqueeze(0) if squeeze else t), squeeze


def check_matrix(
    t: object,
    name: str,
    shape: tuple[int, int],
    *,
    device: torch.device,
    where: str,
    integer: bool = False,
) -> torch.Tensor:
    """Validate a ``rows x cols`` matrix (weights, or integer pulse counts when ``integer``)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if integer:
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{where}: {name} must be an integer tensor, got dtype {t.dtype}")
    elif not t.is_floating_point():
        raise ValueError(f"{where}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.device.type != device.type:
        raise ValueError(f"{where}: {name} is on {t.device}, the backend is on {device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{where}: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if not integer and not _all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{where}: {name} contains {bad} NaN/inf value(s)")
    return t


def check_scalar(value: object, name: str, *, where: str, positive: bool = False) -> float:
    """Validate a finite real scalar (a learning rate, a tolerance)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where}: {name} must be a scalar, got shape {list(value.shape)}")
        value = float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{where}: {name} must be > 0, got {value}")
    return value
