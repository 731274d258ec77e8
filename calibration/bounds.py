"""Hard bounds the reads never reach: where they are set, and when they count as determined.

The ``constant`` and ``table`` step models clamp the weight at hard bounds that do not
change the step; a bound the reads never approach is not determined by them (its
likelihood is flat beyond the reads), so an optimizer leaves it anywhere.  These rules
(docs/calibration.md, section 5, "Bounds the reads never reach") scan the per-device
starting bounds at read percentiles (:func:`scan_hard_bounds`) and, after a fit, set an
unreached bound at the extreme reads unless the data reject it there
(:func:`bounds_at_reads`).  Bounds are normalized weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from hil.calibration.filter import Sequences
from hil.calibration.fit import FitResult, device_nll
from hil.calibration.stepmodels import Family

# step models whose bounds are hard clamps only (the step does not depend on them): such a bound
# is determined by the data only where the reads reach it; one the reads never reach is set at
# the extreme reads (READ_EXTREME_Q-th and 100 - READ_EXTREME_Q-th percentile)
HARD_BOUND_KINDS = ("constant", "table")
READ_EXTREME_Q = 0.5
# read percentiles at which the per-device fits of constant/table try their hard bounds first
# (:func:`scan_hard_bounds`; the 0.5th is READ_EXTREME_Q, the 100 - q-th for upper bounds)
BOUND_SCAN_Q = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
# ... unless the data reject the bound there: the NLL rises by more than this (one parameter,
# likelihood ratio at about 5 %: chi2(1) 3.84 / 2)
BOUND_NATS = 2.0


def device_extremes(seq: Sequences, score: np.ndarray, q: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-device ``q``-th and ``100 - q``-th percentile of the reads (NaN-free; pooled where a
    device has no scored reads)."""
    lo = np.empty(seq.n_devices)
    hi = np.empty(seq.n_devices)
    all_y = seq.y[seq.valid]
    for d in range(seq.n_devices):
        y = seq.y[(seq.device == d)[:, None] & seq.valid]
        y = y if len(y) else all_y
        lo[d], hi[d] = np.percentile(y, [q, 100 - q])
    return lo, hi


def scan_hard_bounds(fam: Family, seq: Sequences, score: np.ndarray, start: dict[str, Any]) -> dict[str, Any]:
    """Per-device starting values of the hard bounds (``constant``, ``table``) from a profile scan.

    A hard bound only clamps, so the likelihood is flat in it wherever the filter's predicted
    states stay clear of it: it has no gradient there.  A device that sits at its bound for many
    pulses has reads scattered about it by the read noise, so its extreme reads
    (:func:`device_extremes`) lie a few read-noise standard deviations beyond the bound; where its
    steps near the bound are smaller than that (the ENODe table's down steps near its lower end,
    0.002 against a read noise of 0.005), a bound started there is not clamped by the predicted
    states, the optimizer cannot move it, and the shared steps absorb the stall instead (the
    table round trip's seed 8: -306 nats for one device).  So each bound is scanned over the
    device's read percentiles ``BOUND_SCAN_Q`` (and the starting value itself), with the other
    parameters at ``start``, and every device starts from its candidate of lowest NLL; ``w_min``
    first, then ``w_max`` at the chosen ``w_min``.  ``start`` holds per-device arrays (length D)
    or scalars; returns a copy with per-device ``w_min`` / ``w_max``.
    """
    n_dev = seq.n_devices
    values = {k: np.broadcast_to(np.atleast_1d(np.asarray(v, dtype=np.float64)), (n_dev,)).copy()
              if np.size(v) in (1, n_dev) else np.asarray(v) for k, v in start.items()}
    if fam.kind not in HARD_BOUND_KINDS or "w_min" not in values:
        return values
    present = seq.device_rows(score)
    cands: dict[str, list[np.ndarray]] = {"w_min": [values["w_min"]], "w_max": [values["w_max"]]}
    for q in BOUND_SCAN_Q:
        lo, hi = read_extremes(seq, score, True, q)
        cands["w_min"].append(np.minimum(lo, -2e-3))
        cands["w_max"].append(np.maximum(hi, 2e-3))
    probe = FitResult(kind=fam.kind, per_device=True, values=values, se={}, nll=0.0, n_scored=0, k=0,
                      success=True, message="", nfev=0)
    for name in ("w_min", "w_max"):
        trials = []
        for c in cands[name]:
            trial = {k: v.copy() for k, v in values.items()}
            trial[name] = c
            if name == "w_max":
                trial[name] = np.maximum(c, trial["w_min"] + 1e-3)
            trials.append((trial[name], device_nll(fam, seq, replace(probe, values=trial), score)))
        nll = np.stack([t[1] for t in trials])
        best = np.argmin(nll, axis=0)
        chosen = np.stack([t[0] for t in trials])[best, np.arange(n_dev)]
        values[name] = np.where(present, chosen, values[name])
    return values


