"""The statistics of a measurement file, computed from resampling weights so that one code path
gives both the point estimate and its bootstrap distribution.

Everything is expressed in **normalized units of the reference**: a conductance
``G`` (siemens) becomes ``u = (G - g0) / R`` with ``g0`` the lowest value of the
reference's mean conductance trajectory and ``R`` its range, so that both files
are compared on one axis and the numbers read as fractions of the reference's
conductance range.

How the data are aggregated (:func:`build_features`): every row contributes to a
few sums (per device, step direction and state bin: count, sums of the steps,
the states, their squares and their product; per device and trajectory position:
sum and count of the conductance; read-noise sums of squares and degrees of
freedom).  Rows are grouped into resampling **units** (devices, cycles or single
rows, see :func:`choose_level`); a bootstrap replicate is a vector of unit
multiplicities, and the sums of a replicate are one sparse matrix product.
:func:`derive` turns the sums into the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from hil.validation.measurements import Measurements, UnusableInputError

Level = Literal["device", "block", "none"]
DIRECTIONS = ("up", "down")  # direction 0: polarity +1, direction 1: polarity -1
# sums per (device, direction, state bin): n, sum s, sum s^2, sum u, sum u^2, sum u s
# (s: step, u: state before the pulse, both in units of the reference range)
N_STEP_SUMS = 6


@dataclass
class Prepared:
    """Per-row derived quantities of one file (see :func:`prepare`)."""

    meas: Measurements
    dev_idx: np.ndarray  # [n] device index (file order)
    n_dev: int
    block_idx: np.ndarray  # [n] (device, cycle) block index
    n_blocks: int
    block_dev: np.ndarray  # [n_blocks] device of each block
    step_dir: np.ndarray  # [n] 0 up, 1 down, -1 no step (read row or first row of a block)
    state: np.ndarray  # [n] conductance read before the pulse (siemens), nan without
    step: np.ndarray  # [n] conductance change of the pulse (siemens), nan without
    key_id: np.ndarray  # [n] trajectory position id (index into keys), -1 for read rows
    keys: list[tuple[int, int, int]]  # (phase, polarity, position within phase)
    key_fraction: np.ndarray  # [len(keys)] fraction of blocks holding each position
    read_dev2: np.ndarray  # [n] squared deviation from its read group's mean (siemens^2)
    read_dof: np.ndarray  # [n] the row's share of its read group's degrees of freedom

    @property
    def n_rows(self) -> int:
        return len(self.meas)


def prepare(meas: Measurements) -> Prepared:
    """Steps, trajectory positions and read groups of every row (rows sorted as in the file)."""
    n = len(meas)
    if n == 0:
        raise UnusableInputError(f"{meas.source or 'measurements'}: no rows")
    dev_names, first, dev_idx = np.unique(meas.device, return_index=True, return_inverse=True)
    dev_idx = dev_idx.ravel()
    # keep file order of devices
    remap = np.empty(dev_names.size, dtype=np.int64)
    remap[np.argsort(first)] = np.arange(dev_names.size)
    dev_idx = remap[dev_idx]
    pair = dev_idx.astype(np.int64) * (int(meas.cycle.max() - meas.cycle.min()) + 1) + (
        meas.cycle - meas.cycle.min()
    )
    new_block = np.r_[True, pair[1:] != pair[:-1]]
    block_idx = np.cumsum(new_block) - 1
    n_blocks = int(block_idx[-1]) + 1
    block_dev = dev_idx[new_block]
    if np.unique(pair[new_block]).size != n_blocks:
        raise UnusableInputError(
            f"{meas.source or 'measurements'}: rows of one (device, cycle) are not contiguous "
            "after sorting by device, cycle, pulse"
        )
    g = meas.conductance
    pol = meas.polarity.astype(np.int64)
    # consecutive rows: same block and the next pulse number (a jump marks unrecorded events)
    same_block_prev = np.r_[False, (block_idx[1:] == block_idx[:-1]) & (np.diff(meas.pulse) == 1)]
    prev_g = np.r_[np.nan, g[:-1]]
    is_step = same_block_prev & (pol != 0)
    step_dir = np.where(is_step, np.where(pol > 0, 0, 1), -1)
    state = np.where(is_step, prev_g, np.nan)
    step = np.where(is_step, g - prev_g, np.nan)

    # trajectory positions: pulse rows, by (phase, polarity, position within phase) in each block
    key_id = np.full(n, -1, dtype=np.int64)
    pr = np.flatnonzero(pol != 0)
    keys: list[tuple[int, int, int]] = []
    key_fraction = np.zeros(0)
    if pr.size:
        b = block_idx[pr]
        p = pol[pr]
        nb = np.r_[True, b[1:] != b[:-1]]
        ns = nb | np.r_[True, p[1:] != p[:-1]]
        seg = np.cumsum(ns) - 1
        seg_at_block = np.maximum.accumulate(np.where(nb, seg, 0))
        phase = seg - seg_at_block
        seg_start = np.flatnonzero(ns)
        pos = np.arange(pr.size) - seg_start[seg]
        npos = int(pos.max()) + 1
        code = (phase * 3 + (p + 1)) * npos + pos
        uniq, inv = np.unique(code, return_inverse=True)
        inv = inv.ravel()
        key_id[pr] = inv
        keys = [(int(c // npos // 3), int(c // npos % 3) - 1, int(c % npos)) for c in uniq]
        kb = np.unique(inv.astype(np.int64) * n_blocks + b)
        key_fraction = np.bincount(kb // n_blocks, minlength=len(keys)) / n_blocks

    # read groups: a row followed by polarity-0 rows of the same block
    start = ~(same_block_prev & (pol == 0))
    grp = np.cumsum(start) - 1
    size = np.bincount(grp)
    gmean = np.bincount(grp, weights=g) / size
    in_group = size[grp] >= 2
    read_dev2 = np.where(in_group, (g - gmean[grp]) ** 2, 0.0)
    read_dof = np.where(in_group, (size[grp] - 1) / size[grp], 0.0)
    return Prepared(
        meas=meas,
        dev_idx=dev_idx,
        n_dev=int(dev_names.size),
        block_idx=block_idx,
        n_blocks=n_blocks,
        block_dev=block_dev,
        step_dir=step_dir,
        state=state,
        step=step,
        key_id=key_id,
        keys=keys,
        key_fraction=key_fraction,
        read_dev2=read_dev2,
        read_dof=read_dof,
    )


def choose_level(prep: Prepared, min_units: int) -> Level:
    """Replication unit of a file: devices if it has ``min_units`` of them, else cycles, else none.

    Devices are the top of the hierarchy (device -> cycle -> step): resampling them
    keeps the device-to-device spread and every cycle's shared trajectory in the
    error estimate.  With fewer devices the (device, cycle) blocks are the units:
    the error is then that of *these* devices' cycles.  A file of one cycle of
    one device has a single unit (``"none"``): its run-to-run variability cannot
    be estimated, and steps inside one cycle are not independent units.
    """
    if prep.n_dev >= min_units:
        return "device"
    if prep.n_blocks >= 2:
        return "block"
    return "none"


def unit_index(prep: Prepared, level: Level) -> tuple[np.ndarray, np.ndarray]:
    """Unit of every row ``[n]`` and device of every unit ``[n_units]``."""
    if level == "device":
        return prep.dev_idx, np.arange(prep.n_dev)
    if level == "block":
        return prep.block_idx, prep.block_dev
    return np.zeros(prep.n_rows, dtype=np.int64), prep.block_dev[:1]


@dataclass
class Axis:
    """The reference's normalization and state bins, shared by both files."""

    g0: float  # siemens
    scale: float  # siemens (reference range R)
    inner_edges: np.ndarray  # [n_bins - 1] normalized units
    n_bins: int
    key_map: dict[tuple[int, int, int], int]  # trajectory position -> common index
    keys: list[tuple[int, int, int]]

    def norm(self, g: np.ndarray) -> np.ndarray:
        return (g - self.g0) / self.scale

    def bin_of(self, u: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.inner_edges, u, side="right")


