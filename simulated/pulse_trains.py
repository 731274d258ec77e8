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
over the ``batch * BL`` slot axis (total pulses and signed net pulses; only the
slots in which some line of one side fires are drawn for the other side, and a
sparse first side is drawn line first: :func:`first_side_trains`), which
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
        p_d = ad * c.reciprocal().mul_(scale)  # scale / c, without the Python-level __rdiv__
    else:
        s = scale**0.5
        p_x, p_d = ax * s, ad * s
    return p_x.clamp(max=1.0), p_d.clamp(max=1.0)


_INT_MM_OK: dict[str, bool] = {}
# above this fraction of active slots the second side is drawn for every slot (gathering
# the active ones would cost more than it saves)
_DENSE_SLOTS = 0.5


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


def count_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``a @ b`` for small integer tensors (entries in {-1, 0, 1}), exactly, as ``dtype``.

    a ``[m, k]``, b ``[k, n]``, both int8.  On CPUs with int8 GEMM support this uses
    ``torch._int_mm`` (int32 accumulation, several times faster than float); elsewhere
    a float matmul, which is exact as long as ``k < 2^24``.  ``dtype=None``: whichever
    the product comes in (int32, or float32), without a conversion.
    """
    if _int_mm_works(a.device):
        out = torch._int_mm(a, b)
        return out if dtype is None else out.to(dtype)
    dt = torch.float32 if dtype is None else dtype
    return a.to(dt) @ b.to(dt)


def _rows_first(p_d: torch.Tensor, p_x: torch.Tensor, bl: int) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """Whether drawing the row trains first needs fewer random draws in expectation.

    Drawing the trains of one side (``n_first`` lines) in full and the other side's
    (``n_second`` lines) only in the slots where a line of the first side fires costs
    ``batch * bl * n_first + bl * n_second * sum_b q_b`` draws, with ``q_b = 1 - prod_j
    (1 - p_bj)`` the probability that some line of the first side fires in a slot of
    sample ``b``.  p_d ``[batch, rows]``, p_x ``[batch, cols]`` (in [0, 1]); both sides'
    ``sum_b q_b`` come back in one transfer.  Also returns ``log(1 - p_d)``, ``log(1 - p_x)``.
    """
    batch, rows = p_d.shape
    cols = p_x.shape[1]
    lp_d, lp_x = torch.log1p(-p_d), torch.log1p(-p_x)
    log_none = torch.stack((lp_d.sum(dim=1), lp_x.sum(dim=1)))
    q_d, q_x = (-v for v in torch.expm1(log_none).sum(dim=1).tolist())
    cost_d = float(batch * bl * rows) + float(bl * cols) * q_d
    cost_x = float(batch * bl * cols) + float(bl * rows) * q_x
    return cost_d <= cost_x, lp_d, lp_x


# Updates whose trains have at most this many slots x lines in all (both sides) draw the
# side with fewer lines first without estimating the cost (the estimate's operations cost
# more than the at most this many draws a worse choice can add).
_SMALL_TRAINS = 32768

# First-side trains of at least this many slots x lines are drawn line by line (below) when
# few lines fire: about batch * lines + fires * (bl + 1) random numbers instead of
# batch * bl * lines (in the 784-256-128-10 MLP's TTv2 updates, 79360 -> ~3000 per update).
_LINE_FIRST_MIN = 16384


def first_side_trains(
    p: torch.Tensor, log1m_p: torch.Tensor | None, bl: int, generator: torch.Generator
) -> torch.Tensor:
    """Independent Bernoulli trains ``[batch, bl, n]`` (bool): slot ``t`` of line ``i`` of
    sample ``b`` fires with probability ``p[b, i]`` (``log1m_p = log(1 - p)``, or None).

    Drawn slot by slot (``bl`` uniforms per line), or -- for large trains where few lines
    fire at all -- line first, which is exact in distribution and needs far fewer draws:
    a line fires at least once with probability ``q = 1 - (1 - p)^bl`` (one uniform per
    line); for a line that does, its first firing slot ``F`` has the truncated geometric law
    ``P(F <= f) = (1 - (1 - p)^(f + 1)) / q`` (inverse CDF of one uniform), every later slot
    fires independently with ``p`` (one uniform per slot) and earlier slots do not.
    """
    batch, n = p.shape
    dev, dt = p.device, p.dtype
    dense = batch * bl * n
    if dense >= _LINE_FIRST_MIN:
        if log1m_p is None:
            log1m_p = torch.log1p(-p)
        q = torch.expm1(log1m_p * bl).neg_()  # [batch, n]: the line fires in some slot
        if batch * n + float(q.sum()) * (bl + 1) <= 0.5 * dense:
            u = torch.rand((batch, n), generator=generator, device=dev, dtype=dt)
            hit = torch.nonzero((u < q).view(-1)).view(-1)  # (sample, line), ascending
            trains = torch.zeros((batch, bl, n), dtype=torch.bool, device=dev)
            m = hit.numel()
            if m == 0:
                return trains
            v = torch.rand(m, generator=generator, device=dev, dtype=dt)
            first = torch.log1p(-v * q.view(-1).index_select(0, hit))
            first = first.div_(log1m_p.view(-1).index_select(0, hit)).ceil_().sub_(1.0).clamp_(0.0, bl - 1)
            slot = torch.arange(bl, device=dev, dtype=dt)
            later = torch.rand((m, bl), generator=generator, device=dev, dtype=dt)
            line = (later < p.view(-1).index_select(0, hit)[:, None]) & (slot > first[:, None])
            line |= slot == first[:, None]  # [m, bl]
            b = torch.div(hit, n, rounding_mode="floor")
            trains[b[:, None], slot.to(torch.int64)[None, :], (hit - b * n)[:, None]] = line
            return trains
    return torch.rand((batch, bl, n), generator=generator, device=dev, dtype=dt) < p[:, None, :]


def coincidence_total_net(
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dw: float,
    cfg: UpdateConfig,
    generator: torch.Generator,
    counts_dtype: torch.dtype | None | str = "input",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total and signed net pulse counts per device ``[rows, cols]`` for one update.

    ``total = n_up + n_down`` and ``net = n_up - n_down`` (whole numbers, as
    ``counts_dtype``: by default the dtype of ``x``; None: as the count GEMM gives them,
    int32 or float32).  x ``[batch, cols]``, d ``[batch, rows]``; ``lr`` > 0 decreases
    ``W`` along ``d x^T``.

    The trains of one side (rows or columns, whichever needs fewer random draws in
    expectation; on small arrays the one with fewer lines) are drawn for all ``batch * BL``
    slots (slot by slot, or line first where
    few lines fire: :func:`first_side_trains`); those of the other side only
    for the slots in which at least one line of the first side fires (elsewhere no
    device can see a coincidence), or for all slots when most of them are active.  The
    trains are independent, so this is exact in distribution; both choices are
    deterministic given the generator's state.
    """
    out_dt = x.dtype if counts_dtype == "input" else counts_dtype
    trains = draw_trains(x, d, lr, dw, cfg, generator)
    if trains is None:
        zeros = torch.zeros((d.shape[1], x.shape[1]), device=x.device, dtype=out_dt or torch.float32)  # type: ignore[arg-type]
        return zeros, zeros.clone()
    return _array_counts(trains, out_dt)  # type: ignore[arg-type]


