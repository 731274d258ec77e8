"""Fitting the candidate step models of ``hil calibrate``: start values, the starts one
candidate takes from another's fit, the pooled and per-device fits (with the write-noise
offset where it is tried), and all candidates at once, in this process or in worker
processes (:func:`fit_candidates`).  :mod:`hil.calibration.pipeline` selects among them."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hil.calibration.bounds import (
    HARD_BOUND_KINDS,
    bounds_at_reads,
    device_extremes,
    scan_hard_bounds,
)
from hil.calibration.filter import Sequences
from hil.calibration.fit import (
    WRITE_RHO_BOUNDS,
    WRITE_SD_BOUNDS,
    FitResult,
    best_per_device,
    device_nll,
    fit_model,
    row_nll,
)
from hil.calibration.stepmodels import Family

if TYPE_CHECKING:
    from hil.calibration.pipeline import CalibrationConfig

BOX_EDGE = 1e-2  # a value within this fraction of a box limit's magnitude from it is "at" the limit
# the write-noise offset's memory (-1 / ln rho pulses) must be below this fraction of the longest
# contiguous run: the data must hold several memories to tell it from a per-run shift
MEMORY_FRACTION = 0.25
WRITE_SIGNIFICANCE = 3.0  # the offset's std must lie this many standard errors above 0


def _step_stats(seq: Sequences, score: np.ndarray) -> dict[str, Any]:
    s_idx, t_idx = np.nonzero(score)
    prev = seq.y[s_idx, t_idx - 1]
    dy = seq.y[s_idx, t_idx] - prev
    pol = seq.pol[s_idx, t_idx]
    out: dict[str, Any] = {"prev": prev, "dy": dy, "pol": pol}
    # read-noise guess from the lag-1 autocovariance of consecutive pulse steps
    pulse = pol != 0
    nxt = np.zeros_like(pulse)
    same = (s_idx[1:] == s_idx[:-1]) & (t_idx[1:] == t_idx[:-1] + 1) & pulse[1:] & pulse[:-1]
    nxt[:-1] = same
    if nxt.sum() >= 10:
        m = dy[pulse].mean()
        cov = float(np.mean((dy[:-1][same] - m) * (dy[1:][same] - m)))
        out["read_var"] = max(-cov, 0.0)
    else:
        out["read_var"] = 0.0
    return out


def initial_values(fam: Family, seq: Sequences, score: np.ndarray, read_sd: float | None) -> dict[str, Any]:
    st = _step_stats(seq, score)
    prev, dy, pol = st["prev"], st["dy"], st["pol"]
    y = seq.y[seq.valid]
    lo = min(float(np.percentile(y, 0.5)), -0.2)
    hi = max(float(np.percentile(y, 99.5)), 0.2)

    def mid_mean(sign: int) -> float:
        sel = pol == sign
        mid = sel & (np.abs(prev - 0.5 * (lo + hi)) < 0.25 * (hi - lo))
        use = mid if mid.sum() >= 10 else sel
        v = sign * float(dy[use].mean()) if use.any() else 0.01
        overall = abs(float(dy[sel].mean())) if sel.any() else 0.01
        return max(v, 0.5 * overall, 1e-4)

    dw_up, dw_dn = mid_mean(1), mid_mean(-1)
    rv = read_sd**2 if read_sd is not None else st["read_var"]
    pulse = pol != 0
    var_w = float(np.var(dy[pulse])) - 2 * rv if pulse.sum() > 2 else 0.0
    c2c = float(np.clip(np.sqrt(max(var_w, 1e-12)) / (0.5 * (dw_up + dw_dn)), 0.01, 100.0))
    init: dict[str, Any] = {
        "dw_up": dw_up,
        "dw_down": dw_dn,
        "w_min": lo,
        "w_max": hi,
        "c2c": c2c,
        "read_sd": max(np.sqrt(rv), 1e-4),
    }
    if fam.kind == "linear":
        init.update(gamma_up=0.5, gamma_down=0.5)
    elif fam.kind in ("pow", "exp"):
        init.update(gamma_up=1.0, gamma_down=1.0)
    elif fam.kind == "table":
        assert fam.grid is not None
        grid = fam.grid
        init.update(dw_up=1.0, dw_down=1.0, w_min=float(grid[0]), w_max=float(grid[-1]))
        for sign, key, default in ((1, "up", dw_up), (-1, "down", -dw_dn)):
            sel = pol == sign
            for i, g in enumerate(grid):
                width = grid[1] - grid[0]
                wgt = np.clip(1 - np.abs(prev[sel] - g) / width, 0, None)
                if wgt.sum() > 3:
                    mean = float((wgt * dy[sel]).sum() / wgt.sum())
                    var = float((wgt * (dy[sel] - mean) ** 2).sum() / wgt.sum())
                else:
                    mean, var = default, (c2c * default) ** 2
                init[f"{key}_node_{i}"] = mean
                init[f"{key}_std_{i}"] = float(np.sqrt(max(var - 2 * rv, (0.1 * mean) ** 2)))
    return init


def candidate_family(kind: str, seq: Sequences, score: np.ndarray, nodes: int) -> Family:
    if kind != "table":
        return Family(kind)
    y = seq.y[score | seq.reset & seq.valid]
    lo, hi = np.percentile(y, [0.5, 99.5])
    lo, hi = min(lo, -0.5), max(hi, 0.5)
    return Family("table", grid=np.linspace(lo, hi, nodes))


def _chain_init(kind: str, base: dict[str, Any], fits: dict[str, FitResult]) -> list[dict[str, Any]]:
    """Starting points: the data-derived one, and for models that contain a simpler one
    (linear and pow with gamma 1 are softbounds, exp with gamma 0 is constant) that model's fit.
    Both are tried: these likelihoods have several local optima."""
    init = dict(base)

    def take(src: str, gamma: float) -> None:
        f = fits[src]
        for k in ("dw_up", "dw_down", "w_min", "w_max", "c2c", "read_sd"):
            init[k] = float(f.values[k][0])
        init.update(gamma_up=gamma, gamma_down=gamma)

    if kind in ("linear", "pow") and "softbounds" in fits:
        take("softbounds", 1.0)
    elif kind == "exp" and "constant" in fits:
        take("constant", 0.0)
    elif kind == "table":
        for src in ("softbounds", "constant"):
            if src in fits:
                init["read_sd"] = float(fits[src].values["read_sd"][0])
                break
        return [init]
    return [base] if init == base else [base, init]




# the candidate whose pooled fit :func:`_chain_init` starts a candidate from (the first one
# present in the run): it is fitted first
CHAIN_SOURCES: dict[str, tuple[str, ...]] = {
    "linear": ("softbounds",), "pow": ("softbounds",), "exp": ("constant",), "table": ("softbounds", "constant"),
}


# relative cost of a candidate's fit (more parameters, more filter work): the order in which
# ready candidates are handed to the workers
FIT_COST_RANK: dict[str, int] = {"table": 5, "linear": 4, "pow": 3, "exp": 2, "constant": 1, "softbounds": 0}


def _chain_deps(kind: str, kinds: list[str]) -> list[str]:
    return [s for s in CHAIN_SOURCES.get(kind, ()) if s in kinds][:1]


@dataclass
class _CandidateFit:
    """One candidate step model fitted on the fitting rows (see :func:`fit_candidates`)."""

    fam: Family
    pooled: FitResult
    per: FitResult | None
    write_info: dict[str, Any]
    bound_lines: list[str]
    nll_heldout: np.ndarray
    seconds: float


def _fit_candidate(
    kind: str, seq: Sequences, train: np.ndarray, held: np.ndarray, read_fixed: float | None,
    cfg: CalibrationConfig, chain: dict[str, FitResult],
) -> _CandidateFit:
    """Pooled and per-device fit of one candidate, its bounds rule and held-out NLL; ``chain``
    holds the pooled fits it may start from (:func:`_chain_init`).  A pure function of its
    arguments: it runs in this process or in a worker, with the same result."""
    with blas_single_thread():
        t1 = time.perf_counter()
        fam = candidate_family(kind, seq, train, cfg.table_nodes)
        init = _chain_init(kind, initial_values(fam, seq, train, read_fixed), chain)
        pooled, per, winfo = fit_pair(fam, seq, train, init, read_fixed, cfg.max_nfev, cfg.write_noise)
        pooled, bound_lines = bounds_at_reads(fam, seq, train, pooled)
        if per is not None:
            per, bound_lines = bounds_at_reads(fam, seq, train, per)
        best = per if per is not None else pooled
        nll_h = row_nll(fam, seq, best, held) if held.any() else np.zeros(0)
        return _CandidateFit(fam, pooled, per, winfo, bound_lines, nll_h, time.perf_counter() - t1)


def fit_candidates(
    order: list[str], seq: Sequences, train: np.ndarray, held: np.ndarray, read_fixed: float | None,
    cfg: CalibrationConfig, jobs: int,
) -> dict[str, _CandidateFit]:
    """Every candidate of ``order`` fitted by :func:`_fit_candidate`: one after the other
    (``jobs`` 1), or in up to ``jobs`` worker processes, each candidate as soon as the fit it
    starts from is done.  The fits are deterministic, so both give the same result."""
    deps = {k: _chain_deps(k, order) for k in order}
    done: dict[str, _CandidateFit] = {}

    def chain(k: str) -> dict[str, FitResult]:
        return {d: done[d].pooled for d in deps[k]}

    # a daemonic process (a worker of another pool) may not start processes: fit here then
    if jobs > 1 and len(order) > 1 and not multiprocessing.current_process().daemon:
        try:
            _fit_in_workers(order, deps, done, chain, jobs, (seq, train, held, read_fixed, cfg))
        except (OSError, concurrent.futures.process.BrokenProcessPool) as exc:
            # the workers could not start or died (no fork server here, killed for memory):
            # what they left is fitted here; an error of a fit itself is raised as it is
            warnings.warn(f"calibration: worker processes failed ({type(exc).__name__}: {exc}); fitting the "
                          f"{len(order) - len(done)} remaining candidate(s) in this process", RuntimeWarning,
                          stacklevel=2)
    for k in order:
        if k not in done:
            done[k] = _fit_candidate(k, seq, train, held, read_fixed, cfg, chain(k))
    return done


def _fit_in_workers(
    order: list[str], deps: dict[str, list[str]], done: dict[str, _CandidateFit],
    chain: Any, jobs: int, args: tuple[Any, ...],
) -> None:
    """:func:`fit_candidates` in worker processes; fills ``done`` as the fits come back."""
    # workers start from a fork server (no fork of this process, which may hold torch's threads);
    # the most expensive candidates go first
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    waiting = sorted(order, key=lambda k: -FIT_COST_RANK.get(k, 0))
    running: dict[concurrent.futures.Future[_CandidateFit], str] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(order)), mp_context=ctx) as pool:
        while waiting or running:
            for k in [k for k in waiting if all(d in done for d in deps[k])]:
                waiting.remove(k)
                running[pool.submit(_fit_candidate, k, *args, chain(k))] = k
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in finished:
                done[running.pop(f)] = f.result()


def write_noise_undetermined(fit: FitResult, longest_run: int | None = None) -> list[str]:
    """Why the write-noise offset of a fit is not determined by the data (empty: it is).

    ``write_sd`` must lie at least ``WRITE_SIGNIFICANCE`` standard errors above 0 (the
    BIC gain alone is not enough: the fit with the offset also refits the read noise, whose
    part of the gain says nothing about the offset) and not at a limit of its search box; ``write_rho`` a standard error of at most 0.5 (half
    its range: the data tell a short from a long memory), must not sit at its upper limit,
    and its memory ``-1 / ln(rho)`` must be below ``MEMORY_FRACTION`` of the longest
    contiguous run the filter sees (``longest_run`` reads): an offset that outlasts every
    run is not told from a constant shift of each run (a run-to-run variation that this
    noise model does not describe; the ferroelectric set's runs show it) or from a
    random walk.  ``write_rho`` = 0 is a legitimate value (redrawn at every pulse); without
    repeated reads it makes the offset indistinguishable from read noise, which the first
    rule catches.
    """
    out = []
    sd, sd_se = float(fit.values["write_sd"][0]), float(fit.se.get("write_sd", np.array([np.inf]))[0])
    rho, rho_se = float(fit.values["write_rho"][0]), float(fit.se.get("write_rho", np.array([np.inf]))[0])
    rel = sd_se / sd if sd > 0 else float("inf")
    if not np.isfinite(rel) or rel > 1.0 / WRITE_SIGNIFICANCE:
        out.append(f"write_sd = {sd:.4g} with standard error {sd_se:.3g} (less than {WRITE_SIGNIFICANCE:g} "
                   "standard errors above 0)")
    elif sd >= WRITE_SD_BOUNDS[1] * (1 - BOX_EDGE):
        out.append(f"write_sd = {sd:.4g} at the limit of the search box")
    memory = -1.0 / np.log(rho) if 0 < rho < 1 else 0.0
    if not np.isfinite(rho_se) or rho_se > 0.5:
        out.append(f"write_rho = {rho:.4g} with standard error {rho_se:.3g}")
    elif rho >= WRITE_RHO_BOUNDS[1] - BOX_EDGE * (1 - WRITE_RHO_BOUNDS[1]) * 10:
        out.append(f"write_rho = {rho:.4g} at the limit of the search box (a random walk)")
    elif longest_run is not None and memory > MEMORY_FRACTION * longest_run:
        out.append(
            f"write_rho = {rho:.4g}: a memory of {memory:.0f} pulses, more than {MEMORY_FRACTION:g} of the "
            f"longest run ({longest_run} reads): a shift of each run, not a fluctuation within runs"
        )
    return out


def _write_starts(fit: FitResult, read_fixed: bool, several: bool) -> list[dict[str, Any]]:
    """Starts of the fit with the write-noise offset, from ``fit`` (without it; per-device values
    are kept): the non-accumulating noise split between read noise and the offset (a memory
    of 10 pulses), and the c2c nearly removed (a fit without the offset reads correlated
    noise as c2c).  With ``several`` (one device: cheap fits), also from half the c2c: the
    HfO2 file's likelihood has optima on both sides (one keeps much of the c2c); the best
    of both is kept."""
    base: dict[str, Any] = {k: np.array(v, dtype=np.float64) for k, v in fit.values.items()}
    r = float(base["read_sd"][0])
    base["write_sd"] = max(0.7 * r, 1e-3)
    if not read_fixed:
        base["read_sd"] = max(0.7 * r, 2e-6)
    base["write_rho"] = 0.9
    if not np.any(base["c2c"] > 0):  # a table (its accumulating noise is its std nodes)
        return [base]
    return [dict(base, c2c=f * base["c2c"]) for f in ((0.01, 0.5) if several else (0.01,))]


def fit_pair(
    fam: Family,
    seq: Sequences,
    score: np.ndarray,
    inits: list[dict[str, Any]],
    read_sd: float | None,
    max_nfev: int,
    write: Literal["off", "auto", "on"] = "off",
) -> tuple[FitResult, FitResult | None, dict[str, Any]]:
    """Pooled fit from every start in ``inits`` (the best is kept), then per-device fits from it.

    ``read_sd``: the read noise fixed from repeated reads (None: fitted).  ``write`` (the
    write-noise offset, shared by all devices): ``"off"``: none; ``"auto"``: the fits
    without it, then the last fit (per-device, or pooled for a single device) again with it
    from :func:`_write_starts`, kept when its offset is determined
    (:func:`write_noise_undetermined`) and it lowers the BIC (two parameters more); ``"on"``:
    fitted (``inits`` carry its values; the refit on all rows): by the pooled fit for one
    device, else held at ``inits`` there and fitted by the per-device fits.  The offset is
    decided and fitted on the per-device fit, not the pooled one: a pooled fit reads the
    devices' different ranges (their spread of the bounds) as an offset that never forgets
    (rho near 1, several times the true std on the round trip's data).  Fits with the
    offset always fit the read noise too
    (shared; the repeated reads are in the likelihood, since the offset does not change
    between reads without a pulse): the offset's variance is the non-accumulating variance
    minus the read noise's, so a read noise fixed from the repeated reads would pass its
    sampling error on to the offset without its standard error showing it.  Without the
    offset, per-device fits hold the read noise at the pooled (or repeated-reads) value.
    Returns the pooled fit, the per-device fit (None for one device) and what was decided.
    """
    pooled = None
    refit_write = write == "on"
    info: dict[str, Any] = {"tried": write != "off", "used": refit_write}
    if refit_write:
        read_sd = None  # fitted jointly with the offset (see below)
    n_dev = int(seq.device_rows(score).sum())
    for start0 in inits:
        f = fit_model(fam, seq, score, start0, per_device=False, read_sd_fixed=read_sd, max_nfev=max_nfev,
                      fit_write=refit_write and n_dev < 2)
        if pooled is None or f.nll < pooled.nll:
            pooled = f
    assert pooled is not None
    per: FitResult | None = None
    if n_dev >= 2:
        per = _per_device(fam, seq, score, pooled, read_sd, max_nfev, refit_write)
    if write == "auto":
        longest = int(seq.valid.sum(axis=1).max())
        last = per if per is not None else pooled
        best_w: FitResult | None = None
        for st in _write_starts(last, read_sd is not None, several=per is None):
            f = fit_model(fam, seq, score, st, per_device=per is not None, read_sd_fixed=None,
                          max_nfev=max_nfev, fit_write=True)
            if best_w is None or f.nll < best_w.nll:
                best_w = f
        assert best_w is not None
        why = write_noise_undetermined(best_w, longest)
        # the fit with the offset also frees the read noise where the fit without it held it (at the
        # pooled value in per-device fits, at the repeated reads' value): a third parameter there
        extra = 2 + int(per is not None or read_sd is not None)
        gain = 2.0 * (last.nll - best_w.nll) - extra * float(np.log(max(last.n_scored, 1)))
        info.update(
            bic_gain=gain,
            nll_gain=last.nll - best_w.nll,
            write_sd=float(best_w.values["write_sd"][0]),
            write_rho=float(best_w.values["write_rho"][0]),
            read_sd=float(best_w.values["read_sd"][0]),
            undetermined=why,
            fitted="per device" if per is not None else "pooled",
            longest_run=longest,
        )
        if not why and gain > 0:
            info["used"] = True
            if per is not None:
                per = best_w
            else:
                pooled = best_w
    return pooled, per, info


def _per_device(
    fam: Family,
    seq: Sequences,
    score: np.ndarray,
    pooled: FitResult,
    read_sd: float | None,
    max_nfev: int,
    refit_write: bool,
) -> FitResult:
    """Per-device fits from the pooled fit (see :func:`fit_pair`)."""
    start: dict[str, Any] = {k: v[0] for k, v in pooled.values.items()}
    read_per = float(pooled.values["read_sd"][0]) if not refit_write else read_sd
    starts = [start]
    if "w_min" in fam.shape_names():
        # each device starts at its own extreme reads: a hard bound beyond a device's data has
        # no gradient (the constant model would never find it from the pooled bounds); bounds
        # approached asymptotically (pow) lie beyond the extreme reads: those start pooled
        lo, hi = device_extremes(seq, score)
        own = dict(start, w_min=np.minimum(lo, -2e-3), w_max=np.maximum(hi, 2e-3))
        if fam.kind == "linear":
            # a linear step's slope is dw * gamma / bound: moving the bound to the device's extreme
            # reads keeps the pooled slope only if gamma moves with it; and a bound beyond the reads
            # (gamma > 1: the fixed point w_max / gamma inside them) is as plausible: start from both
            g_lo, g_hi = fam.bounds("gamma_up")
            own["gamma_up"] = np.clip(start["gamma_up"] * own["w_max"] / start["w_max"], g_lo, 0.99 * g_hi)
            own["gamma_down"] = np.clip(start["gamma_down"] * own["w_min"] / start["w_min"], g_lo, 0.99 * g_hi)
            starts = [own, start]
        elif fam.kind in HARD_BOUND_KINDS:
            starts = [scan_hard_bounds(fam, seq, score, own)]
        else:
            starts = [start] if fam.kind == "pow" else [own]
    fits = [fit_model(fam, seq, score, st, per_device=True, read_sd_fixed=read_per, max_nfev=max_nfev,
                      fit_write=refit_write) for st in starts]
    per = fits[0] if len(fits) == 1 else best_per_device(fits, [device_nll(fam, seq, f, score) for f in fits])
    if fam.kind == "table":
        # the table's nodes are shared: refit them with the per-device scales and bounds fixed
        # (otherwise the device-to-device spread of the steps is read as write noise), then the
        # per-device parameters once more
        shared = fit_model(fam, seq, score, dict(per.values), per_device=False, read_sd_fixed=read_per,
                           max_nfev=max_nfev, keep_scales=True)
        per = fit_model(fam, seq, score, dict(shared.values), per_device=True, read_sd_fixed=read_per,
                        max_nfev=max_nfev, fit_write=refit_write)
        per.se.update({k: v for k, v in shared.se.items() if k not in per.se})
    return per


def blas_single_thread() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS/LAPACK to one thread: the fits' small dense linear algebra runs up to 15x
    slower with several threads on a busy 2-core machine (threadpoolctl comes with
    scikit-learn; without it this does nothing)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


# below this many reads the candidates' fits take a few seconds, less than starting workers
PARALLEL_MIN_ROWS = 2000


def auto_jobs(rows: int) -> int:
    """Worker processes for ``jobs=0``: one per CPU core for sets of at least
    ``PARALLEL_MIN_ROWS`` reads, else 1 (no workers)."""
    return max(1, os.cpu_count() or 1) if rows >= PARALLEL_MIN_ROWS else 1


