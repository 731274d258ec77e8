"""Maximum-likelihood fits of one step model with ``scipy.optimize.least_squares``.

The negative log-likelihood of the filter (:mod:`hil.calibration.filter`) is
written as a sum of squares so that ``least_squares`` maximizes the likelihood:
for every scored read, ``nu / sqrt(S)`` and ``sqrt(ln(S / S0))`` (``S0`` a floor
below any variance), whose squares add up to ``2 NLL + const``.

Two modes:

- **pooled**: one parameter set for all devices (step parameters, ``c2c``, and the
  read noise unless it is fixed from repeated reads);
- **per device**: every device gets its own step parameters and ``c2c`` (the read
  noise is shared, fixed at the pooled value; a table's nodes are shared and only
  its two scale factors vary).

The Jacobian comes from one batched filter run per evaluation (finite differences:
a batch row per parameter; in per-device mode one batch row perturbs that
parameter of every device at once, since devices do not interact), and the same
differences give the Fisher information, whose inverse gives standard errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, sparse

from hil.calibration.filter import Sequences, gaussian_nll, run_filter
from hil.calibration.stepmodels import Family

READ_SD_BOUNDS = (1e-6, 10.0)
C2C_BOUNDS = (0.0, 1000.0)
WRITE_SD_BOUNDS = (0.0, 10.0)
WRITE_RHO_BOUNDS = (0.0, 0.999)  # per pulse; 0.999: a correlation length of 1000 pulses
NOISE_NAMES = ("c2c", "read_sd", "write_sd", "write_rho")
_S0 = 0.5 * READ_SD_BOUNDS[0] ** 2


@dataclass
class Slot:
    name: str
    device: int | None  # None: shared by all devices


@dataclass
class FitResult:
    """Fitted values of one model, per device (arrays of length D) or pooled (length 1)."""

    kind: str
    per_device: bool
    values: dict[str, np.ndarray]  # step parameters, table nodes, "c2c", "read_sd"
    se: dict[str, np.ndarray]
    nll: float  # on the scored rows
    n_scored: int
    k: int  # free parameters
    success: bool
    message: str
    nfev: int
    fixed: dict[str, float] = field(default_factory=dict)
    slot_names: tuple[str, ...] = ()  # names of the fitted parameters (per-device ones once)

    @property
    def bic(self) -> float:
        return 2.0 * self.nll + self.k * float(np.log(max(self.n_scored, 1)))

    @property
    def aic(self) -> float:
        return 2.0 * self.nll + 2.0 * self.k

    def param_arrays(self, seq: Sequences) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Parameter dict, c2c and read variance shaped ``[1, S]`` for :func:`run_filter`."""
        p = {k: _per_seq(v, seq) for k, v in self.values.items() if k not in NOISE_NAMES}
        c2c = _per_seq(self.values["c2c"], seq)
        rv = _per_seq(self.values["read_sd"], seq) ** 2
        return p, c2c, rv

    def write_arrays(self, seq: Sequences) -> dict[str, np.ndarray]:
        """``write_var`` and ``write_rho`` keyword arguments of :func:`run_filter` (``[1, S]``)."""
        sd = _per_seq(self.values.get("write_sd", 0.0), seq)
        return {"write_var": sd * sd, "write_rho": _per_seq(self.values.get("write_rho", 0.0), seq)}

    @property
    def write_noise(self) -> bool:
        """Whether this fit has the write-noise offset (a non-zero ``write_sd``)."""
        return bool(np.any(np.asarray(self.values.get("write_sd", 0.0)) > 0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.kind,
            "per_device": self.per_device,
            "values": {k: v.tolist() for k, v in self.values.items()},
            "se": {k: v.tolist() for k, v in self.se.items()},
            "nll": self.nll,
            "n_scored": self.n_scored,
            "k": self.k,
            "bic": self.bic,
            "aic": self.aic,
            "success": self.success,
            "message": self.message,
            "nfev": self.nfev,
        }


def _per_seq(v: np.ndarray | float, seq: Sequences) -> np.ndarray:
    """Per-device (or one pooled) values as ``[1, S]`` per sequence."""
    a = np.atleast_1d(np.asarray(v, dtype=np.float64))
    if a.size == 1:
        return np.full((1, seq.shape[0]), float(a[0]))
    return a[seq.device][None, :]


class Problem:
    """A least-squares problem over a set of slots (free parameters)."""

    def __init__(
        self,
        fam: Family,
        seq: Sequences,
        score: np.ndarray,
        slots: list[Slot],
        base: dict[str, np.ndarray],
    ) -> None:
        self.fam = fam
        self.seq = seq
        self.slots = slots
        self.base = base  # name -> [D] values per device for everything (fixed and initial)
        self.s_idx, self.t_idx = np.nonzero(score)
        if len(self.s_idx) == 0:
            raise ValueError("no rows to fit: every device needs pulses after its first read")
        self.t_stop = int(self.t_idx.max()) + 1
        # groups of slots perturbed together (disjoint devices)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(slots):
            key = s.name if s.device is not None else f"{s.name}#{i}"
            groups.setdefault(key, []).append(i)
        self.groups = list(groups.values())
        self.rows_dev = np.concatenate([seq.device[self.s_idx], seq.device[self.s_idx]])
        # per-device problems have a block-diagonal Jacobian: keep it sparse and let the trust
        # region use LSMR instead of a dense SVD of [2 n_reads x slots]
        self.sparse = any(s.device is not None for s in slots) and len(slots) > 8
        self._cache_theta: np.ndarray | None = None
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    # ---------------------------------------------------------------- layout
    def theta0(self) -> np.ndarray:
        return np.array([self.base[s.name][0 if s.device is None else s.device] for s in self.slots])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = [], []
        for s in self.slots:
            if s.name == "c2c":
                b = C2C_BOUNDS
            elif s.name == "read_sd":
                b = READ_SD_BOUNDS
            elif s.name == "write_sd":
                b = WRITE_SD_BOUNDS
            elif s.name == "write_rho":
                b = WRITE_RHO_BOUNDS
            else:
                b = self.fam.bounds(s.name)
            lo.append(b[0])
            hi.append(b[1])
        return np.array(lo), np.array(hi)

    def steps(self, theta: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds()
        h = 1e-6 * np.maximum(np.abs(theta), 1e-3)
        flip = theta + h > hi
        return np.where(flip, -h, h)

    def arrays(self, theta: np.ndarray, h: np.ndarray | None) -> dict[str, np.ndarray]:
        """``[B, D]`` arrays (per device) of every parameter for the base and perturbed batch rows."""
        nb = 1 + (len(self.groups) if h is not None else 0)
        out = {k: np.repeat(np.asarray(v, dtype=np.float64)[None, :], nb, axis=0) for k, v in self.base.items()}
        for i, s in enumerate(self.slots):
            if s.device is None:
                out[s.name][:, :] = theta[i]
            else:
                out[s.name][:, s.device] = theta[i]
        if h is not None:
            for g, members in enumerate(self.groups):
                for i in members:
                    s = self.slots[i]
                    if s.device is None:
                        out[s.name][g + 1, :] += h[i]
                    else:
                        out[s.name][g + 1, s.device] += h[i]
        return out

    def evaluate(self, theta: np.ndarray, with_jac: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Innovations and variances ``[B, n_scored]`` (B = 1 + groups when ``with_jac``)."""
        h = self.steps(theta) if with_jac else None
        dev = self.seq.device
        arr = {k: v[:, dev] for k, v in self.arrays(theta, h).items()}
        c2c = arr.pop("c2c")
        rv = arr.pop("read_sd") ** 2
        wsd = arr.pop("write_sd", np.zeros(1))
        wrho = arr.pop("write_rho", np.zeros(1))
        out = run_filter(self.seq, self.fam, arr, c2c, rv, t_stop=self.t_stop, write_var=wsd * wsd, write_rho=wrho)
        nu = out.nu[:, self.s_idx, self.t_idx]
        var = np.maximum(out.var[:, self.s_idx, self.t_idx], 2 * _S0)
        return nu, var

    def _residuals(self, nu: np.ndarray, var: np.ndarray) -> np.ndarray:
        return np.concatenate([nu / np.sqrt(var), np.sqrt(np.log(var / _S0))], axis=-1)

    def _ensure(self, theta: np.ndarray) -> None:
        if self._cache_theta is not None and np.array_equal(theta, self._cache_theta):
            return
        nu, var = self.evaluate(theta, with_jac=True)
        h = self.steps(theta)
        self._cache_theta = theta.copy()
        self._cache = (nu, var, self._residuals(nu, var), h)

    def fun(self, theta: np.ndarray) -> np.ndarray:
        self._ensure(theta)
        assert self._cache is not None
        r = self._cache[2][0]
        return np.where(np.isfinite(r), r, 1e6)

    def _columns(self, diff: np.ndarray, h: np.ndarray, rows_dev: np.ndarray) -> Any:
        """Jacobian-like matrix from batch differences ``diff [B-1, n]`` (one column per slot)."""
        n = diff.shape[1]
        n_slots = len(self.slots)
        cols = []
        rows = []
        vals = []
        for g, members in enumerate(self.groups):
            for i in members:
                s = self.slots[i]
                if s.device is None:
                    r = np.arange(n)
                else:
                    r = np.nonzero(rows_dev == s.device)[0]
                rows.append(r)
                cols.append(np.full(len(r), i))
                vals.append(diff[g, r] / h[i])
        rr = np.concatenate(rows)
        cc = np.concatenate(cols)
        vv = np.nan_to_num(np.concatenate(vals), nan=0.0, posinf=0.0, neginf=0.0)
        if not self.sparse:
            m = np.zeros((n, n_slots))
            m[rr, cc] = vv
            return m
        return sparse.csr_matrix((vv, (rr, cc)), shape=(n, n_slots))

    def jac(self, theta: np.ndarray) -> Any:
        self._ensure(theta)
        assert self._cache is not None
        _, _, res, h = self._cache
        return self._columns(res[1:] - res[0], h, self.rows_dev)

    def fisher(self, theta: np.ndarray) -> np.ndarray:
        """Fisher information ``sum dnu dnu^T / S + 0.5 dS dS^T / S^2`` (slots x slots)."""
        nu, var, _, h = self._cache if self._cache is not None else (None, None, None, None)
        if self._cache_theta is None or not np.array_equal(theta, self._cache_theta):
            self._ensure(theta)
        nu, var, _, h = self._cache  # type: ignore[misc]
        a_nu = (nu[1:] - nu[0]) / np.sqrt(var[0])
        a_s = (var[1:] - var[0]) / (np.sqrt(2.0) * var[0])
        a = np.concatenate([a_nu, a_s], axis=1)
        m = self._columns(a, h, self.rows_dev)
        if sparse.issparse(m):
            return np.asarray((m.T @ m).todense())
        return m.T @ m


def _standard_errors(info: np.ndarray) -> np.ndarray:
    n = info.shape[0]
    if n == 0:
        return np.zeros(0)
    d = np.sqrt(np.clip(np.diag(info), 1e-300, None))
    scaled = info / np.outer(d, d)
    try:
        cov = np.linalg.inv(scaled)
        if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) < 0):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(scaled, rcond=1e-12)
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) / d
    se[np.diag(info) <= 1e-300] = np.inf
    return se


def fit_model(
    fam: Family,
    seq: Sequences,
    score: np.ndarray,
    init: dict[str, np.ndarray],
    *,
    per_device: bool,
    read_sd_fixed: float | None,
    max_nfev: int = 200,
    keep_scales: bool = False,
    fit_write: bool = False,
) -> FitResult:
    """Fit ``fam`` to the rows ``score [S, T]`` starting from ``init`` (name -> [D] or scalar).

    ``keep_scales`` (table, pooled): fit the shared nodes with the per-device scale factors
    and bounds of ``init`` held fixed (the second half of the alternating table fit); the
    result carries those held values per device (length D), the fitted ones pooled (length 1).
    ``fit_write``: also fit the write-noise offset (``write_sd``, ``write_rho``, shared by all
    devices, also in per-device fits).  Otherwise the write noise is held at ``init``'s values
    (none when ``init`` has no ``write_sd``).  The read noise is fitted (shared) when
    ``read_sd_fixed`` is None, in per-device fits too.
    """
    n_dev = seq.n_devices
    base: dict[str, np.ndarray] = {}
    for k, v in init.items():
        a = np.atleast_1d(np.asarray(v, dtype=np.float64))
        base[k] = np.full(n_dev, float(a[0])) if a.size == 1 else a.copy()
    if read_sd_fixed is not None:
        base["read_sd"] = np.full(n_dev, max(float(read_sd_fixed), READ_SD_BOUNDS[0]))
    if fam.kind == "table" and not per_device and not keep_scales:
        base["dw_up"] = np.ones(n_dev)
        base["dw_down"] = np.ones(n_dev)
    slots: list[Slot] = []
    present = np.nonzero(seq.device_rows(score))[0].tolist()
    table = fam.kind == "table"
    if table:
        base["c2c"] = np.zeros(n_dev)  # a table's write noise is its std nodes
    if per_device:
        for name in (*fam.shape_names(), *(() if table else ("c2c",))):
            slots += [Slot(name, d) for d in present]
        if read_sd_fixed is None:
            slots.append(Slot("read_sd", None))
    else:
        names = [n for n in fam.names if not (table and n in ("dw_up", "dw_down"))]
        if keep_scales:
            names = [n for n in names if n not in fam.shape_names()]
        slots += [Slot(name, None) for name in names]
        if not table:
            slots.append(Slot("c2c", None))
        if read_sd_fixed is None:
            slots.append(Slot("read_sd", None))
    if fit_write:
        base.setdefault("write_sd", np.zeros(n_dev))
        base.setdefault("write_rho", np.zeros(n_dev))
        slots += [Slot("write_sd", None), Slot("write_rho", None)]
    prob = Problem(fam, seq, score, slots, base)
    theta0 = prob.theta0()
    lo, hi = prob.bounds()
    theta0 = np.clip(theta0, lo + 1e-12 * (hi - lo), hi - 1e-12 * (hi - lo))
    if slots:
        res = optimize.least_squares(
            prob.fun,
            theta0,
            jac=prob.jac,
            bounds=(lo, hi),
            x_scale="jac",
            method="trf",
            max_nfev=max_nfev,
            ftol=1e-7,
            xtol=1e-7,
            gtol=1e-8,
            tr_solver="lsmr" if prob.sparse else "exact",
        )
        theta = res.x
        se_flat = _standard_errors(prob.fisher(theta))
        success, message, nfev = bool(res.success), str(res.message), int(res.nfev)
    else:  # nothing free (e.g. a noise-only fit of a table with the read noise fixed): evaluate
        theta = theta0
        se_flat = np.zeros(0)
        success, message, nfev = True, "no free parameters", 1
    arr = prob.arrays(theta, None)
    # a pooled fit returns one value per parameter, except the per-device scales and bounds that
    # ``keep_scales`` holds: they go back as they came, one per device (the per-device refit
    # that follows starts from them, not from the first device's)
    held = set(fam.shape_names()) if keep_scales else set()
    values = {k: (v[0] if per_device or k in held else v[0, :1]).copy() for k, v in arr.items()}
    se: dict[str, np.ndarray] = {}
    for i, s in enumerate(slots):
        if s.name not in se:
            se[s.name] = np.full(len(values[s.name]), np.nan)
        se[s.name][0 if s.device is None else s.device] = se_flat[i]
    nu, var = prob.evaluate(theta, with_jac=False)
    nll = float(gaussian_nll(nu[0], var[0]).sum())
    return FitResult(
        kind=fam.kind,
        per_device=per_device,
        values=values,
        se=se,
        nll=nll,
        n_scored=len(prob.s_idx),
        k=len(slots),
        success=success,
        message=message,
        nfev=nfev,
        fixed={"read_sd": float(read_sd_fixed)} if read_sd_fixed is not None else {},
        slot_names=tuple(dict.fromkeys(s.name for s in slots)),
    )


def row_nll(fam: Family, seq: Sequences, fit: FitResult, score: np.ndarray) -> np.ndarray:
    """Per-read NLL on the rows ``score [S, T]`` (in ``np.nonzero(score)`` order)."""
    p, c2c, rv = fit.param_arrays(seq)
    s_idx, t_idx = np.nonzero(score)
    if len(s_idx) == 0:
        return np.zeros(0)
    out = run_filter(seq, fam, p, c2c, rv, t_stop=int(t_idx.max()) + 1, **fit.write_arrays(seq))
    return gaussian_nll(out.nu[0, s_idx, t_idx], np.maximum(out.var[0, s_idx, t_idx], 2 * _S0))


def device_nll(fam: Family, seq: Sequences, fit: FitResult, score: np.ndarray) -> np.ndarray:
    """NLL of every device's scored reads ``[D]``."""
    s_idx, _ = np.nonzero(score)
    per_read = row_nll(fam, seq, fit, score)
    return np.bincount(seq.device[s_idx], weights=per_read, minlength=seq.n_devices)


def best_per_device(fits: list[FitResult], nlls: list[np.ndarray]) -> FitResult:
    """Per device, the parameters of the fit with the lowest NLL (devices are independent)."""
    best = np.argmin(np.stack(nlls), axis=0)
    base = fits[0]
    values = {k: v.copy() for k, v in base.values.items()}
    se = {k: v.copy() for k, v in base.se.items()}
    for j, f in enumerate(fits[1:], start=1):
        pick = best == j
        for k in values:
            if k in f.values and len(f.values[k]) == len(pick):
                values[k][pick] = f.values[k][pick]
        for k in se:
            if k in f.se and len(f.se[k]) == len(pick):
                se[k][pick] = f.se[k][pick]
    nll = float(sum(n[d] for d, n in zip(range(len(best)), (nlls[j] for j in best), strict=True)))
    return FitResult(
        kind=base.kind,
        per_device=True,
        values=values,
        se=se,
        nll=nll,
        n_scored=base.n_scored,
        k=base.k,
        success=all(f.success for f in fits),
        message="; ".join(sorted({f.message for f in fits})),
        nfev=sum(f.nfev for f in fits),
        fixed=base.fixed,
        slot_names=base.slot_names,
    )
