"""Training on any CrossbarBackend: analog SGD, Tiki-Taka v1, TTv2 and chopped TTv2.

- :class:`TrainingConfig`: every hyperparameter with unit and default (docs/training.md).
- :class:`TrainingController`: optimizer-style controller; arrays from a factory
  ``(rows, cols, role) -> CrossbarBackend``; all digital state in torch.
- :func:`fit`: training loop with versioned, atomic checkpoints and resume.
- :func:`train_digits`: the digits MLP/CNN on simulated arrays in one call.
"""

from hil.training.checkpoint import load_checkpoint, save_checkpoint
from hil.training.config import ALGORITHMS, TrainingConfig
from hil.training.controller import ArrayFactory, LayerState, TrainingController
from hil.training.digits import (
    DigitsResult,
    digits_device,
    digits_network,
    recommended_config,
    train_digits,
)
from hil.training.factory import array_factory, simulated_factory
from hil.training.loop import FitResult, TrainingInterrupted, evaluate, fit

__all__ = [
    "ALGORITHMS",
    "ArrayFactory",
    "DigitsResult",
    "FitResult",
    "LayerState",
    "TrainingConfig",
    "TrainingController",
    "TrainingInterrupted",
    "array_factory",
    "digits_device",
    "digits_network",
    "evaluate",
    "fit",
    "load_checkpoint",
    "recommended_config",
    "save_checkpoint",
    "simulated_factory",
    "train_digits",
]
