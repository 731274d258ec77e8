"""Simulator-to-silicon validation: statistical comparison of two measurement files, MVM and
training-level comparison of two backends, and the closed loop (docs/validation.md).

- :func:`compare_measurements` (``hil validate``): two pulse-response files of one
  protocol, statistic by statistic, against :class:`ValidationThresholds`;
  :class:`ValidationReport` (JSON), :func:`write_report` (Markdown + PNG).
- :func:`validate_mvm`: the same MVM test vectors on two backends.
- :func:`validate_training`: the same short training run (analog SGD, TTv2, ...) on two kinds of arrays.
- :func:`run_loop` (``hil loop``): characterize -> calibrate -> simulate ->
  characterize the simulator -> validate.
- :mod:`hil.validation.replication`: the synthetic study behind the choice of
  replication units (devices, cycles; never single steps) for the allowances.
"""

from hil.validation.compare import STATISTICS, Comparison, compare_measurements
from hil.validation.loop import LoopConfig, LoopResult, run_loop
from hil.validation.measurements import Measurements, UnusableInputError, load_measurements
from hil.validation.mvm import MvmValidationConfig, MvmValidationReport, validate_mvm
from hil.validation.report import StatisticResult, ValidationReport, format_table, write_report
from hil.validation.splits import (
    cycle_settings,
    run_protocols,
    same_setting_groups,
    select_cycles,
    split_cycles,
)
from hil.validation.synthetic import measure_protocol, simulated_measurements
from hil.validation.thresholds import THRESHOLD_REASONS, ValidationThresholds
from hil.validation.training import (
    TrainingValidationConfig,
    TrainingValidationReport,
    simulated_maker,
    validate_training,
)

__all__ = [
    "STATISTICS",
    "THRESHOLD_REASONS",
    "Comparison",
    "LoopConfig",
    "LoopResult",
    "Measurements",
    "MvmValidationConfig",
    "MvmValidationReport",
    "StatisticResult",
    "TrainingValidationConfig",
    "TrainingValidationReport",
    "UnusableInputError",
    "ValidationReport",
    "ValidationThresholds",
    "compare_measurements",
    "format_table",
    "load_measurements",
    "measure_protocol",
    "run_loop",
    "simulated_maker",
    "simulated_measurements",
    "split_cycles",
    "select_cycles",
    "cycle_settings",
    "run_protocols",
    "same_setting_groups",
    "validate_mvm",
    "validate_training",
    "write_report",
]
