"""Peripheral non-idealities of an analog MVM: input DAC, read noise, output ADC and saturation.

Units: inputs are in units of the full-scale input (``inp_bound``), outputs in
units of one full-scale weight times one full-scale input, as in aihwkit's
``IOParameters``.  Every non-ideality can be switched off
(``PeripheryConfig.ideal()``).
"""

from __future__ import annotations

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


def analog_mvm(
    x: torch.Tensor,
    w: torch.Tensor,
    cfg: PeripheryConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """``y = x w^T`` through DAC, noisy array and ADC.  x ``[batch, k]``, w ``[n, k]`` -> ``[batch, n]``.

    Weight read noise is applied as its exact output-referred equivalent for
    independent per-read device noise: std ``w_noise * ||x||_2`` (additive) and
    ``w_noise_relative * sqrt((x^2) (w^2)^T)`` (multiplicative).
    """
    xq = quantize(x.clamp(-cfg.inp_bound, cfg.inp_bound), cfg.inp_res_bits, cfg.inp_bound)
    y = xq @ w.T
    var = None
    if cfg.w_noise > 0:
        var = (cfg.w_noise**2) * xq.pow(2).sum(dim=1, keepdim=True)
    if cfg.w_noise_relative > 0:
        rel = (cfg.w_noise_relative**2) * (xq.pow(2) @ w.pow(2).T)
        var = rel if var is None else var + rel
    if cfg.out_noise > 0:
        var = cfg.out_noise**2 if var is None else var + cfg.out_noise**2
    if var is not None:
        noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        y = y + noise * (torch.sqrt(var) if isinstance(var, torch.Tensor) else var**0.5)
    if cfg.out_bound is not None:
        y = y.clamp(-cfg.out_bound, cfg.out_bound)
        y = quantize(y, cfg.out_res_bits, cfg.out_bound)
    return y
