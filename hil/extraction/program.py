"""Write-verify for deployment: a stopping rule for devices whose pulse noise exceeds the tolerance.

:meth:`hil.backend.CrossbarBackend.program` re-examines every device in every round:
a device that is already inside ``tol`` but reads outside it once (read noise) gets a
pulse, and on a device whose single-pulse noise exceeds ``tol`` (``pcm-noisy``: c2c
1.5 x the step, up to 0.06 per pulse in the steep half of its range against tol 0.02)
that pulse throws it far off; the loop ends after ``max_iter`` rounds wherever the last
pulse left such devices.  On ``pcm-noisy`` pairs this left 30-60 of 4096 devices more
than 0.1 off (up to 0.8) and cost whole classes of the digits MLP (docs/extraction.md).

:func:`write_verify` uses the same round (read ``n_reads`` averaged, pulse every device
outside ``tol`` by its error over its own measured step, capped) with two changes, both
plain bench practice:

- **freeze** (default): a device whose verify read falls inside ``tol`` is done and gets
  no further pulse (program-and-verify per device: a device leaves the loop when it
  verifies).  A device whose pulses are noisier than ``tol`` hunts until one pulse lands
  inside and then stays there.
- **confirm** (``confirm_reads > 0``): when every device is done (or the rounds are spent),
  one read of ``confirm_reads`` averaged reads re-examines the frozen devices; those it
  puts outside ``tol`` are reopened (false passes of a noisy verify read), at most
  ``confirm_passes`` times.

``freeze=False, confirm_reads=0`` is exactly ``CrossbarBackend.program`` (kept for the
comparison in docs/extraction.md).  Only ``read`` and ``pulse`` are used, so the routine
runs unchanged on a bench backend.
"""

from __future__ import annotations

import torch
from pydantic import Field

from hil.backend import CrossbarBackend, ProgramReport
from hil.checks import check_matrix
from hil.config import HilModel


class WriteVerifyConfig(HilModel):
    """Settings of :func:`write_verify` (normalized weight units of the array)."""

    tol: float = Field(0.02, gt=0, description="a device is done when its verify read is within tol [normalized]")
    max_iter: int = Field(100, ge=0, description="read-pulse rounds at most (confirmation rounds included)")
    n_reads: int = Field(64, ge=1, description="reads averaged per verify read [reads]")
    max_pulses_per_iter: int = Field(32, ge=1, description="pulses per device and round at most")
    freeze: bool = Field(True, description="a device that verified inside tol gets no further pulse")
    confirm_reads: int = Field(0, ge=0, description="reads averaged by the confirmation read (0: none) [reads]")
    confirm_passes: int = Field(2, ge=0, description="confirmation reads at most (each may reopen devices)")


def write_verify(backend: CrossbarBackend, target: torch.Tensor, config: WriteVerifyConfig | None = None) -> ProgramReport:
    """Program ``target`` ``[rows, cols]`` (normalized units) onto ``backend`` by write-verify.

    Returns a :class:`~hil.backend.ProgramReport` whose errors come from the last
    read of every device (the confirmation read where there was one): ``converged``
    and ``converged_fraction`` count the devices whose last read is inside ``tol``.
    """
    cfg = config or WriteVerifyConfig()
    where = "write_verify"
    target = check_matrix(target, "target", backend.shape, device=backend.device, where=where).to(torch.float32)
    info = backend.info
    cap = cfg.max_pulses_per_iter if info.max_pulses_per_call is None else min(cfg.max_pulses_per_iter, info.max_pulses_per_call)
    tol = float(cfg.tol)
    step = torch.full(backend.shape, info.dw_min, device=backend.device)
    done = torch.zeros(backend.shape, dtype=torch.bool, device=backend.device)
    w = backend.read(cfg.n_reads)
    reads, pulses, rounds, confirms = cfg.n_reads, 0, 0, 0
    last = w  # the latest read of every device (for the report)
    while True:
        while rounds < cfg.max_iter:
            err = target - w
            inside = err.abs() <= tol
            if cfg.freeze:
                done |= inside
            todo = ~(done | inside)
            if not bool(todo.any()):
                break
            rounds += 1
            n = torch.round(err / step).clamp(-cap, cap)
            n = torch.where(todo & (n == 0), torch.sign(err), n)
            n = torch.where(todo, n, torch.zeros_like(n)).to(torch.int64)
            backend.pulse(n)
            pulses += int(n.abs().sum())
            w_new = backend.read(cfg.n_reads)
            reads += cfg.n_reads
            moved = n != 0
            # per-device step from what the pulses did (as CrossbarBackend.program): only where
            # at least 2 pulses moved the weight the intended way by more than a fifth of a step
            nf = torch.where(moved, n, torch.ones_like(n)).to(w.dtype)
            measured = (w_new - w) / nf
            ok = moved & (measured > 0.2 * info.dw_min) & (n.abs() >= 2)
            step = torch.where(ok, 0.5 * step + 0.5 * measured.clamp(max=10 * info.dw_min), step)
            w = w_new
        last = w
        if not (cfg.freeze and cfg.confirm_reads > 0) or confirms >= cfg.confirm_passes:
            break
        confirms += 1
        w = backend.read(cfg.confirm_reads)
        reads += cfg.confirm_reads
        last = w
        # reopen the frozen devices that the (less noisy) confirmation read puts outside tol:
        # false passes of a verify read
        reopen = done & ((target - w).abs() > tol)
        if not bool(reopen.any()) or rounds >= cfg.max_iter:
            break
        done &= ~reopen
    err = target - last
    inside = err.abs() <= tol
    return ProgramReport(
        converged=bool(inside.all()), iterations=rounds, tol=tol, max_error=float(err.abs().max()),
        rms_error=float(err.pow(2).mean().sqrt()), converged_fraction=float(inside.float().mean()),
        unconverged_devices=int((~inside).sum()), pulses_spent=pulses, reads=reads,
    )
