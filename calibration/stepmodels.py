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

    def _delta(self, x: np.ndarray, up: bool, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Signed mean step and its derivative for pow / exp / table (simulator formulas)."""
        k = self.kind
        lo, hi = self._lo_hi(p)
        if k in ("pow", "exp"):
            span = hi - lo
            u_raw = (x - lo) / span
            inside = (u_raw > 0) & (u_raw < 1)
            u = clip(u_raw, 0.0, 1.0)
            if k == "pow":
                g = p["gamma_up"] if up else p["gamma_down"]
                base = 2.0 * (1.0 - u) if up else 2.0 * u
                safe = np.maximum(base, 1e-12)
                powed = np.where(base > 0, np.power(safe, g), np.where(g == 0, 1.0, 0.0))
                dpow = np.where(base > 0, np.minimum(g * np.power(safe, g - 1.0), _BIG), 0.0)
                if up:
                    d = p["dw_up"] * powed
                    dd = p["dw_up"] * dpow * (-2.0 / span)
                else:
                    d = -p["dw_down"] * powed
                    dd = -p["dw_down"] * dpow * (2.0 / span)
            else:
                g = p["gamma_up"] if up else p["gamma_down"]
                with np.errstate(over="ignore"):
                    if up:
                        d = p["dw_up"] * np.exp(np.clip(g * (0.5 - u), -50, 50))
                        dd = d * (-g / span)
                    else:
                        d = -p["dw_down"] * np.exp(np.clip(g * (u - 0.5), -50, 50))
                        dd = d * (g / span)
            return d, np.where(inside, dd, 0.0)
        # table
        assert self.grid is not None
        grid = self.grid
        kk = len(grid)
        key = "up_nodes" if up else "down_nodes"
        if key in p:
            nodes = p[key]
        else:
            nodes = np.stack(
                [np.broadcast_to(p[f"{'up' if up else 'down'}_node_{i}"], x.shape) for i in range(kk)], axis=-1
            )
        scale = p["dw_up"] if up else p["dw_down"]
        xc = clip(x, grid[0], grid[-1])
        i = np.clip(np.searchsorted(grid, xc), 1, kk - 1)
        g0, g1 = grid[i - 1], grid[i]
        v0 = np.take_along_axis(nodes, (i - 1)[..., None], axis=-1)[..., 0]
        v1 = np.take_along_axis(nodes, i[..., None], axis=-1)[..., 0]
        t = (xc - g0) / (g1 - g0)
        slope = (v1 - v0) / (g1 - g0)
        inside = (x > grid[0]) & (x < grid[-1])
        return scale * (v0 + t * (v1 - v0)), np.where(inside, scale * slope, 0.0)

    def _table_std(self, x: np.ndarray, up: bool, p: dict[str, np.ndarray]) -> np.ndarray | None:
        """Tabulated std of one pulse's change at ``x`` (fitted std nodes, else the fixed table)."""
        if self.grid is None:
            return None
        key = "up_stds" if up else "down_stds"
        scale = p["dw_up"] if up else p["dw_down"]
        if key in p:
            grid = self.grid
            kk = len(grid)
            xc = clip(x, grid[0], grid[-1])
            i = np.clip(np.searchsorted(grid, xc), 1, kk - 1)
            t = (xc - grid[i - 1]) / (grid[i] - grid[i - 1])
            v0 = np.take_along_axis(p[key], (i - 1)[..., None], axis=-1)[..., 0]
            v1 = np.take_along_axis(p[key], i[..., None], axis=-1)[..., 0]
            return scale * (v0 + t * (v1 - v0))
        std = self.std_up if up else self.std_down
        if std is None:
            return None
        return scale * np.interp(clip(x, self.grid[0], self.grid[-1]), self.grid, std)

    def transition(
        self, x: np.ndarray, up: bool, p: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """One pulse from state ``x``: mean state before the write noise, its derivative d/dx,
        |step| for the c2c noise, and the tabulated noise std (table only, else None).

        The mean is clamped to the bounds except for ``constant``, where the simulator adds the
        noise to the unclamped step; the filter then clamps the noisy state (censoring)."""
        k = self.kind
        lo, hi = self._lo_hi(p)
        tab = None
        if k == "constant":
            d = p["dw_up"] if up else -p["dw_down"]
            xn = x + d
            deriv = np.ones_like(x)
            noise = np.broadcast_to(np.abs(d), x.shape)
        elif k in ("linear", "softbounds"):
            if up:
                g = 1.0 if k == "softbounds" else p["gamma_up"]
                a = p["dw_up"]
                c = a * g / p["w_max"]
            else:
                g = 1.0 if k == "softbounds" else p["gamma_down"]
                a = -p["dw_down"]
                c = a * g / p["w_min"]
            step = a - c * x
            # the step is clamped at zero beyond its fixed point (gamma > 1): no move there
            moving = step > 0 if up else step < 0
            xn = np.where(moving, x + step, x)
            deriv = np.where(moving, 1.0 - c, 1.0)
            noise = np.maximum(step, 0.0) if up else np.maximum(-step, 0.0)
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
