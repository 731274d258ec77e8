"""Digits experiments: the networks, the simulated device along the robustness axes, tuned settings.

Shared by examples/ttv2_robustness.py, benchmarks/train_throughput.py and
``hil demo`` (:func:`train_digits`).  Data: :func:`hil.datasets.load_digits_split`
(inputs / 16, 75/25 split, random_state 0).

Device along the three axes of the robustness study (soft bounds over [-1, 1]):
``states`` sets the step at w = 0, ``dw = 2 / states``; ``c2c`` is the
pulse-to-pulse std relative to the step (``DeviceVariation.c2c``); ``read_noise``
is the additive output noise of every MVM (``PeripheryConfig.out_noise``, units
of one full-scale weight times one full-scale input).  ``d2d`` = 0.3 spread of
steps and bounds (aihwkit's default).  Other periphery settings: the simulator's
defaults (7-bit DAC, 9-bit ADC, output bound 12).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hil.datasets import Split, load_digits_split
from hil.device_model import DeviceModel, DeviceVariation, SoftBoundsStep
from hil.nn import convert_to_analog
from hil.training.config import TrainingConfig
from hil.training.controller import TrainingController, schedule_factor
from hil.training.factory import simulated_factory
from hil.training.loop import evaluate, fit

Network = Literal["mlp", "cnn"]

# TTv2 / c-TTv2 settings shared by both networks (rates in pulses of A's nominal step, a
# long zero-shift for a good reference R, the cosine decay); each network sets lambda_A,
# max_step and the bias rate.
_TTV2_COMMON: dict[str, Any] = {
    "lambda_A_unit": "pulses", "lambda_H": 0.1, "n_s": 2, "transfer_columns": 2,
    "threshold": 1.0, "max_pulses": None, "zero_shift_reads": 500, "schedule": "cosine",
    "final_lr_fraction": 0.0,
}
# c-TTv2 also reads C back after its pulses (h_reset "measured"): C's own cycle-to-cycle
# noise is then corrected by later pulses, with a dead band as wide as 0.8 of the pulse
# noise the read-backs measure (docs/training.md, "Reading C back" and "A dead band that
# follows the measured noise").
_CHOPPER: dict[str, Any] = {
    "in_chop_prob": 0.1, "in_chop_states": 20.0, "h_reset": "measured", "threshold_noise": 0.8,
}

# Tuned on the base point (20 states, c2c 1.0, read noise 0.06, d2d 0.3) with the
# search in docs/training.md; the same settings are used on every point of the grid.
RECOMMENDED: dict[str, dict[str, dict[str, Any]]] = {
    "mlp": {
        "fp_sgd": {"lr": 2.0, "schedule": "cosine", "final_lr_fraction": 0.0},
        "analog_sgd": {"lr": 0.2, "schedule": "cosine", "final_lr_fraction": 0.0},
        "tt": {"lambda_A": 1.0, "transfer_lr": 0.05, "n_s": 2, "transfer_columns": 2, "lr": 2.0,
               "schedule": "cosine", "final_lr_fraction": 0.0},
        "ttv2": {**_TTV2_COMMON, "lambda_A": 80.0, "max_step": 0.2, "lr": 2.0},
        "cttv2": {**_TTV2_COMMON, **_CHOPPER, "lambda_A": 80.0, "max_step": 0.3, "lr": 2.0},
    },
    # The CNN (tuned the same way, see docs/training.md): its convolutions sum the gradient
    # over every output pixel, so it needs smaller rates and out_scale.
    "cnn": {
        "fp_sgd": {"lr": 0.2, "schedule": "cosine", "final_lr_fraction": 0.0},
        "analog_sgd": {"lr": 0.5, "schedule": "cosine", "final_lr_fraction": 0.0},
        "tt": {"lambda_A": 2.0, "transfer_lr": 0.2, "n_s": 2, "transfer_columns": 2, "lr": 0.5,
               "schedule": "cosine", "final_lr_fraction": 0.0},
        "ttv2": {**_TTV2_COMMON, "lambda_A": 40.0, "max_step": 0.2, "lr": 0.5},
        "cttv2": {**_TTV2_COMMON, **_CHOPPER, "lambda_A": 40.0, "max_step": 0.3, "lr": 0.5},
    },
}

# Named alternatives to RECOMMENDED, applied on top of it (algorithms without an entry keep
# the recommended settings).  "noise": tuned on the validation split at c2c 3 instead of 1.
# TTv2: a slower transfer averages more of A's noise.  c-TTv2, which reads C back: a floor
# under its dead band (threshold; the band still widens with the measured noise), so that
# the read-back does not chase the misses of its own correction pulses (docs/training.md,
# "Reading C back").
PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "noise": {
        "mlp": {"ttv2": {"lambda_H": 0.05}, "cttv2": {"threshold": 2.0}},
        "cnn": {"cttv2": {"threshold": 3.0}},
    },
}

# Fixed digital output factor per analog layer (effective weight = out_scale * W): the
# same for every algorithm, so the comparison is fair.
OUT_SCALE: dict[str, list[float]] = {"mlp": [1.5, 3.0], "cnn": [0.5, 0.5, 1.0]}


def digits_network(kind: Network = "mlp") -> nn.Module:
    """The digital network: ``mlp`` 64-32-10 (sigmoid); ``cnn`` conv 1->8 3x3 stride 2 pad 1
    (8x8 -> 4x4), conv 8->16 3x3 (-> 2x2), linear 64->10, tanh after each convolution.
    Inputs ``[n, 64]``; the CNN reshapes them to 1x8x8.  Arrays: 32x64 and 10x32 (MLP);
    8x9, 16x72 and 10x64 (CNN)."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 10))
    if kind == "cnn":
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 16, 3),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(64, 10),
        )
    raise ValueError(f"unknown network {kind!r}; expected 'mlp' or 'cnn'")


