"""Torch implementation of the step models of :mod:`hil.device_model`, vectorized over devices.

A :class:`DeviceArray` holds one tensor ``[rows, cols]`` per step parameter
(each device drawn once with its own d2d variation), the stuck-device mask, and
applies pulse counts to a weight tensor.  There is no Python loop over devices
or pulses: ``n_up`` up and ``n_down`` down pulses on every device are applied
in at most ``max_chunks`` vectorized sub-steps:

- ``constant``: exact in one step.
- ``linear`` / ``softbounds``: the mean response to ``n`` pulses is the exact
  geometric closed form of the affine step, per chunk (ups, then downs); where every
  device's fixed points are its bounds (soft bounds, ``gamma = 1``) the chunks are
  composed in closed form too (:meth:`DeviceArray._affine_composite`), no loop.
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

Sparse updates: when at most :attr:`DeviceArray.sparse_fraction` of the devices
receive pulses (by default half of them; a tenth for constant steps with write
noise, never for constant steps without; arrays under ``SPARSE_MIN_DEVICES``
devices are always computed whole; large arrays estimate the fraction from a fixed
sample of devices), the pulsed devices and their parameters are gathered into 1-D
vectors, the same math runs on them, and the result is scattered back: devices
without pulses are returned bit-unchanged (the whole-array path gives them a
write-noise term of sd ~1e-19).  Affine steps use per-device coefficients (fixed
point ``a / c`` and ``log(1 - c)``) cached on the parameter tensors.

Non-accumulating write noise (``variation.write_noise`` > 0): :attr:`DeviceArray.offset`
``[rows, cols]`` holds every device's write-noise offset, which reads see on top of the
hidden weight that :meth:`DeviceArray.apply` moves.  Every application replaces the
offset of each pulsed device (``n`` pulses) by ``rho^n o + sqrt(1 - rho^(2n)) sigma xi``
(exact in distribution for the AR(1) offset of :mod:`hil.device_model`); on the sparse
path only the pulsed devices' offsets are gathered, redrawn and scattered back.  Without
write noise :attr:`DeviceArray.offset` is None and nothing of this runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from hil.device_model import DeviceModel

_TRUNC = 3.0
_LOG_FLOOR = -1e30  # log(0) floored: exp(n * _LOG_FLOOR) is 1 for n = 0 and 0 for n >= 1
# An update that pulses at most this fraction of the devices is applied to the pulsed
# devices only (gathered); above it, to the whole array.  Measured on 256 x 784 and
# 128 x 256 arrays (CPU, one thread): gathering pays up to ~60 % pulsed devices for
# soft-bounds steps (more for pow), up to ~10 % for constant steps with write noise; a
# constant step without write noise is cheapest on the whole array.
# Arrays of fewer than SPARSE_MIN_DEVICES devices are cheaper on the whole array (the
# gather / scatter overhead exceeds the work saved).
SPARSE_FRACTION = 0.5
SPARSE_FRACTION_CONSTANT = 0.1
SPARSE_MIN_DEVICES = 4096
_DENSITY_SAMPLE = 1024  # devices looked at to guess the pulsed fraction of a large array


@dataclass(frozen=True)
class _Coefficients:
    """Per-device coefficients of a :class:`DeviceArray`, packed for gathering.

    ``packed[i]`` ``[rows * cols]`` holds coefficient ``names[i]`` (the step parameters,
    ``stuck_value`` and derived ones: ``var_up``/``var_dn`` for constant steps,
    ``a_*``, ``fixed_*``, ``log1m_*`` (and ``flat_*``) for affine ones); ``dense`` has the
    same values as ``[rows, cols]`` views; ``flat[s]``: some device has ``c = 0`` in
    direction ``s`` ("up"/"dn"); ``monotone[s]``: every device has ``c >= 0`` (its mean
    response moves toward the fixed point without crossing it); ``bounded``: affine, monotone,
    no flat device, and every device's fixed points are its bounds (``a_up / c_up = w_max``,
    ``a_dn / c_dn = w_min`` to float rounding: soft bounds, or ``gamma = 1``), so a weight
    inside its bounds never leaves ``[fixed_dn, fixed_up]`` and the chunked responses compose
    in closed form (:meth:`DeviceArray._affine_composite`).
    """

    names: list[str]
    packed: torch.Tensor
    dense: dict[str, torch.Tensor]
    flat: dict[str, bool]
    monotone: dict[str, bool]
    bounded: bool = False

    def select(self, rows: torch.Tensor, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Coefficients by name from ``rows`` ``[P, n]`` (``packed`` or gathered columns of
        it), each viewed as ``shape``; ``flat_*`` as bool masks; ``log1m``, ``fixed`` and
        ``c`` ``[2, *shape]``: up and down together."""
        parts = rows.unbind(0)  # one op for all the rows
        if tuple(shape) != tuple(parts[0].shape):
            parts = tuple(t.view(shape) for t in parts)
        out = dict(zip(self.names, parts, strict=True))
        for s, any_flat in self.flat.items():
            if any_flat:
                out[f"flat_{s}"] = out[f"flat_{s}"] > 0.5
        for pair in ("log1m", "fixed", "c", "cnoise"):
            if f"{pair}_up" in out:
                i = self.names.index(f"{pair}_up")  # f"{pair}_dn" follows
                out[pair] = rows[i : i + 2].view(2, *shape)
        return out


