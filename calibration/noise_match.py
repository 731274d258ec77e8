"""Noise terms that make a free-running replay as spread as the measurement
(``hil calibrate --noise-match steps``, the default).

The fit estimates the noise terms (cycle-to-cycle write noise ``c2c``, read noise and
the write-noise offset) by the likelihood of a Kalman filter, which predicts every read
from the reads before it.  Where the mean model misses something the filter sees it as
noise: a jump, a device whose law differs from the pooled one.  A simulator replays the
pulses free-running, and applies that noise to *every* pulse; its per-pulse changes are
then more spread than the measured ones.  When the mean model is right the two agree
(the round-trip data, the HfO2 file), and nothing is changed.

The rule: replay the fitting rows on the simulator (each contiguous run of a device, a
segment of :meth:`MeasurementSet.segment_starts`, starting at its measured read, as
``hil characterize --replay``) with the likelihood's noise terms and with
no noise, and scale those terms by one factor ``kappa`` so that the pooled variance of the
per-pulse change (range-normalized, up and down each about its own mean) matches the
measured one.  The variance is about quadratic in the noise scale,
``V(kappa) = V(0) + kappa^2 (V(1) - V(0))``, which gives ``kappa``.  It is applied only
where it differs from 1 by more than two standard errors (batch means along the
measurement, so that correlated steps do not understate them); a read noise measured from
repeated reads (polarity 0) is a measurement and is never scaled.

Units: ``kappa`` is dimensionless; variances are of the per-pulse conductance change in
units of each device's measured range (squared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hil.calibration.compare import device_ranges, previous_rows
from hil.calibration.mapping import Mapping
from hil.calibration.measurements import MeasurementSet
from hil.calibration.simreplay import replay_copies
from hil.device_model import DeviceModel, TableStep

COPIES = 8  # replayed copies of every device (the step variance pools copies x steps)
SIGNIFICANCE = 2.0  # kappa^2 is applied where |kappa^2 - 1| exceeds this many standard errors
BATCHES = 20  # batch means for the standard errors


@dataclass
class NoiseMatch:
    """What the noise match measured and did (variances in units of the device range^2)."""

    applied: bool
    kappa: float
    kappa_se: float
    measured_var: float
    replayed_var_likelihood: float
    replayed_var_noise_free: float
    steps: int
    scaled: list[str] = field(default_factory=list)
    likelihood: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": "noise terms x kappa so that a free-running replay of the fitting rows has the measured "
            "variance of the per-pulse change (applied where kappa^2 differs from 1 by > 2 standard errors)",
            "applied": self.applied,
            "kappa": self.kappa,
            "kappa_se": self.kappa_se,
            "measured_var": self.measured_var,
            "replayed_var_likelihood": self.replayed_var_likelihood,
            "replayed_var_noise_free": self.replayed_var_noise_free,
            "steps": self.steps,
            "scaled": self.scaled,
            "likelihood": self.likelihood,
            "reason": self.reason,
        }

    def line(self) -> str:
        """One line for the CLI and the report."""
        head = (f"noise match: measured step variance {self.measured_var:.3g}, replayed "
                f"{self.replayed_var_likelihood:.3g} with the likelihood's noise ({self.replayed_var_noise_free:.3g} "
                f"without noise); kappa {self.kappa:.3f} +- {self.kappa_se:.3f}")
        if self.applied:
            return head + f": {', '.join(self.scaled)} scaled by {self.kappa:.3f}"
        return head + f": not applied ({self.reason})"


def noise_terms(model: DeviceModel) -> dict[str, float]:
    """The model's noise terms (normalized units; ``c2c`` relative to the step)."""
    out = {"c2c": model.variation.c2c, "write_noise": model.variation.write_noise, "read_noise": model.read_noise}
    if isinstance(model.step, TableStep):
        out["table_std_mean"] = float(np.mean([*model.step.up_std, *model.step.down_std]))
    return out


def scale_noise(model: DeviceModel, kappa: float, read: bool = True) -> DeviceModel:
    """``model`` with its write noise (``c2c``, a table's per-node step std, the write-noise
    offset) and, with ``read``, its read noise multiplied by ``kappa`` (>= 0)."""
    if not np.isfinite(kappa) or kappa < 0:
        raise ValueError(f"noise scale must be finite and >= 0, got {kappa}")
    var = model.variation.model_copy(
        update={"c2c": model.variation.c2c * kappa, "write_noise": model.variation.write_noise * kappa}
    )
    update: dict[str, Any] = {"variation": var}
    if read:
        update["read_noise"] = model.read_noise * kappa
    if isinstance(model.step, TableStep):
        update["step"] = model.step.model_copy(
            update={"up_std": [s * kappa for s in model.step.up_std],
                    "down_std": [s * kappa for s in model.step.down_std]}
        )
    return model.model_copy(update=update)


