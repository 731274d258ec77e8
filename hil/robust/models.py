"""Digits networks for the robustness experiments, and their (optionally regularized) training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hil.config import HilModel
from hil.robust.lipschitz import LipschitzConfig, LipschitzRegularizer


def digits_mlp(hidden: Sequence[int] = (256, 256), seed: int = 0) -> nn.Sequential:
    """MLP ``64 -> hidden... -> 10`` with ReLU, for flat 8x8 digits ``[n, 64]``."""
    torch.manual_seed(int(seed))
    dims = [64, *[int(h) for h in hidden], 10]
    mods: list[nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def digits_cnn(channels: Sequence[int] = (16, 32), seed: int = 0) -> nn.Sequential:
    """Small CNN for 8x8 digits ``[n, 1, 8, 8]``.

    ``conv3x3(1->c1) ReLU conv3x3(c1->c2) ReLU maxpool2 conv3x3(c2->c2) ReLU
    global-average-pool linear(c2->10)``.
    """
    torch.manual_seed(int(seed))
    c1, c2 = (int(c) for c in channels)
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c2, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c2, 10),
    )


class TrainConfig(HilModel):
    """Digital training of a classifier (Adam, mini-batches, cosine learning-rate decay)."""

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig | None = None,
    lipschitz: LipschitzConfig | None = None,
) -> list[float]:
    """Train ``model`` on ``(x, y)`` with cross-entropy (+ the Lipschitz penalty); returns epoch losses.

    The loss per step is the cross-entropy plus the :class:`LipschitzRegularizer`
    penalty when ``lipschitz`` is given.
    """
    cfg = cfg or TrainConfig()
    gen = torch.Generator(device=x.device)
    gen.manual_seed(int(cfg.seed))
    reg = LipschitzRegularizer(model, lipschitz, seed=cfg.seed) if lipschitz is not None else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = x.shape[0]
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    model.train()
    history: list[float] = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen, device=x.device)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if reg is not None and reg.needs_activations:
                with reg.capture():
                    out = model(x[idx])
                per_example = F.cross_entropy(out, y[idx], reduction="none")
                loss = per_example.mean() + reg(per_example)
            else:
                loss = F.cross_entropy(model(x[idx]), y[idx])
                if reg is not None:
                    loss = loss + reg()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        history.append(total / n)
    model.eval()
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Variation-free accuracy (fraction) of ``model`` on ``(x, y)``."""
    was = model.training
    model.eval()
    acc = float((model(x).argmax(-1) == y).double().mean())
    model.train(was)
    return acc
