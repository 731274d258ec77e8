"""``fit``: the training loop around a :class:`TrainingController`, with checkpoint and resume.

The data order is a function of ``(seed, epoch)`` only, so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen; on
:class:`~hil.simulated.SimulatedCrossbar` (whose ``state_dict`` holds the
conductances, the per-device parameters and its random generator) a resumed run
ends bit-identical to an uninterrupted one.

Interruption: while :func:`fit` runs in the main thread, SIGINT (Ctrl-C) and
SIGTERM are caught and acted on at the next step boundary: the checkpoint is
written and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised.
An exception raised inside a step (an instrument error) propagates without a
new checkpoint: the last periodic one is the consistent state to resume from.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hil.training.checkpoint import load_checkpoint, save_checkpoint
from hil.training.controller import TrainingController


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM at a step boundary; ``checkpoint`` is where it was saved."""

    def __init__(self, signal_name: str, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted by {signal_name}; checkpoint: {checkpoint}")
        self.signal_name = signal_name
        self.checkpoint = checkpoint


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, final test accuracy, hardware cost."""

    history: list[dict[str, float]] = field(default_factory=list)
    test_accuracy: float | None = None
    samples: int = 0
    steps: int = 0
    seconds: float = 0.0
    resumed_from_step: int | None = None
    resume_drift: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    c_pulse_noise: dict[str, float] = field(default_factory=dict)
    """Per layer, C's pulse noise measured by the read-backs (h_reset measured), in dw_min."""


def batch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``n`` training samples used in ``epoch`` (depends on seed and epoch only)."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1))
    return torch.randperm(n, generator=g)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Classification accuracy of ``model`` on ``(x, y)`` (forward passes through the arrays)."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i : i + batch_size])
        correct += int((out.argmax(dim=1) == y[i : i + batch_size]).sum())
    model.train(was)
    return correct / max(int(x.shape[0]), 1)


@contextmanager
def _deferred_signals() -> Any:
    """Within the block, SIGINT/SIGTERM set a flag instead of stopping the program."""
    caught: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, frame: object) -> None:  # noqa: ARG001
        caught["signal"] = signal.Signals(signum).name

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def fit(
    model: nn.Module,
    controller: TrainingController,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: bool = False,
    eval_every_epoch: bool = True,
    stop_after_steps: int | None = None,
) -> FitResult:
    """Train ``model`` with ``controller`` for ``config.epochs`` epochs of ``config.batch_size``.

    checkpoint, checkpoint_every:
        Where to write checkpoints and every how many steps (0: only on
        interruption and at the end).
    resume:
        Continue from ``checkpoint`` if the file exists (else start fresh).
    stop_after_steps:
        Stop (with a checkpoint, if a path is given) after this many steps in
        total, as if interrupted; for tests and for splitting long runs.
    Returns a :class:`FitResult`; the test accuracy (if test data is given) is
    measured after the last epoch with forward passes through the arrays.
    """
    cfg = controller.config
    n = int(x_train.shape[0])
    bs = cfg.batch_size
    nb = (n + bs - 1) // bs
    ckpt = Path(checkpoint) if checkpoint is not None else None
    result = FitResult()
    start_epoch, start_batch = 0, 0
    acc = {"loss_sum": 0.0, "loss_n": 0}
    if resume and ckpt is not None and ckpt.exists():
        payload = load_checkpoint(ckpt)
        controller.load_state_dict(payload["controller"])
        loop = payload["loop"]
        start_epoch, start_batch = int(loop["epoch"]), int(loop["batch"])
        result.history = list(loop.get("history", []))
        acc = {"loss_sum": float(loop.get("loss_sum", 0.0)), "loss_n": int(loop.get("loss_n", 0))}
        result.resumed_from_step = controller.steps
        result.resume_drift = list(controller.resume_drift)
    controller.planned_samples = cfg.epochs * n
    controller.prepare()
    model.train()
    t0 = time.perf_counter()

    def save(epoch: int, batch: int) -> None:
        if ckpt is not None:
            loop = {"epoch": epoch, "batch": batch, "history": result.history, **acc}
            save_checkpoint(ckpt, controller, loop)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs * nb, initial=start_epoch * nb + start_batch, desc=cfg.algorithm, unit="step")
    try:
        with _deferred_signals() as caught:
            for epoch in range(start_epoch, cfg.epochs):
                order = batch_order(n, cfg.seed, epoch)
                if epoch != start_epoch:
                    acc = {"loss_sum": 0.0, "loss_n": 0}
                for b in range(start_batch if epoch == start_epoch else 0, nb):
                    idx = order[b * bs : (b + 1) * bs]
                    xb, yb = x_train[idx], y_train[idx]
                    controller.zero_grad()
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    controller.step()
                    acc["loss_sum"] += float(loss.detach()) * int(idx.numel())
                    acc["loss_n"] += int(idx.numel())
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{acc['loss_sum'] / acc['loss_n']:.3f}", refresh=False)
                    if caught["signal"] is not None:
                        save(epoch, b + 1)
                        raise TrainingInterrupted(caught["signal"], ckpt)
                    if stop_after_steps is not None and controller.steps >= stop_after_steps:
                        save(epoch, b + 1)
                        raise TrainingInterrupted("stop_after_steps", ckpt)
                    if checkpoint_every and controller.steps % checkpoint_every == 0:
                        save(epoch, b + 1)
                entry: dict[str, float] = {"epoch": float(epoch + 1)}
                if acc["loss_n"]:
                    entry["train_loss"] = acc["loss_sum"] / acc["loss_n"]
                if eval_every_epoch and x_test is not None and y_test is not None:
                    entry["test_accuracy"] = evaluate(model, x_test, y_test)
                result.history.append(entry)
            acc = {"loss_sum": 0.0, "loss_n": 0}
            save(cfg.epochs, 0)
    finally:
        if bar is not None:
            bar.close()
    if x_test is not None and y_test is not None:
        last = result.history[-1] if result.history else {}
        result.test_accuracy = last.get("test_accuracy")
        if result.test_accuracy is None:
            result.test_accuracy = evaluate(model, x_test, y_test)
    result.samples = controller.samples
    result.steps = controller.steps
    result.seconds = time.perf_counter() - t0
    result.cost = controller.hardware_cost()
    result.c_pulse_noise = controller.c_pulse_noise()
    return result
