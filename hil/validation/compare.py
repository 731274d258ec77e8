"""Statistical comparison of two measurement files of one protocol (``hil validate``).

The two files may hold different numbers of devices and cycles: the comparison
is between distributions (population means, spreads, step distributions), never
row by row.  Statistics (keys of the JSON report), all in units of the
reference's conductance range R unless said otherwise:

=====================  ===================================================================
``trajectory_nrmse``   RMS over the positions of a cycle of the difference of the mean
                       conductance trajectories (mean over devices and cycles)
``step_mean_up/down``  RMS over state bins of the difference of the mean step, divided
                       by the reference's mean |step| (relative)
``step_spread_up/down`` the same for the within-device std of the step (c2c noise, relative)
``step_ks_up/down``    largest two-sample Kolmogorov-Smirnov D over state bins
                       (``scipy.stats.ks_2samp``) between the pooled step distributions
``asymmetry``          ``|ln(A_cand / A_ref)|``, A = mean |up step| / mean |down step| at the
                       same states
``n_states``           ``|ln(n_cand / n_ref)|``, n = trajectory range / mean |step| at the
                       symmetry point
``symmetry_point``     difference of the states where mean up and down steps cancel
``d2d_step_up/down``   difference of the coefficients of variation across devices of each
                       device's step relative to the population mean step at the same
                       states (noise-corrected; a comparison statistic: the part of d2d
                       that moves devices to other states shows in d2d_range and the
                       trajectory instead)
``d2d_range``          difference of the coefficients of variation of the per-device
                       trajectory range (bounds spread)
``read_noise``         difference of the read-noise std from repeated reads, relative
=====================  ===================================================================

Each passes when ``value <= margin + allowance`` (see :mod:`hil.validation.thresholds`).
The allowance is the sampling error of the difference, estimated from each file's
**replication units** (devices, else cycles; never single steps, which share their
cycle's trajectory and run-to-run conditions) with a Student-t quantile for the
degrees of freedom those units give.  When a file holds a single unit (one cycle
of one device) the sampling error cannot be estimated: the statistic is
**insufficient** (neither pass nor fail) and so is the verdict, unless another
statistic fails.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np
from scipy import stats as sps

from hil.validation.measurements import Measurements, UnusableInputError, from_loaded
from hil.validation.report import FileSummary, StatisticResult, ValidationReport
from hil.validation.statistics import (
    Axis,
    Features,
    FileStats,
    Level,
    Prepared,
    Replicates,
    build_features,
    choose_level,
    derive,
    ks_null,
    prepare,
    replicates,
    unit_index,
)
from hil.validation.thresholds import ValidationThresholds

STATISTICS = (
    "trajectory_nrmse",
    "step_mean_up",
    "step_spread_up",
    "step_mean_down",
    "step_spread_down",
    "asymmetry",
    "step_ks_up",
    "step_ks_down",
    "n_states",
    "symmetry_point",
    "d2d_step_up",
    "d2d_step_down",
    "d2d_range",
    "read_noise",
)

# a replicate's step curve exists in a state bin holding at least this many of its steps
# (the min_bin_steps gate decides which bins are compared, on the data as measured)
REPLICATE_MIN_COUNT = 3


@dataclass
class Comparison:
    """Everything a comparison computed: the report plus the curves its figures draw."""

    report: ValidationReport
    axis: Axis
    ref: Prepared
    cand: Prepared
    ref_point: FileStats
    cand_point: FileStats
    ref_reps: Replicates
    cand_reps: Replicates
    compared_bins: np.ndarray  # [2, nb] bool
    spread_curve: str = "spread"  # FileStats field compared as step_spread_*: spread or write_spread

    def standard_error(self, which: str, field: str) -> np.ndarray | None:
        """Standard error of a :class:`FileStats` field of ``"reference"`` or ``"candidate"``
        (shape of the field without the replicate axis); None with a single unit."""
        reps = self.ref_reps if which == "reference" else self.cand_reps
        if reps.stats is None:
            return None
        return np.sqrt(reps.var_scale * _var(getattr(reps.stats, field)))

    def pooled_steps(self, direction: int) -> tuple[np.ndarray, np.ndarray]:
        """Steps (units of R) of the compared bins of one direction: (reference, candidate)."""
        out = []
        for p in (self.ref, self.cand):
            s = np.flatnonzero(p.step_dir == direction)
            b = self.axis.bin_of(self.axis.norm(p.state[s]))
            keep = self.compared_bins[direction, b]
            out.append(p.step[s][keep] / self.axis.scale)
        return out[0], out[1]


def _signature(p: Prepared, presence: float) -> str:
    """A protocol's cycle as text, e.g. '+1 x 20, -1 x 20' (positions in >= presence of cycles)."""
    phases: dict[int, tuple[int, int]] = {}
    for (ph, pol, pos), f in zip(p.keys, p.key_fraction, strict=True):
        if f >= presence:
            cur = phases.get(ph, (pol, 0))
            phases[ph] = (pol, max(cur[1], pos + 1))
    return ", ".join(f"{pol:+d} x {n}" for _, (pol, n) in sorted(phases.items())) or "(no pulses)"


