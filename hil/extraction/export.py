"""Export of a trained analog model to a plain digital torch model.

:func:`extract` replaces every :class:`~hil.nn.AnalogLinear` /
:class:`~hil.nn.AnalogConv2d` by ``nn.Linear`` / ``nn.Conv2d`` of the same shape
holding the extracted weights (the last iterate read from the arrays, or a
:class:`~hil.extraction.ModelAverager`'s average); every other module is copied.
The state_dict therefore loads into the original digital network.
:func:`save_extracted` writes it with its :class:`ExtractionInfo`.

Reading to a precision (:func:`read_precise`): ``pilot`` single reads give the
per-element read-noise variance ``s^2`` (mean over elements); ``n =
ceil(s^2 / precision^2)`` reads in total (at least ``pilot``, at most
``max_reads``) make the standard error of the mean ``s / sqrt(n) <= precision``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from hil.config import HilModel
from hil.nn.layers import AnalogConv2d, AnalogLayer, AnalogLinear

EXTRACTED_FORMAT = "hil.extraction.ExtractedModel"
EXTRACTED_VERSION = "1.0"


@dataclass
class PreciseRead:
    """Result of :func:`read_precise`: ``mean`` ``[rows, cols]``, ``reads`` used,
    ``read_noise`` (per-read std estimate), ``standard_error`` (``read_noise / sqrt(reads)``)."""

    mean: torch.Tensor
    reads: int
    read_noise: float
    standard_error: float


def read_precise(
    read: Callable[[int], torch.Tensor], precision: float = 0.005, max_reads: int = 1024, pilot: int = 8
) -> PreciseRead:
    """Average repeated reads until the standard error is ``<= precision`` (normalized units).

    ``read(n)`` returns the average of ``n`` reads (``CrossbarBackend.read`` or
    ``AnalogLayer.read_weights``).  Stops at ``max_reads`` (then the standard error
    reported is above ``precision``).
    """
    if precision <= 0 or pilot < 2 or max_reads < pilot:
        raise ValueError(f"read_precise: need precision > 0, pilot >= 2, max_reads >= pilot; got "
                         f"{precision}, {pilot}, {max_reads}")
    singles = torch.stack([read(1) for _ in range(pilot)])
    var = float(singles.var(dim=0, unbiased=True).mean())
    total = min(max(pilot, math.ceil(var / precision**2)), max_reads)
    mean = singles.mean(0)
    if total > pilot:
        rest = total - pilot
        mean = (mean * pilot + read(rest) * rest) / total
    sigma = math.sqrt(var)
    return PreciseRead(mean, total, sigma, sigma / math.sqrt(total))


class LayerExtraction(HilModel):
    """Where one layer's extracted weights came from."""

    name: str
    source_backend: str = Field(description="backend class / hardware id of the array read")
    read_noise: float | None = Field(description="per-read std estimate [normalized weight]; None: not measured")
    reads_averaged: int = Field(description="full-array reads behind the weights [reads]")
    snapshots: int = Field(0, description="training iterates averaged (0: last iterate)")
    standard_error: float | None = Field(None, description="read-noise std of the weights [normalized weight]")


class ExtractionInfo(HilModel):
    """Metadata saved with an extracted model's state_dict."""

    source: str = Field(description="last_iterate, average_digital or average_analog")
    layers: list[LayerExtraction]
    details: dict[str, Any] = Field(default_factory=dict)


def _digital_twin(layer: AnalogLayer, weight: torch.Tensor) -> nn.Module:
    bias = layer.bias is not None
    if isinstance(layer, AnalogLinear):
        new: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=bias)
        w = weight.reshape(layer.out_features, layer.in_features)
    elif isinstance(layer, AnalogConv2d):
        kh, kw = layer.kernel_size
        new = nn.Conv2d(layer.in_channels, layer.out_channels, (kh, kw), stride=layer.stride,
                        padding=layer.padding, bias=bias)
        w = weight.reshape(layer.out_channels, layer.in_channels, kh, kw)
    else:
        raise ValueError(f"extract: unsupported analog layer {type(layer).__name__}")
    with torch.no_grad():
        new.weight.copy_(w.to(new.weight.dtype).cpu())
        if bias:
            new.bias.copy_(layer.bias.detach().cpu())  # type: ignore[union-attr]
    return new


