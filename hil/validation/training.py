"""Training-level validation: the same short training run on two kinds of arrays, comparing learning curves.

:func:`validate_training` trains the digits MLP (64-32-10, :mod:`hil.training.digits`)
with one :class:`~hil.training.TrainingConfig` (TTv2 by default, the tuned
settings of :func:`~hil.training.recommended_config`) for a few epochs and
several seeds, once with arrays from the reference factory and once with arrays
from the candidate factory.  Data, data order, network initialization and
controller seed are identical on both sides for one seed; only the arrays differ.

Statistics (``value <= margin + allowance``; the allowance comes from the
seed-to-seed spread of the runs, pooled over both sides because under "the
arrays behave alike" both sides share it, or from the per-seed differences with
``paired``; ``small_sample`` widens it by ``t_dof / z`` because that spread is
estimated from a few runs):

============================  =========================================================
``final_test_accuracy``       ``|mean_c - mean_r|`` of the test accuracy after the last
                              epoch (allowance ``z`` standard errors)
``learning_curve_loss``       RMS over epochs of the difference of the mean training-loss
                              curves, relative to the reference's mean loss
``learning_curve_accuracy``   RMS over epochs of the difference of the mean test-accuracy
                              curves (accuracy units)
============================  =========================================================

The margins (:data:`TRAINING_REASONS`): 3 accuracy points, a bit above the 2-point
tolerance the TTv2 study uses to call two trainings equal, and 10 % of the loss.

Which training resolves what (docs/validation.md): TTv2 is built to be insensitive
to the device's asymmetry and noise, and tells a constant-step model from the
measured ENODe device only marginally (8 seeds; not with 3); analog SGD
(``algorithm="analog_sgd"``) writes every update onto the devices, and its
learning curve separates them by about 4x the threshold.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from scipy import stats as sps

from hil.config import HilModel, VersionedFile
from hil.validation.report import StatisticResult

TRAINING_REASONS: dict[str, str] = {
    "accuracy": (
        "3 accuracy points: the TTv2 study calls an analog training equal to floating point "
        "within 2 points; a simulator that predicts a chip's accuracy within 3 points (plus "
        "the seed-to-seed error) supports the same conclusions."
    ),
    "loss": "10 % of the reference's mean training loss over the run, as for the step margins.",
}

# A factory maker: seed -> array factory ``(rows, cols, role) -> CrossbarBackend``.
FactoryMaker = Callable[[int], Callable[[int, int, str], Any]]


class TrainingValidationConfig(HilModel):
    """The short training run, repeated on both sides, and the thresholds."""

    algorithm: str = Field("ttv2", description="analog_sgd, tt, ttv2 or cttv2")
    epochs: int = Field(3, ge=1, description="epochs of the digits MLP")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=2)
    train_samples: int | None = Field(None, ge=10, description="use only the first N training samples")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="TrainingConfig fields replacing the recommended ones"
    )
    z: float = Field(3.0, ge=0, description="standard errors of allowance (false-failure rate 0.27 %)")
    paired: bool = Field(
        False,
        description="when both sides ran the same seeds, compare seed by seed: the allowance comes "
        "from the spread of the per-seed differences (shared initialization and data order cancel)",
    )
    small_sample: bool = Field(
        True,
        description="inflate the allowance by t_dof / z (Student t at the same false-failure rate): "
        "the seed-to-seed spread is estimated from a handful of runs",
    )
    margin_accuracy: float = Field(0.03, ge=0, description=TRAINING_REASONS["accuracy"])
    margin_loss: float = Field(0.10, ge=0, description=TRAINING_REASONS["loss"])


class TrainingRun(HilModel):
    """One training run: its learning curve."""

    seed: int
    train_loss: list[float]
    test_accuracy: list[float]
    seconds: float


class TrainingValidationReport(VersionedFile):
    """Result of :func:`validate_training` (JSON, ``schema_version``)."""

    SCHEMA_VERSION = "1.0"
    kind: Literal["training"] = "training"
    passed: bool
    n_failed: int
    reference: list[TrainingRun]
    candidate: list[TrainingRun]
    statistics: list[StatisticResult]
    config: TrainingValidationConfig
    figures: list[str] = Field(default_factory=list)


def run_training(make_factory: FactoryMaker, config: TrainingValidationConfig, progress: bool = False) -> list[TrainingRun]:
    """Train the digits MLP once per seed with arrays from ``make_factory(seed)``."""
    from hil.datasets import load_digits_split
    from hil.nn import convert_to_analog
    from hil.training import TrainingController, digits_network, fit, recommended_config
    from hil.training.digits import OUT_SCALE

    data = load_digits_split()
    x_tr, y_tr = data.x_train, data.y_train
    if config.train_samples is not None:
        x_tr, y_tr = x_tr[: config.train_samples], y_tr[: config.train_samples]
    runs = []
    for seed in config.seeds:
        over = dict(config.overrides)
        over.update(seed=seed, epochs=config.epochs)
        cfg = recommended_config(config.algorithm, "mlp", **over)
        torch.manual_seed(seed)
        model = convert_to_analog(digits_network("mlp"), out_scale=OUT_SCALE["mlp"])
        ctl = TrainingController(model, cfg, make_factory(seed))
        t0 = time.perf_counter()
        res = fit(model, ctl, x_tr, y_tr, x_test=data.x_test, y_test=data.y_test, progress=progress)
        runs.append(TrainingRun(
            seed=seed,
            train_loss=[float(h["train_loss"]) for h in res.history],
            test_accuracy=[float(h["test_accuracy"]) for h in res.history],
            seconds=time.perf_counter() - t0,
        ))
        for _, _, backend in ctl.arrays():
            backend.close()
    return runs


def _curve_stat(
    a: np.ndarray, b: np.ndarray, norm: float, alpha: float, rng: np.random.Generator, paired: bool,
    inflate: bool, draws: int = 4000,
) -> tuple[float, float, int]:
    """(RMS of the mean-curve difference, its null quantile, dof) / norm.

    Unpaired: the null covariance is the run-to-run covariance pooled over both
    sides times ``1/n_a + 1/n_b``; paired (same seeds, same order): the covariance
    of the per-seed differences divided by ``n``.  ``inflate``: the quantile is
    multiplied by ``t_dof(1 - alpha/2) / z(1 - alpha/2)`` (exact for one epoch).
    """
    diff = b.mean(0) - a.mean(0)
    value = float(np.sqrt(np.mean(diff**2))) / norm
    if paired:
        d = b - a
        n = d.shape[0]
        dof = n - 1
        resid = (d - d.mean(0)) / np.sqrt(n * max(dof, 1))
    else:
        dof = a.shape[0] + b.shape[0] - 2
        resid = np.vstack([a - a.mean(0), b - b.mean(0)]) * np.sqrt((1 / a.shape[0] + 1 / b.shape[0]) / max(dof, 1))
    g = rng.standard_normal((draws, resid.shape[0])) @ resid
    q = float(np.quantile(np.sqrt((g * g).mean(1)), 1.0 - alpha)) / norm
    return value, q * _t_factor(alpha, dof, inflate), dof


def _t_factor(alpha: float, dof: int, inflate: bool) -> float:
    """Student-t over normal quantile at two-sided level ``alpha`` (1 without ``inflate``)."""
    if not inflate or dof < 1:
        return 1.0
    return float(sps.t.ppf(1.0 - alpha / 2, dof) / sps.norm.ppf(1.0 - alpha / 2))


def compare_training(
    ref: list[TrainingRun], cand: list[TrainingRun], config: TrainingValidationConfig | None = None
) -> TrainingValidationReport:
    """Statistics of the module table for the runs of both sides."""
    cfg = config or TrainingValidationConfig()
    if len(ref) < 2 or len(cand) < 2:
        raise ValueError("training validation needs at least 2 runs (seeds) per side")
    rng = np.random.default_rng(0)
    alpha = float(2.0 * sps.norm.sf(cfg.z))
    la = np.array([r.train_loss for r in ref])
    lb = np.array([r.train_loss for r in cand])
    aa = np.array([r.test_accuracy for r in ref])
    ab = np.array([r.test_accuracy for r in cand])
    if la.shape[1] != lb.shape[1]:
        raise ValueError(f"runs have {la.shape[1]} and {lb.shape[1]} epochs; they must match")
    results: list[StatisticResult] = []

    def add(name: str, desc: str, value: float, margin: float, allowance: float, r: float, c: float,
            unit: str, note: str = "") -> None:
        thr = margin + allowance
        results.append(StatisticResult(
            name=name, description=desc, value=value, margin=margin, allowance=allowance, threshold=thr,
            status="pass" if value <= thr else "fail", reference=r, candidate=c, unit=unit, note=note,
        ))

    paired = cfg.paired and [r.seed for r in ref] == [r.seed for r in cand]
    how = "paired by seed" if paired else "unpaired"
    fa, fb = aa[:, -1], ab[:, -1]
    if paired:
        dof = fa.size - 1
        spread = float(np.std(fb - fa, ddof=1))
        se = spread / np.sqrt(fa.size)
        spread_note = f"std of the per-seed difference {spread:.3f}"
    else:
        dof = fa.size + fb.size - 2
        spread = float(np.sqrt(((fa.size - 1) * fa.var(ddof=1) + (fb.size - 1) * fb.var(ddof=1)) / dof))
        se = spread * np.sqrt(1 / fa.size + 1 / fb.size)
        spread_note = f"pooled seed-to-seed std {spread:.3f}"
    k = cfg.z * _t_factor(alpha, dof, cfg.small_sample)
    add("final_test_accuracy", "test accuracy after the last epoch", abs(float(fb.mean() - fa.mean())),
        cfg.margin_accuracy, k * float(se), float(fa.mean()), float(fb.mean()), "accuracy",
        note=f"{fa.size} + {fb.size} seeds, {how}; {spread_note}; {dof} dof")
    norm = float(la.mean())
    v, q, dof = _curve_stat(la, lb, norm, alpha, rng, paired, cfg.small_sample)
    add("learning_curve_loss", "training loss per epoch", v, cfg.margin_loss, q, norm, float(lb.mean()),
        "relative", note=f"reference/candidate: mean loss over the run; {how}, {dof} dof")
    v, q, dof = _curve_stat(aa, ab, 1.0, alpha, rng, paired, cfg.small_sample)
    add("learning_curve_accuracy", "test accuracy per epoch", v, cfg.margin_accuracy, q,
        float(aa.mean()), float(ab.mean()), "accuracy", note=f"reference/candidate: mean over the run; {how}, {dof} dof")
    n_failed = sum(r.status == "fail" for r in results)
    return TrainingValidationReport(
        passed=n_failed == 0, n_failed=n_failed, reference=ref, candidate=cand, statistics=results, config=cfg
    )


def validate_training(
    reference: FactoryMaker, candidate: FactoryMaker, config: TrainingValidationConfig | None = None,
    progress: bool = False,
) -> TrainingValidationReport:
    """Run the short training on both sides and compare the learning curves."""
    cfg = config or TrainingValidationConfig()
    ref = run_training(reference, cfg, progress)
    cand = run_training(candidate, cfg, progress)
    return compare_training(ref, cand, cfg)


def simulated_maker(device: Any, periphery: Any = None, bl: int = 31, seed_offset: int = 0) -> FactoryMaker:
    """Factory maker for simulated arrays of ``device`` (a DeviceModel, preset or JSON path).

    ``seed_offset`` shifts the array seeds (the devices drawn, their noise) while
    the training seed stays: two makers with different offsets are two chips of
    one device model.
    """
    from hil.training import simulated_factory

    def make(seed: int) -> Callable[[int, int, str], Any]:
        return simulated_factory(device, periphery, bl=bl, seed=1000 * seed + 17 + 100_003 * seed_offset)

    return make


def write_training_figure(report: TrainingValidationReport, path: str | os.PathLike[str]) -> Path:
    """Learning curves (loss and test accuracy per epoch) of both sides, every seed (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for runs, color, label in ((report.reference, "tab:blue", "reference"),
                               (report.candidate, "tab:orange", "candidate")):
        for i, r in enumerate(runs):
            ep = np.arange(1, len(r.train_loss) + 1)
            axes[0].plot(ep, r.train_loss, color=color, alpha=0.7, label=label if i == 0 else None)
            axes[1].plot(ep, r.test_accuracy, color=color, alpha=0.7, label=label if i == 0 else None)
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("test accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