@dataclass
class Features:
    """Per-unit sums of one file (sparse ``[n_units, n_features]``) and the layout to read them."""

    matrix: sp.csr_matrix
    level: Level
    n_units: int
    n_dev: int
    n_bins: int
    n_keys: int
    units_per_dev: np.ndarray  # [n_dev]
    off_traj: int
    off_read: int
    off_pres: int


def build_features(prep: Prepared, axis: Axis, level: Level) -> Features:
    """Aggregate the rows of ``prep`` into per-unit sums on the reference ``axis``."""
    unit, unit_dev = unit_index(prep, level)
    n_units = int(unit_dev.size)
    nd, nb, nk = prep.n_dev, axis.n_bins, len(axis.keys)
    off_traj = nd * 2 * nb * N_STEP_SUMS
    off_read = off_traj + nd * nk * 2
    off_pres = off_read + 2
    n_feat = off_pres + nd
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    # steps
    s = np.flatnonzero(prep.step_dir >= 0)
    if s.size:
        u = axis.norm(prep.state[s])
        ds = prep.step[s] / axis.scale
        b = axis.bin_of(u)
        base = ((prep.dev_idx[s] * 2 + prep.step_dir[s]) * nb + b) * N_STEP_SUMS
        for k, v in enumerate((np.ones_like(ds), ds, ds * ds, u, u * u, u * ds)):
            rows.append(unit[s])
            cols.append(base + k)
            vals.append(v)
    # trajectory over the common positions
    if nk:
        kid = np.full(prep.n_rows, -1)
        lut = np.array([axis.key_map.get(k, -1) for k in prep.keys], dtype=np.int64)
        has = prep.key_id >= 0
        kid[has] = lut[prep.key_id[has]]
        t = np.flatnonzero(kid >= 0)
        base = off_traj + (prep.dev_idx[t] * nk + kid[t]) * 2
        rows += [unit[t], unit[t]]
        cols += [base, base + 1]
        vals += [axis.norm(prep.meas.conductance[t]), np.ones(t.size)]
    # read noise
    r = np.flatnonzero(prep.read_dof > 0)
    if r.size:
        rows += [unit[r], unit[r]]
        cols += [np.full(r.size, off_read), np.full(r.size, off_read + 1)]
        vals += [prep.read_dev2[r] / axis.scale**2, prep.read_dof[r]]
    # device presence (to recover device multiplicities of a replicate)
    rows.append(np.arange(n_units))
    cols.append(off_pres + unit_dev)
    vals.append(np.ones(n_units))
    mat = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_units, n_feat),
    ).tocsr()
    units_per_dev = np.bincount(unit_dev, minlength=nd).astype(float)
    return Features(mat, level, n_units, nd, nb, nk, units_per_dev, off_traj, off_read, off_pres)


