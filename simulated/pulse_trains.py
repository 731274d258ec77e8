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
The products are exact integer arithmetic: int8 GEMM (``torch._int_mm``) on
CPUs that support it, else a float matmul of 0/+-1 entries.
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


_INT_MM_OK: dict[str, bool] = {}


def _int_mm_works(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32) runs and is exact on this device type."""
    key = device.type
    if key not in _INT_MM_OK:
        ok = False
        if key == "cpu" and hasattr(torch, "_int_mm"):
            try:
                g = torch.Generator().manual_seed(0)
                a = torch.randint(-1, 2, (33, 40), generator=g, dtype=torch.int8)
                b = torch.randint(-1, 2, (40, 17), generator=g, dtype=torch.int8)
                ok = torch.equal(torch._int_mm(a, b).to(torch.float32), a.float() @ b.float())
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _INT_MM_OK[key] = ok
    return _INT_MM_OK[key]


def count_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` for small integer tensors (entries in {-1, 0, 1}), exactly, as ``dtype``.

    a ``[m, k]``, b ``[k, n]``, both int8.  On CPUs with int8 GEMM support this uses
    ``torch._int_mm`` (int32 accumulation, several times faster than float); elsewhere
    a float matmul, which is exact as long as ``k < 2^24``.
    """
    if _int_mm_works(a.device):
        return torch._int_mm(a, b).to(dtype)
    return a.to(dtype) @ b.to(dtype)


def coincidence_total_net(
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dw: float,
    cfg: UpdateConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total and signed net pulse counts per device ``[rows, cols]`` for one update.

    ``total = n_up + n_down`` and ``net = n_up - n_down`` (float tensors holding whole
    numbers).  x ``[batch, cols]``, d ``[batch, rows]``; ``lr`` > 0 decreases ``W``
    along ``d x^T``.
    """
    batch, cols = x.shape
    rows = d.shape[1]
    p_x, p_d = pulse_probabilities(x, d, lr, dw, cfg)
    bl = cfg.bl
    dev, dt = x.device, x.dtype
    fx = torch.rand((batch, bl, cols), generator=generator, device=dev, dtype=dt) < p_x[:, None, :]
    fd = torch.rand((batch, bl, rows), generator=generator, device=dev, dtype=dt) < p_d[:, None, :]
    sign = -1 if lr > 0 else 1
    sx = torch.sign(x).to(torch.int8)[:, None, :]
    sd = (torch.sign(d) * sign).to(torch.int8)[:, None, :]
    k = batch * bl
    fx8 = fx.to(torch.int8)
    fd8 = fd.to(torch.int8)
    fd_t = fd8.reshape(k, rows).T.contiguous()
    total = count_matmul(fd_t, fx8.reshape(k, cols), dt)
    net = count_matmul((fd8 * sd).reshape(k, rows).T.contiguous(), (fx8 * sx).reshape(k, cols), dt)
    return total, net


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
    total, net = coincidence_total_net(x, d, lr, dw, cfg, generator)
    n_up = (total + net).mul_(0.5)
    return n_up, total.sub_(n_up)
