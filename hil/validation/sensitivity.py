"""How sensitive and how specific the default thresholds are, on synthetic data (docs/validation.md).

:func:`sensitivity_study` compares a reference measurement of a base device model
with fresh measurements (other seed: other devices drawn, other noise) of

- the same model (``identical``): should pass;
- the model with ``c2c`` noise changed by +-20 % (``c2c+20%``, ``c2c-20%``);
- the model with the up/down asymmetry (``dw_up / dw_down``) changed by +-20 %
  (``asym+20%``, ``asym-20%``, ``dw_up`` scaled),

each over ``seeds`` seeds, and counts how often the comparison fails.  The base
point and the protocol are :func:`base_model` and :func:`base_protocol`: a
soft-bounds device (up step 0.03, down step 0.02 at w = 0, c2c 0.5, d2d 0.1,
read noise 0.01) measured on 16 x 16 devices for 10 cycles of 50 up + 50 down
pulses with 5 repeated reads per cycle.
"""

from __future__ import annotations

from typing import Any

from hil.device_model import DeviceModel, DeviceVariation, SoftBoundsStep
from hil.validation.compare import compare_measurements
from hil.validation.synthetic import simulated_measurements
from hil.validation.thresholds import ValidationThresholds

CHANGES = ("identical", "c2c+20%", "c2c-20%", "asym+20%", "asym-20%")


def base_model(c2c: float = 0.5, dw_up: float = 0.03, dw_down: float = 0.02, d2d: float = 0.1,
               read_noise: float = 0.01) -> DeviceModel:
    """The synthetic base device of the sensitivity study (normalized units, range [-1, 1])."""
    spread = {"dw_up": d2d, "dw_down": d2d, "w_min": d2d, "w_max": d2d} if d2d > 0 else {}
    return DeviceModel(
        name="sensitivity-base",
        description="soft-bounds device, up/down 1.5, c2c 0.5, d2d 0.1, read noise 0.01",
        source="hil.validation.sensitivity.base_model (synthetic)",
        step=SoftBoundsStep(dw_up=dw_up, dw_down=dw_down),
        variation=DeviceVariation(c2c=c2c, d2d=spread),
        read_noise=read_noise,
    )


def base_protocol(cycles: int = 10, n: int = 50, repeated_reads: int = 5) -> Any:
    """The protocol of the study: ``cycles`` x (``repeated_reads`` reads, ``n`` up, ``n`` down)."""
    from hil.characterization.protocol import PulseProtocol

    return PulseProtocol(name="sensitivity", n_up=n, n_down=n, cycles=cycles, repeated_reads=repeated_reads)


def changed_model(change: str, base: DeviceModel | None = None) -> DeviceModel:
    """The base model with one of :data:`CHANGES` applied."""
    m = base or base_model()
    step, var = m.step, m.variation
    if change == "identical":
        return m
    if change in ("c2c+20%", "c2c-20%"):
        f = 1.2 if change == "c2c+20%" else 0.8
        return m.model_copy(update={"variation": var.model_copy(update={"c2c": var.c2c * f})})
    if change in ("asym+20%", "asym-20%"):
        f = 1.2 if change == "asym+20%" else 1 / 1.2
        return m.model_copy(update={"step": step.model_copy(update={"dw_up": step.dw_up * f})})
    raise ValueError(f"unknown change {change!r}; known: {', '.join(CHANGES)}")


def sensitivity_study(
    seeds: int = 20,
    changes: tuple[str, ...] = CHANGES,
    rows: int = 16,
    cols: int = 16,
    protocol: Any = None,
    thresholds: ValidationThresholds | None = None,
    base: DeviceModel | None = None,
) -> dict[str, Any]:
    """Fail counts per change over ``seeds`` comparisons (each against one fixed reference).

    Returns ``{"rows": [{"change", "seeds", "failed", "failed_statistics": {name: count}}],
    "protocol": ..., "devices": rows * cols}``.
    """
    protocol = protocol or base_protocol()
    base = base or base_model()
    ref = simulated_measurements(base, protocol, rows, cols, seed=0)
    out_rows = []
    for change in changes:
        model = changed_model(change, base)
        failed = 0
        per_stat: dict[str, int] = {}
        for s in range(seeds):
            cand = simulated_measurements(model, protocol, rows, cols, seed=1000 + s)
            rep = compare_measurements(ref, cand, thresholds, seed=s).report
            if not rep.passed:
                failed += 1
            for name in rep.failed():
                per_stat[name] = per_stat.get(name, 0) + 1
        out_rows.append({"change": change, "seeds": seeds, "failed": failed, "failed_statistics": per_stat})
    return {
        "devices": rows * cols,
        "protocol": protocol.model_dump(mode="json"),
        "base_model": base.model_dump(mode="json"),
        "rows": out_rows,
    }