@dataclass
class FileStats:
    """Statistics of one file for ``B`` weight vectors (``B = 1``: the point estimate).

    Curves are ``[B, 2, n_bins]`` (direction 0 up, 1 down); all values in
    normalized units of the reference.
    """

    traj: np.ndarray  # [B, K] mean conductance at each common trajectory position
    count: np.ndarray  # [B, 2, nb] steps per bin
    mean: np.ndarray  # [B, 2, nb] mean signed step
    spread: np.ndarray  # [B, 2, nb] within-device step std around the local trend with the state
    write_spread: np.ndarray  # [B, 2, nb] the same with 2 x read-noise variance removed (nan without reads)
    state: np.ndarray  # [B, 2, nb] mean state of the steps in the bin
    symmetry_point: np.ndarray  # [B]
    range: np.ndarray  # [B] range of the mean trajectory
    n_states: np.ndarray  # [B]
    d2d_step: np.ndarray  # [B, 2] CV across devices of the step relative to the population at equal states
    d2d_range: np.ndarray  # [B] coefficient of variation of per-device trajectory range
    read_noise: np.ndarray  # [B] read-noise std
    read_dof: np.ndarray  # [B]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b where b > 0, else nan."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def _sdiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b where b != 0, else nan."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _weighted_cv(values: np.ndarray, noise_var: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Noise-corrected coefficient of variation across devices (axis 1), nan-aware.

    ``values`` ``[B, n_dev]``, ``noise_var`` ``[B, n_dev]`` the sampling variance of each
    value, ``weights`` ``[B, n_dev]`` device multiplicities.
    """
    ok = np.isfinite(values) & (weights > 0)
    w = np.where(ok, weights, 0.0)
    v = np.where(ok, values, 0.0)
    nv = np.where(ok & np.isfinite(noise_var), noise_var, 0.0)
    sw = w.sum(1)
    mean = _div((w * v).sum(1), sw)
    var = _div((w * (v - mean[:, None]) ** 2).sum(1), sw) * _div(sw, sw - 1.0)
    var = var - _div((w * nv).sum(1), sw)
    return _div(np.sqrt(np.clip(var, 0.0, None)), np.abs(mean))


def symmetry_from_curves(
    mean: np.ndarray, state: np.ndarray, count: np.ndarray, min_count: int, allowed: np.ndarray | None = None
) -> tuple[float, float]:
    """Symmetry point and mean |step| there from binned curves ``[2, nb]`` of one replicate.

    Bins with at least ``min_count`` steps of each direction are used, among the
    ``allowed`` ones (``[nb]`` bool; None: all).

    The symmetry point is where the mean up step and the mean down step cancel
    (net = up + down changes sign from + to - with rising state), interpolated
    linearly between bin states.  Without a crossing the device drifts to one end
    of the visited range, which is then its symmetry point (as for a hard-bounded
    device).  Returns ``(nan, nan)`` without bins holding both directions and
    ``(nan, step)`` with only one such bin.
    """
    ok = (count[0] >= min_count) & (count[1] >= min_count)
    if allowed is not None:
        ok &= allowed
    if not ok.any():
        return float("nan"), float("nan")
    up, dn = mean[0, ok], mean[1, ok]
    wsum = count[0, ok] + count[1, ok]
    x = (state[0, ok] * count[0, ok] + state[1, ok] * count[1, ok]) / wsum
    order = np.argsort(x)
    x, up, dn = x[order], up[order], dn[order]
    net = up + dn
    mag = 0.5 * (np.abs(up) + np.abs(dn))
    if x.size == 1:  # one bin: no symmetry point, but its mean |step| is the best step estimate
        return float("nan"), float(mag[0])
    sgn = np.sign(net)
    down_cross = np.flatnonzero((sgn[:-1] > 0) & (sgn[1:] <= 0))
    any_cross = np.flatnonzero(sgn[:-1] != sgn[1:])
    if down_cross.size:
        i = int(down_cross[0])
    elif any_cross.size:
        i = int(any_cross[0])
    elif net[0] > 0:
        return float(x[-1]), float(mag[-1])
    else:
        return float(x[0]), float(mag[0])
    denom = net[i] - net[i + 1]
    t = 0.5 if denom == 0 else float(net[i] / denom)
    t = min(max(t, 0.0), 1.0)
    return float(x[i] + t * (x[i + 1] - x[i])), float(mag[i] + t * (mag[i + 1] - mag[i]))


def derive(
    feat: Features, weights: np.ndarray, min_count: int, allowed: np.ndarray | None = None
) -> FileStats:
    """Statistics for unit weights ``[B, n_units]`` (ones: the data as measured).

    ``min_count`` and ``allowed`` (``[nb]`` bool) select the bins of the symmetry point
    (see :func:`symmetry_from_curves`).
    """
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    bsz = w.shape[0]
    x = np.asarray((feat.matrix.T @ w.T).T)  # [B, F]
    nd, nb, nk = feat.n_dev, feat.n_bins, feat.n_keys
    st = x[:, : feat.off_traj].reshape(bsz, nd, 2, nb, N_STEP_SUMS)
    n, s1, s2, sx, sxx, sxs = (st[..., k] for k in range(N_STEP_SUMS))
    count = n.sum(1)
    mean = _div(s1.sum(1), count)
    state = _div(sx.sum(1), count)
    # within-device residual of the step around its own linear trend with the state inside the
    # bin: c2c (write) noise plus read noise, without the state dependence of the mean step
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_n = np.where(n > 0, 1.0 / np.where(n > 0, n, 1.0), 0.0)
        ss_s = np.clip(s2 - s1 * s1 * inv_n, 0.0, None)
        ss_x = np.clip(sxx - sx * sx * inv_n, 0.0, None)
        sp = sxs - sx * s1 * inv_n
        slope_ok = (n >= 3) & (ss_x > 1e-12 * np.maximum(sxx, 1e-300))
        ss = np.where(slope_ok, ss_s - sp * sp / np.where(slope_ok, ss_x, 1.0), ss_s)
    ss = np.clip(ss, 0.0, None)
    dof = np.where(slope_ok, n - 2.0, np.clip(n - 1.0, 0.0, None))
    within_var = _div(ss.sum(1), dof.sum(1))
    spread = np.sqrt(within_var)
    # per-device step relative to the population at the same states (state-matched d2d):
    # r_i = sum_b S1_ib / sum_b n_ib M_b, with sampling variance sum_b SS_ib / (sum_b n_ib M_b)^2
    expected = (n * np.nan_to_num(mean)[:, None, :, :]).sum(3)  # [B, nd, 2]
    ratio = _sdiv(s1.sum(3), expected)
    ratio = np.where(n.sum(3) >= 2, ratio, np.nan)
    noise_var = _sdiv(ss.sum(3), expected * expected)
    dev_w = x[:, feat.off_pres : feat.off_pres + nd] / np.where(
        feat.units_per_dev > 0, feat.units_per_dev, 1.0
    )
    d2d_step = np.stack(
        [_weighted_cv(ratio[:, :, d], noise_var[:, :, d], dev_w) for d in range(2)], axis=1
    )
    # trajectories
    tr = x[:, feat.off_traj : feat.off_read].reshape(bsz, nd, nk, 2)
    traj = _div(tr[..., 0].sum(1), tr[..., 1].sum(1))
    dev_traj = _div(tr[..., 0], tr[..., 1])  # [B, nd, K]
    with np.errstate(invalid="ignore"):
        has = np.isfinite(dev_traj).any(axis=2)
        dev_range = np.where(
            has,
            np.nanmax(np.where(np.isfinite(dev_traj), dev_traj, -np.inf), axis=2)
            - np.nanmin(np.where(np.isfinite(dev_traj), dev_traj, np.inf), axis=2),
            np.nan,
        )
    d2d_range = _weighted_cv(dev_range, np.zeros_like(dev_range), dev_w)
    finite = np.isfinite(traj)
    rng = np.where(
        finite.any(1),
        np.max(np.where(finite, traj, -np.inf), axis=1) - np.min(np.where(finite, traj, np.inf), axis=1),
        np.nan,
    )
    read_ss = x[:, feat.off_read]
    read_dof = x[:, feat.off_read + 1]
    read_noise = np.sqrt(_div(read_ss, read_dof))
    # a step is the difference of two reads: its variance holds twice the read-noise variance
    write_spread = np.sqrt(np.clip(within_var - 2.0 * (read_noise**2)[:, None, None], 0.0, None))
    sym = np.full(bsz, np.nan)
    mag = np.full(bsz, np.nan)
    for i in range(bsz):
        sym[i], mag[i] = symmetry_from_curves(mean[i], state[i], count[i], min_count, allowed)
    n_states = _div(rng, mag)
    return FileStats(
        traj=traj,
        count=count,
        mean=mean,
        spread=spread,
        write_spread=write_spread,
        state=state,
        symmetry_point=sym,
        range=rng,
        n_states=n_states,
        d2d_step=d2d_step,
        d2d_range=d2d_range,
        read_noise=read_noise,
        read_dof=read_dof,
    )


def bootstrap(
    feat: Features, n_boot: int, rng: np.random.Generator, min_count: int, chunk: int = 25,
    allowed: np.ndarray | None = None,
) -> FileStats:
    """``n_boot`` replicates of :func:`derive` with multinomial unit weights (computed in chunks)."""
    parts: list[FileStats] = []
    left = n_boot
    while left > 0:
        b = min(chunk, left)
        w = rng.multinomial(feat.n_units, np.full(feat.n_units, 1.0 / feat.n_units), size=b)
        parts.append(derive(feat, w.astype(float), min_count, allowed))
        left -= b
    return FileStats(**{
        name: np.concatenate([getattr(p, name) for p in parts], axis=0)
        for name in FileStats.__dataclass_fields__
    })


@dataclass
class Replicates:
    """Resampling replicates of one file's statistics and how to turn them into a variance.

    The variance of a statistic is ``var_scale`` times the sample variance (``ddof=1``)
    of its replicate values; ``dof = n_units - 1`` is the degrees of freedom of that
    estimate (the number of independent units, not of steps).
    """

    stats: FileStats | None  # [B] replicates; None with a single unit
    method: Literal["bootstrap", "jackknife", "none"]
    n_units: int
    var_scale: float

    @property
    def dof(self) -> int:
        return max(self.n_units - 1, 0)


def replicates(
    feat: Features, n_boot: int, rng: np.random.Generator, min_count: int, min_units: int,
    allowed: np.ndarray | None = None,
) -> Replicates:
    """Replicates of a file's statistics over its replication units.

    - ``n_units >= min_units``: ``n_boot`` bootstrap replicates; the bootstrap variance
      of a mean over G units is ``(G - 1) / G`` of the unbiased one, hence
      ``var_scale = G / (G - 1)``;
    - ``2 <= n_units < min_units``: the delete-one-unit jackknife (G replicates, each
      without one unit; ``var_scale = (G - 1)^2 / G``), because a bootstrap over 2-4
      units has only a handful of distinct replicates;
    - one unit: no replicates (``method "none"``): the sampling error cannot be estimated.

    The symmetry point of a replicate uses the bins ``allowed`` (those the data as
    measured use) that hold at least ``min_count`` of its steps: the bin selection is
    the estimator's, made once on the data, so that a replicate with fewer steps
    (a jackknife without one cycle) does not lose a bin the estimate uses.
    """
    g = feat.n_units
    if g < 2:
        return Replicates(None, "none", g, float("nan"))
    if g >= min_units:
        return Replicates(bootstrap(feat, n_boot, rng, min_count, allowed=allowed), "bootstrap", g, g / (g - 1.0))
    w = np.ones((g, g)) - np.eye(g)
    return Replicates(derive(feat, w, min_count, allowed), "jackknife", g, (g - 1.0) ** 2 / g)


def ks_null(values: np.ndarray, units: np.ndarray, is_a_unit: np.ndarray, grid: int = 512) -> np.ndarray:
    """Two-sample Kolmogorov-Smirnov D for many labelings of whole units at once.

    ``values`` ``[n]``; ``units`` ``[n]`` the resampling unit of each value;
    ``is_a_unit`` ``[P, n_units]`` bool, true where a unit belongs to sample A in
    labeling ``p``.  The two empirical CDFs are compared at ``grid`` quantiles of
    the pooled values (every value when there are fewer), which gives D to within
    ``1 / grid``.  Returns ``[P]`` (0 where a sample is empty).
    """
    n_units = is_a_unit.shape[1]
    qs = np.quantile(values, np.linspace(0.0, 1.0, min(grid, values.size) + 1)[1:-1])
    edges = np.unique(qs)
    cell = np.searchsorted(edges, values, side="left")  # value <= edges[cell]
    n_cells = edges.size + 1
    counts = sp.coo_matrix(
        (np.ones(values.size), (units, cell)), shape=(n_units, n_cells)
    ).tocsr()
    a = is_a_unit.astype(np.float64)
    ca = np.asarray((counts.T @ a.T).T)  # [P, cells]
    total = np.asarray(counts.sum(axis=0)).ravel()
    cb = total[None, :] - ca
    ca = np.cumsum(ca, axis=1)
    cb = np.cumsum(cb, axis=1)
    na, nb = ca[:, -1:], cb[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.abs(ca / na - cb / nb)
    d = np.where((na > 0) & (nb > 0), d, 0.0)
    return d.max(axis=1)