def digits_device(states: float = 20, c2c: float = 1.0, d2d: float = 0.3) -> DeviceModel:
    """Soft-bounds device over [-1, 1] with ``states`` states (step ``2 / states`` at w = 0)."""
    if states <= 1:
        raise ValueError(f"states must be > 1, got {states}")
    dw = 2.0 / float(states)
    spread = {"dw_up": d2d, "dw_down": d2d, "w_min": d2d, "w_max": d2d} if d2d > 0 else {}
    return DeviceModel(
        name=f"softbounds-{states:g}states-c2c{c2c:g}-d2d{d2d:g}",
        description="soft-bounds device of the digits robustness study",
        source="hil.training.digits.digits_device",
        step=SoftBoundsStep(dw_up=dw, dw_down=dw),
        variation=DeviceVariation(c2c=c2c, d2d=spread),
    )


def digits_periphery(read_noise: float = 0.06) -> Any:
    """The simulator's default periphery with additive output noise ``read_noise``."""
    from hil.simulated import PeripheryConfig

    return PeripheryConfig(out_noise=read_noise)


def recommended_config(
    algorithm: str, network: Network = "mlp", preset: str | None = None, **overrides: Any
) -> TrainingConfig:
    """:class:`TrainingConfig` with the tuned settings of ``RECOMMENDED``, then those of
    ``PRESETS[preset]`` for this network and algorithm (if any), then ``overrides``.

    ``threshold_noise`` belongs to the read-back of C: an override of ``h_reset`` to another
    mode (without its own ``threshold_noise``) drops the tuned one."""
    try:
        tuned = dict(RECOMMENDED[network][algorithm])
    except KeyError:
        raise ValueError(f"no recommended settings for network {network!r}, algorithm {algorithm!r}") from None
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        tuned.update(PRESETS[preset].get(network, {}).get(algorithm, {}))
    tuned.update(overrides)
    if tuned.get("h_reset", "decrement") != "measured" and "threshold_noise" not in overrides:
        tuned.pop("threshold_noise", None)
    return TrainingConfig(algorithm=algorithm, **tuned)


@dataclass
class DigitsResult:
    """One digits training run."""

    algorithm: str
    network: str
    states: float
    c2c: float
    read_noise: float
    seed: int
    test_accuracy: float
    seconds: float
    samples: int
    history: list[dict[str, float]] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validation_split(random_state: int = 1) -> Split:
    """The tuning split: 25 % of the digits *training* set (random_state 1) held out for
    validation; the test set is never used for tuning."""
    from sklearn.model_selection import train_test_split

    d = load_digits_split()
    idx = torch.arange(d.x_train.shape[0]).numpy()
    tr, va = train_test_split(idx, test_size=0.25, random_state=random_state)
    tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
    return Split(d.x_train[tr_t], d.y_train[tr_t], d.x_train[va_t], d.y_train[va_t])


def validation_accuracy(
    algorithm: str, network: Network = "mlp", seeds: tuple[int, ...] = (10, 11, 12), **kwargs: Any
) -> tuple[float, list[float]]:
    """Mean and per-seed accuracy on :func:`validation_split` (the tuning protocol of
    docs/training.md): ``train_digits(algorithm, network, seed=s, split=validation_split(),
    **kwargs)`` for each seed; ``kwargs`` are device-axis values (``states``, ``c2c``, ...)
    and :class:`TrainingConfig` overrides."""
    split = validation_split()
    accs = [train_digits(algorithm, network, seed=s, split=split, **kwargs).test_accuracy for s in seeds]
    return sum(accs) / len(accs), accs


def _data(network: Network, split: Split | None) -> Split:
    return split if split is not None else load_digits_split()