def _step_pairs(ms: MeasurementSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows that end a per-pulse change (a pulsed row after a read of the same run), the
    rows before them, and each row's device range (siemens)."""
    codes, _ = ms.device_codes()
    prev = previous_rows(codes)
    ok = (ms.polarity != 0) & ~ms.segment_starts() & (prev >= 0)
    rows = np.nonzero(ok)[0]
    ranges = device_ranges(ms)
    span = np.array([ranges[d] for d in ms.device[rows]], dtype=np.float64)
    return rows, prev[rows], span


def _centered_squares(dg: np.ndarray, pol: np.ndarray) -> np.ndarray:
    """Squared deviations of the changes from the mean of their polarity."""
    out = np.empty_like(dg)
    for p in (1, -1):
        m = pol == p
        if m.any():
            out[m] = (dg[m] - dg[m].mean()) ** 2
    return out


def _mean_and_se(z: np.ndarray) -> tuple[float, float]:
    """Mean of ``z`` and its standard error by batch means (the steps of a run are correlated)."""
    from hil.calibration.pipeline import batch_means_se  # the pipeline imports this module

    n = len(z)
    if n < 2:
        return float(z.mean()) if n else float("nan"), float("inf")
    return float(z.mean()), batch_means_se(z - z.mean(), BATCHES) / n


def match_step_spread(
    model: DeviceModel,
    ms: MeasurementSet,
    mapping: Mapping,
    *,
    scale_read: bool = True,
    seed: int = 0,
    copies: int = COPIES,
) -> NoiseMatch:
    """Find the noise scale ``kappa`` for ``model`` on the rows of ``ms`` (the fitting rows).

    ``scale_read``: the read noise was fitted (False where it was measured from repeated
    reads: it then stays as it is and only the write noise is matched)."""
    terms = noise_terms(model)
    rows, before, span = _step_pairs(ms)
    scaled = ["c2c" if not isinstance(model.step, TableStep) else "table step std"]
    if model.variation.write_noise > 0:
        scaled.append("write_noise")
    if scale_read and model.read_noise > 0:
        scaled.append("read_noise")

    def none(reason: str, **kw: float) -> NoiseMatch:
        base: dict[str, Any] = {"measured_var": float("nan"), "replayed_var_likelihood": float("nan"),
                                "replayed_var_noise_free": float("nan")}
        base.update(kw)
        return NoiseMatch(applied=False, kappa=1.0, kappa_se=float("nan"), steps=len(rows), scaled=scaled,
                          likelihood=terms, reason=reason, **base)

    pol = ms.polarity[rows]
    if len(rows) < 2 * BATCHES or min((pol == 1).sum(), (pol == -1).sum()) < 2:
        return none(f"{len(rows)} per-pulse changes: too few to measure their spread")
    if model.variation.c2c == 0 and model.variation.write_noise == 0 and not isinstance(model.step, TableStep) and (
        not scale_read or model.read_noise == 0
    ):
        return none("the model has no fitted noise term")

    def z_of(g: np.ndarray) -> np.ndarray:
        return _centered_squares((g[rows] - g[before]) / span, pol)

    v_m, se_m = _mean_and_se(z_of(np.asarray(ms.conductance, dtype=np.float64)))

    def replayed(m: DeviceModel) -> tuple[float, float]:
        reps = replay_copies(m, ms, mapping, copies, seed=seed)
        return _mean_and_se(np.concatenate([z_of(r.conductance) for r in reps]))

    v_1, se_1 = replayed(model)
    v_0, se_0 = replayed(scale_noise(model, 0.0, read=scale_read))
    b = v_1 - v_0
    kw = {"measured_var": v_m, "replayed_var_likelihood": v_1, "replayed_var_noise_free": v_0}
    if not b > 0:
        return none("the noise terms do not spread the replayed steps", **kw)
    if v_m <= v_0:
        return none("the replay is as spread as the measurement without any noise: the mean model's "
                    "steps vary more than the measured ones", **kw)
    k2 = (v_m - v_0) / b
    se_k2 = float(np.sqrt(se_m**2 + (k2 * se_1) ** 2 + ((1 - k2) * se_0) ** 2) / b)
    kappa = float(np.sqrt(k2))
    kappa_se = se_k2 / (2 * kappa)
    out = NoiseMatch(applied=False, kappa=kappa, kappa_se=kappa_se, steps=len(rows), scaled=scaled,
                     likelihood=terms, **kw)
    if abs(k2 - 1) <= SIGNIFICANCE * se_k2:
        out.reason = "within two standard errors of 1: the likelihood's noise reproduces the measured spread"
        return out
    out.applied = True
    return out
