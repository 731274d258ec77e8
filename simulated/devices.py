"""Torch implementation of the step models of :mod:`hil.device_model`, vectorized over devices.

A :class:`DeviceArray` holds one tensor ``[rows, cols]`` per step parameter
(each device drawn once with its own d2d variation), the stuck-device mask, and
applies pulse counts to a weight tensor.  There is no Python loop over devices
or pulses: ``n_up`` up and ``n_down`` down pulses on every device are applied
in at most ``max_chunks`` vectorized sub-steps:

- ``constant``: exact in one step.
- ``linear`` / ``softbounds``: the mean response to ``n`` pulses is the exact
  geometric closed form of the affine step, per chunk (ups, then downs).
- ``pow`` / ``exp`` / ``table``: a second-order scheme per chunk of ``h`` pulses
  (the step evaluated at ``w + (h - 1) / 2 * f(w)``, which matches the
  pulse-by-pulse map to second order in the step); a chunk of one pulse is
  exact, so a call in which every device gets pulses of one sign only, at most
  ``max_chunks`` of them, is applied pulse by pulse, exactly.

Up and down pulses are split evenly over the chunks, so a device that receives
both in one call (mixed-sign samples of a mini-batch) sees them interleaved and
drifts toward its symmetry point as a real device does.  Write noise: the sum of
the per-pulse noises of one call is drawn at once, ``N(0, n_up s_up^2 + n_down
s_down^2)`` with ``s`` the per-pulse std at the state before the call (exact in
distribution to first order in the step).
"""

from __future__ import annotations

import math

import torch

from hil.device_model import DeviceModel

_TRUNC = 3.0


