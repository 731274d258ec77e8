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
from hil.extraction.program import WriteVerifyConfig, write_verify
from hil.nn import convert_to_analog
from hil.nn.layers import AnalogLayer

ArrayFactory = Callable[[int, int, str], CrossbarBackend]
FAR_OFF = 0.1  # a weight this far off target (arrays' units: 5 x tol 0.02, 10 x tol 0.01) counts as far off


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
                max_pulses_per_iter: int = 32, trim: bool = True, freeze: bool = False,
                confirm_reads: int = 0) -> ProgramReport:
        """Write-verify of ``target`` ``[rows, cols]`` (normalized pair units): :meth:`program_with`
        with these settings (``freeze=False, confirm_reads=0``: the base array's ``program``
        loop)."""
        cfg = WriteVerifyConfig(tol=tol, max_iter=max_iter, n_reads=n_reads, max_pulses_per_iter=max_pulses_per_iter,
                                freeze=freeze, confirm_reads=confirm_reads)
        return self.program_with(target, cfg, trim=trim)

    def program_with(self, target: torch.Tensor, config: WriteVerifyConfig, trim: bool = True) -> ProgramReport:
        """Write-verify (:func:`~hil.extraction.program.write_verify`) in two phases.

        1. ``G+ = target / 2`` and ``G- = -target / 2`` on the base array, ``config.tol`` per device;
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
        coarse = write_verify(self.base, torch.cat([half, -half], dim=1), config)
        if not trim:
            return coarse
        n_trim = max(4 * int(config.n_reads), 16)
        g_minus = self.base.read(n_trim)[:, self.cols :]
        info = self.base.info
        g_plus = (target + g_minus).clamp(info.w_min, info.w_max)
        fine = write_verify(self.base, torch.cat([g_plus, g_minus], dim=1), config)
        return fine.model_copy(update={"pulses_spent": coarse.pulses_spent + fine.pulses_spent,
                                       "reads": coarse.reads + n_trim + fine.reads,
                                       "iterations": coarse.iterations + fine.iterations})

    def close(self) -> None:
        super().close()
        self.base.close()


class ColumnPeriphery(nn.Module):
    """Digital periphery of one deployed analog layer, per output column (array row) ``i``:
    ``y_i = gain_i * mean_k(analog(x))_i + offset_i``.

    ``analog``: an :class:`~hil.nn.layers.AnalogLayer` without bias, ``out_scale`` 1;
    ``gain`` ``[rows]``: the digital output factor of each column (the weights were mapped
    onto the array as ``W_i / gain_i``); ``offset`` ``[rows]``: the layer's bias;
    ``forward_reads``: MVMs averaged per input (1: one analog read per inference; k costs k
    times the array reads).  Conv layers broadcast ``gain`` / ``offset`` over the pixels.
    Both are buffers: digital state of the deployed model, ``2 rows`` numbers per layer.
    """

    def __init__(self, analog: AnalogLayer, gain: torch.Tensor, offset: torch.Tensor, forward_reads: int = 1) -> None:
        super().__init__()
        if int(forward_reads) < 1:
            raise ValueError(f"ColumnPeriphery: forward_reads must be >= 1, got {forward_reads}")
        for name, t in (("gain", gain), ("offset", offset)):
            if tuple(t.shape) != (analog.rows,):
                raise ValueError(f"ColumnPeriphery: {name} must have shape [{analog.rows}] (one per array row), "
                                 f"got {list(t.shape)}")
        if analog.bias is not None or analog.out_scale != 1.0:
            raise ValueError("ColumnPeriphery: the analog layer must have no bias and out_scale 1 "
                             "(gain and offset hold them)")
        self.analog = analog
        self.forward_reads = int(forward_reads)
        self.register_buffer("gain", gain.detach().clone().float())
        self.register_buffer("offset", offset.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.analog(x)
        for _ in range(self.forward_reads - 1):
            y = y + self.analog(x)
        if self.forward_reads > 1:
            y = y / self.forward_reads
        shape = (1, -1, 1, 1) if y.dim() == 4 else (-1,)
        return y * self.gain.view(shape) + self.offset.view(shape)

    def extra_repr(self) -> str:
        return f"rows={self.analog.rows}, forward_reads={self.forward_reads}"


class LayerDeployment(HilModel):
    """Write-verify of one layer: ``ProgramReport`` figures plus the error measured afterwards."""

    name: str
    converged_fraction: float
    iterations: int
    pulses_spent: int
    program_reads: int = Field(description="full-array reads used by program() [reads]")
    rms_error: float = Field(description="rms(read - target) after programming, read to precision, times the column gain [effective weight]")
    rms_error_normalized: float = Field(description="rms(read - target) in the array's units (W = G+ - G- for a pair) [normalized weight]")
    max_error: float = Field(description="max |read - target| after programming, times the column gain [effective weight]")
    clipped: int = Field(description="targets outside [w_min, w_max] clipped before programming [devices]")
    far_off: int = Field(0, description="weights whose precise read is more than FAR_OFF off target [weights]")
    gain_min: float = Field(description="smallest digital column gain (effective weight per array unit)")
    gain_max: float = Field(description="largest digital column gain")


class DeployReport(HilModel):
    """What :func:`deploy` did."""

    layers: list[LayerDeployment]
    pulses_spent: int
    rms_error: float = Field(description="rms programming error over all weights, times the column gain [effective weight]")
    rms_error_normalized: float = Field(description="rms programming error over all weights in the arrays' units [normalized weight]")
    digital_params: int = Field(description="numbers kept in the digital periphery (a gain and an offset per column)")
    forward_reads: int = Field(1, description="MVMs averaged per input in inference")
    calibration_mvms: int = Field(0, description="input vectors of calibrate_columns' averaged reads (0: not calibrated)")
    accuracy: float | None = Field(None, description="mean test accuracy of the deployed model (forward through the arrays)")
    accuracy_passes: int = 0


def column_gains(weight: torch.Tensor, mapping: str, out_scale: float, fill: float, w_max: float) -> torch.Tensor:
    """Digital gain per array row ``[rows]`` for the effective weights ``weight`` ``[rows, cols]``.

    ``mapping="layer"``: ``out_scale`` for every row (the array holds ``W / out_scale``);
    ``"column"``: ``max_j |W_ij| / (fill * w_max)``, so that every row's largest weight sits at
    ``fill`` of the array's range (an all-zero row gets ``out_scale``).
    """
    rows = weight.shape[0]
    if mapping == "layer":
        return torch.full((rows,), float(out_scale), dtype=torch.float32)
    if mapping == "column":
        if not 0.0 < fill <= 1.0:
            raise ValueError(f"deploy: column_fill must be in (0, 1], got {fill}")
        peak = weight.abs().amax(dim=1).float() / (fill * w_max)
        return torch.where(peak > 0, peak, torch.full_like(peak, float(out_scale)))
    raise ValueError(f"deploy: mapping must be 'layer' or 'column', got {mapping!r}")


@torch.no_grad()
def calibrate_columns(model: nn.Module, extracted: nn.Module, x: torch.Tensor, *, reads: int = 16,
                      max_gain_change: float = 0.05) -> int:
    """Per-column affine correction of a deployed model from its outputs (digital periphery).

    For every :class:`ColumnPeriphery` in ``named_modules`` order: the deployed model runs
    on the calibration inputs ``x`` ``[n, ...]`` (training data, never test data) and the
    layer's input is captured; its array output is averaged over ``reads`` MVMs
    (``ya``, array units) and compared with the digital layer of ``extracted`` on the same
    input without bias (``yd``); per column (over inputs and, for convolutions, pixels)
    ``yd ~ g ya + c`` by least squares, ``g`` limited to ``max_gain_change`` around the
    mapping's gain.  The column keeps ``gain = g`` and ``offset = bias + c``.  Layers are
    calibrated in order, each on the outputs of the layers already calibrated.
    Returns the input vectors the averaged reads sent through the calibrated arrays
    (``reads`` x inputs, x output pixels for convolutions); producing the inputs costs one
    more forward pass of ``x`` per layer.
    """
    if reads < 1 or not 0.0 <= max_gain_change < 1.0:
        raise ValueError(f"calibrate_columns: need reads >= 1 and 0 <= max_gain_change < 1, got {reads}, {max_gain_change}")
    mvms = 0
    captured: dict[str, torch.Tensor] = {}

    def grab(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured["x"] = args[0]

    for name, mod in [(n, m) for n, m in model.named_modules() if isinstance(m, ColumnPeriphery)]:
        hook = mod.register_forward_pre_hook(grab)
        try:
            model(x)
        finally:
            hook.remove()
        xin = captured["x"]
        ya = mod.analog(xin)
        for _ in range(reads - 1):
            ya = ya + mod.analog(xin)
        ya = ya / reads
        digital = extracted.get_submodule(name) if name else extracted
        yd = digital(xin)
        if getattr(digital, "bias", None) is not None:
            yd = yd - (digital.bias.view(1, -1, 1, 1) if yd.dim() == 4 else digital.bias)
        if ya.dim() == 4:  # [n, rows, h, w] -> [n h w, rows]
            ya, yd = (t.permute(0, 2, 3, 1).reshape(-1, mod.analog.rows) for t in (ya, yd))
        mvms += reads * ya.shape[0]
        ma, md = ya.mean(0), yd.mean(0)
        var = (ya - ma).pow(2).sum(0)
        g0 = mod.gain
        g = torch.where(var > 0, ((ya - ma) * (yd - md)).sum(0) / var.clamp(min=1e-12), g0)
        g = torch.minimum(torch.maximum(g, (1 - max_gain_change) * g0), (1 + max_gain_change) * g0)
        c = md - g * ma
        bias = digital.bias.detach().float() if getattr(digital, "bias", None) is not None else torch.zeros_like(c)
        mod.gain.copy_(g)
        mod.offset.copy_(bias + c)
    return mvms


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
    verify: WriteVerifyConfig | None = None,
    mapping: str = "layer",
    column_fill: float = 0.9,
    forward_reads: int = 1,
    calibration_inputs: torch.Tensor | None = None,
    calibration_reads: int = 16,
) -> tuple[nn.Module, DeployReport]:
    """Program ``extracted`` (a digital model from :func:`hil.extraction.extract`) onto arrays
    from ``factory`` (role ``"W"``) by write-verify.

    Every ``nn.Linear`` / ``nn.Conv2d`` becomes a :class:`ColumnPeriphery` around an analog
    layer whose array holds ``W_i / gain_i`` per row (:func:`column_gains`: ``mapping="layer"``,
    one ``out_scale`` per layer, in ``named_modules`` order, targets outside the range
    clipped; ``"column"``: each row's largest weight at ``column_fill`` of the range).
    ``pair``: every weight on a differential pair of devices (:class:`DifferentialPair`).
    ``verify``: program with :func:`~hil.extraction.program.write_verify` and these settings
    (they replace ``tol``, ``max_iter``, ``n_reads``); None: ``backend.program``.
    ``forward_reads``: MVMs averaged per input in inference.  ``calibration_inputs``
    (training data): after programming, :func:`calibrate_columns` with ``calibration_reads``.
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

    model = convert_to_analog(extracted, factory, out_scale=1.0)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLayer)]
    scales = [float(out_scale)] * len(found) if isinstance(out_scale, (int, float)) else [float(v) for v in out_scale]
    if len(scales) != len(found):
        raise ValueError(f"deploy: {len(scales)} out_scale values for {len(found)} layers")
    layers = []
    sq, sq_n, count, pulses, n_digital = 0.0, 0.0, 0, 0, 0
    for (name, layer), scale in zip(found, scales, strict=True):
        backend = layer.backend
        info = backend.info
        digital = extracted.get_submodule(name) if name else extracted
        weight = digital.weight.detach().reshape(layer.rows, layer.cols).float().cpu()
        gain = column_gains(weight, mapping, scale, column_fill, info.w_max)
        target = (weight / gain[:, None]).to(backend.device)
        clipped = int(((target < info.w_min) | (target > info.w_max)).sum())
        clamped = target.clamp(info.w_min, info.w_max)
        if verify is None:
            rep = backend.program(clamped, tol=tol, max_iter=max_iter, n_reads=n_reads)
        elif isinstance(backend, DifferentialPair):
            rep = backend.program_with(clamped, verify)
        else:
            rep = write_verify(backend, clamped, verify)
        after = read_precise(backend.read, precision, 1024).mean
        err_n = after - target
        err = err_n * gain[:, None].to(err_n.device)  # effective weight units
        layers.append(LayerDeployment(
            name=name or "<root>", converged_fraction=rep.converged_fraction, iterations=rep.iterations,
            pulses_spent=rep.pulses_spent, program_reads=rep.reads, rms_error=float(err.pow(2).mean().sqrt()),
            rms_error_normalized=float(err_n.pow(2).mean().sqrt()), max_error=float(err.abs().max()),
            clipped=clipped, far_off=int((err_n.abs() > FAR_OFF).sum()), gain_min=float(gain.min()), gain_max=float(gain.max())))
        sq += float(err.pow(2).sum())
        sq_n += float(err_n.pow(2).sum())
        count += err.numel()
        pulses += rep.pulses_spent
        bias = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(layer.rows)
        layer.bias = None
        wrapped = ColumnPeriphery(layer, gain, bias, forward_reads)
        n_digital += 2 * layer.rows
        if not name:
            model = wrapped
        else:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
    calibration_mvms = 0
    if calibration_inputs is not None:
        calibration_mvms = calibrate_columns(model, extracted, calibration_inputs, reads=calibration_reads)
    acc = None
    if x_test is not None and y_test is not None:
        acc = sum(evaluate(model, x_test, y_test) for _ in range(eval_passes)) / eval_passes
    report = DeployReport(layers=layers, pulses_spent=pulses, rms_error=(sq / max(count, 1)) ** 0.5,
                          rms_error_normalized=(sq_n / max(count, 1)) ** 0.5, digital_params=n_digital,
                          forward_reads=int(forward_reads), calibration_mvms=calibration_mvms, accuracy=acc,
                          accuracy_passes=eval_passes if acc is not None else 0)
    return model, report


def report_dict(report: DeployReport) -> dict[str, Any]:
    return report.model_dump(mode="json")
