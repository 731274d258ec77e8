"""MVM-level validation: the same test vectors on two backends, comparing output error distributions.

Procedure (:func:`validate_mvm`), identical on both backends:

1. read the array as it is (``read(n_reads)``: the **start state**), draw a target
   weight matrix ``T`` (seeded, uniform in ``+-target_scale`` of the weight range) and
   program it with the backend's write-verify (``program(T, tol, max_iter)``);
2. read the weights back (``read(n_reads)``): the **weight error** ``W_read - T``;
3. apply the same seeded test vectors ``x`` (uniform in [-1, 1]) ``repeats``
   times: the **output error** ``y - x T^T`` (programming error + read noise +
   DAC/ADC), and the **output noise**, half the difference of two repeats
   divided by sqrt 2 (read noise alone).

Statistics (the same rule as for measurement files: ``value <= margin + allowance``,
the allowance ``z`` bootstrap standard errors resampling the output lines, i.e.
the rows of ``W``, because one row's programming errors are shared by every
output of that line):

======================  ==============================================================
``mvm_error_std``       ``|std_c / std_r - 1|`` of the output error
``mvm_error_mean``      ``|mean_c - mean_r| / std_r`` of the output error (bias)
``mvm_error_ks``        two-sample KS D of the output errors (allowance: permutation
                        null over output lines, 99th percentile)
``mvm_noise_std``       ``|std_c / std_r - 1|`` of the repeat-to-repeat output noise
``weight_error_std``    ``|std_c / std_r - 1|`` of the programmed-weight error
======================  ==============================================================

**Start both backends from the same state.**  Write-verify stops each device
somewhere inside ``+-tol`` of its target, and where inside depends on the path it
took: on the ENODe device of ``examples/validation_loop.py`` one chip programmed
from weight 0 and from the bottom of its range (where a characterization protocol
ending with down pulses leaves it) differs in ``weight_error_std`` by far more than
its 15 % margin (measured in docs/validation.md, "MVM and training level").  The report records each side's start state
(``start_weight_mean``, ``start_weight_std``) and warns when the means differ by
more than ``program_tol``; :func:`hil.validation.loop.run_loop` runs the MVM test on
the simulator it characterized, so both sides have the same pulse history.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from scipy import stats as sps

from hil.backend import CrossbarBackend, ProgramReport
from hil.config import HilModel, VersionedFile
from hil.validation.report import StatisticResult
from hil.validation.statistics import ks_null

MVM_REASONS: dict[str, str] = {
    "error_std": (
        "15 %: the output error std sets the effective MVM noise that training and inference "
        "see; TTv2 tolerates ~10x changes of read noise, so 15 % does not change a conclusion, "
        "and it matches the read-noise margin of the measurement comparison."
    ),
    "error_mean": (
        "0.1 error std: a bias below a tenth of the error spread is invisible next to it."
    ),
    "error_ks": "D 0.10, as for the step distributions: shape differences beyond mean and std.",
}


class MvmValidationConfig(HilModel):
    """Settings of the MVM-level comparison (the same on both backends)."""

    n_vectors: int = Field(256, ge=8, description="test vectors per repeat")
    repeats: int = Field(2, ge=2, description="forward passes of the same vectors (noise from repeats)")
    target_scale: float = Field(
        0.5, gt=0, le=1, description="target weights uniform in +- this fraction of each backend's range"
    )
    program: bool = Field(True, description="program the target first (False: compare the arrays as they are)")
    program_tol: float = Field(0.05, gt=0, description="write-verify tolerance, normalized weight units")
    program_max_iter: int = Field(50, ge=0)
    n_reads: int = Field(4, ge=1, description="reads averaged for the weight read-back")
    seed: int = 0
    z: float = Field(3.0, ge=0)
    n_bootstrap: int = Field(200, ge=20)
    n_permutations: int = Field(200, ge=20)
    margin_error_std: float = Field(0.15, ge=0, description=MVM_REASONS["error_std"])
    margin_error_mean: float = Field(0.10, ge=0, description=MVM_REASONS["error_mean"])
    margin_error_ks: float = Field(0.10, ge=0, le=1, description=MVM_REASONS["error_ks"])


class MvmSide(HilModel):
    """What one backend did."""

    name: str
    rows: int
    cols: int
    program: ProgramReport | None = None
    start_weight_mean: float | None = Field(
        None, description="mean weight read before programming (normalized units; None: not programmed)")
    start_weight_std: float | None = Field(
        None, description="std over the devices of the weight read before programming (normalized units)")
    error_mean: float
    error_std: float
    noise_std: float
    weight_error_std: float


class MvmValidationReport(VersionedFile):
    """Result of :func:`validate_mvm` (JSON, ``schema_version``)."""

    SCHEMA_VERSION = "1.1"
    schema_version: str = "1.1"
    kind: Literal["mvm"] = "mvm"
    passed: bool
    n_failed: int
    reference: MvmSide
    candidate: MvmSide
    statistics: list[StatisticResult]
    config: MvmValidationConfig
    figures: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list, description="1.1: conditions that make a statistic hard to read (start states)")


class MvmData:
    """Raw arrays of one side: errors ``[repeats, n, rows]``, weight errors ``[rows, cols]`` and
    the weights read before programming ``[rows, cols]`` (None when not programmed)."""

    def __init__(self, err: np.ndarray, werr: np.ndarray, report: ProgramReport | None, name: str,
                 start: np.ndarray | None = None) -> None:
        self.err = err
        self.werr = werr
        self.report = report
        self.name = name
        self.start = start

    def side(self) -> MvmSide:
        e = self.err
        noise = (e[0] - e[1]) / np.sqrt(2.0)
        return MvmSide(
            name=self.name, rows=e.shape[2], cols=self.werr.shape[1], program=self.report,
            error_mean=float(e.mean()), error_std=float(e.std()), noise_std=float(noise.std()),
            weight_error_std=float(self.werr.std()),
            start_weight_mean=None if self.start is None else float(self.start.mean()),
            start_weight_std=None if self.start is None else float(self.start.std()),
        )


def test_vectors(cols: int, n: int, seed: int) -> torch.Tensor:
    """The seeded test inputs ``[n, cols]``, uniform in [-1, 1]."""
    g = torch.Generator().manual_seed(int(seed) * 7919 + 11)
    return torch.rand((n, cols), generator=g) * 2.0 - 1.0


def target_weights(rows: int, cols: int, w_min: float, w_max: float, scale: float, seed: int) -> torch.Tensor:
    """The seeded target ``[rows, cols]``: uniform in ``mid +- scale * half-range``."""
    g = torch.Generator().manual_seed(int(seed) * 104729 + 3)
    mid, half = 0.5 * (w_min + w_max), 0.5 * (w_max - w_min)
    return mid + (torch.rand((rows, cols), generator=g) * 2.0 - 1.0) * scale * half


def measure_mvm(backend: CrossbarBackend, config: MvmValidationConfig, name: str = "") -> MvmData:
    """Program the target, read it back and apply the test vectors on ``backend`` (see module doc)."""
    info = backend.info
    target = target_weights(backend.rows, backend.cols, info.w_min, info.w_max, config.target_scale, config.seed)
    target = target.to(backend.device)
    report, start = None, None
    if config.program:
        start = backend.read(config.n_reads).detach().cpu().double().numpy()
        report = backend.program(target, tol=config.program_tol, max_iter=config.program_max_iter,
                                 n_reads=config.n_reads)
    w_read = backend.read(config.n_reads)
    x = test_vectors(backend.cols, config.n_vectors, config.seed).to(backend.device)
    ideal = x @ target.T
    errs = []
    for _ in range(config.repeats):
        y = backend.forward(x)
        errs.append((y - ideal).detach().cpu().double().numpy())
    return MvmData(np.stack(errs), (w_read - target).detach().cpu().double().numpy(), report,
                   name or info.name, start)


def _boot_lines(values: np.ndarray, fn, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Bootstrap of ``fn(values[..., lines])`` resampling the last axis (output lines)."""
    n = values.shape[-1]
    out = np.empty(n_boot)
    for i in range(n_boot):
        out[i] = fn(values[..., rng.integers(0, n, n)])
    return out


