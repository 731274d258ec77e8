"""The validation report: a JSON file (pydantic, ``schema_version``), a Markdown page and PNG figures.

:class:`ValidationReport` is what ``hil validate --json`` writes and what the
loop and the examples read back.  :func:`write_report` writes ``report.md`` and
the figures (matplotlib, Agg backend) into a folder:

- ``trajectories.png``: mean conductance against the position in the cycle,
  reference and candidate overlaid, with +-2 standard errors (from the replicates);
- ``step_vs_state.png``: mean step and within-device step std against the
  state, for up and down pulses, both files overlaid;
- ``step_histograms.png``: the step distributions of the compared state bins
  (up and down), both files overlaid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from hil.config import HilModel, VersionedFile, atomic_write_text
from hil.validation.thresholds import THRESHOLD_REASONS, ValidationThresholds

if TYPE_CHECKING:  # pragma: no cover
    from hil.validation.compare import Comparison

Status = Literal["pass", "fail", "n/a", "insufficient"]
Verdict = Literal["pass", "fail", "insufficient"]


class StatisticResult(HilModel):
    """One compared statistic: its value, the threshold it is held to and the verdict."""

    name: str = Field(description="stable key, e.g. 'step_mean_up'")
    description: str = ""
    value: float | None = Field(None, description="the compared difference (see unit)")
    margin: float = Field(description="accepted difference (documented default, reason in docs/validation.md)")
    allowance: float = Field(0.0, description="sampling error of the comparison itself")
    threshold: float | None = Field(None, description="margin + allowance")
    dof: float | None = Field(
        None, description="degrees of freedom of the allowance (from replication units, Welch-Satterthwaite); "
        "None for the permutation null of KS and where not evaluated",
    )
    status: Status = Field(
        description="pass / fail against the threshold; n/a: the data hold nothing to compare (e.g. d2d with "
        "one device); insufficient: computed, but its sampling error cannot be estimated (one replication unit)"
    )
    reference: float | None = Field(None, description="the reference's own figure, where one exists")
    candidate: float | None = Field(None, description="the candidate's own figure, where one exists")
    unit: str = Field("", description="unit of value (reference and candidate may use another, see note)")
    note: str = ""


class FileSummary(HilModel):
    """What one compared file holds."""

    source: str = ""
    rows: int = 0
    devices: int = 0
    blocks: int = Field(0, description="(device, cycle) pairs")
    up_pulses: int = 0
    down_pulses: int = 0
    reads: int = 0
    resampled_by: Literal["device", "block", "none"] = Field(
        "device", description="replication unit: device, block (a device's cycle) or none (a single unit)"
    )
    units: int = Field(0, description="replication units (devices, or device-cycles)")
    resampling: Literal["bootstrap", "jackknife", "none"] = "bootstrap"

    @model_validator(mode="before")
    @classmethod
    def _level_of_1_0(cls, data: Any) -> Any:
        """Schema 1.0 resampled single rows of a file with few cycles ("row"): one unit now."""
        if isinstance(data, dict) and data.get("resampled_by") == "row":
            data = {**data, "resampled_by": "none"}
        return data


class ValidationReport(VersionedFile):
    """Result of comparing a candidate measurement file with a reference one (``hil validate``)."""

    SCHEMA_VERSION = "1.1"
    kind: Literal["measurements"] = "measurements"
    passed: bool = Field(description="verdict == 'pass'")
    verdict: Verdict = Field(
        "pass", description="fail: a statistic fails; insufficient: none fails but some cannot be judged "
        "(too little replication); pass: every evaluated statistic passes",
    )
    n_failed: int
    n_evaluated: int = Field(description="statistics judged pass or fail")
    n_insufficient: int = Field(0, description="statistics computed but not judged (insufficient replication)")
    reference: FileSummary
    candidate: FileSummary
    statistics: list[StatisticResult]
    conductance_offset_s: float = Field(description="g0: lowest value of the reference mean trajectory")
    conductance_range_s: float = Field(description="R: range of the reference mean trajectory; values are in units of R")
    bin_edges: list[float] = Field(description="inner state-bin edges, units of R above g0")
    thresholds: ValidationThresholds
    seed: int = 0
    warnings: list[str] = Field(default_factory=list)
    figures: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _verdict_of_1_0(cls, data: Any) -> Any:
        """Reports of schema 1.0 have no verdict: it is pass or fail as ``passed`` says."""
        if isinstance(data, dict) and "verdict" not in data and "passed" in data:
            data = {**data, "verdict": "pass" if data["passed"] else "fail"}
        return data

    def statistic(self, name: str) -> StatisticResult:
        for s in self.statistics:
            if s.name == name:
                return s
        raise KeyError(f"no statistic {name!r}; have {[s.name for s in self.statistics]}")

    def failed(self) -> list[str]:
        return [s.name for s in self.statistics if s.status == "fail"]

    def insufficient(self) -> list[str]:
        return [s.name for s in self.statistics if s.status == "insufficient"]


VERDICT_TEXT = {"pass": "PASS", "fail": "FAIL", "insufficient": "INSUFFICIENT REPLICATION"}


def verdict_line(report: ValidationReport) -> str:
    """One line: the verdict and the counts behind it."""
    n_na = len(report.statistics) - report.n_evaluated - report.n_insufficient
    text = (
        f"verdict: {VERDICT_TEXT[report.verdict]}  ({report.n_evaluated - report.n_failed}/{report.n_evaluated} "
        f"evaluated statistics pass"
    )
    if report.n_insufficient:
        text += f", {report.n_insufficient} not judged (insufficient replication)"
    return text + f", {n_na} n/a)"


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}"


def format_table(report: ValidationReport) -> str:
    """The pass/fail table printed by ``hil validate`` (fixed-width text)."""
    head = (f"{'statistic':<20} {'value':>10} {'threshold':>10} {'margin':>8} {'allow':>8} {'dof':>6}  "
            "status  reference -> candidate")
    lines = [head, "-" * len(head)]
    for s in report.statistics:
        ref = f"{_fmt(s.reference)} -> {_fmt(s.candidate)}" if s.reference is not None else ""
        status = "INSUFF" if s.status == "insufficient" else s.status.upper()
        lines.append(
            f"{s.name:<20} {_fmt(s.value):>10} {_fmt(s.threshold):>10} {_fmt(s.margin, 3):>8} "
            f"{_fmt(s.allowance, 3):>8} {_fmt(s.dof, 3):>6}  {status:<6}  {ref}"
        )
    lines.append("-" * len(head))
    lines.append(verdict_line(report))
    return "\n".join(lines)


def markdown(report: ValidationReport) -> str:
    """The report as Markdown (tables, thresholds with their reasons, figure links)."""
    r, c = report.reference, report.candidate
    out = [
        "# Validation report",
        "",
        f"**Verdict: {VERDICT_TEXT[report.verdict]}** "
        f"({report.n_evaluated - report.n_failed} of {report.n_evaluated} evaluated statistics pass"
        + (f"; failed: {', '.join(report.failed())}" if report.failed() else "")
        + (f"; not judged for insufficient replication: {', '.join(report.insufficient())}"
           if report.insufficient() else "")
        + ")",
        "",
        "| file | source | devices | device-cycles | up pulses | down pulses | reads | replication units |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, f in (("reference", r), ("candidate", c)):
        out.append(
            f"| {label} | `{f.source}` | {f.devices} | {f.blocks} | {f.up_pulses} | {f.down_pulses} "
            f"| {f.reads} | {f.units} {f.resampled_by}{'s' if f.units != 1 else ''} ({f.resampling}) |"
        )
    out += [
        "",
        f"Values are in units of the reference's conductance range R = {report.conductance_range_s:.4g} S "
        f"(mean trajectory from {report.conductance_offset_s:.4g} S) unless a unit says otherwise. "
        "A statistic passes when value <= threshold = margin + allowance. The allowance is the "
        "sampling error of the comparison, estimated from the replication units of each file (devices, "
        "else cycles; never single steps): the Student-t quantile for its degrees of freedom (dof) times "
        "the standard error, or the permutation-null quantile of whole units for KS. 'insufficient': "
        "the statistic is computed, but a file holds one unit, so its sampling error cannot be estimated.",
        "",
        "| statistic | value | threshold | margin | allowance | dof | status | reference | candidate | unit | note |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for s in report.statistics:
        out.append(
            f"| {s.name} | {_fmt(s.value)} | {_fmt(s.threshold)} | {_fmt(s.margin, 3)} | {_fmt(s.allowance, 3)} "
            f"| {_fmt(s.dof, 3)} | {s.status} | {_fmt(s.reference)} | {_fmt(s.candidate)} | {s.unit} | {s.note} |"
        )
    if report.warnings:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    if report.figures:
        out += ["", "## Figures", ""]
        for fig in report.figures:
            out += [f"![{Path(fig).stem}]({fig})", ""]
    out += ["", "## Thresholds and their reasons", ""]
    for key, why in THRESHOLD_REASONS.items():
        val = getattr(report.thresholds, key, None)
        out.append(f"- **{key}** = {val}: {why}")
    return "\n".join(out) + "\n"


def write_figures(comp: Comparison, folder: str | os.PathLike[str]) -> list[str]:
    """Write the three PNG figures of a comparison into ``folder``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    ax_ = comp.axis
    g = lambda u: ax_.g0 + np.asarray(u) * ax_.scale  # noqa: E731 - normalized -> siemens
    colors = {"reference": "tab:blue", "candidate": "tab:orange"}

    # trajectories
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(ax_.keys))
    for label, pt in (("reference", comp.ref_point), ("candidate", comp.cand_point)):
        m = g(pt.traj[0]) * 1e6
        ax.plot(x, m, color=colors[label], label=f"{label} (mean)")
        se = comp.standard_error(label, "traj")
        if se is not None:
            se = se * ax_.scale * 1e6
            ax.fill_between(x, m - 2 * se, m + 2 * se, color=colors[label], alpha=0.25, lw=0)
    ax.set_xlabel("position in the cycle (pulse rows, common to both files)")
    ax.set_ylabel("conductance (uS)")
    ax.set_title(f"mean trajectory, nrmse {_fmt(comp.report.statistic('trajectory_nrmse').value, 3)}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "trajectories.png", dpi=110)
    plt.close(fig)
    names.append("trajectories.png")

    # step vs state
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    for d, dname in enumerate(("up", "down")):
        for label, pt in (("reference", comp.ref_point), ("candidate", comp.cand_point)):
            ok = pt.count[0, d] >= comp.report.thresholds.min_bin_steps
            xs = g(pt.state[0, d, ok]) * 1e6
            for row, field in ((0, "mean"), (1, comp.spread_curve)):
                y = getattr(pt, field)[0, d, ok] * ax_.scale * 1e6
                se = comp.standard_error(label, field)
                yerr = None if se is None else 2 * se[d, ok] * ax_.scale * 1e6
                axes[row, d].errorbar(xs, y, yerr=yerr, color=colors[label], marker="o", ms=3,
                                      capsize=2, label=label)
        axes[0, d].set_title(f"{dname} pulses")
        axes[0, d].set_ylabel("mean step (uS)")
        axes[1, d].set_ylabel("within-device step std (uS)" if comp.spread_curve == "spread"
                              else "write noise: step std, read noise removed (uS)", fontsize=8)
        axes[1, d].set_xlabel("state: conductance before the pulse (uS)")
        axes[0, d].axhline(0, color="0.6", lw=0.8)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "step_vs_state.png", dpi=110)
    plt.close(fig)
    names.append("step_vs_state.png")

    # histograms
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for d, dname in enumerate(("up", "down")):
        a, b = comp.pooled_steps(d)
        if a.size and b.size:
            lo, hi = np.percentile(np.r_[a, b], [0.5, 99.5])
            bins = np.linspace(lo, hi, 40)
            axes[d].hist(a * ax_.scale * 1e6, bins=bins * ax_.scale * 1e6, density=True, alpha=0.5,
                         color=colors["reference"], label="reference")
            axes[d].hist(b * ax_.scale * 1e6, bins=bins * ax_.scale * 1e6, density=True, alpha=0.5,
                         color=colors["candidate"], label="candidate")
        ks = comp.report.statistic(f"step_ks_{dname}")
        axes[d].set_title(f"{dname} steps (compared bins), max KS D {_fmt(ks.value, 2)}")
        axes[d].set_xlabel("step (uS)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "step_histograms.png", dpi=110)
    plt.close(fig)
    names.append("step_histograms.png")
    return names


def write_report(comp: Comparison, folder: str | os.PathLike[str]) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG figures into ``folder``; returns report.md."""
    folder = Path(folder)
    figures = write_figures(comp, folder)
    comp.report.figures = figures
    comp.report.save(folder / "report.json")
    return atomic_write_text(folder / "report.md", markdown(comp.report))


def report_dict(report: ValidationReport) -> dict[str, Any]:
    return report.model_dump(mode="json")
