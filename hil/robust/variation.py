"""Variation model of analog weights: programming variation and read noise.

Units: weights are in the layer's own units; the additive terms are relative to
the layer's full scale ``max |W|`` (what a backend maps to its largest
conductance), so that one configuration means the same thing for every layer.

- **Programming variation** (once per programming, i.e. per Monte-Carlo trial,
  fixed afterwards): ``w' = w * exp(theta) + a * max|W| * xi`` with
  ``theta ~ N(0, sigma^2)`` (multiplicative log-normal) and ``xi ~ N(0, 1)``
  (additive, ``a = additive_sigma``), independent per weight and per trial.
  Note ``E[exp(theta)] = exp(sigma^2 / 2)``: the log-normal model also shifts
  the mean gain of a layer, as in the literature it comes from.
- **Read noise** (fresh at every inference, i.e. every input vector and every
  MVM): additive per-device noise ``r * max|W| * N(0, 1)`` added to the weights
  while they are read.  For one output it is exactly equivalent (in
  distribution) to output noise of std ``r * max|W| * ||x||_2`` where ``x`` is
  the input vector (the patch, for a convolution); that is how the functional
  path applies it, without drawing a weight tensor per input.

On a :class:`~hil.backend.CrossbarBackend` the programming variation is applied
to the *target* before :meth:`~hil.backend.CrossbarBackend.program` (an
emulation on a simulator; on hardware set ``sigma = 0`` and the variation is
the chip's own) and the read noise is the backend's own periphery.
"""

from __future__ import annotations

import torch
from pydantic import Field

from hil.backend import CrossbarBackend, ProgramReport
from hil.config import HilModel


class VariationConfig(HilModel):
    """Statistics of the analog weight errors (see the module docstring for the model)."""

    sigma: float = Field(
        0.0, ge=0, le=5, description="std of theta in w*exp(theta) (log-normal programming variation)"
    )
    additive_sigma: float = Field(
        0.0, ge=0, description="std of the additive programming error, relative to the layer's max|W|"
    )
    read_noise: float = Field(
        0.0, ge=0, description="std of the per-inference weight read noise, relative to max|W|"
    )

    @property
    def is_zero(self) -> bool:
        """No variation and no noise: the analog layers compute exactly."""
        return self.sigma == 0 and self.additive_sigma == 0 and self.read_noise == 0

    def with_sigma(self, sigma: float) -> VariationConfig:
        """A copy with another log-normal ``sigma``."""
        return self.model_copy(update={"sigma": float(sigma)})


def full_scale(w: torch.Tensor) -> torch.Tensor:
    """``max |W|`` of one weight tensor (a 0-d tensor, detached; 1 for an all-zero tensor)."""
    m = w.detach().abs().max()
    return torch.where(m > 0, m, torch.ones_like(m))


def sample_programmed_weights(
    w: torch.Tensor,
    cfg: VariationConfig,
    n_samples: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``n_samples`` independent programmings of ``w``: shape ``[n_samples, *w.shape]``.

    ``w' = w * exp(theta) + additive_sigma * max|W| * xi`` (module docstring).  Gradients
    flow to ``w`` when it requires them (variation-aware training); the draws do not.
    ``generator`` lives on ``w``'s device.
    """
    if int(n_samples) < 1:
        raise ValueError(f"sample_programmed_weights: n_samples must be >= 1, got {n_samples}")
    shape = (int(n_samples), *w.shape)
    out = w.unsqueeze(0).expand(shape)
    if cfg.sigma > 0:
        theta = torch.randn(shape, generator=generator, device=w.device, dtype=w.dtype) * cfg.sigma
        out = out * torch.exp(theta)
    if cfg.additive_sigma > 0:
        xi = torch.randn(shape, generator=generator, device=w.device, dtype=w.dtype)
        out = out + xi * (cfg.additive_sigma * full_scale(w))
    return out


def read_noise_std(cfg: VariationConfig, w: torch.Tensor, x_sq_sum: torch.Tensor) -> torch.Tensor:
    """Output-referred std of the read noise: ``read_noise * max|W| * sqrt(sum x^2)``.

    ``x_sq_sum``: ``sum x^2`` over the inputs that feed one output (a vector or a patch).
    """
    return (cfg.read_noise * full_scale(w)) * x_sq_sum.clamp(min=0).sqrt()


def program_with_variation(
    backend: CrossbarBackend,
    target: torch.Tensor,
    cfg: VariationConfig | None,
    generator: torch.Generator | None = None,
    **program_kwargs: object,
) -> tuple[ProgramReport, torch.Tensor]:
    """Write-verify ``target`` ``[rows, cols]`` (normalized units) with emulated programming variation.

    With ``cfg`` set (and ``sigma`` or ``additive_sigma`` > 0) one programming draw is
    applied to the target first (``generator`` required), so a simulated array ends up
    where a varied chip would; with ``cfg=None`` the nominal target is programmed and the
    variation is whatever the hardware does.  Returns the backend's report and the
    target actually sent.  ``program_kwargs`` go to :meth:`CrossbarBackend.program`.
    """
    sent = target
    if cfg is not None and (cfg.sigma > 0 or cfg.additive_sigma > 0):
        if generator is None:
            raise ValueError("program_with_variation: a torch.Generator is required to draw the variation")
        sent = sample_programmed_weights(target, cfg, 1, generator)[0]
    report = backend.program(sent.to(backend.device, torch.float32), **program_kwargs)  # type: ignore[arg-type]
    return report, sent
