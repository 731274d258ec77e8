"""Deployment of an extracted digital model onto fresh arrays by write-verify (``program``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import nn

from hil.backend import BackendInfo, CrossbarBackend, ProgramReport
from hil.checks import check_matrix
from hil.config import HilModel
from hil.nn import convert_to_analog
from hil.nn.layers import AnalogLayer

ArrayFactory = Callable[[int, int, str], CrossbarBackend]


class DifferentialPair(CrossbarBackend):
    """Each weight on two devices of one array, ``W = G+ - G-``: a ``rows x 2 cols`` array
    ``base`` holds ``[G+ | G-]`` and every input vector is applied as ``[x, -x]``, so the two
    currents subtract on the output line before the ADC (one output-noise sample, one ADC
    conversion; the weight read noise of both devices adds).

    :meth:`program` writes ``G+ = target / 2``, ``G- = -target / 2`` (both devices in the
    middle of their range) with the base array's write-verify, then trims ``G+`` against
    the ``G-`` it reads, so that the weight error is one device's, not the sum of two; the
    range is twice the device's.  :meth:`pulse` potentiates ``G+`` for positive and ``G-``
    for negative counts (set pulses only, as on PCM).  In-situ training (``update``) is
    refused with a ``TypeError``: a pair is a deployment mapping.
    """

    def __init__(self, base: CrossbarBackend) -> None:
        if base.cols % 2:
            raise ValueError(f"DifferentialPair: the base array needs an even number of columns, got {base.cols}")
        super().__init__(base.rows, base.cols // 2, base.device)
        self.base = base

    def _info(self) -> BackendInfo:
        b = self.base.info
        return BackendInfo(
            name=f"DifferentialPair[{b.name}]", kind=b.kind, rows=self.rows, cols=self.cols,
            w_min=b.w_min - b.w_max, w_max=b.w_max - b.w_min, dw_min=b.dw_min, parallel_update=False,
            transposed_read=b.transposed_read, max_pulses_per_call=b.max_pulses_per_call,
            hardware_id=f"{b.hardware_id}:pair" if b.hardware_id else "pair",
            details={**b.details, "mapping": "W = G+ - G-, inputs [x, -x] on a rows x 2 cols array"},
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.forward(torch.cat([x, -x], dim=1))

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        z = self.base.backward(d)
        return z[:, : self.cols] - z[:, self.cols :]

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        raise TypeError("DifferentialPair is a deployment mapping (program / forward / read); "
                        "train on the arrays themselves, not on a pair")

    def _pulse(self, counts: torch.Tensor) -> None:
        self.base.pulse(torch.cat([counts.clamp(min=0), (-counts).clamp(min=0)], dim=1))

    def program(self, target: torch.Tensor, tol: float = 0.02, max_iter: int = 50, *, n_reads: int = 1,
                max_pulses_per_iter: int = 32, trim: bool = True) -> ProgramReport:
        """Write-verify of ``target`` ``[rows, cols]`` (normalized pair units) in two phases.

        1. ``G+ = target / 2`` and ``G- = -target / 2`` on the base array, ``tol`` per device;
        2. with ``trim`` (default): ``G-`` is read (``4 n_reads`` reads averaged, at least 16)
           and ``G+`` is written again to ``target + G-`` (``G-`` targets its own read, so it is
           left alone unless read noise puts it outside ``tol``).

        Without the trim the weight error is the sum of two device errors (each up to
        ``tol``); with it, ``G+``'s error plus the read error of ``G-``.  The report is the
        base array's (per device, base units) after the last phase, with the pulses, reads
        and rounds of both phases.
        """
        self._check_open()
        target = check_matrix(target, "target", self.shape, device=self.device, where="DifferentialPair.program")
        target = target.to(torch.float32)
        half = 0.5 * target
        self.counts.program_calls += 1
        coarse = self.base.program(torch.cat([half, -half], dim=1), tol=tol, max_iter=max_iter,
                                   n_reads=n_reads, max_pulses_per_iter=max_pulses_per_iter)
        if not trim:
            return coarse
        n_trim = max(4 * int(n_reads), 16)
        g_minus = self.base.read(n_trim)[:, self.cols :]
        info = self.base.info
        g_plus = (target + g_minus).clamp(info.w_min, info.w_max)
        fine = self.base.program(torch.cat([g_plus, g_minus], dim=1), tol=tol, max_iter=max_iter,
                                 n_reads=n_reads, max_pulses_per_iter=max_pulses_per_iter)
        return fine.model_copy(update={"pulses_spent": coarse.pulses_spent + fine.pulses_spent,
                                       "reads": coarse.reads + n_trim + fine.reads,
                                       "iterations": coarse.iterations + fine.iterations})

    def close(self) -> None:
        super().close()
        self.base.close()


class LayerDeployment(HilModel):
    """Write-verify of one layer: ``ProgramReport`` figures plus the error measured afterwards."""

    name: str
    converged_fraction: float
    iterations: int
    pulses_spent: int
    program_reads: int = Field(description="full-array reads used by program() [reads]")
    rms_error: float = Field(description="rms(read - target) after programming, read to precision, times out_scale [effective weight]")
    rms_error_normalized: float = Field(description="rms(read - target) in the array's units (W = G+ - G- for a pair) [normalized weight]")
    max_error: float = Field(description="max |read - target| after programming, times out_scale [effective weight]")
    clipped: int = Field(description="targets outside [w_min, w_max] clipped before programming [devices]")


class DeployReport(HilModel):
    """What :func:`deploy` did."""

    layers: list[LayerDeployment]
    pulses_spent: int
    rms_error: float = Field(description="rms programming error over all weights, times out_scale [effective weight]")
    rms_error_normalized: float = Field(description="rms programming error over all weights in the arrays' units [normalized weight]")
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
    pair: bool = False,
) -> tuple[nn.Module, DeployReport]:
    """Program ``extracted`` (a digital model from :func:`hil.extraction.extract`) onto arrays
    from ``factory`` (role ``"W"``) with ``backend.program(target, tol, max_iter, n_reads=n_reads)``.

    ``pair``: every weight on a differential pair of devices (:class:`DifferentialPair`).
    Returns the analog model and a :class:`DeployReport` (pulses, programming error
    measured by a read to ``precision`` afterwards, and, with test data, the test
    accuracy averaged over ``eval_passes`` forward passes through the noisy arrays).
    """
    from hil.extraction.export import read_precise
    from hil.training.loop import evaluate

    if pair:
        base_factory = factory

        def factory(rows: int, cols: int, role: str) -> CrossbarBackend:
            return DifferentialPair(base_factory(rows, 2 * cols, role))

    model = convert_to_analog(extracted, factory, out_scale=out_scale)
    layers = []
    sq, sq_n, count, pulses = 0.0, 0.0, 0, 0
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
            rms_error_normalized=float((after - target).pow(2).mean().sqrt()),
            max_error=float(err.abs().max()), clipped=clipped))
        sq += float(err.pow(2).sum())
        sq_n += float((after - target).pow(2).sum())
        count += err.numel()
        pulses += rep.pulses_spent
    acc = None
    if x_test is not None and y_test is not None:
        acc = sum(evaluate(model, x_test, y_test) for _ in range(eval_passes)) / eval_passes
    report = DeployReport(layers=layers, pulses_spent=pulses, rms_error=(sq / max(count, 1)) ** 0.5,
                          rms_error_normalized=(sq_n / max(count, 1)) ** 0.5,
                          accuracy=acc, accuracy_passes=eval_passes if acc is not None else 0)
    return model, report


def report_dict(report: DeployReport) -> dict[str, Any]:
    return report.model_dump(mode="json")