def extract(
    model: nn.Module,
    averager: Any = None,
    *,
    precision: float = 0.005,
    max_reads: int = 1024,
) -> nn.Module:
    """A plain digital copy of ``model`` with the extracted weights; ``.extraction`` holds its
    :class:`ExtractionInfo`.

    Without ``averager``: the last iterate, every layer's effective weights
    (``out_scale * sum coeff * read``) read to ``precision`` (:func:`read_precise`).
    With a :class:`~hil.extraction.ModelAverager`: its averaged weights (the analog
    variant reads D once, to ``precision``) and, if it averaged them, the averaged
    digital parameters (biases).
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLayer)]
    if not found:
        raise ValueError("extract: the model has no AnalogLinear/AnalogConv2d layer")
    averaged = averager.weights(precision, max_reads) if averager is not None else None
    weights: dict[str, torch.Tensor] = {}
    infos: list[LayerExtraction] = []
    for name, layer in found:
        key = name or "<root>"
        backend = layer.backend
        src = f"{type(backend).__name__}:{backend.info.hardware_id}" if backend.info.hardware_id else type(backend).__name__
        if averaged is not None:
            a = averaged[key]
            weights[name] = a["weight"].detach()
            se = None if a["read_noise"] is None else a["read_noise"] / math.sqrt(a["reads"])
            infos.append(LayerExtraction(name=key, source_backend=src, read_noise=a["read_noise"],
                                         reads_averaged=int(a["reads"]), snapshots=int(a["snapshots"]),
                                         standard_error=se))
        else:
            r = read_precise(layer.read_weights, precision, max_reads)
            weights[name] = r.mean.detach()
            infos.append(LayerExtraction(name=key, source_backend=src, read_noise=r.read_noise,
                                         reads_averaged=r.reads, standard_error=r.standard_error))
    saved = [(m, m.tiles, m._pending) for _, m in found]
    try:  # copy the structure without the arrays (they stay with the analog model)
        for m, _, _ in saved:
            m.tiles, m._pending = [], []
        root = copy.deepcopy(model)
    finally:
        for m, tiles, pending in saved:
            m.tiles, m._pending = tiles, pending
    for name, _ in found:
        layer = root.get_submodule(name) if name else root
        new = _digital_twin(layer, weights[name])  # type: ignore[arg-type]
        if not name:
            root = new
            break
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, new)
    if averager is not None:
        params = averager.digital_params()
        with torch.no_grad():
            for pname, p in root.named_parameters():
                if pname in params:
                    p.copy_(params[pname].to(p.dtype).cpu())
    source = "last_iterate" if averager is None else f"average_{averager.config.variant}"
    details: dict[str, Any] = {}
    if averager is not None:
        details = {"averaging": averager.config.model_dump(mode="json"),
                   "digital_params_averaged": bool(averager.digital_params())}
    root.extraction = ExtractionInfo(source=source, layers=infos, details=details)  # type: ignore[assignment]
    return root


def save_extracted(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` of ``{"format", "schema_version", "state_dict", "metadata"}``."""
    info = getattr(model, "extraction", None)
    if not isinstance(info, ExtractionInfo):
        raise ValueError("save_extracted: model has no .extraction metadata (use hil.extraction.extract)")
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    torch.save({"format": EXTRACTED_FORMAT, "schema_version": EXTRACTED_VERSION,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "metadata": info.model_dump(mode="json")}, tmp)
    os.replace(tmp, p)
    return p


def load_extracted(path: str | os.PathLike[str], into: nn.Module) -> nn.Module:
    """Load a :func:`save_extracted` file into ``into`` (the digital architecture); sets ``.extraction``."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != EXTRACTED_FORMAT:
        raise ValueError(f"{path}: not an extracted model (format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    if str(payload.get("schema_version", "?")).split(".")[0] != EXTRACTED_VERSION.split(".")[0]:
        raise ValueError(f"{path}: schema_version {payload.get('schema_version')!r}, this release reads {EXTRACTED_VERSION}")
    into.load_state_dict(payload["state_dict"])
    into.extraction = ExtractionInfo.model_validate(payload["metadata"])  # type: ignore[assignment]
    return into