def compare_mvm(ref: MvmData, cand: MvmData, config: MvmValidationConfig | None = None) -> MvmValidationReport:
    """Statistics of the module table for two measured sides."""
    cfg = config or MvmValidationConfig()
    if ref.err.shape[1:] != cand.err.shape[1:]:
        raise ValueError(
            f"MVM validation needs the same array shape and vectors on both backends, got outputs "
            f"{list(ref.err.shape[1:])} and {list(cand.err.shape[1:])}"
        )
    rng = np.random.default_rng(cfg.seed)
    z = cfg.z
    results: list[StatisticResult] = []

    def add(name: str, desc: str, value: float, margin: float, allowance: float, r: float, c: float,
            unit: str, note: str = "") -> None:
        thr = margin + allowance
        results.append(StatisticResult(
            name=name, description=desc, value=float(value), margin=margin, allowance=float(allowance),
            threshold=thr, status="pass" if value <= thr else "fail", reference=r, candidate=c,
            unit=unit, note=note,
        ))

    # lines on the last axis for resampling: errors [repeats, n, rows]
    er, ec = ref.err, cand.err
    nr = (er[0] - er[1]) / np.sqrt(2.0)
    nc = (ec[0] - ec[1]) / np.sqrt(2.0)
    for name, a, b, desc in (
        ("mvm_error_std", er, ec, "std of the output error y - x T^T"),
        ("mvm_noise_std", nr, nc, "std of the repeat-to-repeat output noise"),
        ("weight_error_std", ref.werr.T, cand.werr.T, "std of the programmed-weight error (read back)"),
    ):
        sa, sb = float(a.std()), float(b.std())
        if sa <= 0:
            results.append(StatisticResult(name=name, description=desc, margin=cfg.margin_error_std,
                                           status="n/a", reference=sa, candidate=sb, unit="relative",
                                           note="reference std is zero"))
            continue
        ba = np.log(_boot_lines(a, np.std, rng, cfg.n_bootstrap))
        bb = np.log(_boot_lines(b, np.std, rng, cfg.n_bootstrap))
        se = float(np.sqrt(np.var(ba, ddof=1) + np.var(bb, ddof=1)))
        # allowance in ratio units: exp(z se) - 1 around the log ratio
        add(name, desc, abs(sb / sa - 1.0), cfg.margin_error_std, float(np.expm1(z * se)), sa, sb,
            "relative", note="bootstrap over output lines")
    sr = float(er.std())
    if sr > 0:
        mr = _boot_lines(er, np.mean, rng, cfg.n_bootstrap)
        mc = _boot_lines(ec, np.mean, rng, cfg.n_bootstrap)
        se = float(np.sqrt(np.var(mr, ddof=1) + np.var(mc, ddof=1))) / sr
        add("mvm_error_mean", "mean output error (bias)", abs(float(ec.mean()) - float(er.mean())) / sr,
            cfg.margin_error_mean, z * se, float(er.mean()), float(ec.mean()), "reference error std")
    # KS with the permutation null over output lines
    va = er.reshape(-1, er.shape[-1])
    vb = ec.reshape(-1, ec.shape[-1])
    lines_a = np.broadcast_to(np.arange(va.shape[1]), va.shape).ravel()
    lines_b = np.broadcast_to(np.arange(vb.shape[1]) + va.shape[1], vb.shape).ravel()
    values = np.r_[va.ravel(), vb.ravel()]
    units = np.r_[lines_a, lines_b]
    n_u = va.shape[1] + vb.shape[1]
    ranks = np.argsort(rng.random((cfg.n_permutations, n_u)), axis=1)
    null = ks_null(values, units, ranks < va.shape[1])
    d_obs = float(sps.ks_2samp(va.ravel(), vb.ravel()).statistic)
    add("mvm_error_ks", "KS D between the output-error distributions", d_obs, cfg.margin_error_ks,
        float(np.quantile(null, 0.99)), None, None, "D", note="permutation null over output lines")  # type: ignore[arg-type]
    n_failed = sum(r.status == "fail" for r in results)
    warnings = []
    if ref.start is not None and cand.start is not None:
        m_r, m_c = float(ref.start.mean()), float(cand.start.mean())
        if abs(m_c - m_r) > cfg.program_tol:
            warnings.append(
                f"the backends started programming from different states (mean weight {m_r:+.3f} on the "
                f"reference, {m_c:+.3f} on the candidate; they differ by more than program_tol "
                f"{cfg.program_tol}): where write-verify leaves a device inside the tolerance depends on "
                f"the path, so weight_error_std and mvm_error_std compare two procedures, not two devices; "
                f"start both from the same state (e.g. after the same characterization protocol)"
            )
    return MvmValidationReport(
        passed=n_failed == 0, n_failed=n_failed, reference=ref.side(), candidate=cand.side(),
        statistics=results, config=cfg, warnings=warnings,
    )


