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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
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
    bootstrap,
    build_features,
    choose_level,
    derive,
    ks_null,
    prepare,
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


@dataclass
class Comparison:
    """Everything a comparison computed: the report plus the curves its figures draw."""

    report: ValidationReport
    axis: Axis
    ref: Prepared
    cand: Prepared
    ref_point: FileStats
    cand_point: FileStats
    ref_boot: FileStats
    cand_boot: FileStats
    compared_bins: np.ndarray  # [2, nb] bool
    spread_curve: str = "spread"  # FileStats field compared as step_spread_*: spread or write_spread

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
    """Bootstrap variance along axis 0, nan-aware (nan where fewer than 2 finite replicates)."""
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


def _rms_null_quantile(
    boot_r: np.ndarray, boot_c: np.ndarray, w: np.ndarray, alpha: float, rng: np.random.Generator,
    draws: int = 4000,
) -> float:
    """(1 - alpha) quantile of ``sqrt(sum w d^2 / sum w)`` when the two files share one population.

    ``d`` is drawn from N(0, C_r + C_c), with ``C`` the bootstrap covariance of each file's
    curve (``boot_* [B, m]``): draws are random combinations of the centred replicates, so
    the correlation between positions or bins (devices span all of them) is kept.
    """
    def centred(b: np.ndarray) -> np.ndarray:
        if b.shape[0] < 2:
            return np.zeros((1, b.shape[1]))
        with np.errstate(invalid="ignore"):
            c = b - np.nanmean(b, axis=0)
        return np.nan_to_num(c) / np.sqrt(b.shape[0] - 1)

    cr, cc = centred(boot_r), centred(boot_c)
    d = rng.standard_normal((draws, cr.shape[0])) @ cr - rng.standard_normal((draws, cc.shape[0])) @ cc
    rms = np.sqrt((d * d * w).sum(1) / w.sum())
    return float(np.quantile(rms, 1.0 - alpha))


def _block_trajectories(p: Prepared, axis: Axis) -> np.ndarray:
    """Conductance (units of R) of every block at every common position ``[n_blocks, K]`` (nan: absent)."""
    out = np.full((p.n_blocks, len(axis.keys)), np.nan)
    lut = np.array([axis.key_map.get(k, -1) for k in p.keys], dtype=np.int64)
    kid = np.where(p.key_id >= 0, lut[np.clip(p.key_id, 0, None)], -1)
    t = kid >= 0
    out[p.block_idx[t], kid[t]] = axis.norm(p.meas.conductance[t])
    return out


def _pooled_trajectory_quantile(
    ref: Prepared, cand: Prepared, axis: Axis, ok: np.ndarray, alpha: float, rng: np.random.Generator,
    draws: int = 4000,
) -> tuple[float, int]:
    """RMS null quantile of the mean-trajectory difference for files with few cycles.

    Under "one population" both files share one cycle-to-cycle covariance of the
    trajectory; it is estimated from the deviations of every cycle from its own
    file's mean (pooled, ``n_r + n_c - 2`` degrees of freedom), and the difference
    of the means has that covariance times ``1/n_r + 1/n_c``.  Returns the
    quantile and the degrees of freedom (0: not estimable).
    """
    devs = []
    n = []
    for p in (ref, cand):
        tr = _block_trajectories(p, axis)[:, ok]
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(tr, axis=0)
        devs.append(np.nan_to_num(tr - mean))
        n.append(tr.shape[0])
    dof = n[0] + n[1] - 2
    if dof < 1:
        return 0.0, 0
    resid = np.vstack(devs) * np.sqrt((1.0 / n[0] + 1.0 / n[1]) / dof)
    d = rng.standard_normal((draws, resid.shape[0])) @ resid
    rms = np.sqrt((d * d).mean(1))
    return float(np.quantile(rms, 1.0 - alpha)), dof


def _summary(p: Prepared, level: Level) -> FileSummary:
    pol = p.meas.polarity
    return FileSummary(
        source=p.meas.source, rows=p.n_rows, devices=p.n_dev, blocks=p.n_blocks,
        up_pulses=int((pol == 1).sum()), down_pulses=int((pol == -1).sum()),
        reads=int((pol == 0).sum()), resampled_by=level,
    )


