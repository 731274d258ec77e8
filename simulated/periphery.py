"""Peripheral non-idealities of an analog MVM: input DAC, read noise, output ADC and saturation.

Units: inputs are in units of the full-scale input (``inp_bound``), outputs in
units of one full-scale weight times one full-scale input, as in aihwkit's
``IOParameters``.  Every non-ideality can be switched off
(``PeripheryConfig.ideal()``).
"""

from __future__ import annotations

import functools
import struct

import torch
from pydantic import Field

from hil.config import HilModel


class PeripheryConfig(HilModel):
    """Input DAC, output ADC and read noise of one array (defaults: aihwkit's default IO)."""

    inp_res_bits: int | None = Field(7, ge=1, le=24, description="DAC bits incl. sign (None: ideal)")
    inp_bound: float = Field(1.0, gt=0, description="inputs are clipped to +-inp_bound")
    out_res_bits: int | None = Field(9, ge=1, le=24, description="ADC bits incl. sign (None: ideal)")
    out_bound: float | None = Field(12.0, gt=0, description="outputs saturate at +-out_bound (None: never)")
    out_noise: float = Field(
        0.06, ge=0, description="additive Gaussian std on every output (full-scale weight x input)"
    )
    w_noise: float = Field(
        0.0, ge=0, description="additive per-device weight read noise std, normalized units"
    )
    w_noise_relative: float = Field(
        0.0, ge=0, description="multiplicative weight read noise: std relative to |w|"
    )

    @classmethod
    def ideal(cls) -> PeripheryConfig:
        """No quantization, no saturation, no noise: the array computes ``x W^T`` exactly."""
        return cls(inp_res_bits=None, out_res_bits=None, out_bound=None, out_noise=0.0)


def quantize(t: torch.Tensor, bits: int | None, bound: float) -> torch.Tensor:
    """Uniform symmetric quantization to ``2^(bits-1) - 1`` levels per sign over ``[-bound, bound]``."""
    if bits is None:
        return t
    levels = 2 ** (bits - 1) - 1
    step = bound / levels
    return torch.round(t / step) * step


_FUSED_MAX = 1024  # fake_quantize is one kernel but not vectorized: faster only for small tensors


@functools.lru_cache(maxsize=64)
def _grid(bits: int, bound: float) -> tuple[int, float, float]:
    """levels, float32 step and float32 reciprocal of the step (as fake_quantize computes them)."""
    levels = 2 ** (bits - 1) - 1
    step = struct.unpack("f", struct.pack("f", bound / levels))[0]
    inv = struct.unpack("f", struct.pack("f", 1.0 / step))[0]
    return levels, step, inv


def clip_quantize(t: torch.Tensor, bits: int | None, bound: float, *, inplace: bool = False) -> torch.Tensor:
    """Clip to ``[-bound, bound]`` and round to the grid ``bound / (2^(bits-1) - 1)`` (``bits=None``: clip only).

    Computed as ``clamp(round(t / step), -levels, levels) * step`` with the float32
    step and its float32 reciprocal, i.e. exactly what the fused
    ``fake_quantize_per_tensor_affine`` computes (used for small float32 tensors), so
    both paths agree bit for bit (ties round half to even).  ``inplace=True`` may
    overwrite ``t`` (for tensors the caller owns).
    """
    if bits is None:
        return t.clamp_(-bound, bound) if inplace else t.clamp(-bound, bound)
    levels, step, inv = _grid(bits, float(bound))
    if t.dtype == torch.float32 and t.numel() <= _FUSED_MAX:
        return torch.fake_quantize_per_tensor_affine(t, bound / levels, 0, -levels, levels)
    out = t.mul_(inv) if inplace else t.mul(inv)
    return out.round_().clamp_(-levels, levels).mul_(step)


def analog_mvm(
    x: torch.Tensor,
    w: torch.Tensor,
    cfg: PeripheryConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """``y = x w^T`` through DAC, noisy array and ADC.  x ``[batch, k]``, w ``[n, k]`` -> ``[batch, n]``.

    Inputs are clipped to ``+-inp_bound`` and quantized (DAC), outputs get Gaussian
    noise, are clipped to ``+-out_bound`` and quantized (ADC; no ADC when
    ``out_bound`` is None).  Weight read noise is applied as its exact output-referred
    equivalent for independent per-read device noise: std ``w_noise * ||x||_2``
    (additive) and ``w_noise_relative * sqrt((x^2) (w^2)^T)`` (multiplicative).
    """
    xq = clip_quantize(x, cfg.inp_res_bits, cfg.inp_bound)
    y = xq @ w.T
    var = None
    if cfg.w_noise > 0:
        var = (cfg.w_noise**2) * xq.pow(2).sum(dim=1, keepdim=True)
    if cfg.w_noise_relative > 0:
        rel = (cfg.w_noise_relative**2) * (xq.pow(2) @ w.pow(2).T)
        var = rel if var is None else var + rel
    if var is not None:
        if cfg.out_noise > 0:
            var = var + cfg.out_noise**2
        y = torch.normal(y, var.sqrt_().expand_as(y), generator=generator)
    elif cfg.out_noise > 0:
        y = torch.normal(y, cfg.out_noise, generator=generator)
    if cfg.out_bound is not None:
        y = clip_quantize(y, cfg.out_res_bits, cfg.out_bound, inplace=True)
    return y