class DeviceArray:
    """Per-device parameters and step responses for a ``rows x cols`` array."""

    def __init__(
        self,
        model: DeviceModel,
        rows: int,
        cols: int,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model
        self.kind = model.step.model
        self.shape = (rows, cols)
        self.device = device
        self.dtype = dtype
        step = model.step
        var = model.variation
        self.params: dict[str, torch.Tensor] = {}
        for name in step.parameters:
            nominal = float(getattr(step, name))
            spread = float(var.d2d.get(name, 0.0))
            if spread > 0:
                xi = torch.randn(self.shape, generator=generator, device=device, dtype=dtype)
                factor = 1.0 + spread * xi.clamp(-_TRUNC, _TRUNC)
                if name.startswith("dw"):
                    factor = factor.clamp(min=0.05)  # a step never flips sign
                elif name.startswith("gamma"):
                    factor = factor.clamp(min=0.0)
                value = nominal * factor
            else:
                value = torch.full(self.shape, nominal, device=device, dtype=dtype)
            self.params[name] = value
        # keep per-device bounds ordered and strictly apart
        lo, hi = self.params["w_min"], self.params["w_max"]
        if self.kind in ("linear", "softbounds"):
            lo = lo.clamp(max=-1e-3)
            hi = hi.clamp(min=1e-3)
        hi = torch.maximum(hi, lo + 1e-3)
        self.params["w_min"], self.params["w_max"] = lo, hi
        if self.kind == "table":
            self.grid = torch.tensor(step.grid, device=device, dtype=dtype)
            self.up_mean = torch.tensor(step.up_mean, device=device, dtype=dtype)
            self.down_mean = torch.tensor(step.down_mean, device=device, dtype=dtype)
            self.up_std = torch.tensor(step.up_std, device=device, dtype=dtype)
            self.down_std = torch.tensor(step.down_std, device=device, dtype=dtype)
        self.c2c = float(var.c2c)
        self._cache: dict[str, tuple[tuple[tuple[int, int], ...], object]] = {}
        # stuck devices
        n_stuck = int(round(var.stuck_fraction * rows * cols))
        self.stuck = torch.zeros(self.shape, dtype=torch.bool, device=device)
        self.stuck_value = torch.zeros(self.shape, device=device, dtype=dtype)
        if n_stuck:
            idx = torch.randperm(rows * cols, generator=generator, device=device)[:n_stuck]
            self.stuck.view(-1)[idx] = True
            if var.stuck_at == "min":
                self.stuck_value = self.params["w_min"].clone()
            elif var.stuck_at == "max":
                self.stuck_value = self.params["w_max"].clone()
            else:
                u = torch.rand(self.shape, generator=generator, device=device, dtype=dtype)
                self.stuck_value = self.params["w_min"] + u * (self.params["w_max"] - self.params["w_min"])

    # ------------------------------------------------------------ responses
    def _u(self, w: torch.Tensor) -> torch.Tensor:
        lo, hi = self.params["w_min"], self.params["w_max"]
        return ((w - lo) / (hi - lo)).clamp(0.0, 1.0)

    def _table(self, values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        g = self.grid
        wc = w.clamp(g[0], g[-1])
        i = torch.bucketize(wc, g).clamp(1, g.numel() - 1)
        g0, g1 = g[i - 1], g[i]
        t = (wc - g0) / (g1 - g0)
        return values[i - 1] + t * (values[i] - values[i - 1])

    def delta_up(self, w: torch.Tensor) -> torch.Tensor:
        """Signed mean weight change of one up pulse at state ``w`` (normalized units)."""
        p = self.params
        k = self.kind
        if k == "constant":
            return p["dw_up"].expand_as(w)
        if k == "softbounds":
            return (p["dw_up"] * (1.0 - w / p["w_max"])).clamp(min=0.0)
        if k == "linear":
            return (p["dw_up"] * (1.0 - p["gamma_up"] * w / p["w_max"])).clamp(min=0.0)
        if k == "pow":
            return p["dw_up"] * (2.0 * (1.0 - self._u(w))).pow(p["gamma_up"])
        if k == "exp":
            return p["dw_up"] * torch.exp(p["gamma_up"] * (0.5 - self._u(w)))
        return p["dw_up"] * self._table(self.up_mean, w)

    def delta_down(self, w: torch.Tensor) -> torch.Tensor:
        """Signed mean weight change of one down pulse at state ``w`` (normally <= 0)."""
        p = self.params
        k = self.kind
        if k == "constant":
            return -p["dw_down"].expand_as(w)
        if k == "softbounds":
            return -(p["dw_down"] * (1.0 - w / p["w_min"])).clamp(min=0.0)
        if k == "linear":
            return -(p["dw_down"] * (1.0 - p["gamma_down"] * w / p["w_min"])).clamp(min=0.0)
        if k == "pow":
            return -p["dw_down"] * (2.0 * self._u(w)).pow(p["gamma_down"])
        if k == "exp":
            return -p["dw_down"] * torch.exp(p["gamma_down"] * (self._u(w) - 0.5))
        return p["dw_down"] * self._table(self.down_mean, w)

    def noise_std(self, w: torch.Tensor, up: bool) -> torch.Tensor:
        """Std of one pulse's weight change at ``w`` (c2c relative noise + tabulated std)."""
        mean = self.delta_up(w) if up else self.delta_down(w)
        std = self.c2c * mean.abs()
        if self.kind == "table":
            scale = self.params["dw_up"] if up else self.params["dw_down"]
            tab = self._table(self.up_std if up else self.down_std, w) * scale
            std = torch.sqrt(std * std + tab * tab)
        return std

    # --------------------------------------------------------- application
    def _cached(self, name: str, deps: tuple[torch.Tensor, ...], fn):  # noqa: ANN001, ANN202
        """``fn()`` recomputed only when a tensor in ``deps`` was replaced or changed in place."""
        key = tuple((id(t), t._version) for t in deps)
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, fn())
            self._cache[name] = hit
        return hit[1]

    def _any_stuck(self) -> bool:
        return self._cached("any_stuck", (self.stuck,), lambda: bool(self.stuck.any()))

    def clamp(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` clamped to every device's ``[w_min, w_max]``; stuck devices at their stuck value."""
        w = torch.clamp(w, min=self.params["w_min"], max=self.params["w_max"])
        if self._any_stuck():
            w = torch.where(self.stuck, self.stuck_value, w)
        return w

    def _apply_constant(
        self, w: torch.Tensor, n_up: torch.Tensor, n_down: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Constant step, exact: ``w + n_up dw_up - n_down dw_down`` + summed write noise, clamped."""
        up, down = self.params["dw_up"], self.params["dw_down"]
        w = torch.addcmul(w, n_up, up).addcmul_(n_down, down, value=-1.0)
        if self.c2c > 0:
            c2 = self.c2c * self.c2c
            var_up = self._cached("var_up", (up,), lambda: up * up * c2)
            var_dn = self._cached("var_dn", (down,), lambda: down * down * c2)
            # + tiny: sqrt of exact zeros takes a slow path on some CPUs (4-7x slower); a
            # device without pulses then gets noise of sd 1e-19, below float32 resolution
            tiny = torch.finfo(w.dtype).tiny
            sd = torch.mul(n_up, var_up).addcmul_(n_down, var_dn).add_(tiny).sqrt_()
            xi = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
            w.addcmul_(sd, xi)
        return self.clamp(w)

    def _affine_n(self, w: torch.Tensor, n: torch.Tensor, up: bool) -> torch.Tensor:
        """Exact mean response of ``n`` pulses for affine steps ``delta = a - c w``."""
        p = self.params
        if up:
            gamma = 1.0 if self.kind == "softbounds" else p["gamma_up"]
            a = p["dw_up"]
            c = a * gamma / p["w_max"]
        else:
            gamma = 1.0 if self.kind == "softbounds" else p["gamma_down"]
            a = -p["dw_down"]
            c = a * gamma / p["w_min"]  # delta_down = -dw (1 - g w / w_min) = a - c w
        c_safe = torch.where(c.abs() > 1e-12, c, torch.ones_like(c))
        fixed = a / c_safe
        decayed = fixed + (w - fixed) * torch.pow((1.0 - c).clamp(min=0.0), n)
        # the step is clamped at zero beyond the fixed point (gamma > 1): a device already
        # past it does not move (the affine form would pull it back)
        inside = (w < fixed) if up else (w > fixed)
        decayed = torch.where(inside, decayed, w)
        linear = w + n * a
        return torch.where(c.abs() > 1e-12, decayed, linear)

    def apply(
        self,
        w: torch.Tensor,
        n_up: torch.Tensor,
        n_down: torch.Tensor,
        generator: torch.Generator,
        max_chunks: int = 8,
    ) -> torch.Tensor:
        """New weights after ``n_up`` up and ``n_down`` down pulses per device (float counts >= 0)."""
        if self.kind == "constant":
            return self._apply_constant(w, n_up, n_down, generator)
        total = n_up + n_down
        peak = float(total.max()) if total.numel() else 0.0
        if peak <= 0:
            return w
        w0 = w
        if self.c2c > 0 or self.kind == "table":
            s_up = self.noise_std(w0, True)
            s_dn = self.noise_std(w0, False)
            var = n_up * s_up * s_up + n_down * s_dn * s_dn
        else:
            var = None
        chunks = int(min(max(1.0, peak), max_chunks))
        for k in range(chunks):
            if chunks == 1:
                u_k, d_k = n_up, n_down
            else:
                u_k = torch.floor(n_up * (k + 1) / chunks) - torch.floor(n_up * k / chunks)
                d_k = torch.floor(n_down * (k + 1) / chunks) - torch.floor(n_down * k / chunks)
            if self.kind in ("linear", "softbounds"):
                w = self.clamp(self._affine_n(w, u_k, True))
                w = self.clamp(self._affine_n(w, d_k, False))
            else:
                # Second-order scheme for the pulse-by-pulse map w <- w + f(w): h pulses
                # change w by h f + h (h - 1) / 2 f f' + O(h^3), which the step at
                # w + (h - 1) / 2 f reproduces; one pulse (h = 1) is applied exactly.
                f_up = self.delta_up(w)
                f_dn = self.delta_down(w)
                half = w + 0.5 * ((u_k - 1.0).clamp(min=0.0) * f_up + (d_k - 1.0).clamp(min=0.0) * f_dn)
                half = self.clamp(half)
                w = self.clamp(w + u_k * self.delta_up(half) + d_k * self.delta_down(half))
        if var is not None:
            xi = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
            w = w + var.add_(torch.finfo(w.dtype).tiny).sqrt_() * xi
        return self.clamp(w)

    # ----------------------------------------------------------- summaries
    def symmetry_point(self, iters: int = 60) -> torch.Tensor:
        """Per-device state where mean up and down steps cancel ``[rows, cols]`` (bisection)."""
        lo = self.params["w_min"].clone()
        hi = self.params["w_max"].clone()
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            net = self.delta_up(mid) + self.delta_down(mid)  # > 0 below the symmetry point
            # net == 0 exactly (a symmetric constant-step device balances everywhere): the
            # interval closes on mid, so such a device reports the middle of its range
            lo = torch.where(net >= 0, mid, lo)
            hi = torch.where(net <= 0, mid, hi)
        return 0.5 * (lo + hi)

    def step_at_symmetry(self) -> torch.Tensor:
        """Mean step magnitude at the symmetry point ``[rows, cols]``."""
        ws = self.symmetry_point()
        return 0.5 * (self.delta_up(ws).abs() + self.delta_down(ws).abs())

    def n_states(self) -> torch.Tensor:
        """Number of states per device: weight range / step at the symmetry point."""
        rng = self.params["w_max"] - self.params["w_min"]
        return rng / self.step_at_symmetry().clamp(min=1e-12)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"param.{k}": v.clone() for k, v in self.params.items()}
        out["stuck"] = self.stuck.clone()
        out["stuck_value"] = self.stuck_value.clone()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in list(self.params):
            self.params[k] = state[f"param.{k}"].to(self.device, self.dtype)
        self.stuck = state["stuck"].to(self.device)
        self.stuck_value = state["stuck_value"].to(self.device, self.dtype)


def nominal_dw(model: DeviceModel) -> float:
    """Nominal minimal step (normalized units) of a device model: mean |step| at its symmetry point."""
    gen = torch.Generator().manual_seed(0)
    nominal = model.model_copy(update={"variation": model.variation.model_copy(update={"d2d": {}, "stuck_fraction": 0.0})})
    arr = DeviceArray(nominal, 1, 1, gen, torch.device("cpu"), torch.float64)
    value = float(arr.step_at_symmetry().item())
    return value if math.isfinite(value) and value > 0 else float(model.step.dw_up)
