"""Device-model files: the data format between calibration and the simulator.

A *device model* says how one resistive device's weight responds to a single
potentiation (up) or depression (down) pulse, as a function of its state, and
how that response varies from device to device (d2d) and pulse to pulse (c2c).
All quantities are in **normalized weight units**; a
:class:`ConductanceMapping` stored beside them says how to convert to siemens.

Step models (mean weight change of one pulse at state ``w``; ``u`` is the
position of ``w`` inside the bounds, ``u = (w - w_min) / (w_max - w_min)``):

=============  =====================================================================
``constant``   ``+dw_up`` / ``-dw_down``
``linear``     ``+dw_up (1 - gamma_up w / w_max)`` / ``-dw_down (1 - gamma_down w / w_min)``
``softbounds`` ``linear`` with ``gamma = 1`` (the step vanishes at the bound; aihwkit's SoftBounds)
``pow``        ``+dw_up (2 (1 - u))^gamma_up`` / ``-dw_down (2 u)^gamma_down``
``exp``        ``+dw_up exp(gamma_up (0.5 - u))`` / ``-dw_down exp(gamma_down (u - 0.5))``
``table``      mean and std of the step for up and down pulses tabulated on a grid of states
=============  =====================================================================

``pow`` and ``exp`` are normalized so that the step equals ``dw_up`` / ``dw_down``
at mid range (``u = 0.5``); that normalization is our own choice (aihwkit uses
other ones) and is what calibration fits.  All models keep ``w`` inside
``[w_min, w_max]``.

Cycle-to-cycle (write) noise: every pulse's change is ``mean * (1 + c2c * xi)``,
``xi ~ N(0, 1)`` (the ``table`` model adds its tabulated std on top).  It accumulates:
the hidden weight random-walks.

Non-accumulating write noise (``write_noise``, ``write_noise_rho``; schema 1.1): every
device has a hidden weight that the steps move, and the weight that reads and MVMs see
is the hidden weight plus an offset ``o``.  Every pulse replaces the offset by
``rho * o + sqrt(1 - rho^2) * write_noise * xi`` (``n`` pulses at once:
``rho^n o + sqrt(1 - rho^(2n)) write_noise xi``, the same in distribution), so ``o`` is
stationary with std ``write_noise`` and forgets itself over ``-1 / ln(rho)`` pulses.
``rho = 0`` is aihwkit's ``write_noise_std`` (``write_noise = write_noise_std * dw_min``):
the offset is redrawn at every pulse.  A read without a pulse sees the same offset
again (unlike ``read_noise``, which is drawn at every read); the offset never feeds
back into the hidden weight, so it does not accumulate.
Device-to-device variation: every parameter named in ``d2d`` is drawn once per
device at construction as ``p * (1 + d2d[p] * xi)`` (``xi`` truncated at +-3).

Pulses of other amplitude or width (``pulse_response``; schema 1.2): the step (and its
c2c noise) of such a pulse is the step above times a scale that a law of the pulse's
amplitude and width gives (:mod:`hil.pulse_response`); the step parameters hold for the
model's nominal pulse, which every pulse without a stated shape is.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from hil.config import HilModel, VersionedFile
from hil.pulse_response import PulseResponse

STEP_PARAMETERS = {
    "constant": ("dw_up", "dw_down", "w_min", "w_max"),
    "linear": ("dw_up", "dw_down", "gamma_up", "gamma_down", "w_min", "w_max"),
    "softbounds": ("dw_up", "dw_down", "w_min", "w_max"),
    "pow": ("dw_up", "dw_down", "gamma_up", "gamma_down", "w_min", "w_max"),
    "exp": ("dw_up", "dw_down", "gamma_up", "gamma_down", "w_min", "w_max"),
    "table": ("dw_up", "dw_down", "w_min", "w_max"),
}


class _StepBase(HilModel):
    w_min: float = Field(-1.0, description="lower weight bound, normalized units")
    w_max: float = Field(1.0, description="upper weight bound, normalized units")
    dw_up: float = Field(0.01, gt=0, description="mean step of an up pulse at mid range")
    dw_down: float = Field(0.01, gt=0, description="mean step magnitude of a down pulse at mid range")

    @model_validator(mode="after")
    def _bounds(self) -> _StepBase:
        if not self.w_min < self.w_max:
            raise ValueError(f"w_min ({self.w_min}) must be below w_max ({self.w_max})")
        if self.model in ("linear", "softbounds") and not (self.w_min < 0 < self.w_max):
            raise ValueError(
                f"{self.model} step model needs w_min < 0 < w_max (its steps scale with w / bound), "
                f"got [{self.w_min}, {self.w_max}]"
            )
        return self

    @property
    def parameters(self) -> tuple[str, ...]:
        return STEP_PARAMETERS[self.model]  # type: ignore[attr-defined]


class ConstantStep(_StepBase):
    """Constant step: every pulse moves the weight by the same amount until a hard bound."""

    model: Literal["constant"] = "constant"


class LinearStep(_StepBase):
    """Step that falls linearly with the state (``gamma=0``: constant, ``gamma=1``: soft bounds)."""

    model: Literal["linear"] = "linear"
    gamma_up: float = Field(0.5, ge=0)
    gamma_down: float = Field(0.5, ge=0)


class SoftBoundsStep(_StepBase):
    """Soft bounds: the step shrinks linearly to zero at each bound (aihwkit's SoftBoundsDevice)."""

    model: Literal["softbounds"] = "softbounds"


class PowStep(_StepBase):
    """Power-law step ``dw (2(1-u))^gamma`` up, ``dw (2u)^gamma`` down."""

    model: Literal["pow"] = "pow"
    gamma_up: float = Field(1.0, ge=0)
    gamma_down: float = Field(1.0, ge=0)


class ExpStep(_StepBase):
    """Exponential step ``dw exp(gamma (0.5 - u))`` up, ``dw exp(gamma (u - 0.5))`` down."""

    model: Literal["exp"] = "exp"
    gamma_up: float = Field(1.0)
    gamma_down: float = Field(1.0)


class TableStep(_StepBase):
    """Measured lookup table: mean and std of the signed weight change per pulse on a state grid.

    ``grid`` holds increasing states (normalized units, spanning ``[w_min, w_max]``);
    ``up_mean`` / ``down_mean`` the signed mean change of an up / down pulse there
    (up usually > 0, down usually < 0); ``up_std`` / ``down_std`` the
    pulse-to-pulse std.  Between grid points the values are interpolated
    linearly.  ``dw_up`` / ``dw_down`` are scale factors (1.0 = as tabulated) so that
    device-to-device variation can scale the table per device.
    """

    model: Literal["table"] = "table"
    dw_up: float = Field(1.0, gt=0)
    dw_down: float = Field(1.0, gt=0)
    grid: list[float]
    up_mean: list[float]
    down_mean: list[float]
    up_std: list[float]
    down_std: list[float]

    @model_validator(mode="after")
    def _table(self) -> TableStep:
        n = len(self.grid)
        if n < 2:
            raise ValueError("table step model needs at least 2 grid points")
        for name in ("up_mean", "down_mean", "up_std", "down_std"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"table {name} has {len(getattr(self, name))} values, grid has {n}")
        if any(b <= a for a, b in zip(self.grid, self.grid[1:], strict=False)):
            raise ValueError("table grid must be strictly increasing")
        if any(s < 0 for s in self.up_std + self.down_std):
            raise ValueError("table std values must be >= 0")
        return self


StepModel = Annotated[
    ConstantStep | LinearStep | SoftBoundsStep | PowStep | ExpStep | TableStep,
    Field(discriminator="model"),
]


class DeviceVariation(HilModel):
    """Noise and variation of a device population."""

    c2c: float = Field(0.0, ge=0, description="write noise std per pulse, relative to the mean step")
    d2d: dict[str, float] = Field(
        default_factory=dict,
        description="relative std across devices of each named step parameter (dw_up, w_max, ...)",
    )
    write_noise: float = Field(
        0.0,
        ge=0,
        description="std of the non-accumulating write-noise offset that reads see on top of the "
        "hidden weight, normalized units (aihwkit: write_noise_std x dw_min)",
    )
    write_noise_rho: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="correlation of the write-noise offset from one pulse to the next (0: redrawn "
        "independently at every pulse, as aihwkit; correlation length -1/ln(rho) pulses)",
    )
    stuck_fraction: float = Field(0.0, ge=0, le=1, description="fraction of devices that never move")
    stuck_at: Literal["min", "max", "random"] = Field(
        "random", description="where stuck devices sit: at a bound, or uniformly random in range"
    )

    @model_validator(mode="after")
    def _d2d(self) -> DeviceVariation:
        for k, v in self.d2d.items():
            if v < 0:
                raise ValueError(f"d2d[{k!r}] must be >= 0, got {v}")
        return self