def validate_mvm(
    reference: CrossbarBackend, candidate: CrossbarBackend, config: MvmValidationConfig | None = None
) -> tuple[MvmValidationReport, MvmData, MvmData]:
    """Run the same MVM test on two backends of one shape and compare them."""
    cfg = config or MvmValidationConfig()
    if reference.shape != candidate.shape:
        raise ValueError(
            f"MVM validation needs backends of one shape, got {reference.shape} and {candidate.shape}"
        )
    ref = measure_mvm(reference, cfg, "reference")
    cand = measure_mvm(candidate, cfg, "candidate")
    return compare_mvm(ref, cand, cfg), ref, cand


def write_mvm_figure(ref: MvmData, cand: MvmData, path: str | os.PathLike[str]) -> Path:
    """Histogram of the output errors and of the weight errors of both backends (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (a, b, title) in zip(
        axes, ((ref.err.ravel(), cand.err.ravel(), "output error y - x T^T"),
               (ref.werr.ravel(), cand.werr.ravel(), "programmed weight error")), strict=True
    ):
        lo, hi = np.percentile(np.r_[a, b], [0.5, 99.5])
        bins = np.linspace(lo, hi, 50)
        ax.hist(a, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(b, bins=bins, density=True, alpha=0.5, label="candidate")
        ax.set_title(title)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
