"""``convert_to_analog``: replace the ``nn.Linear`` / ``nn.Conv2d`` layers of a model by analog ones."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from hil.backend import CrossbarBackend, ProgramReport
from hil.nn.layers import AnalogConv2d, AnalogLinear

ArrayFactory = Callable[[int, int, str], CrossbarBackend]


def convert_to_analog(
    module: nn.Module,
    factory: ArrayFactory | None = None,
    *,
    program: bool = False,
    out_scale: float | Sequence[float] = 1.0,
    tol: float = 0.02,
    max_iter: int = 50,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``module`` (or ``module`` itself with ``inplace``) with analog layers.

    Every ``nn.Linear`` becomes an :class:`AnalogLinear` and every ``nn.Conv2d``
    (groups 1, dilation 1, zero padding) an :class:`AnalogConv2d`; biases are
    copied into the digital bias.  Other modules are kept.  A module with the
    attribute ``hil_digital = True`` (e.g. the error-compensation blocks of
    :mod:`hil.robust`, which live in variation-free digital memory) is kept
    digital with everything inside it; such a root is returned unchanged.

    factory:
        ``(rows, cols, role) -> CrossbarBackend``; when given, every layer gets
        one array with role ``"W"`` (layers in ``named_modules`` order).
        Without it the layers have no array yet; a
        :class:`hil.training.TrainingController` attaches its own.
    program:
        Write the existing weights (divided by ``out_scale``) into the arrays
        with ``backend.program(target, tol, max_iter)``; the reports are stored
        in ``layer.program_report``.  Weights outside the array's range are
        clipped to it first.
    out_scale:
        Fixed digital output factor of the analog layers (effective weight
        ``out_scale * W``, normalized weight units): one value for all, or one
        per converted layer in ``named_modules`` order.
    """
    if program and factory is None:
        raise ValueError("convert_to_analog: program=True needs a factory to make the arrays")
    root = module if inplace else copy.deepcopy(module)
    targets: list[tuple[nn.Module | None, str, nn.Module]] = []
    if is_digital(root):
        targets = []
    elif isinstance(root, (nn.Linear, nn.Conv2d)):
        targets.append((None, "", root))
    else:
        _collect_layers(root, "", targets)
    if isinstance(out_scale, (int, float)):
        scales = [float(out_scale)] * len(targets)
    else:
        scales = [float(v) for v in out_scale]
        if len(scales) != len(targets):
            raise ValueError(
                f"convert_to_analog: {len(scales)} out_scale values for {len(targets)} layers"
            )
    for (parent, full, layer), scale in zip(targets, scales, strict=True):
        new = _convert_one(layer, full, factory, program, scale, tol, max_iter)
        if parent is None:
            return new
        setattr(parent, full.rsplit(".", 1)[-1], new)
    return root


def is_digital(module: nn.Module) -> bool:
    """Whether ``module`` is marked to stay digital (``hil_digital = True``)."""
    return bool(getattr(module, "hil_digital", False))


def _collect_layers(
    parent: nn.Module, prefix: str, out: list[tuple[nn.Module | None, str, nn.Module]]
) -> None:
    """Append ``(parent, dotted name, layer)`` for every Linear/Conv2d below ``parent``
    (``named_modules`` order), not descending into modules marked digital."""
    for cname, child in parent.named_children():
        full = f"{prefix}.{cname}" if prefix else cname
        if is_digital(child):
            continue
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            out.append((parent, full, child))
        else:
            _collect_layers(child, full, out)


def _convert_one(
    layer: nn.Module,
    name: str,
    factory: ArrayFactory | None,
    program: bool,
    out_scale: float,
    tol: float,
    max_iter: int,
) -> nn.Module:
    has_bias = getattr(layer, "bias", None) is not None
    if isinstance(layer, nn.Linear):
        new: AnalogLinear | AnalogConv2d = AnalogLinear(
            layer.in_features, layer.out_features, bias=has_bias, out_scale=out_scale
        )
        weight = layer.weight.detach()
    else:
        assert isinstance(layer, nn.Conv2d)
        if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros":
            raise ValueError(
                f"convert_to_analog: Conv2d {name or '<root>'} has groups={layer.groups}, "
                f"dilation={layer.dilation}, padding_mode={layer.padding_mode!r}; only groups=1, "
                "dilation=1 and zero padding map onto one array"
            )
        if isinstance(layer.padding, str):
            raise ValueError(
                f"convert_to_analog: Conv2d {name or '<root>'} has padding={layer.padding!r}; "
                "give the padding as numbers"
            )
        new = AnalogConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            bias=has_bias,
            out_scale=out_scale,
        )
        weight = layer.weight.detach().reshape(layer.out_channels, -1)
    if has_bias:
        with torch.no_grad():
            new.bias.copy_(layer.bias.detach())  # type: ignore[union-attr]
    if factory is not None:
        backend = factory(new.rows, new.cols, "W")
        new.attach(backend)
        if program:
            info = backend.info
            target = (weight / out_scale).clamp(info.w_min, info.w_max).to(backend.device)
            report: ProgramReport = backend.program(target, tol=tol, max_iter=max_iter)
            new.program_report = report  # type: ignore[attr-defined]
    return new