def read_extremes(
    seq: Sequences, score: np.ndarray, per_device: bool, q: float = READ_EXTREME_Q
) -> tuple[np.ndarray, np.ndarray]:
    """The range the devices were measured in: the ``q``-th and ``100 - q``-th percentile of the
    reads a fit on ``score [S, T]`` sees (its scored reads and the first read of each of their
    sequences, from which they start; ``q`` = 0: the extreme reads), pooled (arrays of length 1)
    or per device (length D; pooled for a device without scored reads)."""
    qs = [q, 100 - q]
    score = score | (seq.reset & seq.valid & score.any(axis=1, keepdims=True))
    lo_all, hi_all = np.percentile(seq.y[score], qs)
    if not per_device:
        return np.array([lo_all]), np.array([hi_all])
    lo = np.full(seq.n_devices, lo_all)
    hi = np.full(seq.n_devices, hi_all)
    for d in range(seq.n_devices):
        y = seq.y[(seq.device == d)[:, None] & score]
        if len(y):
            lo[d], hi[d] = np.percentile(y, qs)
    return lo, hi


def bounds_at_reads(fam: Family, seq: Sequences, score: np.ndarray, fit: FitResult) -> tuple[FitResult, list[str]]:
    """Hard bounds the data never reach, set at the extreme reads (``constant``, ``table``).

    A hard bound only clamps: the step does not depend on it, so the likelihood of reads that
    never reach it is flat in it (its standard error is not finite) and the optimizer leaves it
    anywhere beyond the data (14.8 for the upper bound of the HfO2 file's fitting rows, whose
    reads end at 0.89).  A bound beyond the range of the reads the fit saw
    (:func:`read_extremes`: percentiles ``READ_EXTREME_Q`` and ``100 - READ_EXTREME_Q``, per
    device for a per-device fit) is moved to that extreme unless the data reject it there:
    the NLL of the device's reads (the fit's, for a pooled fit) rises by more than
    ``BOUND_NATS`` (a likelihood-ratio test of one parameter at about 5 %), as when a sweep
    starts below the 0.5th percentile of its reads or touches the bound at its last pulses
    only.  Then the extreme read itself is tried the same way; a bound that the data reject
    there too lies where the reads reach it and is kept, determined only if the data also reject
    moving it away from the reads (:func:`_bound_left_at_reads`).  A bound so set is not determined by
    the data: its standard error is set to infinity (a per-device fit's nominal bound then
    comes from the devices that reached it, see :func:`_summarize`), and the simulated device
    does not go beyond the range the device was measured in.  The fit's NLL is recomputed
    with the bounds it carries.  Returns the fit and one line per bound that was set.  Other
    step models are returned unchanged: their bounds shape every step, and
    :func:`undetermined_parameters` rejects them when the data do not determine them.
    """
    if fam.kind not in HARD_BOUND_KINDS or "w_min" not in fit.values or "w_min" not in fam.names:
        return fit, []
    per = len(fit.values["w_min"]) > 1
    present = seq.device_rows(score) if per else np.ones(1, dtype=bool)
    extremes = [(q, read_extremes(seq, score, per, q)) for q in (READ_EXTREME_Q, 0.0)]
    cur = fit
    nll_dev = device_nll(fam, seq, cur, score)
    se = {k: v.copy() for k, v in fit.se.items()}
    lines: list[str] = []
    for name, side in (("w_min", "lowest"), ("w_max", "highest")):
        fitted = cur.values[name].copy()
        set_at = np.full(len(fitted), np.nan)
        cost_at = np.zeros(len(fitted))
        what = np.full(len(fitted), "", dtype=object)
        for q, (lo, hi) in extremes:
            ext = np.minimum(lo, -2e-3) if name == "w_min" else np.maximum(hi, 2e-3)
            beyond = present & np.isnan(set_at) & ((fitted < ext) if name == "w_min" else (fitted > ext))
            if not beyond.any():
                continue
            values = {k: a.copy() for k, a in cur.values.items()}
            values[name][beyond] = ext[beyond]
            nll_trial = device_nll(fam, seq, replace(cur, values=values), score)
            cost = nll_trial - nll_dev if per else np.array([float((nll_trial - nll_dev).sum())])
            take = beyond & (cost <= BOUND_NATS)
            if not take.any():
                continue
            values = {k: a.copy() for k, a in cur.values.items()}
            values[name][take] = ext[take]
            cur = replace(cur, values=values)
            nll_dev = device_nll(fam, seq, cur, score)
            set_at[take], cost_at[take] = ext[take], cost[take]
            what[take] = f"percentile {q if name == 'w_min' else 100 - q:g}"
        lines += _bound_left_at_reads(fam, seq, score, cur, nll_dev, name, present & np.isnan(set_at),
                                      extremes[-1][1], se)
        took = ~np.isnan(set_at)
        if not took.any():
            continue
        if name in se:
            se[name][took] = np.inf
        where = f"{int(took.sum())} of {int(present.sum())} devices" if per else "the fit"
        shown = np.nonzero(took)[0][:4]
        more = ", ..." if took.sum() > 4 else ""
        lines.append(
            f"{name}: not reached by the reads ({where}; fitted {', '.join(f'{fitted[i]:.4g}' for i in shown)}{more}): "
            f"set at the {side} reads, {', '.join(f'{set_at[i]:.4g} ({what[i]})' for i in shown)}{more}; "
            f"NLL change {float(cost_at[took].max()):+.3g} nats at most"
        )
    if not lines:
        return fit, []
    return replace(cur, se=se, nll=float(nll_dev.sum())), lines