class DeviceArray:
    """Per-device parameters and step responses for a ``rows x cols`` array."""

    #: fraction of pulsed devices up to which :meth:`apply` computes the pulsed devices only
    #: (0: always the whole array; 1: always the pulsed ones; None: by step model and size)
    sparse_fraction: float | None = None

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
        self.write_sd = float(var.write_noise)
        self.write_rho = float(var.write_noise_rho)
        self._cache: dict[str, tuple[Any, ...]] = {}
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
        #: write-noise offset of every device ``[rows, cols]`` (None without write noise)
        self.offset: torch.Tensor | None = None
        if self.write_sd > 0:
            self.offset = self.fresh_offset(generator)

    # ------------------------------------------------------------ write noise
    def fresh_offset(self, generator: torch.Generator) -> torch.Tensor:
        """A stationary draw of every device's write-noise offset ``[rows, cols]`` (stuck devices: 0).

        What a write that sets every device's weight leaves (the offset's stationary law
        ``N(0, write_noise^2)``); zeros without write noise.
        """
        xi = torch.randn(self.shape, generator=generator, device=self.device, dtype=self.dtype)
        out = xi * self.write_sd
        if self._any_stuck():
            out = torch.where(self.stuck, torch.zeros_like(out), out)
        return out

    def _redraw_offset(
        self, n: torch.Tensor, idx: torch.Tensor | None, generator: torch.Generator
    ) -> None:
        """Redraw the offsets of the devices that got ``n`` pulses (``n`` >= 0; ``idx``: their flat
        indices for a gathered subset, None: ``n`` is ``[rows, cols]``, devices with 0 keep theirs)."""
        assert self.offset is not None
        flat = self.offset.reshape(-1)
        o = flat if idx is None else flat.index_select(0, idx)
        n = n.reshape(-1).to(self.dtype)
        decay = torch.pow(torch.as_tensor(self.write_rho, dtype=self.dtype, device=self.device), n)
        xi = torch.randn(o.shape, generator=generator, device=self.device, dtype=self.dtype)
        # n = 0: decay 1, innovation sd 0 -> unchanged; rho = 0: pow(0, n >= 1) = 0 -> redrawn
        new = torch.addcmul(o * decay, (1.0 - decay * decay).clamp_(min=0.0).sqrt_(), xi, value=self.write_sd)
        if self._any_stuck():
            st = self.stuck.reshape(-1) if idx is None else self.stuck.reshape(-1).index_select(0, idx)
            new = torch.where(st, torch.zeros_like(new), new)
        if idx is None:
            self.offset = new.view(self.shape)
        else:
            out = flat.clone()
            out.index_copy_(0, idx, new)
            self.offset = out.view(self.shape)

    # ------------------------------------------------------------ responses
    def _u(self, w: torch.Tensor, p: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Relative position ``(w - w_min) / (w_max - w_min)`` in [0, 1] (shape of ``w``)."""
        p = self.params if p is None else p
        lo, hi = p["w_min"], p["w_max"]
        return ((w - lo) / (hi - lo)).clamp(0.0, 1.0)

    def _table_index(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid interval index ``i`` (1..len-1) and fraction ``t`` in it for states ``w``."""
        g = self.grid
        wc = w.clamp(g[0], g[-1])
        i = torch.bucketize(wc, g).clamp(1, g.numel() - 1)
        g0, g1 = g[i - 1], g[i]
        return i, (wc - g0) / (g1 - g0)

    def _table(
        self,
        values: torch.Tensor,
        w: torch.Tensor,
        at: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Tabulated ``values`` interpolated linearly at ``w`` (``at``: a precomputed index)."""
        i, t = self._table_index(w) if at is None else at
        return values[i - 1] + t * (values[i] - values[i - 1])

    def _delta(
        self,
        w: torch.Tensor,
        up: bool,
        p: dict[str, torch.Tensor],
        u: torch.Tensor | None = None,
        at: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Signed mean change of one up (``up``) or down pulse at ``w`` for the devices of ``p``.

        ``p`` holds per-device parameters shaped like ``w`` (``[rows, cols]``, or 1-D
        for a gathered subset); ``u`` / ``at`` reuse a precomputed :meth:`_u` / table index.
        """
        k = self.kind
        if up:
            dw = p["dw_up"]
            if k == "constant":
                return dw.expand_as(w)
            if k == "softbounds":
                return (dw * (1.0 - w / p["w_max"])).clamp(min=0.0)
            if k == "linear":
                return (dw * (1.0 - p["gamma_up"] * w / p["w_max"])).clamp(min=0.0)
            if k == "pow":
                return dw * (2.0 * (1.0 - (self._u(w, p) if u is None else u))).pow(p["gamma_up"])
            if k == "exp":
                return dw * torch.exp(p["gamma_up"] * (0.5 - (self._u(w, p) if u is None else u)))
            return dw * self._table(self.up_mean, w, at)
        dw = p["dw_down"]
        if k == "constant":
            return -dw.expand_as(w)
        if k == "softbounds":
            return -(dw * (1.0 - w / p["w_min"])).clamp(min=0.0)
        if k == "linear":
            return -(dw * (1.0 - p["gamma_down"] * w / p["w_min"])).clamp(min=0.0)
        if k == "pow":
            return -dw * (2.0 * (self._u(w, p) if u is None else u)).pow(p["gamma_down"])
        if k == "exp":
            return -dw * torch.exp(p["gamma_down"] * ((self._u(w, p) if u is None else u) - 0.5))
        return dw * self._table(self.down_mean, w, at)

    def _deltas(
        self, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Mean up and down steps at ``w`` (sharing ``u`` / the table index) and the table index."""
        u = self._u(w, p) if self.kind in ("pow", "exp") else None
        at = self._table_index(w) if self.kind == "table" else None
        return self._delta(w, True, p, u, at), self._delta(w, False, p, u, at), at

    def delta_up(self, w: torch.Tensor) -> torch.Tensor:
        """Signed mean weight change of one up pulse at state ``w`` (normalized units)."""
        return self._delta(w, True, self.params)

    def delta_down(self, w: torch.Tensor) -> torch.Tensor:
        """Signed mean weight change of one down pulse at state ``w`` (normally <= 0)."""
        return self._delta(w, False, self.params)

    def _noise_std(
        self,
        w: torch.Tensor,
        up: bool,
        p: dict[str, torch.Tensor],
        mean: torch.Tensor | None = None,
        at: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Std of one pulse's weight change at ``w`` for the devices of ``p`` (``mean``: its mean step)."""
        if mean is None:
            mean = self._delta(w, up, p, at=at)
        std = self.c2c * mean.abs()
        if self.kind == "table":
            scale = p["dw_up"] if up else p["dw_down"]
            tab = self._table(self.up_std if up else self.down_std, w, at) * scale
            std = torch.sqrt(std * std + tab * tab)
        return std

    def noise_std(self, w: torch.Tensor, up: bool) -> torch.Tensor:
        """Std of one pulse's weight change at ``w`` (c2c relative noise + tabulated std)."""
        return self._noise_std(w, up, self.params)

    # --------------------------------------------------------- application
    def _cached(self, name: str, deps: tuple[torch.Tensor, ...], fn):  # noqa: ANN001, ANN202
        """``fn()`` recomputed only when a tensor in ``deps`` was replaced or changed in place.

        The entry keeps ``deps`` alive: an id is only unique among live objects, so a replaced
        tensor that was freed could otherwise hand its id (and version 0) to its successor."""
        key = tuple((id(t), t._version) for t in deps)
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, fn(), deps)
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

    @staticmethod
    def _clamp_to(
        w: torch.Tensor, p: dict[str, torch.Tensor], stuck: torch.Tensor | None
    ) -> torch.Tensor:
        """:meth:`clamp` for the devices of ``p`` (``stuck``: their stuck mask, None if none is)."""
        w = torch.clamp(w, min=p["w_min"], max=p["w_max"])
        if stuck is not None:
            w = torch.where(stuck, p["stuck_value"], w)
        return w

    def computes_whole(self) -> bool:
        """Whether :meth:`apply` always computes the whole array (``sparse_fraction`` 0: small
        arrays, constant steps without noise), so gathering pulsed devices never pays."""
        return self._sparse_fraction() <= 0

    def sparse_devices(self) -> int:
        """Up to how many pulsed devices :meth:`apply` computes them gathered (0: never)."""
        return int(self._sparse_fraction() * self.shape[0] * self.shape[1])

    def _sparse_fraction(self) -> float:
        """:attr:`sparse_fraction`, or the measured break-even default of this step model."""
        if self.sparse_fraction is not None:
            return float(self.sparse_fraction)
        if self.shape[0] * self.shape[1] < SPARSE_MIN_DEVICES:
            return 0.0
        if self.kind == "constant":
            return SPARSE_FRACTION_CONSTANT if self.c2c > 0 else 0.0
        return SPARSE_FRACTION

    def _coefficients(self) -> _Coefficients:
        """Per-device parameters and derived step coefficients, packed (cached on the parameters)."""
        deps = (*self.params.values(), self.stuck, self.stuck_value)
        return self._cached("coefficients", deps, self._build_coefficients)

    def _build_coefficients(self) -> _Coefficients:
        cols: dict[str, torch.Tensor] = dict(self.params)
        cols["stuck_value"] = self.stuck_value
        flat: dict[str, bool] = {}
        monotone: dict[str, bool] = {}
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        bounded = False
        p = self.params
        if self.kind == "constant" and self.c2c > 0:
            c2 = self.c2c * self.c2c
            cols["var_up"] = p["dw_up"] * p["dw_up"] * c2
            cols["var_dn"] = p["dw_down"] * p["dw_down"] * c2
        if self.kind in ("linear", "softbounds"):
            # affine steps delta = a - c w: fixed point a / c and log(1 - c) per direction
            for s, up in (("up", True), ("dn", False)):
                if up:
                    gamma = 1.0 if self.kind == "softbounds" else p["gamma_up"]
                    a = p["dw_up"]
                    c = a * gamma / p["w_max"]
                else:
                    gamma = 1.0 if self.kind == "softbounds" else p["gamma_down"]
                    a = -p["dw_down"]
                    c = a * gamma / p["w_min"]  # delta_down = -dw (1 - g w / w_min) = a - c w
                is_flat = c.abs() <= 1e-12  # constant step: w + n a
                c_safe = torch.where(is_flat, torch.ones_like(c), c)
                fixed = torch.where(is_flat, torch.zeros_like(c), a / c_safe)
                # log(1 - c), 1 - c clamped at 0 (a step that overshoots lands on the fixed
                # point); log(0) = -inf is floored so that n = 0 pulses still give exp(0) = 1
                log1m = torch.log((1.0 - c).clamp(min=0.0)).clamp(min=_LOG_FLOOR)
                log1m = torch.where(is_flat, torch.zeros_like(c), log1m)
                cols[f"a_{s}"] = a.expand(self.shape)
                # up and down adjacent in each pair: one [2, ...] view (_Coefficients.select)
                pairs.setdefault("log1m", {})[s] = log1m
                pairs.setdefault("fixed", {})[s] = fixed
                pairs.setdefault("c", {})[s] = c
                pairs.setdefault("cnoise", {})[s] = c * self.c2c  # write-noise std per |F - w|
                flat[s] = bool(is_flat.any())
                monotone[s] = bool((c >= 0).all())
                if flat[s]:
                    cols[f"flat_{s}"] = is_flat.to(self.dtype)
            bounded = (
                all(monotone.values())
                and not any(flat.values())
                and bool(torch.allclose(pairs["fixed"]["up"], p["w_max"], rtol=1e-6, atol=1e-7))
                and bool(torch.allclose(pairs["fixed"]["dn"], p["w_min"], rtol=1e-6, atol=1e-7))
            )
        for name, by_dir in pairs.items():
            cols[f"{name}_up"] = by_dir["up"]
            cols[f"{name}_dn"] = by_dir["dn"]
        if bounded:
            cols["span"] = pairs["fixed"]["up"] - pairs["fixed"]["dn"]
        names = list(cols)
        packed = torch.stack([cols[k].reshape(-1).to(self.dtype) for k in names])
        coeffs = _Coefficients(names, packed, {}, flat, monotone, bounded)
        dense = coeffs.select(packed, self.shape)
        return _Coefficients(names, packed, dense, flat, monotone, bounded)

    def _apply_constant(
        self,
        w: torch.Tensor,
        n_up: torch.Tensor,
        n_down: torch.Tensor,
        generator: torch.Generator,
        p: dict[str, torch.Tensor] | None = None,
        stuck: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Constant step, exact: ``w + n_up dw_up - n_down dw_down`` + summed write noise, clamped.

        ``p`` / ``stuck``: per-device coefficients and stuck mask of the devices of ``w``
        (default: the whole array, ``w`` ``[rows, cols]``).
        """
        if p is None:
            p = self._coefficients().dense
            stuck = self.stuck if self._any_stuck() else None
        w = torch.addcmul(w, n_up, p["dw_up"]).addcmul_(n_down, p["dw_down"], value=-1.0)
        if self.c2c > 0:
            # + tiny: sqrt of exact zeros takes a slow path on some CPUs (4-7x slower); a
            # device without pulses then gets noise of sd 1e-19, below float32 resolution
            tiny = torch.finfo(w.dtype).tiny
            sd = torch.mul(n_up, p["var_up"]).addcmul_(n_down, p["var_dn"]).add_(tiny).sqrt_()
            xi = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
            w.addcmul_(sd, xi)
        return self._clamp_to(w, p, stuck)

    def _affine_n(
        self,
        w: torch.Tensor,
        n: torch.Tensor,
        up: bool,
        p: dict[str, torch.Tensor] | None = None,
        monotone: bool = False,
    ) -> torch.Tensor:
        """Exact mean response of ``n`` pulses for affine steps ``delta = a - c w``.

        ``w + (w - a / c) (exp(n log(1 - c)) - 1)``, i.e. the geometric closed form
        ``a / c + (w - a / c) (1 - c)^n``; ``w + n a`` where ``c = 0``.  w, n: one shape
        (``[rows, cols]`` or 1-D).  ``p``: the coefficients of :meth:`_coefficients` for
        the devices of ``w`` (default: all); ``monotone``: every ``c >= 0`` there.
        """
        if p is None:
            coeffs = self._coefficients()
            p = coeffs.dense
            monotone = coeffs.monotone["up" if up else "dn"]
        s = "up" if up else "dn"
        fixed = p[f"fixed_{s}"]
        out = torch.addcmul(w, w - fixed, torch.expm1(n * p[f"log1m_{s}"]))
        # the step is clamped at zero beyond the fixed point (gamma > 1): a device already
        # past it does not move (the affine form would pull it back).  With c >= 0 the
        # response moves toward the fixed point and never crosses it, so "not past it"
        # is max (up) / min (down) with w, exactly.
        if monotone:
            out = torch.maximum(out, w) if up else torch.minimum(out, w)
        else:
            inside = (w < fixed) if up else (w > fixed)
            out = torch.where(inside, out, w)
        flat = p.get(f"flat_{s}")
        if flat is not None:
            out = torch.where(flat, torch.addcmul(w, n, p[f"a_{s}"]), out)
        return out

    def _affine_chunks(
        self, w: torch.Tensor, counts: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Chunked affine responses (ups, then downs, per chunk), every ``c >= 0`` and ``!= 0``.

        counts ``[chunks, 2, *w.shape]``: up and down pulses per chunk.  The same values
        as alternating :meth:`_affine_n` and :meth:`clamp`, in fewer passes: all
        ``expm1(n log(1 - c))`` at once, and with ``w`` inside its bounds "no further
        than the fixed point, then clamped" is one clamp between ``w`` and the bound
        (up: ``max(out, w) >= w >= w_min``).  Stuck devices are not held here: the
        caller's final :meth:`_clamp_to` sets them (they never feed back into others).
        """
        lo, hi = p["w_min"], p["w_max"]
        w = torch.clamp(w, min=lo, max=hi)  # a no-op for weights this array produced
        decay = torch.expm1(counts * p["log1m"])  # [chunks, 2, ...]
        fixed_up, fixed_dn = p["fixed_up"], p["fixed_dn"]
        for k in range(counts.shape[0]):
            w = torch.clamp(torch.addcmul(w, w - fixed_up, decay[k, 0]), min=w, max=hi)
            w = torch.clamp(torch.addcmul(w, w - fixed_dn, decay[k, 1]), min=lo, max=w)
        return w

    def _affine_composite(self, w: torch.Tensor, counts: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Chunked affine responses (ups, then downs, per chunk) in closed form, for
        :attr:`_Coefficients.bounded` devices (fixed points = bounds).

        counts ``[chunks, 2, *w.shape]``.  Every chunk maps the distance to the lower fixed
        point ``e = w - F_dn`` affinely: ups ``e -> D + (e - D) Ru``, downs ``e -> e Rd``
        (``D = F_up - F_dn``, ``Ru = (1 - c_up)^u``, ``Rd = (1 - c_dn)^d``), so after all
        chunks ``e_K = e_0 prod_k Ru_k Rd_k + D sum_k (1 - Ru_k) Rd_k prod_{j>k} Ru_j Rd_j``,
        evaluated with logarithms (one cumulative sum over the chunks) instead of a loop.
        The same values as :meth:`_affine_chunks` up to float rounding: a weight inside its
        bounds stays between the fixed points, where the per-chunk clamps do nothing.
        Returned as ``w`` plus the change (a device without pulses keeps ``w`` bit for bit);
        not clamped (the caller clamps to the bounds and sets stuck devices).
        """
        logs = counts * p["log1m"]  # [chunks, 2, ...]: log Ru_k, log Rd_k (<= 0)
        f_up, f_dn = p["fixed_up"], p["fixed_dn"]
        if logs.shape[0] == 1:  # w -> F_up + (w - F_up) Ru -> F_dn + (. - F_dn) Rd
            up = torch.addcmul(w, w - f_up, torch.expm1(logs[0, 0]))
            return torch.addcmul(up, up - f_dn, torch.expm1(logs[0, 1]))
        cum = torch.cumsum(logs.sum(dim=1), dim=0)  # [chunks, ...]
        whole = cum[-1]
        # (1 - Ru_k) Rd_k prod_{j>k}: -expm1(log Ru_k) exp(log Rd_k + whole - cum_k)
        later = torch.exp((whole - cum).add_(logs[:, 1]))
        gain = later.mul_(torch.expm1(logs[:, 0])).sum(dim=0)  # <= 0
        # w + e_K - e_0 (a device without pulses: w exactly)
        return torch.addcmul(w, w - f_dn, torch.expm1(whole)).addcmul_(p["span"], gain, value=-1.0)

    def _apply_bounded_affine(
        self,
        w: torch.Tensor,
        n_up: torch.Tensor,
        n_down: torch.Tensor,
        peak: float,
        p: dict[str, torch.Tensor],
        stuck: torch.Tensor | None,
        generator: torch.Generator,
        max_chunks: int,
    ) -> torch.Tensor:
        """:meth:`_apply_pulses` for :attr:`_Coefficients.bounded` affine devices: the same
        chunks, applied by :meth:`_affine_composite`; the write noise from the mean steps
        ``|delta| = c |F - w|`` (up and down together)."""
        both = torch.stack((n_up, n_down))  # [2, ...]
        var = None
        if self.c2c > 0:
            # c2c * mean steps up (>= 0) and down (<= 0) [2, ...]: the pulses' std
            s = (p["fixed"] - w).mul_(p["cnoise"])
            var = s.mul_(s).mul_(both).sum(dim=0)
        chunks = int(min(max(1.0, peak), max_chunks))
        if chunks > 1:
            # pulses of chunk k: floor(n (k + 1) / chunks) - floor(n k / chunks), all at once
            ks = self._chunk_steps(chunks, w.dim() + 1, w.device, w.dtype)
            cum = torch.floor(both * ks / chunks)
            counts = cum[1:] - cum[:-1]
        else:
            counts = both[None]
        w = self._affine_composite(w, counts, p)
        if var is not None:
            xi = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
            w = w.addcmul_(var.add_(torch.finfo(w.dtype).tiny).sqrt_(), xi)
        return self._clamp_to(w, p, stuck)

    def _chunk_steps(self, chunks: int, dims: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``[0, 1, ..., chunks]`` shaped ``[chunks + 1, 1, ...]`` (``dims`` trailing ones), cached."""
        key = f"chunk_steps:{chunks}:{dims}:{device}:{dtype}"
        hit = self._cache.get(key)
        if hit is None:
            ks = torch.arange(chunks + 1, device=device, dtype=dtype).view(-1, *([1] * dims))
            hit = ((), ks)
            self._cache[key] = hit
        return hit[1]  # type: ignore[return-value]

    def apply(
        self,
        w: torch.Tensor,
        n_up: torch.Tensor,
        n_down: torch.Tensor,
        generator: torch.Generator,
        max_chunks: int = 8,
    ) -> torch.Tensor:
        """New weights after ``n_up`` up and ``n_down`` down pulses per device (float counts >= 0).

        w, n_up, n_down ``[rows, cols]`` (normalized weight units; counts hold whole
        numbers).  Devices without pulses are returned unchanged when at most
        :attr:`sparse_fraction` of the array is pulsed (only the pulsed ones are computed).
        """

        def total(idx: torch.Tensor | None) -> torch.Tensor:
            if idx is None:
                return n_up + n_down
            return n_up.reshape(-1).index_select(0, idx) + n_down.reshape(-1).index_select(0, idx)

        def split(idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            if idx is None:
                return n_up, n_down
            return n_up.reshape(-1).index_select(0, idx), n_down.reshape(-1).index_select(0, idx)

        return self._apply(w, total, split, generator, max_chunks)

    def apply_total_net(
        self,
        w: torch.Tensor,
        total: torch.Tensor,
        net: torch.Tensor,
        generator: torch.Generator,
        max_chunks: int = 8,
    ) -> torch.Tensor:
        """:meth:`apply` for ``n_up = (total + net) / 2``, ``n_down = (total - net) / 2``
        (``[rows, cols]``, integer or float counts: the coincidence counts of an update).
        Up / down counts are formed (as floats) only for the devices computed."""

        def count(idx: torch.Tensor | None) -> torch.Tensor:
            return total if idx is None else total.reshape(-1).index_select(0, idx)

        def split(idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            t = count(idx).to(w.dtype)
            n = (net if idx is None else net.reshape(-1).index_select(0, idx)).to(w.dtype)
            up = (t + n).mul_(0.5)
            return up, t.sub_(up)

        return self._apply(w, count, split, generator, max_chunks)

    def apply_signed(
        self,
        w: torch.Tensor,
        counts: torch.Tensor,
        generator: torch.Generator,
        max_chunks: int = 8,
    ) -> torch.Tensor:
        """:meth:`apply` for signed counts ``[rows, cols]`` (> 0: up pulses, < 0: down).

        ``counts`` may be an integer tensor: it is converted to ``w.dtype`` after the
        pulsed devices are gathered (one full-array pass less on sparse calls).
        """

        def total(idx: torch.Tensor | None) -> torch.Tensor:
            return (counts if idx is None else counts.reshape(-1).index_select(0, idx)).abs()

        def split(idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            c = counts if idx is None else counts.reshape(-1).index_select(0, idx)
            c = c.to(w.dtype)
            up = c.clamp(min=0.0)
            return up, up - c

        return self._apply(w, total, split, generator, max_chunks)

    @contextlib.contextmanager
    def scaled_steps(self, scale_up: torch.Tensor, scale_down: torch.Tensor) -> Iterator[None]:
        """Within the block, every device's up / down step (and its c2c noise, which is relative to
        the step) is multiplied by ``scale_up`` / ``scale_down`` (``[rows, cols]``, >= 0): pulses
        of another shape than the nominal one (:class:`hil.pulse_response.PulseResponse`).
        The step parameters scale, so every step model and the closed-form paths apply unchanged."""
        orig_up, orig_dn = self.params["dw_up"], self.params["dw_down"]
        self.params["dw_up"] = orig_up * scale_up.to(orig_up.dtype)
        self.params["dw_down"] = orig_dn * scale_down.to(orig_dn.dtype)
        try:
            yield
        finally:
            self.params["dw_up"], self.params["dw_down"] = orig_up, orig_dn

    def _sample_index(self, size: int, device: torch.device) -> torch.Tensor:
        """Fixed quasi-random flat indices (``_DENSITY_SAMPLE`` of ``size``) to estimate density."""
        key = f"sample:{size}:{device}"
        hit = self._cache.get(key)
        if hit is None:
            idx = (torch.arange(_DENSITY_SAMPLE, device=device) * 2654435761) % size
            hit = ((), idx)
            self._cache[key] = hit
        return hit[1]  # type: ignore[return-value]

    def _apply(
        self,
        w: torch.Tensor,
        total: Callable[[torch.Tensor | None], torch.Tensor],
        split: Callable[[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator,
        max_chunks: int,
    ) -> torch.Tensor:
        """Dense or sparse application.

        ``total(idx)``: pulses per device (>= 0) of the flat device indices ``idx``
        (None: all, ``[rows, cols]``); ``split(idx)``: their up and down counts.  Whether
        the pulsed devices are at most :attr:`sparse_fraction` of the array is decided
        exactly for small arrays and from ``_DENSITY_SAMPLE`` fixed devices for large ones
        (a wrong guess near the threshold only costs time: both paths compute the same).
        """
        size = w.numel()
        if size == 0:
            return w
        frac = self._sparse_fraction()
        full: torch.Tensor | None = None
        if frac <= 0:
            dense = True
        elif size > 4 * _DENSITY_SAMPLE:
            sample = total(self._sample_index(size, w.device))
            # counts are >= 0: the sum of their signs is the number of pulsed devices
            dense = float(sample.sign().sum()) > frac * _DENSITY_SAMPLE
        else:
            full = total(None)
            dense = float(full.sign().sum()) > frac * size
        if dense:
            stuck = self.stuck if self._any_stuck() else None
            coeffs = self._coefficients()
            dense_p = coeffs.dense
            if self.kind == "constant":
                n_up, n_down = split(None)
                out = self._apply_constant(w, n_up, n_down, generator, dense_p, stuck)
                if self.offset is not None:
                    self._redraw_offset(total(None) if full is None else full, None, generator)
                return out
            full = total(None) if full is None else full
            peak = float(full.max())
            if peak <= 0:
                return w
            n_up, n_down = split(None)
            out = self._apply_pulses(w, n_up, n_down, peak, dense_p, stuck, generator, max_chunks, coeffs)
            if self.offset is not None:
                self._redraw_offset(full, None, generator)
            return out
        full = total(None) if full is None else full
        idx = torch.nonzero(full.reshape(-1)).view(-1)  # counts >= 0: the pulsed devices
        if idx.numel() == 0:
            return w
        return self._apply_at(w, idx, full.reshape(-1).index_select(0, idx), split, generator, max_chunks)

    def apply_signed_at(
        self,
        w: torch.Tensor,
        idx: torch.Tensor,
        counts: torch.Tensor,
        generator: torch.Generator,
        max_chunks: int = 8,
        *,
        inplace: bool = False,
    ) -> torch.Tensor:
        """:meth:`apply_signed` for pulses on the devices ``idx`` only (flat indices into
        ``[rows, cols]``, distinct; ``counts`` ``[n]``: their signed counts, integer or
        float): the sparse path without looking at the rest of the array.  Every other
        device is returned bit-unchanged; a device of ``idx`` with 0 pulses too.
        ``inplace``: the new weights are written into ``w`` (contiguous) and returned."""
        if idx.numel() == 0:
            return w

        def split(_: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            c = counts.to(w.dtype)
            up = c.clamp(min=0.0)
            return up, up - c

        return self._apply_at(w, idx, counts.abs(), split, generator, max_chunks, inplace)

    def apply_total_net_at(
        self,
        w: torch.Tensor,
        idx: torch.Tensor,
        total: torch.Tensor,
        net: torch.Tensor,
        generator: torch.Generator,
        max_chunks: int = 8,
        *,
        inplace: bool = False,
    ) -> torch.Tensor:
        """:meth:`apply_total_net` for the devices ``idx`` only (flat, distinct; ``total``,
        ``net`` ``[n]`` their counts), as :meth:`apply_signed_at`."""
        if idx.numel() == 0:
            return w

        def split(_: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            t = total.to(w.dtype)
            up = (t + net.to(w.dtype)).mul_(0.5)
            return up, t.sub_(up)

        return self._apply_at(w, idx, total, split, generator, max_chunks, inplace)

    def _apply_at(
        self,
        w: torch.Tensor,
        idx: torch.Tensor,
        pulses: torch.Tensor,
        split: Callable[[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator,
        max_chunks: int,
        inplace: bool = False,
    ) -> torch.Tensor:
        """The sparse path: devices ``idx`` (flat) with ``pulses`` (``[n]``, total, >= 0) and
        ``split(idx)`` their up / down counts; the others are returned bit-unchanged
        (``inplace``: written into ``w``, which must be contiguous)."""
        if self.offset is not None:
            self._redraw_offset(pulses, idx, generator)
        peak = float(pulses.max())
        if peak <= 0:
            return w
        coeffs = self._coefficients()
        # sparse: gather the pulsed devices (flat indices, ascending: deterministic), apply the
        # same math to the 1-D vectors, scatter back; devices without pulses stay bit-unchanged
        p = coeffs.select(coeffs.packed.index_select(1, idx), (idx.numel(),))
        stuck = self.stuck.reshape(-1).index_select(0, idx) if self._any_stuck() else None
        n_up, n_down = split(idx)
        flat_w = w.reshape(-1)
        ws = flat_w.index_select(0, idx)
        if self.kind == "constant":
            ws = self._apply_constant(ws, n_up, n_down, generator, p, stuck)
        else:
            ws = self._apply_pulses(ws, n_up, n_down, peak, p, stuck, generator, max_chunks, coeffs)
        out = flat_w if inplace else flat_w.clone()
        out.index_copy_(0, idx, ws)
        return out.view(w.shape)

    def _apply_pulses(
        self,
        w: torch.Tensor,
        n_up: torch.Tensor,
        n_down: torch.Tensor,
        peak: float,
        p: dict[str, torch.Tensor],
        stuck: torch.Tensor | None,
        generator: torch.Generator,
        max_chunks: int,
        coeffs: _Coefficients | None = None,
    ) -> torch.Tensor:
        """Chunked application of ``n_up`` / ``n_down`` pulses (non-constant steps).

        All tensors share one shape: ``[rows, cols]`` (dense) or ``[n]`` (gathered devices);
        ``peak``: the largest ``n_up + n_down`` (> 0); ``p``: the devices' coefficients
        (from ``coeffs``, default :meth:`_coefficients`), ``stuck`` their stuck mask.
        """
        if coeffs is None:
            coeffs = self._coefficients()
        if coeffs.bounded:
            return self._apply_bounded_affine(w, n_up, n_down, peak, p, stuck, generator, max_chunks)
        w0 = w
        var = None
        if self.c2c > 0 or self.kind == "table":
            m_up, m_dn, at = self._deltas(w0, p)
            s_up = self._noise_std(w0, True, p, m_up, at)
            s_dn = self._noise_std(w0, False, p, m_dn, at)
            var = n_up * s_up * s_up + n_down * s_dn * s_dn
        chunks = int(min(max(1.0, peak), max_chunks))
        if chunks > 1:
            # pulses of chunk k: floor(n (k + 1) / chunks) - floor(n k / chunks), all at once
            ks = torch.arange(1, chunks + 1, device=w.device, dtype=w.dtype)
            cum = torch.floor(torch.stack((n_up, n_down)) * ks.view(-1, 1, *([1] * w.dim())) / chunks)
            per_chunk = torch.diff(cum, dim=0, prepend=torch.zeros_like(cum[:1]))
        affine = self.kind in ("linear", "softbounds")
        if affine:
            mono_up, mono_dn = coeffs.monotone["up"], coeffs.monotone["dn"]
            if mono_up and mono_dn and not any(coeffs.flat.values()):
                counts = per_chunk if chunks > 1 else torch.stack((n_up, n_down))[None]
                w = self._affine_chunks(w, counts, p)
                chunks = 0  # done
        for k in range(chunks):
            if chunks == 1:
                u_k, d_k = n_up, n_down
            else:
                u_k, d_k = per_chunk[k, 0], per_chunk[k, 1]
            if affine:
                w = self._clamp_to(self._affine_n(w, u_k, True, p, mono_up), p, stuck)
                w = self._clamp_to(self._affine_n(w, d_k, False, p, mono_dn), p, stuck)
            else:
                # Second-order scheme for the pulse-by-pulse map w <- w + f(w): h pulses
                # change w by h f + h (h - 1) / 2 f f' + O(h^3), which the step at
                # w + (h - 1) / 2 f reproduces; one pulse (h = 1) is applied exactly.
                f_up, f_dn, _ = self._deltas(w, p)
                half = w + 0.5 * ((u_k - 1.0).clamp(min=0.0) * f_up + (d_k - 1.0).clamp(min=0.0) * f_dn)
                half = self._clamp_to(half, p, stuck)
                g_up, g_dn, _ = self._deltas(half, p)
                w = self._clamp_to(w + u_k * g_up + d_k * g_dn, p, stuck)
        if var is not None:
            xi = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
            w = w + var.add_(torch.finfo(w.dtype).tiny).sqrt_() * xi
        return self._clamp_to(w, p, stuck)

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
        if self.offset is not None:
            out["offset"] = self.offset.clone()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (a model with write noise needs the checkpoint's ``offset``)."""
        for k in list(self.params):
            self.params[k] = state[f"param.{k}"].to(self.device, self.dtype)
        self.stuck = state["stuck"].to(self.device)
        self.stuck_value = state["stuck_value"].to(self.device, self.dtype)
        if self.write_sd > 0:
            if "offset" not in state:
                raise ValueError(
                    "checkpoint has no write-noise offset ('offset'), but the device model has write "
                    f"noise (write_noise {self.write_sd}): it was saved from a model without write noise"
                )
            self.offset = state["offset"].to(self.device, self.dtype)
        else:
            self.offset = None


def nominal_dw(model: DeviceModel) -> float:
    """Nominal minimal step (normalized units) of a device model: mean |step| at its symmetry point."""
    gen = torch.Generator().manual_seed(0)
    nominal = model.model_copy(update={"variation": model.variation.model_copy(update={"d2d": {}, "stuck_fraction": 0.0})})
    arr = DeviceArray(nominal, 1, 1, gen, torch.device("cpu"), torch.float64)
    value = float(arr.step_at_symmetry().item())
    return value if math.isfinite(value) and value > 0 else float(model.step.dw_up)
