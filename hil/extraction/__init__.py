"""Model extraction: averaging of TTv2 iterates, export to digital, deployment onto another array.

- :class:`AveragingConfig`, :class:`ModelAverager`: digital or analog (array D) averages
  of C's iterates, attached to a :class:`hil.training.TrainingController` by callbacks.
- :func:`extract`: a plain digital ``nn.Module`` (last iterate or average) with
  :class:`ExtractionInfo`; :func:`save_extracted` / :func:`load_extracted`.
- :func:`read_precise`: repeated reads to a requested precision.
- :func:`pulse_response` / :class:`PulseResponse`: D's measured pulse response (analog variant).
- :func:`write_verify` / :class:`WriteVerifyConfig`: write-verify with the freeze rule.
- :func:`deploy`: write-verify onto fresh arrays (optionally :class:`DifferentialPair` s),
  per-column digital gain (:class:`ColumnPeriphery`), optional :func:`calibrate_columns`;
  :class:`DeployReport`.
- :func:`run_extraction_demo`: the four accuracies of examples/extract_and_deploy.py.
"""

from hil.extraction.averager import (
    AnalogAccumulator,
    AveragingConfig,
    ModelAverager,
    PulseResponse,
    pulse_response,
    zero_shift,
)
from hil.extraction.demo import KEYS, run_extraction_demo, run_extraction_seed, summarize
from hil.extraction.deploy import (
    ColumnPeriphery,
    DeployReport,
    DifferentialPair,
    LayerDeployment,
    calibrate_columns,
    deploy,
)
from hil.extraction.export import (
    ExtractionInfo,
    LayerExtraction,
    PreciseRead,
    extract,
    load_extracted,
    read_precise,
    save_extracted,
)
from hil.extraction.program import WriteVerifyConfig, write_verify

__all__ = [
    "KEYS",
    "AnalogAccumulator",
    "AveragingConfig",
    "ColumnPeriphery",
    "DeployReport",
    "DifferentialPair",
    "ExtractionInfo",
    "LayerDeployment",
    "LayerExtraction",
    "ModelAverager",
    "PreciseRead",
    "PulseResponse",
    "WriteVerifyConfig",
    "calibrate_columns",
    "deploy",
    "extract",
    "load_extracted",
    "pulse_response",
    "read_precise",
    "run_extraction_demo",
    "run_extraction_seed",
    "save_extracted",
    "summarize",
    "write_verify",
    "zero_shift",
]
