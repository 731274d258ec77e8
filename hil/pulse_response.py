"""How strongly one pulse of a given amplitude and width moves a device: the pulse-response law.

Identical pulses are the step models' world (:mod:`hil.device_model`).  Devices that are
programmed with pulses of different amplitude or width (ferroelectric FTJs and FeFETs,
and any device measured with an amplitude sweep) need a law of the pulse too.  A
:class:`PulseResponse` multiplies the mean step of one pulse (and its cycle-to-cycle
noise, which is relative to the step) by

    scale(V, t) = f(|V|, t) / f(V_nom, t_nom)

where ``f`` is the fraction of the switchable domains that one pulse of amplitude ``|V|``
(volts) and width ``t`` (seconds) switches, in the Kolmogorov-Avrami-Ishibashi form with
Merz's law for the characteristic switching time (nucleation-limited switching of
polycrystalline ferroelectrics; Tagantsev et al., Phys. Rev. B 66, 214109, 2002):

    f(V, t) = 1 - exp(-(t / tau(V))^n),   tau(V) = t0 exp((V_a / V)^alpha)

with ``t0`` (seconds, ``log10_t0_s`` stored), the activation voltage ``V_a`` (volts), the
KAI exponent ``n`` and the field exponent ``alpha`` (``field_exponent``), one set per
direction.  ``alpha = 1`` is Merz's law; ``alpha > 1`` makes the switching time rise
more steeply below ``V_a``, towards a coercive-voltage threshold (a generalization of
Merz's law; ``hil calibrate`` keeps a fitted ``alpha`` only where the BIC supports it).  The nominal pulse (``V_nom``, ``t_nom``) of each
direction is the pulse at which the step model's parameters hold: a pulse without a
stated shape is the nominal pulse (scale 1), so a model with a pulse response trains
exactly like one without.  Combined with a soft-bounds step (the step proportional to the
distance to the bound) this is the KAI picture: each pulse switches a fraction of the
domains that are left.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import Field

from hil.config import HilModel

LOG_TINY = -700.0  # log of the smallest fraction kept (exp underflows below ~-745)


class SwitchingLaw(HilModel):
    """KAI fraction switched by one pulse, with Merz's law for the switching time (one direction)."""

    log10_t0_s: float = Field(description="log10 of t0 (seconds): the switching time at infinite amplitude")
    activation_v: float = Field(ge=0, description="Merz activation voltage V_a (volts): tau = t0 exp((V_a / |V|)^alpha)")
    exponent: float = Field(gt=0, description="KAI exponent n (dimensionless)")
    field_exponent: float = Field(
        1.0, gt=0, description="field exponent alpha of the Merz law tau = t0 exp((V_a / |V|)^alpha) "
        "(dimensionless; 1: Merz's original form)"
    )


class PulseShape(HilModel):
    """One pulse: magnitude of its amplitude (volts) and its width (seconds)."""

    amplitude_v: float = Field(gt=0, description="|amplitude|, volts")
    width_s: float = Field(gt=0, description="pulse width, seconds")


class PulseResponse(HilModel):
    """Step scale of a pulse of any amplitude and width (see the module doc); ``law`` names the form."""

    law: str = Field("merz_kai", pattern="^merz_kai$", description="the law's form (only merz_kai so far)")
    up: SwitchingLaw
    down: SwitchingLaw
    nominal_up: PulseShape = Field(description="the up pulse at which the step model holds (scale 1)")
    nominal_down: PulseShape = Field(description="the down pulse at which the step model holds (scale 1)")

    def law_of(self, up: bool) -> SwitchingLaw:
        return self.up if up else self.down

    def log_fraction_np(self, amplitude_v: Any, width_s: Any, up: bool) -> np.ndarray:
        """``log f`` (numpy) of pulses of ``|amplitude_v|`` volts and ``width_s`` seconds."""
        return log_fraction_np(amplitude_v, width_s, self.law_of(up))

    def scale_np(self, amplitude_v: Any, width_s: Any, up: bool) -> np.ndarray:
        """Step scale ``f / f_nominal`` (numpy, broadcasting)."""
        nom = self.nominal_up if up else self.nominal_down
        ref = float(log_fraction_np(nom.amplitude_v, nom.width_s, self.law_of(up)))
        return np.exp(self.log_fraction_np(amplitude_v, width_s, up) - ref)

    def scale_torch(self, amplitude_v: torch.Tensor, width_s: torch.Tensor, up: bool) -> torch.Tensor:
        """Step scale ``f / f_nominal`` (torch, broadcasting; the tensors' dtype and device)."""
        law = self.law_of(up)
        nom = self.nominal_up if up else self.nominal_down
        ref = float(log_fraction_np(nom.amplitude_v, nom.width_s, law))
        v = amplitude_v.abs().clamp(min=1e-12)
        z = law.exponent * (
            torch.log(width_s) - law.log10_t0_s * math.log(10.0) - (law.activation_v / v) ** law.field_exponent
        )
        return torch.exp(_log_fraction_of_z_torch(z) - ref)


def log_fraction_np(amplitude_v: Any, width_s: Any, law: SwitchingLaw) -> np.ndarray:
    """``log f(|V|, t)`` of the KAI/Merz law, computed without underflow (numpy)."""
    v = np.maximum(np.abs(np.asarray(amplitude_v, dtype=np.float64)), 1e-12)
    t = np.asarray(width_s, dtype=np.float64)
    z = law_z(np.log(t), v, law.log10_t0_s, law.activation_v, law.exponent, law.field_exponent)
    return log_fraction_of_z(z)


def law_z(log_width: Any, amplitude_v: Any, log10_t0_s: Any, activation_v: Any, exponent: Any,
          field_exponent: Any = 1.0) -> np.ndarray:
    """``z = n (ln t - ln t0 - (V_a / |V|)^alpha)`` (numpy, broadcasting), so that
    ``f = 1 - exp(-exp(z))``; ``amplitude_v`` must be > 0."""
    return exponent * (log_width - log10_t0_s * np.log(10.0) - (activation_v / amplitude_v) ** field_exponent)


def log_fraction_of_z(z: np.ndarray) -> np.ndarray:
    """``log(1 - exp(-exp(z)))``: ``z`` for very negative ``z`` (a weak pulse: ``f ~ e^z``),
    0 for large ``z`` (a pulse that switches everything)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(np.clip(z, -30.0, 50.0))
    out = np.log(-np.expm1(-e))
    return np.where(z < -30.0, np.maximum(z, LOG_TINY), out)


def _log_fraction_of_z_torch(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z.clamp(min=-30.0, max=50.0))
    out = torch.log(-torch.expm1(-e))
    return torch.where(z < -30.0, z.clamp(min=LOG_TINY), out)
