"""The simulator's step models in numpy, as state transitions a filter can linearize.

Each family reproduces what :class:`hil.simulated.devices.DeviceArray` does for
**one** pulse (``tests/test_calibration_fit.py`` checks it against the simulator),
so that a model fitted here replays the same way in the simulator:
``w + delta(w)``, clamped to the bounds; for ``linear``/``softbounds`` the affine
step ``delta = a - c w`` is clamped at zero beyond its fixed point (no move there).

The write noise of a pulse has std ``c2c * |delta(w)|`` at the state before the
pulse (``delta`` clamped at 0 for ``linear``/``softbounds``, as in the simulator),
plus the tabulated std for ``table``.

Parameters come as a dict of arrays that broadcast against the state ``x``
(shape ``[batch, sequences]``); table nodes are ``up_node_k`` / ``down_node_k``.
All quantities are normalized weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hil.device_model import STEP_PARAMETERS

_BIG = 1e6


def clip(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``np.clip`` without its Python-level overhead (called once per pulse index)."""
    return np.minimum(np.maximum(x, lo), hi)


Up = bool | np.ndarray  # a pulse direction: True (up), False (down), or one per element


def _sel(up: Up, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """``a`` where the pulse is up, ``b`` where it is down (no copy for a plain bool)."""
    if up is True:
        return a
    if up is False:
        return b
    return np.where(up, a, b)


def _pair(nodes: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``nodes[..., i - 1]`` and ``nodes[..., i]`` per element (``nodes [..., K]``, ``i`` shaped
    like ``nodes[..., 0]`` or broadcasting to it): flat gathers, cheaper than
    ``take_along_axis`` for the filter's small arrays."""
    k = nodes.shape[-1]
    shape = np.broadcast_shapes(nodes.shape[:-1], np.shape(i))
    if nodes.shape[:-1] != shape or not nodes.flags.c_contiguous:
        nodes = np.ascontiguousarray(np.broadcast_to(nodes, (*shape, k)))
    flat = nodes.reshape(-1)
    idx = np.arange(0, flat.size, k).reshape(shape) + i
    return flat[idx - 1], flat[idx]


@dataclass
class Family:
    """One step model: parameter names, bounds and its one-pulse transition."""

    kind: str
    grid: np.ndarray | None = None  # table only: node positions (normalized weights)
    std_up: np.ndarray | None = None  # table only: tabulated std per node (unscaled)
    std_down: np.ndarray | None = None
    table_bounds: tuple[float, float] | None = None  # table without w_min/w_max params: the bounds
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in STEP_PARAMETERS:
            raise ValueError(f"unknown step model {self.kind!r}; known: {', '.join(STEP_PARAMETERS)}")
        if self.kind == "table":
            if self.grid is None or len(self.grid) < 2:
                raise ValueError("table family needs a grid of at least 2 nodes")
            k = len(self.grid)
            self.names = (
                ("dw_up", "dw_down", "w_min", "w_max")
                + tuple(f"up_node_{i}" for i in range(k))
                + tuple(f"down_node_{i}" for i in range(k))
                + tuple(f"up_std_{i}" for i in range(k))
                + tuple(f"down_std_{i}" for i in range(k))
            )
        else:
            self.names = STEP_PARAMETERS[self.kind]

    # -------------------------------------------------------------- metadata
    @property
    def n_nodes(self) -> int:
        return 0 if self.grid is None else len(self.grid)

    def shape_names(self) -> tuple[str, ...]:
        """Parameters fitted per device (the table's nodes are shared: only its scales vary)."""
        if self.kind == "table":
            return ("dw_up", "dw_down", "w_min", "w_max")
        return self.names

    def bounds(self, name: str) -> tuple[float, float]:
        if name in ("dw_up", "dw_down"):
            return (1e-7, 10.0)
        if name == "w_min":
            return (-20.0, -1e-3)
        if name == "w_max":
            return (1e-3, 20.0)
        if name.startswith("gamma"):
            return (-30.0, 30.0) if self.kind == "exp" else (0.0, 30.0)
        if "_node_" in name:
            return (-10.0, 10.0)
        if "_std_" in name:
            return (0.0, 10.0)
        raise KeyError(name)

    # -------------------------------------------------------------- transition
    def _lo_hi(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "table" and "w_min" not in p:
            assert self.grid is not None
            lo, hi = self.table_bounds or (self.grid[0], self.grid[-1])
            return np.asarray(lo), np.asarray(hi)
        return p["w_min"], p["w_max"]

    def _delta(self, x: np.ndarray, up: Up, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Signed mean step and its derivative for pow / exp / table (simulator formulas)."""
        k = self.kind
        lo, hi = self._lo_hi(p)
        if k in ("pow", "exp"):
            span = hi - lo
            u_raw = (x - lo) / span
            inside = (u_raw > 0) & (u_raw < 1)
            u = clip(u_raw, 0.0, 1.0)
            g = _sel(up, p["gamma_up"], p["gamma_down"])
            dw = _sel(up, p["dw_up"], -p["dw_down"])
            if k == "pow":
                base = _sel(up, 2.0 * (1.0 - u), 2.0 * u)
                safe = np.maximum(base, 1e-12)
                powed = np.where(base > 0, np.power(safe, g), np.where(g == 0, 1.0, 0.0))
                dpow = np.where(base > 0, np.minimum(g * np.power(safe, g - 1.0), _BIG), 0.0)
                d = dw * powed
                dd = dw * dpow * _sel(up, -2.0 / span, 2.0 / span)
            else:
                with np.errstate(over="ignore"):
                    d = dw * np.exp(np.clip(g * _sel(up, 0.5 - u, u - 0.5), -50, 50))
                    dd = d * (_sel(up, -g, g) / span)
            return d, np.where(inside, dd, 0.0)
        # table
        assert self.grid is not None
        grid = self.grid
        kk = len(grid)
        scale = _sel(up, p["dw_up"], p["dw_down"])
        xc = clip(x, grid[0], grid[-1])
        i = np.clip(np.searchsorted(grid, xc), 1, kk - 1)
        g0, g1 = grid[i - 1], grid[i]
        v0, v1 = self._table_pair(up, "nodes", "node", x.shape, p, i)
        t = (xc - g0) / (g1 - g0)
        slope = (v1 - v0) / (g1 - g0)
        inside = (x > grid[0]) & (x < grid[-1])
        return scale * (v0 + t * (v1 - v0)), np.where(inside, scale * slope, 0.0)

    def _table_pair(
        self, up: Up, key: str, name: str, shape: tuple[int, ...], p: dict[str, np.ndarray], i: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A table's values (``key`` "nodes" or "stds") at grid nodes ``i - 1`` and ``i`` for the
        direction(s) ``up``."""
        out = []
        for direction in ("up", "down"):
            if up is (direction == "down"):
                out.append(None)
                continue
            stacked = p.get(f"{direction}_{key}")
            if stacked is None:
                stacked = np.stack(
                    [np.broadcast_to(p[f"{direction}_{name}_{j}"], shape) for j in range(self.n_nodes)], axis=-1
                )
            out.append(_pair(stacked, i))
        if out[0] is None:
            return out[1]  # type: ignore[return-value]
        if out[1] is None:
            return out[0]
        return _sel(up, out[0][0], out[1][0]), _sel(up, out[0][1], out[1][1])

    def _table_std(self, x: np.ndarray, up: Up, p: dict[str, np.ndarray]) -> np.ndarray | None:
        """Tabulated std of one pulse's change at ``x`` (fitted std nodes, else the fixed table)."""
        if self.grid is None:
            return None
        scale = _sel(up, p["dw_up"], p["dw_down"])
        if "up_stds" in p or "up_std_0" in p:
            grid = self.grid
            kk = len(grid)
            xc = clip(x, grid[0], grid[-1])
            i = np.clip(np.searchsorted(grid, xc), 1, kk - 1)
            t = (xc - grid[i - 1]) / (grid[i] - grid[i - 1])
            v0, v1 = self._table_pair(up, "stds", "std", x.shape, p, i)
            return scale * (v0 + t * (v1 - v0))
        if self.std_up is None or self.std_down is None:
            return None
        xc = clip(x, self.grid[0], self.grid[-1])
        return scale * _sel(up, np.interp(xc, self.grid, self.std_up), np.interp(xc, self.grid, self.std_down))

    def transition(
        self, x: np.ndarray, up: Up, p: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """One pulse from state ``x``: mean state before the write noise, its derivative d/dx,
        |step| for the c2c noise, and the tabulated noise std (table only, else None).

        ``up``: True (up pulses), False (down pulses) or a boolean array that broadcasts
        against ``x`` (the direction of each element; the same values as the two calls).
        The mean is clamped to the bounds except for ``constant``, where the simulator adds the
        noise to the unclamped step; the filter then clamps the noisy state (censoring)."""
        if isinstance(up, np.bool_) or (isinstance(up, np.ndarray) and up.ndim == 0):
            up = bool(up)
        k = self.kind
        lo, hi = self._lo_hi(p)
        tab = None
        if k == "constant":
            d = _sel(up, p["dw_up"], -p["dw_down"])
            xn = x + d
            deriv = np.ones_like(x)
            noise = np.broadcast_to(np.abs(d), x.shape)
        elif k in ("linear", "softbounds"):
            if k == "softbounds":
                g: np.ndarray | float = 1.0
            else:
                g = _sel(up, p["gamma_up"], p["gamma_down"])
            a = _sel(up, p["dw_up"], -p["dw_down"])
            c = a * g / _sel(up, p["w_max"], p["w_min"])
            step = a - c * x
            # the step is clamped at zero beyond its fixed point (gamma > 1): no move there
            signed = step if up is True else (-step if up is False else np.where(up, step, -step))
            moving = signed > 0
            xn = np.where(moving, x + step, x)
            deriv = np.where(moving, 1.0 - c, 1.0)
            noise = np.maximum(signed, 0.0)
        else:
            d0, d0p = self._delta(x, up, p)
            xn = x + d0
            deriv = 1.0 + d0p
            noise = np.abs(d0)
            if k == "table":
                tab = self._table_std(x, up, p)
        if k == "constant":
            # the simulator adds the write noise to the unclamped constant step, then clamps
            return xn, deriv, noise, tab
        inside = (xn > lo) & (xn < hi)
        return clip(xn, lo, hi), np.where(inside, deriv, 0.0), noise, tab

    def mean_step(self, x: np.ndarray, up: bool, p: dict[str, np.ndarray]) -> np.ndarray:
        """Signed mean weight change of one noise-free pulse at ``x`` (clamped to the bounds)."""
        xn, _, _, _ = self.transition(x, up, p)
        lo, hi = self._lo_hi(p)
        return clip(xn, lo, hi) - x

    def bounds_of(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self._lo_hi(p)

    def prepare(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Parameters ready for repeated transitions (a table's nodes stacked once: ``[B, S, K]``)."""
        if self.kind != "table":
            return p
        out = dict(p)
        shape = np.broadcast_shapes(*(np.shape(v) for v in p.values()))
        for key in ("up", "down"):
            out[f"{key}_nodes"] = np.stack(
                [np.broadcast_to(p[f"{key}_node_{i}"], shape) for i in range(self.n_nodes)], axis=-1
            )
            if f"{key}_std_0" in p:
                out[f"{key}_stds"] = np.stack(
                    [np.broadcast_to(p[f"{key}_std_{i}"], shape) for i in range(self.n_nodes)], axis=-1
                )
        return out
