"""Write-verify settings for deployment, as one pydantic config.

:meth:`hil.backend.CrossbarBackend.program` is the one write-verify loop of the project
(read ``n_reads`` averaged, pulse every device outside ``tol`` by its error over its own
measured step, capped).  By default it re-examines every device in every round: a device
already inside ``tol`` that one noisy verify read puts outside it gets a pulse, and on a
device whose single-pulse noise exceeds ``tol`` (``pcm-noisy``: c2c 1.5 x the step, up to
0.06 per pulse in the steep half of its range against tol 0.02) that pulse throws it far
off; the loop ends after ``max_iter`` rounds wherever the last pulse left such devices.
On ``pcm-noisy`` pairs this left 30-60 of 4096 devices more than 0.1 off (up to 0.8) and
cost whole classes of the digits MLP (docs/extraction.md).

Deployment therefore programs with the two bench-practice options of ``program``:

- **freeze** (default here): a device whose verify read falls inside ``tol`` is done and
  gets no further pulse (program-and-verify per device).  A device whose pulses are
  noisier than ``tol`` hunts until one pulse lands inside and then stays there.
- **confirm** (``confirm_reads > 0``): when every device is done (or the rounds are spent),
  one read of ``confirm_reads`` averaged reads re-examines the frozen devices; those it
  puts outside ``tol`` are reopened (false passes of a noisy verify read), at most
  ``confirm_passes`` times.

``freeze=False, confirm_reads=0`` is the contract's default loop (kept for the comparison
in docs/extraction.md).  Only ``read`` and ``pulse`` are used, so it runs unchanged on a
bench backend.
"""


from __future__ import annotations

import torch
from pydantic import Field

from hil.backend import CrossbarBackend, ProgramReport
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
    """Program ``target`` ``[rows, cols]`` (normalized units) onto ``backend`` with these settings.

    :meth:`~hil.backend.CrossbarBackend.program` with the fields of ``config``; the
    :class:`~hil.backend.ProgramReport`'s errors come from the last read of every device
    (the confirmation read where there was one).
    """
    cfg = config or WriteVerifyConfig()
    return backend.program(target, tol=cfg.tol, max_iter=cfg.max_iter, n_reads=cfg.n_reads,
                           max_pulses_per_iter=cfg.max_pulses_per_iter, freeze=cfg.freeze,
                           confirm_reads=cfg.confirm_reads, confirm_passes=cfg.confirm_passes)