def _bound_left_at_reads(
    fam: Family,
    seq: Sequences,
    score: np.ndarray,
    fit: FitResult,
    nll_dev: np.ndarray,
    name: str,
    inside: np.ndarray,
    extreme_reads: tuple[np.ndarray, np.ndarray],
    se: dict[str, np.ndarray],
) -> list[str]:
    """A hard bound left within the reads is determined only if the data reject moving it away.

    The likelihood of a hard bound is one-sided: flat beyond the states the filter predicts,
    rising where the bound clamps them.  A device still moving when its runs end (the table round
    trip's devices whose drawn lower bound lies below where 300 down pulses of 0.002 take them)
    leaves its fitted bound at that kink, where the finite-difference Fisher information sees
    the rising side only and gives a finite standard error (0.0033 for a bound whose true value
    lies 0.10 below the lowest read, seed 8).  So every bound of ``inside`` (those :func:`bounds_at_reads` did not set) is
    moved one span of the reads (``extreme_reads``: lowest and highest, per device or pooled)
    away from them; where the NLL rises by at most ``BOUND_NATS`` the data do not tell where the
    bound is beyond the reads: its standard error in ``se`` is set to infinity (its value, at the
    reads, is kept).  Returns one line when any was.
    """
    if not inside.any():
        return []
    per = len(fit.values[name]) > 1
    lo, hi = extreme_reads
    span = np.maximum(hi - lo, 1e-3)
    values = {k: a.copy() for k, a in fit.values.items()}
    away = values[name] - span if name == "w_min" else values[name] + span
    values[name][inside] = away[inside]
    nll_trial = device_nll(fam, seq, replace(fit, values=values), score)
    cost = nll_trial - nll_dev if per else np.array([float((nll_trial - nll_dev).sum())])
    flat = inside & (cost <= BOUND_NATS)
    if not flat.any():
        return []
    if name in se:
        se[name][flat] = np.inf
    where = f"{int(flat.sum())} of {int(inside.sum())} devices" if per else "the fit"
    shown = np.nonzero(flat)[0][:4]
    more = ", ..." if flat.sum() > 4 else ""
    return [
        f"{name}: not reached by the reads ({where}; moving it one span of the reads away changes the NLL by "
        f"{float(cost[flat].max()):+.3g} nats at most): left at {', '.join(f'{fit.values[name][i]:.4g}' for i in shown)}"
        f"{more}, not determined"
    ]
