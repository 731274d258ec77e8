"""A vectorized extended Kalman filter over pulse-response sequences: the fit's likelihood.

State-space model of one device (normalized weights):

- hidden weight ``w_k = f(w_{k-1}; polarity_k) + eta_k``, with ``f`` the step model's
  one-pulse transition (identity for a read without a pulse) and accumulating write noise
  ``eta_k ~ N(0, (c2c * |delta(w_{k-1})|)^2 [+ table std^2])``;
- optionally the write-noise offset ``o_k = rho o_{k-1} + sqrt(1 - rho^2) sigma_o xi_k``
  at a pulse, ``o_k = o_{k-1}`` at a read without one (:func:`_run_filter_offset`);
- read ``y_k = w_k [+ o_k] + e_k``, read noise ``e_k ~ N(0, sigma_read^2)``.

The filter's innovations ``nu_k = y_k - E[y_k | y_1..y_{k-1}]`` with variances
``S_k`` give the exact Gaussian likelihood of a linear model (and its first-order
approximation otherwise): ``-2 ln L = sum(nu^2 / S + ln(2 pi S))``.  This
separates read noise (which makes successive steps anti-correlated), the offset
(correlated over ``-1 / ln rho`` pulses, not accumulating) and the c2c write noise
(which accumulates), without regressing steps on noisy states.

One Python loop runs over the pulse index; all devices (sequences) and all
parameter sets of a batch (used for finite-difference Jacobians) advance
together as numpy arrays ``[batch, sequences]``.  A sequence restarts from its
read at every segment start (first row of a device, or after unrecorded pulses) and
at every chunk start (:class:`Sequences`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr

from hil.calibration.measurements import MeasurementSet
from hil.calibration.stepmodels import Family, clip

LOG_2PI = float(np.log(2.0 * np.pi))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))
_FAR = 10.0  # standard deviations from a bound beyond which censoring is skipped


# contiguous runs longer than CHUNK reads are cut into chunks of about CHUNK reads (speed);
# every chunk starts from its first read, so a chunk must be long compared to the memory of
# the noise: with the HfO2 file's correlated noise, chunks of 64 reads make a correlated
# offset look like a random walk (see docs/calibration.md, section 4)
CHUNK = 1024


@dataclass
class Sequences:
    """Rows of a measurement set cut into padded sequences (chunks) for the filter.

    Every contiguous run of a device (a segment: from its first row, or after a
    jump in ``pulse``) is cut into chunks of about ``chunk`` reads (between half and
    one and a half times it); each chunk starts from its first read, exactly as a
    segment does.  This loses one scored read per chunk and makes the Python loop
    over the pulse index ``chunk`` long instead of a device's whole history long.
    """

    y: np.ndarray  # [S, T] reads, normalized weights
    pol: np.ndarray  # [S, T] int8 polarity
    reset: np.ndarray  # [S, T] chunk starts
    valid: np.ndarray  # [S, T]
    row: np.ndarray  # [S, T] row index into the measurement set, -1 for padding
    device: np.ndarray  # [S] device index of each sequence
    devices: list[str]
    #: [S, T] step scale of every pulse (pulses of other shapes than the nominal one:
    #: :mod:`hil.calibration.pulse_law`); None: identical pulses.  run_filter uses it by default.
    scale: np.ndarray | None = None

    @classmethod
    def build(cls, ms: MeasurementSet, w: np.ndarray, chunk: int = CHUNK) -> Sequences:
        codes, names = ms.device_codes()
        starts = ms.segment_starts()
        pieces: list[tuple[int, np.ndarray]] = []
        for d in range(len(names)):
            idx = np.nonzero(codes == d)[0]
            seg_starts = np.nonzero(starts[idx])[0].tolist() + [len(idx)]
            for a, b in zip(seg_starts[:-1], seg_starts[1:], strict=True):
                seg = idx[a:b]
                n_chunks = max(1, int(round(len(seg) / chunk)))
                for part in np.array_split(seg, n_chunks):
                    pieces.append((d, part))
        s_count = len(pieces)
        t_len = max(len(p) for _, p in pieces)
        y = np.zeros((s_count, t_len))
        pol = np.zeros((s_count, t_len), dtype=np.int8)
        reset = np.zeros((s_count, t_len), dtype=bool)
        valid = np.zeros((s_count, t_len), dtype=bool)
        row = np.full((s_count, t_len), -1, dtype=np.int64)
        device = np.zeros(s_count, dtype=np.int64)
        for s, (d, idx) in enumerate(pieces):
            n = len(idx)
            y[s, :n] = w[idx]
            y[s, n:] = w[idx[-1]]
            pol[s, :n] = ms.polarity[idx]
            reset[s, 0] = True
            valid[s, :n] = True
            row[s, :n] = idx
            device[s] = d
        return cls(y=y, pol=pol, reset=reset, valid=valid, row=row, device=device, devices=names)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y.shape  # type: ignore[return-value]

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """``[S, T]`` mask of the rows selected by a boolean row mask (scored rows exclude
        chunk starts, whose innovation is undefined)."""
        m = np.zeros(self.shape, dtype=bool)
        ok = self.row >= 0
        m[ok] = rows[self.row[ok]]
        return m & ~self.reset & self.valid

    def device_rows(self, score: np.ndarray) -> np.ndarray:
        """Devices with at least one scored read ``[D]`` (bool)."""
        out = np.zeros(self.n_devices, dtype=bool)
        out[self.device[score.any(axis=1)]] = True
        return out


@dataclass
class FilterOutput:
    nu: np.ndarray  # [B, S, T] innovations
    var: np.ndarray  # [B, S, T] innovation variances
    state: np.ndarray | None  # [B, S, T] filtered states (when requested)
    pred: np.ndarray | None  # [B, S, T] one-step predictions


@dataclass
class _Setup:
    """What both filters start from: broadcast parameters ``[B, S]``, bounds, the pulse masks
    ``[S, T]`` and per-step flags ``[T]``, output buffers ``[B, S, T]``, the first state."""

    t_stop: int
    full: tuple[int, int]
    p: dict[str, np.ndarray]
    c2: np.ndarray
    r: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    ups: np.ndarray
    pulses: np.ndarray
    any_up: np.ndarray
    any_dn: np.ndarray
    any_pulse: np.ndarray
    all_pulse: np.ndarray
    any_reset: np.ndarray
    nu: np.ndarray
    var: np.ndarray
    state: np.ndarray | None
    pred: np.ndarray | None
    x: np.ndarray


def _setup(
    seq: Sequences,
    fam: Family,
    params: dict[str, np.ndarray],
    c2c: np.ndarray,
    read_var: np.ndarray,
    t_stop: int | None,
    keep_state: bool,
    extra: tuple[Any, ...] = (),
) -> _Setup:
    """The common start of :func:`run_filter` and :func:`_run_filter_offset` (``extra``: more
    arrays whose leading dimension may set the batch size B)."""
    s_count, t_len = seq.shape
    t_stop = t_len if t_stop is None else min(t_stop, t_len)
    shapes = [np.shape(v) for v in params.values()] + [np.shape(c2c), np.shape(read_var)]
    shapes += [np.shape(v) for v in extra]
    b = max([s[0] if len(s) == 2 else 1 for s in shapes] + [1])
    full = (b, s_count)
    p = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), full) for k, v in params.items()}
    p = fam.prepare(p)
    lo, hi = fam.bounds_of(p)
    lo = np.broadcast_to(lo, full)
    hi = np.broadcast_to(hi, full)
    ups = seq.pol > 0
    dns = seq.pol < 0
    pulses = ups | dns
    return _Setup(
        t_stop=t_stop,
        full=full,
        p=p,
        c2=np.broadcast_to(np.asarray(c2c, dtype=np.float64), full),
        r=np.broadcast_to(np.asarray(read_var, dtype=np.float64), full),
        lo=lo,
        hi=hi,
        ups=ups,
        pulses=pulses,
        any_up=ups.any(axis=0),
        any_dn=dns.any(axis=0),
        any_pulse=pulses.any(axis=0),
        all_pulse=pulses.all(axis=0),
        any_reset=seq.reset.any(axis=0),
        nu=np.zeros((b, s_count, t_len)),
        var=np.ones((b, s_count, t_len)),
        state=np.zeros((b, s_count, t_len)) if keep_state else None,
        pred=np.zeros((b, s_count, t_len)) if keep_state else None,
        x=clip(np.broadcast_to(seq.y[:, 0], full), lo, hi),
    )


def run_filter(
    seq: Sequences,
    fam: Family,
    params: dict[str, np.ndarray],
    c2c: np.ndarray,
    read_var: np.ndarray,
    t_stop: int | None = None,
    keep_state: bool = False,
    write_var: np.ndarray | float = 0.0,
    write_rho: np.ndarray | float = 0.0,
    step_scale: np.ndarray | None = None,
) -> FilterOutput:
    """Run the filter for a batch of parameter sets.

    ``params[name]``, ``c2c``, ``read_var``, ``write_var`` and ``write_rho`` broadcast to
    ``[B, S]`` (B parameter sets, S sequences).  ``write_var``: variance of the
    non-accumulating write-noise offset (0: none, the one-dimensional filter runs);
    ``write_rho``: its correlation from one pulse to the next.  Returns innovations and
    their variances ``[B, S, T]``; ``state`` is the hidden weight's filtered mean.
    ``step_scale`` ``[S, T]`` or ``[B, S, T]`` (optional): every pulse's mean step and its
    noise multiplied by this factor (pulses of different strength, e.g. by amplitude; 1: as the
    step model); default ``seq.scale`` (None there: identical pulses).
    """
    if step_scale is None:
        step_scale = seq.scale
    if np.any(np.asarray(write_var) > 0):
        return _run_filter_offset(seq, fam, params, c2c, read_var, write_var, write_rho, t_stop, keep_state,
                                  step_scale)
    s = _setup(seq, fam, params, c2c, read_var, t_stop, keep_state)
    p, c2, r, lo, hi, x = s.p, s.c2, s.r, s.lo, s.hi, s.x
    ups, pulses, any_up, any_dn, all_pulse, any_pulse, any_reset = (
        s.ups, s.pulses, s.any_up, s.any_dn, s.all_pulse, s.any_pulse, s.any_reset
    )
    nu, var, state, pred, t_stop = s.nu, s.var, s.state, s.pred, s.t_stop
    pv = r.copy()
    for t in range(t_stop):
        yt = seq.y[:, t]
        xm, f, q = _predict(fam, x, p, c2, t, ups, pulses, any_up, any_dn, all_pulse, step_scale)
        pm = f * f * pv + q
        if any_pulse[t]:
            xm, pm = censored(xm, pm, lo, hi)
        st = pm + r
        inn = yt - xm
        k = pm / st
        x = clip(xm + k * inn, lo, hi)
        pv = (1.0 - k) * pm
        if any_reset[t]:
            rs = seq.reset[:, t]
            x = np.where(rs, clip(yt, lo, hi), x)
            pv = np.where(rs, r, pv)
        nu[:, :, t] = inn
        var[:, :, t] = st
        if keep_state:
            state[:, :, t] = x  # type: ignore[index]
            pred[:, :, t] = xm  # type: ignore[index]
    return FilterOutput(nu=nu, var=var, state=state, pred=pred)


def _run_filter_offset(
    seq: Sequences,
    fam: Family,
    params: dict[str, np.ndarray],
    c2c: np.ndarray,
    read_var: np.ndarray,
    write_var: np.ndarray | float,
    write_rho: np.ndarray | float,
    t_stop: int | None,
    keep_state: bool,
    step_scale: np.ndarray | None = None,
) -> FilterOutput:
    """:func:`run_filter` with the write-noise offset: a two-dimensional state per sequence.

    State ``(h, o)``: the hidden weight that the pulses move and the offset that reads
    see on top of it (``y = h + o + e``).  A pulse moves ``h`` by the step model (with
    the c2c noise) and replaces ``o`` by ``rho o + sqrt(1 - rho^2) sigma_o xi``; a read
    without a pulse leaves both.  At a bound the hidden weight is censored (clamped):
    its mean and variance as in :func:`censored`, its covariance with ``o`` scaled by
    the probability of being inside (``Cov(clamp(X), Y) = P(lo < X < hi) Cov(X, Y)``
    for jointly Gaussian ``X``, ``Y``).  A chunk starts from its first read with a
    diffuse prior on ``h`` and ``o ~ N(0, sigma_o^2)``: ``h = y``, ``var h = sigma_o^2 + r``,
    ``cov(h, o) = -sigma_o^2``.
    """
    s = _setup(seq, fam, params, c2c, read_var, t_stop, keep_state, (write_var, write_rho))
    p, c2, r, lo, hi, x = s.p, s.c2, s.r, s.lo, s.hi, s.x
    ups, pulses, any_up, any_dn, all_pulse, any_pulse, any_reset = (
        s.ups, s.pulses, s.any_up, s.any_dn, s.all_pulse, s.any_pulse, s.any_reset
    )
    nu, var, state, pred, t_stop, full = s.nu, s.var, s.state, s.pred, s.t_stop, s.full
    so2 = np.broadcast_to(np.asarray(write_var, dtype=np.float64), full)
    rho = np.broadcast_to(np.asarray(write_rho, dtype=np.float64), full)
    rho2 = rho * rho
    q_off = (1.0 - rho2) * so2
    o = np.zeros(full)
    phh = so2 + r
    pho = -so2
    poo = so2.copy()
    for t in range(t_stop):
        yt = seq.y[:, t]
        xm, f, q = _predict(fam, x, p, c2, t, ups, pulses, any_up, any_dn, all_pulse, step_scale)
        mhh = f * f * phh + q
        if any_pulse[t]:
            if all_pulse[t]:
                om, mho, moo = rho * o, f * rho * pho, rho2 * poo + q_off
            else:
                pl = pulses[:, t]
                om = np.where(pl, rho * o, o)
                mho = np.where(pl, f * rho * pho, pho)
                moo = np.where(pl, rho2 * poo + q_off, poo)
            xm, mhh, p_in = censored(xm, mhh, lo, hi, inside=True)
            mho = mho * p_in
        else:
            om, mho, moo = o, pho, poo
        st = mhh + 2.0 * mho + moo + r
        inn = yt - xm - om
        kh = (mhh + mho) / st
        ko = (mho + moo) / st
        x = clip(xm + kh * inn, lo, hi)
        o = om + ko * inn
        phh = mhh - kh * kh * st
        pho = mho - kh * ko * st
        poo = moo - ko * ko * st
        if any_reset[t]:
            rs = seq.reset[:, t]
            x = np.where(rs, clip(yt, lo, hi), x)
            o = np.where(rs, 0.0, o)
            phh = np.where(rs, so2 + r, phh)
            pho = np.where(rs, -so2, pho)
            poo = np.where(rs, so2, poo)
        nu[:, :, t] = inn
        var[:, :, t] = st
        if keep_state:
            state[:, :, t] = x  # type: ignore[index]
            pred[:, :, t] = xm  # type: ignore[index]
    return FilterOutput(nu=nu, var=var, state=state, pred=pred)


def _predict(
    fam: Family,
    x: np.ndarray,
    p: dict[str, np.ndarray],
    c2: np.ndarray,
    t: int,
    ups: np.ndarray,
    pulses: np.ndarray,
    any_up: np.ndarray,
    any_dn: np.ndarray,
    all_pulse: np.ndarray,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | float, np.ndarray | float]:
    """Mean state after step ``t`` (before censoring), its derivative and the c2c (plus table)
    variance, ``[B, S]``; sequences without a pulse at ``t`` keep ``x`` (derivative 1, no noise).
    One transition for all sequences: per-element directions where both occur.  ``scale``
    ``[S, T]``: step multipliers (see :func:`run_filter`)."""
    if not (any_up[t] or any_dn[t]):
        return x, 1.0, 0.0
    if any_up[t] and any_dn[t]:
        up: bool | np.ndarray = ups[:, t]
    else:
        up = bool(any_up[t])
    if scale is not None:
        # every step model's step (and its noise) is proportional to dw_up / dw_down: a pulse of
        # another strength is the transition with those scaled (as the simulator applies it)
        st = scale[..., t]
        p = {**p, "dw_up": p["dw_up"] * st, "dw_down": p["dw_down"] * st}
    xt, ft, ns, tab = fam.transition(x, up, p)
    qt = (c2 * ns) ** 2 if tab is None else (c2 * ns) ** 2 + tab**2
    if all_pulse[t]:
        return xt, ft, qt
    pl = pulses[:, t]
    return np.where(pl, xt, x), np.where(pl, ft, 1.0), np.where(pl, qt, 0.0)


def censored(
    m: np.ndarray, var: np.ndarray, lo: np.ndarray, hi: np.ndarray, inside: bool = False
) -> Any:
    """Mean and variance of ``clamp(X, lo, hi)`` for ``X ~ N(m, var)`` (and, with ``inside``,
    ``P(lo < X < hi)`` as a third value).

    The simulator clamps every noisy state to the device bounds, so at a bound the
    state distribution is censored: its mean moves inside and its variance shrinks.
    When every entry is more than ``_FAR`` standard deviations inside both bounds, the
    inputs are returned (the censoring would move them by less than 1e-20 of their value).
    """
    s = np.sqrt(np.maximum(var, 1e-300))
    a = (lo - m) / s
    b = (hi - m) / s
    if a.max() < -_FAR and b.min() > _FAR:
        return (m, var, np.ones_like(m)) if inside else (m, var)
    return _censored(m, var, s, a, b, lo, hi, inside)


def _censored(
    m: np.ndarray, var: np.ndarray, s: np.ndarray, a: np.ndarray, b: np.ndarray,
    lo: np.ndarray, hi: np.ndarray, inside: bool,
) -> Any:
    """:func:`censored`'s moments for every entry (``s``: std, ``a``/``b``: standardized bounds).

    In standardized units ``Z = (X - m) / s`` clamped to ``[a, b]``:
    ``E = a P(Z<a) + b P(Z>b) + phi(a) - phi(b)`` and
    ``E2 = a^2 P(Z<a) + b^2 P(Z>b) + P(a<Z<b) + a phi(a) - b phi(b)``; the mean is
    ``m + s E`` and the variance ``var (E2 - E^2)`` (no cancellation of large second moments).
    ``lo`` / ``hi`` enter through ``a`` / ``b`` (finite: the bounds are fitted parameters); an
    entry whose standardized bound overflows (a variance at its floor) is the clamped mean with
    no variance."""
    pa = ndtr(a)
    q = ndtr(-b)  # P(Z > b)
    p_in = np.maximum(1.0 - q - pa, 0.0)
    fa = np.exp(np.minimum(a * a, 1400.0) * -0.5) * _INV_SQRT_2PI
    fb = np.exp(np.minimum(b * b, 1400.0) * -0.5) * _INV_SQRT_2PI
    apa = a * pa
    bq = b * q
    e1 = apa + bq + fa - fb
    e2 = a * apa + b * bq + p_in + a * fa - b * fb
    mean = m + s * e1
    v = np.maximum(var * (e2 - e1 * e1), 0.0)
    if not np.isfinite(e2).all():
        bad = ~np.isfinite(e2)
        mean = np.where(bad, np.clip(m, lo, hi), mean)
        v = np.where(bad, 0.0, v)
    if inside:
        return mean, v, p_in
    return mean, v


def gaussian_nll(nu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Per-read negative log-likelihood ``0.5 (nu^2/S + ln 2 pi S)``."""
    return 0.5 * (nu * nu / var + np.log(var) + LOG_2PI)
