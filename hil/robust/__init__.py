"""Robust inference under device variation: Lipschitz regularization, RL-placed error compensation.

CorrectNet (Eldebiky et al., DATE 2023) on the ``CrossbarBackend`` stack; see docs/robust.md.

- :mod:`~hil.robust.variation`: log-normal / additive programming variation and read noise.
- :mod:`~hil.robust.montecarlo`: fast Monte-Carlo evaluation, vectorized over chips.
- :mod:`~hil.robust.lipschitz`: orthogonal, spectral and variation-Lipschitz penalties.
- :mod:`~hil.robust.compensation`: digital compensation blocks, their training and overhead.
- :mod:`~hil.robust.placement`: REINFORCE placement agent and baselines.
- :mod:`~hil.robust.deploy`: programming a model into backends with ``program()``.
- :mod:`~hil.robust.pipeline`: the whole pipeline on digits (``hil robust``).
"""

from hil.robust.analog import DigitalModule, analog_layers
from hil.robust.compensation import (
    Compensated,
    CompensationBlock,
    CompensationConfig,
    Overhead,
    TrainCompensationConfig,
    add_compensation,
    overhead,
    train_compensation,
)
from hil.robust.deploy import (
    DeployConfig,
    DeployedModel,
    backend_monte_carlo_accuracy,
    deploy_to_backends,
    simulated_factory,
)
from hil.robust.lipschitz import (
    LipschitzConfig,
    LipschitzRegularizer,
    layer_spectral_norms,
    operator_norm,
)
from hil.robust.montecarlo import (
    MCResult,
    accuracy_vs_sigma,
    monte_carlo_accuracy,
    monte_carlo_view,
)
from hil.robust.pipeline import CorrectNetConfig, CorrectNetReport, format_table, run_correctnet
from hil.robust.placement import (
    AgentConfig,
    PlacementProblem,
    ReinforcePlacementAgent,
    greedy_placement,
    no_placement,
    uniform_placement,
)
from hil.robust.variation import VariationConfig, program_with_variation, sample_programmed_weights

__all__ = [
    "AgentConfig",
    "Compensated",
    "CompensationBlock",
    "CompensationConfig",
    "CorrectNetConfig",
    "CorrectNetReport",
    "DeployConfig",
    "DeployedModel",
    "DigitalModule",
    "LipschitzConfig",
    "LipschitzRegularizer",
    "MCResult",
    "Overhead",
    "PlacementProblem",
    "ReinforcePlacementAgent",
    "TrainCompensationConfig",
    "VariationConfig",
    "accuracy_vs_sigma",
    "add_compensation",
    "analog_layers",
    "backend_monte_carlo_accuracy",
    "deploy_to_backends",
    "format_table",
    "greedy_placement",
    "layer_spectral_norms",
    "monte_carlo_accuracy",
    "monte_carlo_view",
    "no_placement",
    "operator_norm",
    "overhead",
    "program_with_variation",
    "run_correctnet",
    "sample_programmed_weights",
    "simulated_factory",
    "train_compensation",
    "uniform_placement",
]
