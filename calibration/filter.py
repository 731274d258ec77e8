"""A vectorized extended Kalman filter over pulse-response sequences: the fit's likelihood.

State-space model of one device (normalized weights):

- state ``w_k = f(w_{k-1}; polarity_k) + eta_k``, with ``f`` the step model's one-pulse
  transition (identity for a read without a pulse) and write noise
  ``eta_k ~ N(0, (c2c * |delta(w_{k-1})|)^2 [+ table std^2])``;
- read ``y_k = w_k + e_k``, read noise ``e_k ~ N(0, sigma_read^2)``.

The filter's innovations ``nu_k = y_k - E[y_k | y_1..y_{k-1}]`` with variances
``S_k`` give the exact Gaussian likelihood of a linear model (and its first-order
approximation otherwise): ``-2 ln L = sum(nu^2 / S + ln(2 pi S))``.  This
separates read noise (which makes successive steps anti-correlated) from write
noise (which accumulates), without regressing steps on noisy states.

One Python loop runs over the pulse index; all devices (sequences) and all
parameter sets of a batch (used for finite-difference Jacobians) advance
together as numpy arrays ``[batch, sequences]``.  A sequence restarts from its
read at every segment start (first row of a device, or after unrecorded pulses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from hil.calibration.measurements import MeasurementSet
from hil.calibration.stepmodels import Family, clip

LOG_2PI = float(np.log(2.0 * np.pi))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


CHUNK = 64


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


def run_filter(
    seq: Sequences,
    fam: Family,
    params: dict[str, np.ndarray],
    c2c: np.ndarray,
    read_var: np.ndarray,
    t_stop: int | None = None,
    keep_state: bool = False,
) -> FilterOutput:
    """Run the filter for a batch of parameter sets.

    ``params[name]``, ``c2c`` and ``read_var`` broadcast to ``[B, S]`` (B parameter sets,
    S sequences).  Returns innovations and their variances ``[B, S, T]``.
    """
    s_count, t_len = seq.shape
    t_stop = t_len if t_stop is None else min(t_stop, t_len)
    shapes = [np.shape(v) for v in params.values()] + [np.shape(c2c), np.shape(read_var)]
    b = max([s[0] if len(s) == 2 else 1 for s in shapes] + [1])
    full = (b, s_count)
    p = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), full) for k, v in params.items()}
    c2 = np.broadcast_to(np.asarray(c2c, dtype=np.float64), full)
    r = np.broadcast_to(np.asarray(read_var, dtype=np.float64), full)
    p = fam.prepare(p)
    lo, hi = fam.bounds_of(p)
    lo = np.broadcast_to(lo, full)
    hi = np.broadcast_to(hi, full)
    ups = seq.pol > 0
    dns = seq.pol < 0
    any_up, all_up = ups.any(axis=0), ups.all(axis=0)
    any_dn, all_dn = dns.any(axis=0), dns.all(axis=0)
    any_reset = seq.reset.any(axis=0)
    any_pulse = any_up | any_dn
    nu = np.zeros((b, s_count, t_len))
    var = np.ones((b, s_count, t_len))
    state = np.zeros((b, s_count, t_len)) if keep_state else None
    pred = np.zeros((b, s_count, t_len)) if keep_state else None
    x = clip(np.broadcast_to(seq.y[:, 0], full), lo, hi)
    pv = r.copy()
    for t in range(t_stop):
        yt = seq.y[:, t]
        xm = x
        f: np.ndarray | float = 1.0
        q: np.ndarray | float = 0.0
        if any_up[t]:
            xu, fu, nsu, tab = fam.transition(x, True, p)
            qu = (c2 * nsu) ** 2 if tab is None else (c2 * nsu) ** 2 + tab**2
            if all_up[t]:
                xm, f, q = xu, fu, qu
            else:
                up = ups[:, t]
                xm = np.where(up, xu, xm)
                f = np.where(up, fu, f)
                q = np.where(up, qu, q)
        if any_dn[t]:
            xd, fd, nsd, tab = fam.transition(x, False, p)
            qd = (c2 * nsd) ** 2 if tab is None else (c2 * nsd) ** 2 + tab**2
            if all_dn[t]:
                xm, f, q = xd, fd, qd
            else:
                dn = dns[:, t]
                xm = np.where(dn, xd, xm)
                f = np.where(dn, fd, f)
                q = np.where(dn, qd, q)
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


def censored(m: np.ndarray, var: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``clamp(X, lo, hi)`` for ``X ~ N(m, var)``.

    The simulator clamps every noisy state to the device bounds, so at a bound the
    state distribution is censored: its mean moves inside and its variance shrinks.
    """
    s = np.sqrt(np.maximum(var, 1e-300))
    a = (lo - m) / s
    b = (hi - m) / s
    pa = ndtr(a)
    pb = ndtr(b)
    p_in = np.maximum(pb - pa, 0.0)
    fa = np.exp(-0.5 * np.minimum(a * a, 1400.0)) * _INV_SQRT_2PI
    fb = np.exp(-0.5 * np.minimum(b * b, 1400.0)) * _INV_SQRT_2PI
    p_hi = 1.0 - pb
    e1_in = m * p_in + s * (fa - fb)
    e2_in = m * m * p_in + 2.0 * m * s * (fa - fb) + var * (p_in + _finite(a * fa) - _finite(b * fb))
    mean = lo * pa + hi * p_hi + e1_in
    second = lo * lo * pa + hi * hi * p_hi + e2_in
    return mean, np.maximum(second - mean * mean, 0.0)


def _finite(v: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(v), v, 0.0)


def gaussian_nll(nu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Per-read negative log-likelihood ``0.5 (nu^2/S + ln 2 pi S)``."""
    return 0.5 * (nu * nu / var + np.log(var) + LOG_2PI)