def _axis(ref: Prepared, cand: Prepared, th: ValidationThresholds) -> Axis:
    keys_r = {k for k, f in zip(ref.keys, ref.key_fraction, strict=True) if f >= th.key_presence}
    keys_c = {k for k, f in zip(cand.keys, cand.key_fraction, strict=True) if f >= th.key_presence}
    common = sorted(keys_r & keys_c)
    if not keys_r or len(common) < th.min_key_overlap * len(keys_r):
        raise UnusableInputError(
            "the files do not follow one protocol: the candidate shares "
            f"{len(common)} of the reference's {len(keys_r)} pulse positions per cycle "
            f"(need {th.min_key_overlap:.0%}); reference cycle: {_signature(ref, th.key_presence)}; "
            f"candidate cycle: {_signature(cand, th.key_presence)}"
        )
    key_map = {k: i for i, k in enumerate(common)}
    lut = np.array([key_map.get(k, -1) for k in ref.keys], dtype=np.int64)
    kid = np.where(ref.key_id >= 0, lut[np.clip(ref.key_id, 0, None)], -1)
    t = kid >= 0
    sums = np.bincount(kid[t], weights=ref.meas.conductance[t], minlength=len(common))
    cnt = np.bincount(kid[t], minlength=len(common))
    traj = sums / np.maximum(cnt, 1)
    g0, g1 = float(traj.min()), float(traj.max())
    if not g1 > g0:
        raise UnusableInputError(
            f"{ref.meas.source or 'reference'}: the mean conductance trajectory is flat "
            f"({g0:.4g} S): no pulse moves the conductance, nothing to compare"
        )
    # fewer bins for small files, so that every bin can hold min_bin_steps steps of each
    # direction in both files even when the states are spread unevenly (factor 2)
    fewest = min(int((p.step_dir == d).sum()) for p in (ref, cand) for d in (0, 1))
    n_bins = int(max(1, min(th.n_bins, fewest // (2 * th.min_bin_steps))))
    inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return Axis(g0=g0, scale=g1 - g0, inner_edges=inner, n_bins=n_bins, key_map=key_map, keys=common)


def _check_steps(p: Prepared, label: str, th: ValidationThresholds) -> None:
    for d, name in enumerate(("up", "down")):
        n = int((p.step_dir == d).sum())
        if n < th.min_bin_steps:
            raise UnusableInputError(
                f"{label} {p.meas.source or ''}: {n} {name}-pulse steps (need at least "
                f"{th.min_bin_steps}); a step is a pulse row preceded by a row of the same device and cycle"
            )


def _var(boot: np.ndarray) -> np.ndarray:
    """Sample variance (``ddof=1``) along axis 0, nan-aware (nan where fewer than 2 finite replicates)."""
    finite = np.isfinite(boot)
    n = finite.sum(0)
    if boot.shape[0] < 2:
        return np.full(boot.shape[1:], np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns: nan, handled below
        v = np.nanvar(np.where(finite, boot, np.nan), axis=0, ddof=1)
    return np.where(n >= 2, v, np.nan)


def curve_at(
    fs: FileStats, curve: str, d: int, xq: np.ndarray, min_count: int, reach: float
) -> np.ndarray:
    """A step curve of every replicate ``[B, len(xq)]`` interpolated at the states ``xq``.

    Each replicate's curve is known at its own bin-mean states (bins with at least
    ``min_count`` steps); comparing both files at the same states removes the
    bias a different distribution of states inside a bin would cause.  Points
    more than ``reach`` outside a replicate's states are nan.
    """
    vals = getattr(fs, curve)
    out = np.full((vals.shape[0], xq.size), np.nan)
    xq_ok = np.isfinite(xq)
    for i in range(vals.shape[0]):
        ok = (fs.count[i, d] >= min_count) & np.isfinite(vals[i, d]) & np.isfinite(fs.state[i, d])
        if not ok.any():
            continue
        xs, ys = fs.state[i, d, ok], vals[i, d, ok]
        order = np.argsort(xs)
        xs, ys = xs[order], ys[order]
        inside = xq_ok & (xq >= xs[0] - reach) & (xq <= xs[-1] + reach)
        out[i, inside] = np.interp(xq[inside], xs, ys)
    return out


@dataclass
class Sampling:
    """The sampling error of a difference between the two files, from each file's replicates.

    Each file's variance is its own (Welch: no equal-variance assumption), with
    ``G - 1`` degrees of freedom for G replication units.  With ``small_sample``
    the quantile is Student-t's instead of the normal one, so that the estimated
    variance's own uncertainty keeps the false-failure rate at ``alpha``.
    """

    ref: Replicates
    cand: Replicates
    alpha: float
    small_sample: bool
    rng: np.random.Generator
    draws: int = 4000

    def insufficient(self) -> str | None:
        """Why the sampling error cannot be estimated (a file with a single unit), else None."""
        single = [label for label, r in (("reference", self.ref), ("candidate", self.cand)) if r.stats is None]
        if not single:
            return None
        return (
            f"insufficient replication: the {' and the '.join(single)} hold{'s' if len(single) == 1 else ''} "
            "one cycle of one device, so the run-to-run variability of this statistic cannot be estimated "
            "(steps of one cycle share its trajectory and conditions: they are not independent samples); "
            "measure at least 2 cycles or devices per file (5 or more for a bootstrap)"
        )

    def _welch(self, vr: float, vc: float) -> float:
        nr, nc = self.ref.dof, self.cand.dof
        num = (vr + vc) ** 2
        den = (vr * vr / nr if vr > 0 else 0.0) + (vc * vc / nc if vc > 0 else 0.0)
        return float(num / den) if den > 0 else float(nr + nc)

    def quantile(self, dof: float) -> float:
        """The two-sided ``1 - alpha`` quantile: Student-t with ``dof`` (small_sample) or normal."""
        if self.small_sample:
            return float(sps.t.ppf(1.0 - self.alpha / 2.0, max(dof, 1e-9)))
        return float(sps.norm.ppf(1.0 - self.alpha / 2.0))

    def scalar(self, rep_r: np.ndarray, rep_c: np.ndarray) -> tuple[float, float] | None:
        """(allowance, Welch-Satterthwaite dof) of the difference of a scalar statistic whose
        replicate values are ``rep_r [B_r]`` and ``rep_c [B_c]``; None when not estimable."""
        rep_r, rep_c = np.asarray(rep_r, dtype=float), np.asarray(rep_c, dtype=float)
        for rep, reps in ((rep_r, self.ref), (rep_c, self.cand)):
            if reps.method == "jackknife" and not np.isfinite(rep).all():
                return None  # the jackknife's scale needs every leave-one-out value
        vr = self.ref.var_scale * float(_var(rep_r))
        vc = self.cand.var_scale * float(_var(rep_c))
        if not (np.isfinite(vr) and np.isfinite(vc)):
            return None
        dof = self._welch(vr, vc)
        return self.quantile(dof) * float(np.sqrt(vr + vc)), dof

    def rms(self, br: np.ndarray, bc: np.ndarray, w: np.ndarray) -> tuple[float, float]:
        """``1 - alpha`` quantile of ``sqrt(sum w d^2 / sum w)`` when the two files share one
        population, and the degrees of freedom it used.

        ``d`` is drawn from N(0, C_r + C_c), ``C`` the covariance of each file's curve
        (replicates ``[B, m]``, scaled by ``var_scale``): draws are random combinations of
        the centred replicates, so the correlation between positions or bins (one unit
        spans all of them) is kept.  With ``small_sample`` every draw is divided by
        ``sqrt(chi2_dof / dof)``, dof the Welch-Satterthwaite degrees of freedom of the
        weighted total variance ``tr(W (C_r + C_c))``: the multivariate form of the t
        quantile used for the scalar statistics.
        """
        parts = []
        totals = []
        for b, reps in ((br, self.ref), (bc, self.cand)):
            with np.errstate(invalid="ignore"):
                c = b - np.nanmean(b, axis=0)
            c = np.nan_to_num(c) * np.sqrt(reps.var_scale / (b.shape[0] - 1))
            parts.append(self.rng.standard_normal((self.draws, c.shape[0])) @ c)
            totals.append(float(((c * c).sum(0) * w).sum() / w.sum()))
        dof = self._welch(totals[0], totals[1])
        d = parts[0] - parts[1]
        if self.small_sample:
            d = d / np.sqrt(self.rng.chisquare(dof, size=(self.draws, 1)) / dof)
        rms = np.sqrt((d * d * w).sum(1) / w.sum())
        return float(np.quantile(rms, 1.0 - self.alpha)), dof


def _summary(p: Prepared, level: Level, reps: Replicates) -> FileSummary:
    pol = p.meas.polarity
    return FileSummary(
        source=p.meas.source, rows=p.n_rows, devices=p.n_dev, blocks=p.n_blocks,
        up_pulses=int((pol == 1).sum()), down_pulses=int((pol == -1).sum()),
        reads=int((pol == 0).sum()), resampled_by=level, units=reps.n_units, resampling=reps.method,
    )


def _joint_level(ref: Prepared, cand: Prepared, min_units: int) -> Level:
    """Units permuted between the files by the KS null: devices, else cycles, else none."""
    if ref.n_dev >= min_units and cand.n_dev >= min_units:
        return "device"
    if ref.n_blocks >= 2 and cand.n_blocks >= 2:
        return "block"
    return "none"


def _ks(
    ref: Prepared, cand: Prepared, axis: Axis, d: int, bins_ok: np.ndarray, th: ValidationThresholds,
    rng: np.random.Generator,
) -> tuple[float | None, float, float, str]:
    """(max observed D, permutation-null quantile, min iid p-value, note) over the compared bins.

    The null permutes whole units (devices, else cycles) between the files: steps of
    one unit stay together, so their dependence is kept.  With few units there are
    few distinct labelings, and the quantile can be the largest of them (no power).
    """
    level = _joint_level(ref, cand, th.min_units)
    ur, _ = unit_index(ref, level)
    uc, _ = unit_index(cand, level)
    n_ur = int(ur.max()) + 1
    n_uc = int(uc.max()) + 1
    n_u = n_ur + n_uc
    ranks = np.argsort(rng.random((th.n_permutations, n_u)), axis=1)
    is_ref_unit = ranks < n_ur  # a random split of the pooled units into sizes n_ur, n_uc
    null = np.zeros(th.n_permutations)
    pmin = 1.0
    observed: list[float] = []
    for_bins = np.flatnonzero(bins_ok)
    if for_bins.size == 0:
        return None, 0.0, 1.0, "no state bin with enough steps in both files"
    parts = []
    for p, u, off in ((ref, ur, 0), (cand, uc, n_ur)):
        s = np.flatnonzero(p.step_dir == d)
        b = axis.bin_of(axis.norm(p.state[s]))
        parts.append((p.step[s] / axis.scale, b, u[s] + off))
    for b in for_bins:
        va = parts[0][0][parts[0][1] == b]
        vb = parts[1][0][parts[1][1] == b]
        res = sps.ks_2samp(va, vb)
        observed.append(float(res.statistic))
        pmin = min(pmin, float(res.pvalue))
        values = np.r_[va, vb]
        units = np.r_[parts[0][2][parts[0][1] == b], parts[1][2][parts[1][1] == b]]
        null = np.maximum(null, ks_null(values, units, is_ref_unit))
    q = float(np.quantile(null, th.ks_null_quantile))
    labelings = comb(n_u, n_ur)
    note = f"{for_bins.size} bins, permuting {n_ur} + {n_uc} {level}s; min iid p-value {pmin:.2g}"
    if labelings * (1.0 - th.ks_null_quantile) < 1.0:
        note += f"; only {labelings} distinct labelings: the permutation test cannot reject at this level"
    return max(observed), q, pmin, note


def compare_measurements(
    reference: Measurements | Any,
    candidate: Measurements | Any,
    thresholds: ValidationThresholds | None = None,
    seed: int = 0,
) -> Comparison:
    """Compare ``candidate`` with ``reference`` statistic by statistic (see the module table).

    Both are :class:`Measurements` or loaded measurement sets
    (:class:`hil.calibration.measurements.MeasurementSet`).

    Raises :class:`~hil.validation.measurements.UnusableInputError` when the
    files cannot be compared (too few steps, different protocols, flat reference).
    Files that can be compared but hold too little replication to judge a
    statistic give it the status ``insufficient`` (see :class:`Sampling`).
    """
    th = thresholds or ValidationThresholds()
    ref = prepare(from_loaded(reference))
    cand = prepare(from_loaded(candidate))
    _check_steps(ref, "reference", th)
    _check_steps(cand, "candidate", th)
    axis = _axis(ref, cand, th)
    warn: list[str] = []
    lv_r = choose_level(ref, th.min_units)
    lv_c = choose_level(cand, th.min_units)
    f_r: Features = build_features(ref, axis, lv_r)
    f_c: Features = build_features(cand, axis, lv_c)
    rng = np.random.default_rng(seed)
    rng_r, rng_c, rng_p, rng_q, rng_dr, rng_dc = rng.spawn(6)
    pt_r = derive(f_r, np.ones((1, f_r.n_units)), th.min_bin_steps)
    pt_c = derive(f_c, np.ones((1, f_c.n_units)), th.min_bin_steps)
    # replicates keep the bins the data as measured use for the symmetry point (>= 3 steps each)
    sym_r = (pt_r.count[0, 0] >= th.min_bin_steps) & (pt_r.count[0, 1] >= th.min_bin_steps)
    sym_c = (pt_c.count[0, 0] >= th.min_bin_steps) & (pt_c.count[0, 1] >= th.min_bin_steps)
    rp_r = replicates(f_r, th.n_bootstrap, rng_r, REPLICATE_MIN_COUNT, th.min_units, sym_r)
    rp_c = replicates(f_c, th.n_bootstrap, rng_c, REPLICATE_MIN_COUNT, th.min_units, sym_c)
    for label, p, lv, rp in (("reference", ref, lv_r, rp_r), ("candidate", cand, lv_c, rp_c)):
        if lv == "block":
            warn.append(
                f"{label}: {p.n_dev} device(s) (< {th.min_units}): its replication units are its "
                f"{p.n_blocks} cycles ({rp.method}, {rp.dof} dof); device-to-device variation is not part "
                "of its sampling error"
            )
        elif lv == "none":
            warn.append(
                f"{label}: one cycle of one device: a single replication unit, its sampling error cannot "
                "be estimated (statistics that need it are insufficient)"
            )
        elif rp.n_units < 2 * th.min_units:
            warn.append(f"{label}: only {rp.n_units} devices: few degrees of freedom for its sampling error")
    alpha = float(2.0 * sps.norm.sf(th.z))  # the false-failure rate of |x| > z SE, per statistic
    smp = Sampling(rp_r, rp_c, alpha, th.small_sample, rng_q)
    short = smp.insufficient()
    br_all, bc_all = rp_r.stats, rp_c.stats
    results: list[StatisticResult] = []

    def add(name: str, desc: str, value: float | None, margin: float, allowance: float | None, *,
            dof: float | None = None, reference: float | None = None, candidate: float | None = None,
            unit: str = "", note: str = "", na_reason: str = "", insufficient: str = "") -> None:
        if value is None or not np.isfinite(value):
            results.append(StatisticResult(
                name=name, description=desc, value=None, margin=margin, allowance=0.0,
                threshold=None, status="n/a", reference=reference, candidate=candidate, unit=unit,
                note=na_reason or note or "not computable",
            ))
            return
        if insufficient or allowance is None or not np.isfinite(allowance):
            results.append(StatisticResult(
                name=name, description=desc, value=float(value), margin=margin, allowance=0.0,
                threshold=None, status="insufficient", reference=reference, candidate=candidate,
                unit=unit, note="; ".join(x for x in (insufficient or "sampling error not estimable", note) if x),
            ))
            return
        thr = margin + float(allowance)
        results.append(StatisticResult(
            name=name, description=desc, value=float(value), margin=margin, allowance=float(allowance),
            threshold=thr, dof=dof, status="pass" if value <= thr else "fail", reference=reference,
            candidate=candidate, unit=unit, note=note,
        ))

    def defined(*reps: np.ndarray | None) -> np.ndarray | None:
        """Elements ([m]) defined in every replicate of both files (None: no replicates)."""
        if any(r is None for r in reps):
            return None
        return np.all(np.stack([np.isfinite(r).all(0) for r in reps]), axis=0)

    # 1. mean trajectory
    diff = pt_c.traj[0] - pt_r.traj[0]
    ok = np.isfinite(diff)
    name, desc = "trajectory_nrmse", "RMS difference of the mean conductance trajectories"
    if short:
        value = float(np.sqrt(np.mean(diff[ok] ** 2))) if ok.any() else None
        add(name, desc, value, th.trajectory_nrmse, None, unit="R", insufficient=short,
            note=f"{int(ok.sum())} positions per cycle")
    else:
        assert br_all is not None and bc_all is not None
        ok_all = ok & defined(br_all.traj, bc_all.traj)
        dropped = int(ok.sum() - ok_all.sum())
        value = float(np.sqrt(np.mean(diff[ok_all] ** 2))) if ok_all.any() else None
        q, dof = smp.rms(br_all.traj[:, ok_all], bc_all.traj[:, ok_all], np.ones(int(ok_all.sum()))) \
            if ok_all.any() else (0.0, 0.0)
        add(name, desc, value, th.trajectory_nrmse, q, dof=dof, unit="R",
            note=f"{int(ok_all.sum())} positions per cycle"
                 + (f" ({dropped} more held by one unit only: not compared)" if dropped else ""),
            na_reason="no cycle position defined in every replicate of both files")

    # 2-3. step mean and spread vs state, compared at the reference's bin states
    count_r, count_c = pt_r.count[0], pt_c.count[0]
    bins_ok = (count_r >= th.min_bin_steps) & (count_c >= th.min_bin_steps)
    half_bin = 0.5 / axis.n_bins
    reads_both = (
        float(pt_r.read_dof[0]) >= th.min_read_dof and float(pt_c.read_dof[0]) >= th.min_read_dof
    )
    spread_curve = "write_spread" if reads_both else "spread"
    spread_note = (
        "read noise removed (step variance - 2 x read variance)" if reads_both
        else "includes read noise (no repeated reads in both files)"
    )
    for d, dname in enumerate(("up", "down")):
        xq = pt_r.state[0, d]
        for name, curve, margin, desc in (
            (f"step_mean_{dname}", "mean", th.step_mean, f"mean {dname} step vs state"),
            (f"step_spread_{dname}", spread_curve, th.step_spread,
             f"within-device std of the {dname} step vs state (c2c write noise)"),
        ):
            yr = curve_at(pt_r, curve, d, xq, th.min_bin_steps, half_bin)[0]
            yc = curve_at(pt_c, curve, d, xq, th.min_bin_steps, half_bin)[0]
            ok_b = bins_ok[d] & np.isfinite(yr) & np.isfinite(yc)
            if not ok_b.any():
                add(name, desc, None, margin, 0.0, na_reason="no state bin with enough steps in both files")
                continue
            br = bc = None
            n_one = 0
            none_defined = False
            if not short:
                assert br_all is not None and bc_all is not None
                br = curve_at(br_all, curve, d, xq, REPLICATE_MIN_COUNT, half_bin)
                bc = curve_at(bc_all, curve, d, xq, REPLICATE_MIN_COUNT, half_bin)
                keep = ok_b & defined(br, bc)
                n_one = int(ok_b.sum() - keep.sum())
                none_defined = not keep.any()
                if not none_defined:
                    ok_b = keep
            wb = count_r[d, ok_b]
            sw = wb.sum()
            cr, cc = yr[ok_b], yc[ok_b]
            norm = float(np.sum(wb * np.abs(cr)) / sw)
            cand_glob = float(np.sum(wb * np.abs(cc)) / sw)
            if not norm > 0:
                add(name, desc, None, margin, 0.0, na_reason="reference value is zero")
                continue
            dd = cc - cr
            value = float(np.sqrt(np.sum(wb * dd * dd) / sw) / norm)
            signed = float(np.sum(wb * dd) / sw / norm)
            note = (f"{int(ok_b.sum())} bins; candidate {signed:+.1%} on average; "
                    "reference/candidate: weighted mean |value| in siemens"
                    + (f"; {spread_note}" if curve != "mean" else ""))
            kw: dict[str, Any] = dict(reference=norm * axis.scale, candidate=cand_glob * axis.scale,
                                      unit="relative")
            if short or none_defined:
                add(name, desc, value, margin, None, note=note, **kw, insufficient=short or (
                    "insufficient replication: every compared state bin is visited by one replication "
                    "unit only (its value is undefined when that unit is left out)"))
                continue
            assert br is not None and bc is not None
            q, dof = smp.rms(br[:, ok_b], bc[:, ok_b], wb)
            if n_one:
                note += f"; {n_one} more bin(s) visited by one unit only: not compared"
            add(name, desc, value, margin, q / norm, dof=dof, note=note, **kw)

    # up/down asymmetry: ratio of the mean |up| and |down| steps at the same states
    both = (count_r[0] >= th.min_bin_steps) & (count_r[1] >= th.min_bin_steps)
    with np.errstate(invalid="ignore"):
        xb = (pt_r.state[0, 0] * count_r[0] + pt_r.state[0, 1] * count_r[1]) / (count_r[0] + count_r[1])
    wb = np.where(both, count_r[0] + count_r[1], 0.0)

    def log_asym(fs: FileStats, min_count: int) -> np.ndarray:
        up = np.abs(curve_at(fs, "mean", 0, xb, min_count, half_bin))
        dn = np.abs(curve_at(fs, "mean", 1, xb, min_count, half_bin))
        ok_ = np.isfinite(up) & np.isfinite(dn) & (wb > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.log((np.where(ok_, up, 0) * wb).sum(1) / (np.where(ok_, dn, 0) * wb).sum(1))
        return np.where(ok_.any(1), a, np.nan)

    def scalar_stat(name: str, desc: str, value: float | None, margin: float,
                    rep: tuple[np.ndarray, np.ndarray] | None, **kw: Any) -> None:
        """A scalar statistic with the allowance of its replicates (or insufficient)."""
        if short or rep is None:
            add(name, desc, value, margin, None, insufficient=short, **kw)
            return
        res = smp.scalar(*rep)
        if res is None:
            add(name, desc, value, margin, None, insufficient=(
                "insufficient replication: the statistic is not defined in enough replicates "
                "(leaving a unit out removes what it needs)"), **kw)
            return
        add(name, desc, value, margin, res[0], dof=res[1], **kw)

    a_r, a_c = float(log_asym(pt_r, th.min_bin_steps)[0]), float(log_asym(pt_c, th.min_bin_steps)[0])
    scalar_stat(
        "asymmetry", "ratio of mean |up| to mean |down| step at the same states",
        abs(a_c - a_r) if np.isfinite(a_r) and np.isfinite(a_c) else None, th.asymmetry,
        None if short else (log_asym(br_all, REPLICATE_MIN_COUNT), log_asym(bc_all, REPLICATE_MIN_COUNT)),
        reference=float(np.exp(a_r)) if np.isfinite(a_r) else None,
        candidate=float(np.exp(a_c)) if np.isfinite(a_c) else None, unit="|ln ratio|",
        note="reference/candidate: |up| / |down|",
        na_reason="no state bin with enough up and down steps in both files")

    # 4. KS on step distributions per state bin, null from permuting whole units
    for d, dname in enumerate(("up", "down")):
        name, desc = f"step_ks_{dname}", f"largest KS D between {dname}-step distributions over state bins"
        value, q, _, note = _ks(ref, cand, axis, d, bins_ok[d], th, rng_p)
        if _joint_level(ref, cand, th.min_units) == "none":
            add(name, desc, value, th.step_distribution, None, unit="D", note=note, insufficient=short or (
                "insufficient replication: a file holds a single unit, nothing to permute"),
                na_reason="no state bin with enough steps in both files")
        else:
            add(name, desc, value, th.step_distribution, q, unit="D", note=note,
                na_reason="no state bin with enough steps in both files")

    # 5-6. number of states and symmetry point
    ns_r, ns_c = float(pt_r.n_states[0]), float(pt_c.n_states[0])
    if ns_r > 0 and ns_c > 0 and np.isfinite(ns_r) and np.isfinite(ns_c):
        rep = None
        if not short:
            with np.errstate(invalid="ignore", divide="ignore"):
                rep = tuple(np.log(np.where(b.n_states > 0, b.n_states, np.nan)) for b in (br_all, bc_all))
        scalar_stat("n_states", "number of states: trajectory range / mean |step| at the symmetry point",
                    abs(np.log(ns_c / ns_r)), th.n_states, rep, reference=ns_r, candidate=ns_c,
                    unit="|ln ratio|")
    else:
        add("n_states", "number of states", None, th.n_states, 0.0,
            na_reason="no symmetry point or zero step in a file")
    sp_r, sp_c = float(pt_r.symmetry_point[0]), float(pt_c.symmetry_point[0])
    scalar_stat("symmetry_point", "state where mean up and down steps cancel",
                abs(sp_c - sp_r) if np.isfinite(sp_r) and np.isfinite(sp_c) else None, th.symmetry_point,
                None if short else (br_all.symmetry_point, bc_all.symmetry_point),
                reference=axis.g0 + sp_r * axis.scale if np.isfinite(sp_r) else None,
                candidate=axis.g0 + sp_c * axis.scale if np.isfinite(sp_c) else None, unit="R",
                note="reference/candidate in siemens", na_reason="no bin holds both up and down steps")

    # 7. device-to-device spread: its sampling error lives at the device level, so the
    # replicates resample devices (bootstrap, or jackknife for fewer than min_units devices)
    enough = ref.n_dev >= th.min_devices_d2d and cand.n_dev >= th.min_devices_d2d
    na = f"needs >= {th.min_devices_d2d} devices in each file (have {ref.n_dev} and {cand.n_dev})"
    dev_smp = None
    if enough:
        dr = rp_r if lv_r == "device" else replicates(
            build_features(ref, axis, "device"), th.n_bootstrap, rng_dr, REPLICATE_MIN_COUNT, th.min_units, sym_r)
        dc = rp_c if lv_c == "device" else replicates(
            build_features(cand, axis, "device"), th.n_bootstrap, rng_dc, REPLICATE_MIN_COUNT, th.min_units, sym_c)
        dev_smp = Sampling(dr, dc, alpha, th.small_sample, rng_q)
    for name, a_r_, a_c_, field, k, desc in (
        ("d2d_step_up", pt_r.d2d_step[0, 0], pt_c.d2d_step[0, 0], "d2d_step", 0,
         "device-to-device CV of the mean up step"),
        ("d2d_step_down", pt_r.d2d_step[0, 1], pt_c.d2d_step[0, 1], "d2d_step", 1,
         "device-to-device CV of the mean down step"),
        ("d2d_range", pt_r.d2d_range[0], pt_c.d2d_range[0], "d2d_range", None,
         "device-to-device CV of the conductance range"),
    ):
        if dev_smp is None:
            add(name, desc, None, th.d2d, 0.0, na_reason=na)
            continue
        assert dev_smp.ref.stats is not None and dev_smp.cand.stats is not None
        b_r, b_c = getattr(dev_smp.ref.stats, field), getattr(dev_smp.cand.stats, field)
        if k is not None:
            b_r, b_c = b_r[:, k], b_c[:, k]
        res = dev_smp.scalar(b_r, b_c)
        value = abs(float(a_c_) - float(a_r_))
        kw = dict(reference=float(a_r_), candidate=float(a_c_), unit="CV",
                  note=f"resampling devices ({dev_smp.ref.method} {dev_smp.ref.n_units}, "
                       f"{dev_smp.cand.method} {dev_smp.cand.n_units})")
        if res is None:
            add(name, desc, value, th.d2d, None, insufficient="insufficient replication: not defined in "
                "enough device replicates", **kw)
        else:
            add(name, desc, value, th.d2d, res[0], dof=res[1], **kw)

    # 8. read noise
    dof_r, dof_c = float(pt_r.read_dof[0]), float(pt_c.read_dof[0])
    if dof_r >= th.min_read_dof and dof_c >= th.min_read_dof:
        rn_r, rn_c = float(pt_r.read_noise[0]), float(pt_c.read_noise[0])
        floor = 1e-3  # read noise below 0.1 % of the range counts as none
        den = max(rn_r, floor)
        rep = None if short else (br_all.read_noise / den, bc_all.read_noise / den)
        scalar_stat("read_noise", "std of repeated reads of one state", abs(rn_c - rn_r) / den, th.read_noise,
                    rep, reference=rn_r * axis.scale, candidate=rn_c * axis.scale, unit="relative",
                    note=f"read dof {dof_r:.0f} / {dof_c:.0f}; reference/candidate in siemens")
    else:
        reason = (
            f"needs >= {th.min_read_dof} degrees of freedom of repeated reads (polarity 0) in each file "
            f"(have {dof_r:.0f} and {dof_c:.0f})"
        )
        add("read_noise", "std of repeated reads of one state", None, th.read_noise, 0.0, na_reason=reason)
        if (dof_r >= th.min_read_dof) != (dof_c >= th.min_read_dof):
            warn.append("only one file has repeated reads: read noise is not compared; " + reason)

    n_failed = sum(r.status == "fail" for r in results)
    n_short = sum(r.status == "insufficient" for r in results)
    n_eval = sum(r.status in ("pass", "fail") for r in results)
    verdict = "fail" if n_failed else ("insufficient" if n_short or n_eval == 0 else "pass")
    report = ValidationReport(
        passed=verdict == "pass",
        verdict=verdict,
        n_failed=n_failed,
        n_evaluated=n_eval,
        n_insufficient=n_short,
        reference=_summary(ref, lv_r, rp_r),
        candidate=_summary(cand, lv_c, rp_c),
        statistics=results,
        conductance_offset_s=axis.g0,
        conductance_range_s=axis.scale,
        bin_edges=[float(e) for e in axis.inner_edges],
        thresholds=th,
        seed=seed,
        warnings=warn,
    )
    return Comparison(
        report=report, axis=axis, ref=ref, cand=cand, ref_point=pt_r, cand_point=pt_c,
        ref_reps=rp_r, cand_reps=rp_c, compared_bins=bins_ok, spread_curve=spread_curve,
    )
