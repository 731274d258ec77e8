"""Named device presets, each with its source.

=====================  ==========================================================================
``ideal``              Idealized symmetric device: constant step 0.001 over [-1, 1] (2000 states),
                       no noise, no variation.  The reference for "what the algorithm does".
``rram-softbounds-20`` Soft-bounds RRAM-like device with 20 states over [-1, 1]: step 0.1 at
                       w = 0, c2c 1.0 x step, 30 % d2d of steps and bounds.  The device of the
                       TTv2 paper's "10s of states" regime (Gokmen 2021) with aihwkit's default
                       30 % d2d; the base point of examples/ttv2_robustness.py.
``softbounds-20``      Same step model, noise-free (no c2c, no d2d): a clean 20-state device.
``asymmetric``         Highly asymmetric soft-bounds device: up steps 3x the down steps (0.015 vs
                       0.005), symmetry point at w = +0.5, 30 % c2c.  Stronger than the HfO2 ReRAM
                       up/down imbalance (aihwkit's ReRamES preset: up_down = 0.26, Gong et al.
                       2018); a stress test for algorithms that need a symmetry point at zero.
``pcm-noisy``          Noisy PCM-like device: power-law step (gamma 1.5) with ~100 states, c2c
                       1.5 x step, 30 % d2d, read noise 0.02.  Modelled after the large
                       programming and read noise of PCM reported by Nandakumar et al. (2018/2019)
                       and aihwkit's PCMPresetDevice; not a fit of one measured device.
=====================  ==========================================================================
"""

from __future__ import annotations

from hil.device_model import (
    ConstantStep,
    DeviceModel,
    DeviceVariation,
    PowStep,
    SoftBoundsStep,
)


def _presets() -> dict[str, DeviceModel]:
    d2d30 = {"dw_up": 0.3, "dw_down": 0.3, "w_min": 0.3, "w_max": 0.3}
    return {
        "ideal": DeviceModel(
            name="ideal",
            description="idealized symmetric constant-step device, 2000 states, no noise",
            source="textbook idealization (no physical device)",
            step=ConstantStep(dw_up=0.001, dw_down=0.001),
        ),
        "rram-softbounds-20": DeviceModel(
            name="rram-softbounds-20",
            description="soft-bounds RRAM-like device, 20 states, c2c 1.0, d2d 0.3",
            source="Gokmen 2021 (Front. Artif. Intell. 4:699148) 10s-of-states regime; "
            "aihwkit SoftBoundsDevice default spreads",
            step=SoftBoundsStep(dw_up=0.1, dw_down=0.1),
            variation=DeviceVariation(c2c=1.0, d2d=d2d30),
        ),
        "softbounds-20": DeviceModel(
            name="softbounds-20",
            description="noise-free soft-bounds device, 20 states",
            source="idealization of rram-softbounds-20",
            step=SoftBoundsStep(dw_up=0.1, dw_down=0.1),
        ),
        "asymmetric": DeviceModel(
            name="asymmetric",
            description="highly asymmetric soft-bounds device (up 3x down), symmetry point +0.5",
            source="stress case beyond HfO2 ReRAM up/down imbalance (Gong et al., Nat. Commun. 9, 2102, 2018)",
            step=SoftBoundsStep(dw_up=0.015, dw_down=0.005),
            variation=DeviceVariation(c2c=0.3, d2d={"dw_up": 0.1, "dw_down": 0.1}),
        ),
        "pcm-noisy": DeviceModel(
            name="pcm-noisy",
            description="noisy PCM-like device: power step gamma 1.5, ~100 states, c2c 1.5, read noise 0.02",
            source="after Nandakumar et al. (2019) PCM programming/read noise and aihwkit PCMPresetDevice",
            step=PowStep(dw_up=0.02, dw_down=0.02, gamma_up=1.5, gamma_down=1.5),
            variation=DeviceVariation(
                c2c=1.5, d2d={"dw_up": 0.3, "dw_down": 0.3, "gamma_up": 0.1, "gamma_down": 0.1}
            ),
            read_noise=0.02,
        ),
    }


_PRESETS = _presets()


def list_presets() -> list[str]:
    """Names of the built-in device presets."""
    return list(_PRESETS)


def get_preset(name: str) -> DeviceModel:
    """A copy of the named preset (see the module table for sources)."""
    try:
        return _PRESETS[name].model_copy(deep=True)
    except KeyError:
        raise ValueError(f"unknown device preset {name!r}; known: {', '.join(_PRESETS)}") from None