def train_digits_fp(
    network: Network = "mlp",
    *,
    seed: int = 0,
    epochs: int = 15,
    batch_size: int = 10,
    lr: float | None = None,
    schedule: str | None = None,
    final_lr_fraction: float | None = None,
    split: Split | None = None,
    weight_bound: float | None = None,
) -> DigitsResult:
    """Floating-point SGD baseline: the same network, data order, batch and epochs, torch SGD,
    with the same learning-rate schedules as :class:`TrainingConfig`.

    ``weight_bound`` (normalized weight, e.g. 0.7): after every step each layer's weights are
    clipped to ``+-weight_bound * OUT_SCALE[network][layer]``, the range its analog array
    can hold (the soft bounds at +-1 are approached, never reached); None: no clipping.
    It measures what the arrays' weight range alone costs the network."""
    data = _data(network, split)
    rec = RECOMMENDED[network]["fp_sgd"]
    lr = rec["lr"] if lr is None else lr
    sched = TrainingConfig(
        schedule=schedule or rec.get("schedule", "constant"),
        final_lr_fraction=final_lr_fraction if final_lr_fraction is not None else rec.get("final_lr_fraction", 0.1),
    )
    if weight_bound is not None and not (math.isfinite(weight_bound) and weight_bound > 0):
        raise ValueError(f"weight_bound must be a positive normalized weight, got {weight_bound}")
    torch.manual_seed(seed)
    model = digits_network(network)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    bounds = [weight_bound * s for s in OUT_SCALE[network]] if weight_bound is not None else []
    from hil.training.loop import batch_order

    n = data.x_train.shape[0]
    t0 = time.perf_counter()
    seen = 0
    for epoch in range(epochs):
        order = batch_order(n, seed, epoch)
        for b in range(0, n, batch_size):
            idx = order[b : b + batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * schedule_factor(sched, seen / (epochs * n))
            seen += int(idx.numel())
            opt.zero_grad()
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            if bounds:
                with torch.no_grad():
                    for w, b in zip(weights, bounds, strict=True):
                        w.clamp_(-b, b)
    acc = evaluate(model, data.x_test, data.y_test)
    return DigitsResult(
        "fp_sgd", network, math.inf, 0.0, 0.0, seed, acc, time.perf_counter() - t0, epochs * n,
        config={"lr": lr, "epochs": epochs, "batch_size": batch_size, "schedule": sched.schedule,
                "final_lr_fraction": sched.final_lr_fraction, "weight_bound": weight_bound},
    )


def train_digits(
    algorithm: str = "ttv2",
    network: Network = "mlp",
    *,
    states: float = 20,
    c2c: float = 1.0,
    read_noise: float = 0.06,
    d2d: float = 0.3,
    seed: int = 0,
    epochs: int | None = None,
    progress: bool = False,
    torch_device: str = "cpu",
    split: Split | None = None,
    checkpoint: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    out_scale: list[float] | float | None = None,
    role_device: dict[str, dict[str, float]] | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> DigitsResult:
    """Train the digits ``network`` with ``algorithm`` on simulated arrays; returns the test accuracy.

    ``algorithm``: ``"analog_sgd"``, ``"tt"``, ``"ttv2"``, ``"cttv2"`` or ``"fp_sgd"``
    (floating point, no arrays).  ``overrides`` replace fields of the recommended
    :class:`TrainingConfig` (e.g. ``lambda_H=0.05``).  ``role_device`` (diagnostics)
    gives one array role other :func:`digits_device` arguments, e.g.
    ``{"A": {"c2c": 0.0}}`` for a noise-free A.  ``preset``: a name of ``PRESETS``
    (see :func:`recommended_config`).  With ``progress`` a tqdm
    bar shows the steps.  Example (what ``hil demo`` runs)::

        from hil.training import train_digits
        r = train_digits("ttv2", progress=True)
        print(r.test_accuracy)
    """
    if algorithm == "fp_sgd":
        extra = {k: v for k, v in overrides.items()
                 if k in ("lr", "batch_size", "schedule", "final_lr_fraction", "weight_bound")}
        return train_digits_fp(network, seed=seed, epochs=epochs or 15, split=split, **extra)
    data = _data(network, split)
    over = dict(overrides)
    over["seed"] = seed
    if epochs is not None:
        over["epochs"] = epochs
    cfg = recommended_config(algorithm, network, preset=preset, **over)
    torch.manual_seed(seed)
    scale = OUT_SCALE[network] if out_scale is None else out_scale
    model = convert_to_analog(digits_network(network), out_scale=scale)
    device: Any = digits_device(states, c2c, d2d)
    if role_device:
        roles = ("W",) if algorithm == "analog_sgd" else ("A", "C")
        unknown = sorted(set(role_device) - set(roles))
        if unknown:
            raise ValueError(f"role_device: {algorithm} has arrays {list(roles)}, got roles {unknown}")
        base = {"states": states, "c2c": c2c, "d2d": d2d}
        device = {r: digits_device(**{**base, **role_device.get(r, {})}) for r in roles}
    factory = simulated_factory(
        device,
        digits_periphery(read_noise),
        bl=cfg.bl,
        seed=1000 * seed + 17,
        torch_device=torch_device,
    )
    model.to(torch_device)
    ctl = TrainingController(model, cfg, factory)
    dev = torch.device(torch_device)
    res = fit(
        model,
        ctl,
        data.x_train.to(dev),
        data.y_train.to(dev),
        x_test=data.x_test.to(dev),
        y_test=data.y_test.to(dev),
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        eval_every_epoch=False,
    )
    return DigitsResult(
        algorithm,
        network,
        states,
        c2c,
        read_noise,
        seed,
        float(res.test_accuracy or 0.0),
        res.seconds,
        res.samples,
        history=res.history,
        cost=res.cost,
        config=cfg.model_dump(mode="json"),
    )