class ConductanceMapping(HilModel):
    """How normalized weights map to conductance.

    ``gmin_gmax``: ``G = g_min + (w - w_min) / (w_max - w_min) * (g_max - g_min)`` for one device.
    ``differential``: ``w`` is proportional to ``G+ - G-`` with ``w_max`` at ``g_max - g_min``.
    """

    kind: Literal["gmin_gmax", "differential"] = "gmin_gmax"
    g_min_s: float = Field(description="conductance at w_min (siemens)")
    g_max_s: float = Field(description="conductance at w_max (siemens)")
    w_min: float = -1.0
    w_max: float = 1.0

    def to_weight(self, g_s: float) -> float:
        return self.w_min + (g_s - self.g_min_s) / (self.g_max_s - self.g_min_s) * (
            self.w_max - self.w_min
        )

    def to_conductance(self, w: float) -> float:
        return self.g_min_s + (w - self.w_min) / (self.w_max - self.w_min) * (
            self.g_max_s - self.g_min_s
        )


class DeviceModel(VersionedFile):
    """A complete device model file (``DEVICE.json``): step model, variation, read noise, provenance.

    ``SimulatedCrossbar`` loads it directly; ``hil calibrate`` writes it.
    """

    SCHEMA_VERSION = "1.3"
    schema_version: str = Field(
        "1.3",
        description="1.3 added pulse_response.{up,down}.field_exponent (default 1: Merz's law); "
        "1.2 added pulse_response; 1.1 added variation.write_noise and write_noise_rho; "
        "older files (without them) load unchanged with identical pulses and no write noise",
    )
    name: str = "device"
    description: str = ""
    source: str = Field("", description="where the model comes from (paper, data set, fit)")
    step: StepModel
    variation: DeviceVariation = Field(default_factory=DeviceVariation)
    read_noise: float = Field(
        0.0, ge=0, description="std of one device read, normalized units (additive)"
    )
    conductance: ConductanceMapping | None = None
    pulse_response: PulseResponse | None = Field(
        None,
        description="step scale of pulses of other amplitude or width than the nominal one "
        "(hil.pulse_response; None: the device is only ever pulsed with its nominal pulse)",
    )
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_d2d(self) -> DeviceModel:
        allowed = set(STEP_PARAMETERS[self.step.model])
        unknown = set(self.variation.d2d) - allowed
        if unknown:
            raise ValueError(
                f"variation.d2d names {sorted(unknown)}, which the {self.step.model!r} step model "
                f"does not have (it has {sorted(allowed)})"
            )
        return self
