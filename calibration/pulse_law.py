"""Fit the pulse-response law (:mod:`hil.pulse_response`) from pulses of different amplitude and width.

Where a measurement file has both ``amplitude_v`` and ``width_s`` and its pulses come in
more than one shape (amplitude sweeps; runs at several widths), ``hil calibrate`` fits
the KAI / Merz law of the pulse before the step models:

1. a pooled ``softbounds`` fit with identical pulses (the reference);
2. the same fit with every pulse's step (and its c2c noise) multiplied by
   ``f(|V|, t) / f(nominal)`` of the law, one law per direction (6 more parameters:
   ``t0``, ``V_a``, ``n``; Merz's ``alpha = 1``), from two starts; soft bounds with the law
   is the KAI picture (each pulse switches a fraction of the domains left);
3. the same again with the field exponent ``alpha`` of each direction free (2 more
   parameters), started from step 2's optimum; it replaces Merz's form if it lowers the BIC;
4. the law is kept if it lowers the BIC of the pooled fit with identical pulses.  Its
   per-pulse scales are then fixed (:attr:`hil.calibration.filter.Sequences.scale`) while
   every candidate step model is fitted and selected as usual, and its parameters (6 or 8)
   count in every candidate's BIC.

The law is fitted on the fitting rows only (the held-out check replays it; the final
refit on all rows refits the step model with the law held).  The nominal pulse of each
direction, at which the fitted step parameters hold (scale 1), is the strongest pulse
(largest |amplitude|) of the direction's most common width among the fitting pulses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from hil.calibration.filter import Sequences, run_filter
from hil.calibration.fit import C2C_BOUNDS, READ_SD_BOUNDS
from hil.calibration.measurements import MeasurementSet
from hil.calibration.stepmodels import Family
from hil.pulse_response import PulseResponse, PulseShape, SwitchingLaw, law_z, log_fraction_of_z

LAW_NAMES = ("log10_t0_s", "activation_v", "exponent")
FIELD_EXPONENT = "field_exponent"
LAW_BOUNDS = {
    "log10_t0_s": (-15.0, 12.0), "activation_v": (0.0, 50.0), "exponent": (0.02, 5.0), FIELD_EXPONENT: (0.25, 10.0),
}
# starts of the law's fit (both directions): a sharp law with a short t0, then (only where the
# first fit stops without converging) a gradual one with a long t0
LAW_STARTS = ((-8.0, 3.0, 0.4), (-2.0, 2.0, 0.15))
BASE_NAMES = ("dw_up", "dw_down", "w_min", "w_max", "c2c", "read_sd")
_S0 = 0.5 * READ_SD_BOUNDS[0] ** 2


def pulse_shapes(ms: MeasurementSet) -> tuple[np.ndarray, np.ndarray] | None:
    """|amplitude| (volts) and width (seconds) of every row, if the file has both columns, every
    pulse has finite positive values there, and the pulses come in more than one shape; else None."""
    if "amplitude_v" not in ms.optional or "width_s" not in ms.optional:
        return None
    amp = np.abs(np.asarray(ms.optional["amplitude_v"], dtype=np.float64))
    width = np.asarray(ms.optional["width_s"], dtype=np.float64)
    pulse = ms.polarity != 0
    if not pulse.any():
        return None
    a, t = amp[pulse], width[pulse]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(t)) and np.all(a > 0) and np.all(t > 0)):
        return None
    if len(np.unique(np.stack([a, t]), axis=1).T) < 2:
        return None
    return amp, width


def nominal_pulses(
    amp: np.ndarray, width: np.ndarray, polarity: np.ndarray, rows: np.ndarray
) -> tuple[PulseShape, PulseShape]:
    """The nominal up and down pulse (see the module doc) among the pulses of ``rows`` (bool)."""
    out = []
    for sign in (1, -1):
        sel = rows & (polarity == sign)
        if not sel.any():
            sel = polarity == sign
        if not sel.any():
            sel = polarity != 0
        w_vals, counts = np.unique(width[sel], return_counts=True)
        t_nom = float(w_vals[np.argmax(counts)])
        a_nom = float(amp[sel & (width == t_nom)].max())
        out.append(PulseShape(amplitude_v=a_nom, width_s=t_nom))
    return out[0], out[1]


@dataclass
class PulseLawFit:
    """Result of :func:`fit_pulse_law`."""

    response: PulseResponse
    scale: np.ndarray  # [S, T] per-pulse step scale (1 outside pulses)
    used: bool  # the law lowers the BIC of the pooled soft-bounds fit
    nll_identical: float
    nll_law: float
    n_scored: int
    k_law: int
    se: dict[str, float] = field(default_factory=dict)
    base_identical: dict[str, float] = field(default_factory=dict)
    base_law: dict[str, float] = field(default_factory=dict)
    # Merz's law (alpha = 1) against a free field exponent alpha per direction
    nll_merz: float = float("nan")
    nll_free: float = float("nan")
    field_exponent_used: bool = False

    @property
    def bic_change(self) -> float:
        """BIC with the law minus BIC without it (negative: the law is supported)."""
        return 2.0 * (self.nll_law - self.nll_identical) + self.k_law * float(np.log(self.n_scored))

    @property
    def field_exponent_bic_change(self) -> float:
        """BIC with a free field exponent per direction minus BIC with Merz's alpha = 1
        (negative: the free exponent is supported)."""
        return 2.0 * (self.nll_free - self.nll_merz) + 2.0 * float(np.log(self.n_scored))

    def as_dict(self) -> dict[str, Any]:
        return {
            "used": self.used,
            "law": self.response.law,
            "rule": "kept if it lowers the BIC of a pooled softbounds fit; fitted on the fitting rows; "
            "the field exponent alpha is fitted (else Merz's 1) if that lowers the BIC further",
            "field_exponent_used": self.field_exponent_used,
            "field_exponent_bic_change": self.field_exponent_bic_change,
            "nll_merz": self.nll_merz,
            "up": self.response.up.model_dump(),
            "down": self.response.down.model_dump(),
            "nominal_up": self.response.nominal_up.model_dump(),
            "nominal_down": self.response.nominal_down.model_dump(),
            "standard_errors": self.se,
            "bic_change": self.bic_change,
            "nll_identical": self.nll_identical,
            "nll_law": self.nll_law,
            "nll_free_field_exponent": self.nll_free,
            "parameters": self.k_law,
            "scored_reads": self.n_scored,
            "softbounds_identical": self.base_identical,
            "softbounds_with_law": self.base_law,
        }


class _LawProblem:
    """Pooled soft-bounds fit with an optional pulse law: residuals and batched Jacobian."""

    def __init__(self, seq: Sequences, score: np.ndarray, amp: np.ndarray, width: np.ndarray,
                 nominal: tuple[PulseShape, PulseShape], read_fixed: float | None, with_law: bool,
                 field_exponent: bool = False) -> None:
        self.seq = seq
        self.fam = Family("softbounds")
        self.s_idx, self.t_idx = np.nonzero(score)
        self.t_stop = int(self.t_idx.max()) + 1
        ok = seq.row >= 0
        self.amp = np.ones(seq.shape)
        self.width = np.ones(seq.shape)
        self.amp[ok] = np.maximum(amp[seq.row[ok]], 1e-12)
        self.width[ok] = np.maximum(width[seq.row[ok]], 1e-30)
        self.log_w = np.log(self.width)
        self.up = seq.pol > 0
        self.pulse = seq.pol != 0
        self.nominal = nominal
        self.read_fixed = read_fixed
        self.with_law = with_law
        self.names = [n for n in BASE_NAMES if not (n == "read_sd" and read_fixed is not None)]
        self.law_names = (*LAW_NAMES, FIELD_EXPONENT) if field_exponent else LAW_NAMES
        if with_law:
            self.names += [f"{d}_{n}" for d in ("up", "down") for n in self.law_names]
        self._theta: np.ndarray | None = None
        self._res: np.ndarray | None = None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        # the step parameters' boxes are the pipeline's (Family.bounds), the noise ones fit.py's
        table = {n: self.fam.bounds(n) for n in ("dw_up", "dw_down", "w_min", "w_max")}
        table.update(c2c=C2C_BOUNDS, read_sd=READ_SD_BOUNDS)
        lo, hi = [], []
        for n in self.names:
            b = LAW_BOUNDS[n.split("_", 1)[1]] if n.startswith(("up_", "down_")) else table[n]
            lo.append(b[0])
            hi.append(b[1])
        return np.array(lo), np.array(hi)

    def laws(self, theta: np.ndarray) -> tuple[SwitchingLaw, SwitchingLaw]:
        v = dict(zip(self.names, theta, strict=True))
        return tuple(  # type: ignore[return-value]
            SwitchingLaw(**{n: float(v[f"{d}_{n}"]) for n in self.law_names}) for d in ("up", "down")
        )

    def scale(self, thetas: np.ndarray) -> np.ndarray:
        """Per-pulse step scales ``[B, S, T]`` of the parameter sets ``thetas`` ``[B, P]``."""
        idx = {n: i for i, n in enumerate(self.names)}
        out = np.ones((len(thetas), *self.seq.shape))
        for d, sel, nom in (("up", self.up, self.nominal[0]), ("down", ~self.up & self.pulse, self.nominal[1])):
            a, va, n = (thetas[:, idx[f"{d}_{k}"], None] for k in LAW_NAMES)
            al = thetas[:, idx[f"{d}_{FIELD_EXPONENT}"], None] if FIELD_EXPONENT in self.law_names else 1.0
            z = law_z(self.log_w[sel][None, :], self.amp[sel][None, :], a, va, n, al)
            z_nom = law_z(np.log(nom.width_s), nom.amplitude_v, a, va, n, al)
            out[:, sel] = np.exp(log_fraction_of_z(z) - log_fraction_of_z(z_nom))
        return out

    def residuals(self, thetas: np.ndarray) -> np.ndarray:
        """``[B, 2 n_scored]`` residuals (squares sum to 2 NLL + const) of every parameter set."""
        idx = {n: i for i, n in enumerate(self.names)}
        p = {k: thetas[:, idx[k], None] for k in ("dw_up", "dw_down", "w_min", "w_max")}
        c2c = thetas[:, idx["c2c"], None]
        rsd = thetas[:, idx["read_sd"], None] if "read_sd" in idx else np.full((len(thetas), 1), self.read_fixed)
        scale = self.scale(thetas) if self.with_law else np.ones((len(thetas), *self.seq.shape))
        out = run_filter(self.seq, self.fam, p, c2c, rsd * rsd, t_stop=self.t_stop, step_scale=scale)
        nu = out.nu[:, self.s_idx, self.t_idx]
        var = np.maximum(out.var[:, self.s_idx, self.t_idx], 2 * _S0)
        r = np.concatenate([nu / np.sqrt(var), np.sqrt(np.log(var / _S0))], axis=-1)
        return np.where(np.isfinite(r), r, 1e6)

    def _steps(self, theta: np.ndarray, hi: np.ndarray) -> np.ndarray:
        h = 1e-6 * np.maximum(np.abs(theta), 1e-3)
        return np.where(theta + h > hi, -h, h)

    def fun_jac(self, theta: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._theta is None or not np.array_equal(theta, self._theta):
            h = self._steps(theta, hi)
            batch = np.repeat(theta[None, :], len(theta) + 1, axis=0)
            batch[1:] += np.diag(h)
            r = self.residuals(batch)
            self._theta, self._res = theta.copy(), np.concatenate([r[:1], (r[1:] - r[0]) / h[:, None]])
        assert self._res is not None
        return self._res[0], self._res[1:].T

    def fit(self, start: np.ndarray, max_nfev: int = 300) -> Any:
        lo, hi = self.bounds()
        x0 = np.clip(start, lo + 1e-9, hi - 1e-9)
        return optimize.least_squares(
            lambda th: self.fun_jac(th, hi)[0], x0, jac=lambda th: self.fun_jac(th, hi)[1],
            bounds=(lo, hi), x_scale="jac", max_nfev=max_nfev, ftol=1e-8, xtol=1e-8,
        )


def _nll(res: np.ndarray, n: int) -> float:
    """NLL (natural units, with the 2 pi term) from the residuals of one parameter set."""
    return 0.5 * float(np.sum(res**2)) + 0.5 * n * (np.log(2.0 * np.pi) + np.log(_S0))


def fit_pulse_law(
    ms: MeasurementSet,
    seq: Sequences,
    score: np.ndarray,
    rows: np.ndarray,
    init: dict[str, Any],
    read_fixed: float | None,
    field_exponent: bool = True,
) -> PulseLawFit | None:
    """The law fitted on the reads ``score`` (``[S, T]``; ``rows``: the same rows as a row mask),
    or None where the file has no pulse shapes to fit it from (:func:`pulse_shapes`).

    ``init``: start values of the soft-bounds parameters (``dw_up``, ..., ``read_sd``).
    ``field_exponent``: also fit a free field exponent per direction and keep it where it lowers
    the BIC (False: Merz's ``alpha = 1`` only; the free fit is then not run and its NLL is NaN)."""
    shapes = pulse_shapes(ms)
    if shapes is None or not score.any():
        return None
    amp, width = shapes
    nominal = nominal_pulses(amp, width, ms.polarity, rows)
    base0 = np.array([float(init[n]) for n in BASE_NAMES if not (n == "read_sd" and read_fixed is not None)])
    plain = _LawProblem(seq, score, amp, width, nominal, read_fixed, with_law=False)
    fit0 = plain.fit(base0)
    n_scored = len(plain.s_idx)
    law = _LawProblem(seq, score, amp, width, nominal, read_fixed, with_law=True)
    merz = None
    for st in LAW_STARTS:  # the second start only where the first did not converge
        start = np.concatenate([fit0.x, np.array(st * 2, dtype=np.float64)])
        f = law.fit(start)
        if merz is None or f.cost < merz.cost:
            merz = f
        if f.status > 0:
            break
    assert merz is not None
    nll_merz = _nll(law.residuals(merz.x[None, :])[0], n_scored)
    # the field exponent of each direction, from Merz's optimum (alpha = 1 there)
    chosen, best, nll_free, use_free = law, merz, float("nan"), False
    if field_exponent:
        free = _LawProblem(seq, score, amp, width, nominal, read_fixed, with_law=True, field_exponent=True)
        m = dict(zip(law.names, merz.x, strict=True))
        f_free = free.fit(np.array([m.get(nm, 1.0) for nm in free.names], dtype=np.float64))
        nll_free = _nll(free.residuals(f_free.x[None, :])[0], n_scored)
        use_free = 2.0 * (nll_free - nll_merz) + 2.0 * float(np.log(n_scored)) < 0
        if use_free:
            chosen, best = free, f_free
    up, down = chosen.laws(best.x)
    response = PulseResponse(up=up, down=down, nominal_up=nominal[0], nominal_down=nominal[1])
    nll0 = _nll(plain.residuals(fit0.x[None, :])[0], n_scored)
    nll1 = nll_free if use_free else nll_merz
    se: dict[str, float] = {}
    try:
        cov = np.linalg.pinv(best.jac.T @ best.jac)
        for i, nm in enumerate(chosen.names):
            if nm.startswith(("up_", "down_")):
                se[nm] = float(np.sqrt(max(cov[i, i], 0.0)))
    except np.linalg.LinAlgError:
        pass
    k = 2 * len(chosen.law_names)
    result = PulseLawFit(
        response=response,
        scale=chosen.scale(best.x[None, :])[0],
        used=False,
        nll_identical=nll0,
        nll_law=nll1,
        n_scored=n_scored,
        k_law=k,
        se=se,
        base_identical=dict(zip(plain.names, map(float, fit0.x), strict=True)),
        base_law={nm: float(v) for nm, v in zip(chosen.names, best.x, strict=True) if not nm.startswith(("up_", "down_"))},
        nll_merz=nll_merz,
        nll_free=nll_free,
        field_exponent_used=bool(use_free),
    )
    result.used = bool(result.bic_change < 0)
    return result
