"""Deployment of an extracted digital model onto fresh arrays by write-verify (``program``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import nn

from hil.backend import CrossbarBackend
from hil.config import HilModel
from hil.nn import convert_to_analog
from hil.nn.layers import AnalogLayer

ArrayFactory = Callable[[int, int, str], CrossbarBackend]


class LayerDeployment(HilModel):
    """Write-verify of one layer: ``ProgramReport`` figures plus the error measured afterwards."""

    name: str
    converged_fraction: float
    iterations: int
    pulses_spent: int
    program_reads: int = Field(description="full-array reads used by program() [reads]")
    rms_error: float = Field(description="rms(read - target) after programming, read to precision, times out_scale [normalized weight]")
    max_error: float = Field(description="max |read - target| after programming [normalized weight]")
    clipped: int = Field(description="targets outside [w_min, w_max] clipped before programming [devices]")


class DeployReport(HilModel):
    """What :func:`deploy` did."""

    layers: list[LayerDeployment]
    pulses_spent: int
    rms_error: float = Field(description="rms programming error over all devices [normalized weight]")
    accuracy: float | None = Field(None, description="mean test accuracy of the deployed model (forward through the arrays)")
    accuracy_passes: int = 0


@torch.no_grad()
def deploy(
    extracted: nn.Module,
    factory: ArrayFactory,
    *,
    out_scale: float | Sequence[float] = 1.0,
    tol: float = 0.03,
    max_iter: int = 50,
    n_reads: int = 16,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    eval_passes: int = 5,
    precision: float = 0.005,
) -> tuple[nn.Module, DeployReport]:
    """Program ``extracted`` (a digital model from :func:`hil.extraction.extract`) onto arrays
    from ``factory`` (role ``"W"``) with ``backend.program(target, tol, max_iter, n_reads=n_reads)``.

    Returns the analog model and a :class:`DeployReport` (pulses, programming error
    measured by a read to ``precision`` afterwards, and, with test data, the test
    accuracy averaged over ``eval_passes`` forward passes through the noisy arrays).
    """
    from hil.extraction.export import read_precise
    from hil.training.loop import evaluate

    model = convert_to_analog(extracted, factory, out_scale=out_scale)
    layers = []
    sq, count, pulses = 0.0, 0, 0
    for name, layer in model.named_modules():
        if not isinstance(layer, AnalogLayer):
            continue
        backend = layer.backend
        digital = extracted.get_submodule(name) if name else extracted
        target = digital.weight.detach().reshape(layer.rows, layer.cols).to(backend.device) / layer.out_scale
        info = backend.info
        clipped = int(((target < info.w_min) | (target > info.w_max)).sum())
        rep = backend.program(target.clamp(info.w_min, info.w_max), tol=tol, max_iter=max_iter, n_reads=n_reads)
        after = read_precise(backend.read, precision, 1024).mean
        err = (after - target) * layer.out_scale  # effective weight units
        layers.append(LayerDeployment(
            name=name or "<root>", converged_fraction=rep.converged_fraction, iterations=rep.iterations,
            pulses_spent=rep.pulses_spent, program_reads=rep.reads, rms_error=float(err.pow(2).mean().sqrt()),
            max_error=float(err.abs().max()), clipped=clipped))
        sq += float(err.pow(2).sum())
        count += err.numel()
        pulses += rep.pulses_spent
    acc = None
    if x_test is not None and y_test is not None:
        acc = sum(evaluate(model, x_test, y_test) for _ in range(eval_passes)) / eval_passes
    report = DeployReport(layers=layers, pulses_spent=pulses, rms_error=(sq / max(count, 1)) ** 0.5,
                          accuracy=acc, accuracy_passes=eval_passes if acc is not None else 0)
    return model, report


def report_dict(report: DeployReport) -> dict[str, Any]:
    return report.model_dump(mode="json")
