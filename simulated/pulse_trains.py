"""Stochastic pulse trains for the parallel outer-product update.

For every sample ``b`` of a batch, each column line ``j`` fires a random train
of ``BL`` slots with probability ``p_x[b, j]`` per slot and each row line ``i``
one with ``p_d[b, i]``; a device receives a pulse in every slot where both its
lines fire (a coincidence), with sign ``-sign(x_j d_i)`` (sign of ``-lr``).
With ``p_x = C |x|`` and ``p_d = |d| lr / (C dw BL)`` the expected change of
device ``(i, j)`` is ``-lr * sum_b d_bi x_bj`` (Gokmen & Vlasov 2016; aihwkit's
pulsed update).  ``C`` balances the two probabilities per sample (update
management): ``C = sqrt(lr d_max / (dw BL x_max))``.  Each device gets at most
``BL`` pulses per sample.

All coincidences of a mini-batch are counted at once with two matrix products
over the ``batch * BL`` slot axis (total pulses and signed net pulses), which
gives the number of up and down pulses per device; the device model then
applies them interleaved.  No Python loop over devices, pulses or samples.
"""

from __future__ import annotations

import torch
from pydantic import Field

from hil.config import HilModel


class UpdateConfig(HilModel):
    """Settings of the stochastic pulse-train update."""

    bl: int = Field(31, ge=1, le=4096, description="bit length: pulse slots per sample")
    update_management: bool = Field(
        True, description="balance row and column pulse probabilities per sample"
    )
    max_chunks: int = Field(
        8, ge=1, le=1024, description="sub-steps used to apply many pulses to a nonlinear device"
    )


def pulse_probabilities(
    x: torch.Tensor, d: torch.Tensor, lr: float, dw: float, cfg: UpdateConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slot firing probabilities ``p_x [batch, cols]`` and ``p_d [batch, rows]`` in [0, 1]."""
    scale = abs(lr) / (dw * cfg.bl)
    ax, ad = x.abs(), d.abs()
    if cfg.update_management:
        x_max = ax.amax(dim=1, keepdim=True).clamp(min=1e-12)
        d_max = ad.amax(dim=1, keepdim=True).clamp(min=1e-12)
        c = torch.sqrt(scale * d_max / x_max)
        p_x = ax * c
        p_d = ad * (scale / c)
    else:
        s = scale**0.5
        p_x, p_d = ax * s, ad * s
    return p_x.clamp(max=1.0), p_d.clamp(max=1.0)


def coincidence_counts(
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dw: float,
    cfg: UpdateConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up and down pulse counts per device ``[rows, cols]`` (float tensors) for one update.

    x ``[batch, cols]``, d ``[batch, rows]``; ``lr`` > 0 decreases ``W`` along ``d x^T``.
    """
    batch, cols = x.shape
    rows = d.shape[1]
    p_x, p_d = pulse_probabilities(x, d, lr, dw, cfg)
    bl = cfg.bl
    fx = (torch.rand((batch, bl, cols), generator=generator, device=x.device, dtype=x.dtype) < p_x[:, None, :]).to(x.dtype)
    fd = (torch.rand((batch, bl, rows), generator=generator, device=x.device, dtype=x.dtype) < p_d[:, None, :]).to(x.dtype)
    sign = -1.0 if lr > 0 else 1.0
    sx = torch.sign(x)[:, None, :]
    sd = (sign * torch.sign(d))[:, None, :]
    fx2 = fx.reshape(batch * bl, cols)
    fd2 = fd.reshape(batch * bl, rows)
    total = fd2.T @ fx2
    net = (fd * sd).reshape(batch * bl, rows).T @ (fx * sx).reshape(batch * bl, cols)
    n_up = 0.5 * (total + net)
    n_down = 0.5 * (total - net)
    return n_up.round_().clamp_(min=0.0), n_down.round_().clamp_(min=0.0)