def _array_counts(
    trains: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total and net coincidences ``[rows, cols]`` of every device from :func:`draw_trains`'s
    trains (``dtype`` as in :func:`count_matmul`)."""
    fd8, fx8, sd, sx = trains
    return count_matmul(fd8.T.contiguous(), fx8, dtype), count_matmul(sd.T.contiguous(), sx, dtype)


def coincidence_pulsed(
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dw: float,
    cfg: UpdateConfig,
    generator: torch.Generator,
    max_devices: int,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """:func:`coincidence_total_net` (the same trains, the same random draws), as the list
    of pulsed devices when they are few.

    Returns ``(idx, total, net)``: ``idx`` ``[n]`` the flat indices (ascending) of the
    devices with at least one coincidence and ``total``, ``net`` ``[n]`` their counts
    (int32 or float32) -- when the rows and columns that fire at all span at most
    ``max_devices`` devices; the counts are then computed on that block only.  Otherwise
    ``(None, total, net)`` with ``[rows, cols]`` counts, as :func:`coincidence_total_net`
    with ``counts_dtype=None``.
    """
    cols = x.shape[1]
    trains = draw_trains(x, d, lr, dw, cfg, generator)
    if trains is None:
        empty = torch.zeros(0, dtype=torch.int64, device=x.device)
        return empty, empty, empty
    fd8, fx8, sd, sx = trains
    r_idx = torch.nonzero(fd8.amax(dim=0)).view(-1)  # rows that fire in some slot
    c_idx = torch.nonzero(fx8.amax(dim=0)).view(-1)
    nr, nc = r_idx.numel(), c_idx.numel()
    if nr * nc > max_devices:
        return None, *_array_counts(trains, None)
    total = count_matmul(fd8.T.index_select(0, r_idx), fx8.index_select(1, c_idx), None)  # [nr, nc]
    net = count_matmul(sd.T.index_select(0, r_idx), sx.index_select(1, c_idx), None)
    nz = torch.nonzero(total.view(-1)).view(-1)  # row-major: ascending flat device indices
    i = torch.div(nz, nc, rounding_mode="floor")
    idx = r_idx.index_select(0, i).mul_(cols).add_(c_idx.index_select(0, nz - i * nc))
    return idx, total.view(-1).index_select(0, nz), net.view(-1).index_select(0, nz)


def draw_trains(
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dw: float,
    cfg: UpdateConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The pulse trains of one update over the slots that matter (see
    :func:`coincidence_total_net`): ``(fd, fx, sd, sx)``, int8 ``[k, rows]``, ``[k, cols]``
    (fires: 1) and the same signed (``sd * sx`` is the sign of the pulse), ``k`` the slots
    drawn for both sides; None when no slot is active."""
    batch, cols = x.shape
    rows = d.shape[1]
    p_x, p_d = pulse_probabilities(x, d, lr, dw, cfg)
    bl = cfg.bl
    dev, dt = x.device, x.dtype
    sign = -1 if lr > 0 else 1
    s_x = torch.sign(x).to(torch.int8)
    s_d = (torch.sign(d) * sign).to(torch.int8)
    if batch * bl * (rows + cols) <= _SMALL_TRAINS:
        rows_first, lp_d, lp_x = rows <= cols, None, None
    else:
        rows_first, lp_d, lp_x = _rows_first(p_d, p_x, bl)
    p_a, p_b = (p_d, p_x) if rows_first else (p_x, p_d)
    n_a, n_b = p_a.shape[1], p_b.shape[1]
    k = batch * bl
    fa = first_side_trains(p_a, lp_d if rows_first else lp_x, bl, generator)
    # [batch, bl]: some line of the first side fires (amax of uint8: bool any() is slow on CPU)
    active = fa.view(torch.uint8).amax(dim=2) > 0
    n_active = int(active.sum())
    if n_active == 0:
        return None
    if n_active > _DENSE_SLOTS * k:
        # most slots active: draw the other side for every slot (no gather)
        fb = torch.rand((batch, bl, n_b), generator=generator, device=dev, dtype=dt) < p_b[:, None, :]
        fd, fx = (fa, fb) if rows_first else (fb, fa)
        fd8 = fd.to(torch.int8)  # [batch, bl, rows]
        fx8 = fx.to(torch.int8)  # [batch, bl, cols]
        sd = (fd8 * s_d[:, None, :]).reshape(k, rows)
        sx = (fx8 * s_x[:, None, :]).reshape(k, cols)
        fd8, fx8 = fd8.reshape(k, rows), fx8.reshape(k, cols)
    else:
        slots = torch.nonzero(active.reshape(-1)).view(-1)  # active slots, ascending
        sample = torch.div(slots, bl, rounding_mode="floor")
        fb = torch.rand((n_active, n_b), generator=generator, device=dev, dtype=dt)
        fb = fb < p_b.index_select(0, sample)
        fa = fa.reshape(k, n_a).index_select(0, slots)
        fd, fx = (fa, fb) if rows_first else (fb, fa)
        fd8 = fd.to(torch.int8)  # [n_active, rows]
        fx8 = fx.to(torch.int8)  # [n_active, cols]
        sd = fd8 * s_d.index_select(0, sample)
        sx = fx8 * s_x.index_select(0, sample)
    return fd8, fx8, sd, sx


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