def _joint_level(ref: Prepared, cand: Prepared, min_units: int) -> Level:
    if ref.n_dev >= min_units and cand.n_dev >= min_units:
        return "device"
    if ref.n_blocks >= min_units and cand.n_blocks >= min_units:
        return "block"
    return "row"


def _ks(
    ref: Prepared, cand: Prepared, axis: Axis, d: int, bins_ok: np.ndarray, th: ValidationThresholds,
    rng: np.random.Generator,
) -> tuple[float | None, float, float, str]:
    """(max observed D, permutation-null quantile, min iid p-value, note) over the compared bins."""
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
    note = f"{for_bins.size} bins, permuting {level}s; min iid p-value {pmin:.2g}"
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
    """
    th = thresholds or ValidationThresholds()
    ref = prepare(from_loaded(reference))
    cand = prepare(from_loaded(candidate))
    _check_steps(ref, "reference", th)
    _check_steps(cand, "candidate", th)
    axis = _axis(ref, cand, th)
    warnings: list[str] = []
    lv_r = choose_level(ref, th.min_units)
    lv_c = choose_level(cand, th.min_units)
    f_r: Features = build_features(ref, axis, lv_r)
    f_c: Features = build_features(cand, axis, lv_c)
    for label, p, lv in (("reference", ref, lv_r), ("candidate", cand, lv_c)):
        if lv != "device":
            warnings.append(
                f"{label}: {p.n_dev} device(s) (< {th.min_units}): resampled by "
                f"{'cycles' if lv == 'block' else 'single rows'}; device-to-device variation is "
                "not part of its sampling error"
            )
    rng = np.random.default_rng(seed)
    rng_r, rng_c, rng_p, rng_q = rng.spawn(4)
    pt_r = derive(f_r, np.ones((1, f_r.n_units)), th.min_bin_steps)
    pt_c = derive(f_c, np.ones((1, f_c.n_units)), th.min_bin_steps)
    bs_r = bootstrap(f_r, th.n_bootstrap, rng_r, th.min_bin_steps)
    bs_c = bootstrap(f_c, th.n_bootstrap, rng_c, th.min_bin_steps)
    z = th.z
    results: list[StatisticResult] = []

    def add(name: str, desc: str, value: float | None, margin: float, allowance: float, *,
            reference: float | None = None, candidate: float | None = None, unit: str = "",
            note: str = "", na_reason: str = "") -> None:
        if value is None or not np.isfinite(value):
            results.append(StatisticResult(
                name=name, description=desc, value=None, margin=margin, allowance=0.0,
                threshold=None, status="n/a", reference=reference, candidate=candidate, unit=unit,
                note=na_reason or note or "not computable",
            ))
            return
        allowance = float(allowance) if np.isfinite(allowance) else 0.0
        thr = margin + allowance
        results.append(StatisticResult(
            name=name, description=desc, value=float(value), margin=margin, allowance=allowance,
            threshold=thr, status="pass" if value <= thr else "fail", reference=reference,
            candidate=candidate, unit=unit, note=note,
        ))

    alpha = float(2.0 * sps.norm.sf(z))  # the false-failure rate of |x| > z SE, per statistic

    # 1. mean trajectory
    diff = pt_c.traj[0] - pt_r.traj[0]
    ok = np.isfinite(diff)
    value = float(np.sqrt(np.mean(diff[ok] ** 2))) if ok.any() else None
    if lv_r == "row" or lv_c == "row":
        allowance, dof = _pooled_trajectory_quantile(ref, cand, axis, ok, alpha, rng_q)
        if dof < 1:
            add("trajectory_nrmse", "RMS difference of the mean conductance trajectories", None,
                th.trajectory_nrmse, 0.0, na_reason="one cycle per file: the cycle-to-cycle "
                "variability of the trajectory cannot be estimated", unit="R")
        else:
            add("trajectory_nrmse", "RMS difference of the mean conductance trajectories", value,
                th.trajectory_nrmse, allowance, unit="R",
                note=f"{int(ok.sum())} positions per cycle; few cycles: sampling error from the "
                     f"pooled cycle-to-cycle covariance of both files ({dof} dof)")
    else:
        add("trajectory_nrmse", "RMS difference of the mean conductance trajectories", value,
            th.trajectory_nrmse,
            _rms_null_quantile(bs_r.traj[:, ok], bs_c.traj[:, ok], np.ones(int(ok.sum())), alpha, rng_q)
            if ok.any() else 0.0,
            unit="R", note=f"{int(ok.sum())} positions per cycle")

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
            br = curve_at(bs_r, curve, d, xq, th.min_bin_steps, half_bin)[:, ok_b]
            bc = curve_at(bs_c, curve, d, xq, th.min_bin_steps, half_bin)[:, ok_b]
            allowance = _rms_null_quantile(br, bc, wb, alpha, rng_q) / norm
            signed = float(np.sum(wb * dd) / sw / norm)
            add(name, desc, value, margin, allowance,
                reference=norm * axis.scale, candidate=cand_glob * axis.scale, unit="relative",
                note=f"{int(ok_b.sum())} bins; candidate {signed:+.1%} on average; "
                     "reference/candidate: weighted mean |value| in siemens"
                     + (f"; {spread_note}" if curve != "mean" else ""))

    # up/down asymmetry: ratio of the mean |up| and |down| steps at the same states
    both = (count_r[0] >= th.min_bin_steps) & (count_r[1] >= th.min_bin_steps)
    with np.errstate(invalid="ignore"):
        xb = (pt_r.state[0, 0] * count_r[0] + pt_r.state[0, 1] * count_r[1]) / (count_r[0] + count_r[1])
    wb = np.where(both, count_r[0] + count_r[1], 0.0)

    def log_asym(fs: FileStats) -> np.ndarray:
        up = np.abs(curve_at(fs, "mean", 0, xb, th.min_bin_steps, half_bin))
        dn = np.abs(curve_at(fs, "mean", 1, xb, th.min_bin_steps, half_bin))
        ok_ = np.isfinite(up) & np.isfinite(dn) & (wb > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.log((np.where(ok_, up, 0) * wb).sum(1) / (np.where(ok_, dn, 0) * wb).sum(1))
        return np.where(ok_.any(1), a, np.nan)

    a_r, a_c = float(log_asym(pt_r)[0]), float(log_asym(pt_c)[0])
    allowance = z * float(np.sqrt(np.nan_to_num(_var(log_asym(bs_r))) + np.nan_to_num(_var(log_asym(bs_c)))))
    add("asymmetry", "ratio of mean |up| to mean |down| step at the same states",
        abs(a_c - a_r) if np.isfinite(a_r) and np.isfinite(a_c) else None, th.asymmetry, allowance,
        reference=float(np.exp(a_r)) if np.isfinite(a_r) else None,
        candidate=float(np.exp(a_c)) if np.isfinite(a_c) else None, unit="|ln ratio|",
        note="reference/candidate: |up| / |down|",
        na_reason="no state bin with enough up and down steps in both files")

    # 4. KS on step distributions per state bin
    for d, dname in enumerate(("up", "down")):
        value, q, _, note = _ks(ref, cand, axis, d, bins_ok[d], th, rng_p)
        add(f"step_ks_{dname}", f"largest KS D between {dname}-step distributions over state bins",
            value, th.step_distribution, q, unit="D", note=note)

    # 5-6. number of states and symmetry point
    ns_r, ns_c = float(pt_r.n_states[0]), float(pt_c.n_states[0])
    if ns_r > 0 and ns_c > 0 and np.isfinite(ns_r) and np.isfinite(ns_c):
        lv = np.log(np.where(bs_r.n_states > 0, bs_r.n_states, np.nan))
        lc = np.log(np.where(bs_c.n_states > 0, bs_c.n_states, np.nan))
        allowance = z * float(np.sqrt(np.nan_to_num(_var(lv)) + np.nan_to_num(_var(lc))))
        add("n_states", "number of states: trajectory range / mean |step| at the symmetry point",
            abs(np.log(ns_c / ns_r)), th.n_states, allowance, reference=ns_r, candidate=ns_c,
            unit="|ln ratio|")
    else:
        add("n_states", "number of states", None, th.n_states, 0.0,
            na_reason="no symmetry point or zero step in a file")
    sp_r, sp_c = float(pt_r.symmetry_point[0]), float(pt_c.symmetry_point[0])
    allowance = z * float(np.sqrt(np.nan_to_num(_var(bs_r.symmetry_point)) + np.nan_to_num(_var(bs_c.symmetry_point))))
    add("symmetry_point", "state where mean up and down steps cancel",
        abs(sp_c - sp_r) if np.isfinite(sp_r) and np.isfinite(sp_c) else None, th.symmetry_point,
        allowance, reference=axis.g0 + sp_r * axis.scale if np.isfinite(sp_r) else None,
        candidate=axis.g0 + sp_c * axis.scale if np.isfinite(sp_c) else None, unit="R",
        note="reference/candidate in siemens", na_reason="no bin holds both up and down steps")

    # 7. device-to-device spread
    enough = ref.n_dev >= th.min_devices_d2d and cand.n_dev >= th.min_devices_d2d
    na = f"needs >= {th.min_devices_d2d} devices in each file (have {ref.n_dev} and {cand.n_dev})"
    for name, a_r, a_c, b_r, b_c, desc in (
        ("d2d_step_up", pt_r.d2d_step[0, 0], pt_c.d2d_step[0, 0], bs_r.d2d_step[:, 0], bs_c.d2d_step[:, 0],
         "device-to-device CV of the mean up step"),
        ("d2d_step_down", pt_r.d2d_step[0, 1], pt_c.d2d_step[0, 1], bs_r.d2d_step[:, 1], bs_c.d2d_step[:, 1],
         "device-to-device CV of the mean down step"),
        ("d2d_range", pt_r.d2d_range[0], pt_c.d2d_range[0], bs_r.d2d_range, bs_c.d2d_range,
         "device-to-device CV of the conductance range"),
    ):
        if not enough:
            add(name, desc, None, th.d2d, 0.0, na_reason=na)
            continue
        allowance = z * float(np.sqrt(np.nan_to_num(_var(b_r)) + np.nan_to_num(_var(b_c))))
        add(name, desc, abs(float(a_c) - float(a_r)), th.d2d, allowance,
            reference=float(a_r), candidate=float(a_c), unit="CV")

    # 8. read noise
    dof_r, dof_c = float(pt_r.read_dof[0]), float(pt_c.read_dof[0])
    if dof_r >= th.min_read_dof and dof_c >= th.min_read_dof:
        rn_r, rn_c = float(pt_r.read_noise[0]), float(pt_c.read_noise[0])
        floor = 1e-3  # read noise below 0.1 % of the range counts as none
        den = max(rn_r, floor)
        allowance = z * float(np.sqrt(np.nan_to_num(_var(bs_r.read_noise)) + np.nan_to_num(_var(bs_c.read_noise)))) / den
        add("read_noise", "std of repeated reads of one state", abs(rn_c - rn_r) / den, th.read_noise,
            allowance, reference=rn_r * axis.scale, candidate=rn_c * axis.scale, unit="relative",
            note=f"dof {dof_r:.0f} / {dof_c:.0f}; reference/candidate in siemens")
    else:
        reason = (
            f"needs >= {th.min_read_dof} degrees of freedom of repeated reads (polarity 0) in each file "
            f"(have {dof_r:.0f} and {dof_c:.0f})"
        )
        add("read_noise", "std of repeated reads of one state", None, th.read_noise, 0.0, na_reason=reason)
        if (dof_r >= th.min_read_dof) != (dof_c >= th.min_read_dof):
            warnings.append("only one file has repeated reads: read noise is not compared; " + reason)

    evaluated = [r for r in results if r.status != "n/a"]
    n_failed = sum(r.status == "fail" for r in evaluated)
    report = ValidationReport(
        passed=n_failed == 0,
        n_failed=n_failed,
        n_evaluated=len(evaluated),
        reference=_summary(ref, lv_r),
        candidate=_summary(cand, lv_c),
        statistics=results,
        conductance_offset_s=axis.g0,
        conductance_range_s=axis.scale,
        bin_edges=[float(e) for e in axis.inner_edges],
        thresholds=th,
        seed=seed,
        warnings=warnings,
    )
    return Comparison(
        report=report, axis=axis, ref=ref, cand=cand, ref_point=pt_r, cand_point=pt_c,
        ref_boot=bs_r, cand_boot=bs_c, compared_bins=bins_ok, spread_curve=spread_curve,
    )
