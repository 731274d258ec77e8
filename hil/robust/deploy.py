"""Deploy a trained torch model onto crossbar backends with ``program()`` and run it there.

:func:`deploy_to_backends` copies a model and replaces every analog layer
(:func:`~hil.robust.analog.analog_layers`; compensation blocks stay digital) by a
:class:`BackendLayer` whose weight matrix is written into one or more
:class:`~hil.backend.CrossbarBackend` arrays by closed-loop write-verify.  The
forward pass then goes through ``backend.forward`` (with whatever the backend
adds: read noise, DAC/ADC quantization, saturation; on hardware, the chip).

Mapping, per layer (all digital, in the layer wrapper):

- weights: ``W_n = W / s_w`` with ``s_w = max|W| / (headroom * min(|w_min|, w_max))``
  so the largest weight uses ``headroom`` of the array's range;
- inputs: ``x_n = x / s_x`` with ``s_x`` the largest ``|x|`` this layer saw on the
  calibration batch (1 without one), so inputs fit the DAC range ``[-1, 1]``;
- output: ``y = s_w s_x backend.forward(x_n) + bias``;
- convolutions: the input is unfolded into patches (``F.unfold``) and the array
  holds the unfolded kernel matrix ``[out, in * kh * kw]``;
- a matrix larger than ``max_tile`` is split into tiles, one backend each; the
  partial outputs of the column tiles are summed digitally.

Programming variation: with a :class:`~hil.robust.variation.VariationConfig`
one draw is applied to ``W_n`` (whole layer) before programming, clamped to
the array's range — an emulation for simulators.  On hardware pass
``variation=None``: the variation is the chip's own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hil.backend import CrossbarBackend, ProgramReport
from hil.config import HilModel
from hil.robust.analog import analog_layers, replace_module
from hil.robust.montecarlo import MCResult, summarize
from hil.robust.variation import VariationConfig, sample_programmed_weights

BackendFactory = Callable[[int, int], CrossbarBackend]


class DeployConfig(HilModel):
    """How weights are mapped and programmed (module docstring)."""

    headroom: float = Field(0.8, gt=0, le=1, description="fraction of the weight range max|W| maps to")
    tol: float = Field(0.005, gt=0, description="write-verify tolerance, normalized units")
    max_iter: int = Field(100, ge=0, description="write-verify rounds")
    max_pulses_per_iter: int = Field(64, ge=1)
    n_reads: int = Field(1, ge=1, description="reads averaged per verify")
    max_tile: tuple[int, int] | None = Field(None, description="largest (rows, cols) per backend")
    calibrate_inputs: bool = Field(True, description="scale inputs by the calibration batch's max|x|")


class BackendLayer(nn.Module):
    """A ``nn.Linear`` or ``nn.Conv2d`` computed on crossbar tiles (module docstring for the mapping)."""

    def __init__(
        self,
        layer: nn.Module,
        tiles: list[list[CrossbarBackend]],
        row_splits: list[int],
        col_splits: list[int],
        w_scale: float,
        x_scale: float,
    ) -> None:
        super().__init__()
        self.layer = layer  # kept for its geometry and (digital) bias; its weight is not used
        self.tiles = tiles
        self.row_splits = row_splits
        self.col_splits = col_splits
        self.w_scale = float(w_scale)
        self.x_scale = float(x_scale)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2`` ``[N, cols]`` (original units) -> ``[N, rows]`` through the tiles."""
        xn = x2 / self.x_scale
        outs = []
        for row_tiles in self.tiles:
            acc = None
            for c, be in enumerate(row_tiles):
                part = xn[:, self.col_splits[c] : self.col_splits[c + 1]].to(be.device, torch.float32)
                y = be.forward(part).to(x2.device, x2.dtype)
                acc = y if acc is None else acc + y
            assert acc is not None
            outs.append(acc)
        return torch.cat(outs, dim=1) * (self.w_scale * self.x_scale)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        if isinstance(lay, nn.Linear):
            lead = x.shape[:-1]
            y = self._matmul(x.reshape(-1, x.shape[-1])).reshape(*lead, lay.out_features)
            return y + lay.bias if lay.bias is not None else y
        assert isinstance(lay, nn.Conv2d)
        n, _, h, w = x.shape
        cols = F.unfold(x, lay.kernel_size, lay.dilation, lay.padding, lay.stride)  # [n, C*kh*kw, L]
        kh, kw = lay.kernel_size
        ho = (h + 2 * lay.padding[0] - lay.dilation[0] * (kh - 1) - 1) // lay.stride[0] + 1
        wo = (w + 2 * lay.padding[1] - lay.dilation[1] * (kw - 1) - 1) // lay.stride[1] + 1
        y = self._matmul(cols.transpose(1, 2).reshape(-1, cols.shape[1]))  # [n*L, out]
        y = y.reshape(n, ho * wo, lay.out_channels).transpose(1, 2).reshape(n, lay.out_channels, ho, wo)
        return y + lay.bias.view(1, -1, 1, 1) if lay.bias is not None else y


class DeployedModel(nn.Module):
    """A model whose analog layers run on backends; ``reports`` holds every write-verify report."""

    def __init__(
        self,
        model: nn.Module,
        reports: dict[str, list[ProgramReport]],
        targets: dict[str, torch.Tensor],
        backends: list[CrossbarBackend],
    ) -> None:
        super().__init__()
        self.model = model
        self.reports = reports
        self.targets = targets  # per layer: the normalized matrix sent to program() [rows, cols]
        self.backends = backends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def converged_fraction(self) -> float:
        """Fraction of devices within tolerance, over every tile of every layer."""
        bad = sum(r.unconverged_devices for rs in self.reports.values() for r in rs)
        total = sum(be.rows * be.cols for be in self.backends)
        return 1.0 - bad / max(1, total)

    def close(self) -> None:
        for be in self.backends:
            be.close()


def _splits(n: int, tile: int | None) -> list[int]:
    if tile is None or tile >= n:
        return [0, n]
    k = math.ceil(n / tile)
    return [min(n, i * tile) for i in range(k)] + [n]


@torch.no_grad()
def _input_scales(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    scales: dict[str, float] = {}
    hooks = []
    for name, layer in analog_layers(model):
        hooks.append(
            layer.register_forward_hook(
                lambda mod, inp, out, name=name: scales.__setitem__(name, float(inp[0].abs().max()))
            )
        )
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {k: (v if v > 0 else 1.0) for k, v in scales.items()}


@torch.no_grad()
def deploy_to_backends(
    model: nn.Module,
    factory: BackendFactory,
    *,
    variation: VariationConfig | None = None,
    seed: int = 0,
    calibration_x: torch.Tensor | None = None,
    cfg: DeployConfig | None = None,
) -> DeployedModel:
    """Program ``model``'s analog layers into backends from ``factory(rows, cols)``; return the deployed copy.

    ``variation``: emulated programming variation drawn from a generator seeded with
    ``seed`` (module docstring); ``calibration_x``: a representative input batch for the
    input scaling.  Grouped convolutions are refused (one tile holds one matrix).
    """
    cfg = cfg or DeployConfig()
    layers = analog_layers(model)
    if not layers:
        raise ValueError("deploy_to_backends: the model has no analog layer (nn.Linear / nn.Conv2d)")
    for name, layer in layers:
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            raise ValueError(
                f"deploy_to_backends: layer {name!r} has groups={layer.groups}, "
                f"padding_mode={layer.padding_mode!r}; only groups=1 with zero padding is supported"
            )
    x_scales = (
        _input_scales(model, calibration_x)
        if (calibration_x is not None and cfg.calibrate_inputs)
        else {n: 1.0 for n, _ in layers}
    )
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    new = copy.deepcopy(model)
    reports: dict[str, list[ProgramReport]] = {}
    targets: dict[str, torch.Tensor] = {}
    backends: list[CrossbarBackend] = []
    try:
        for name, layer in analog_layers(new):
            w = layer.weight.detach().reshape(layer.weight.shape[0], -1).float().cpu()
            rows, cols = w.shape
            rs = _splits(rows, cfg.max_tile[0] if cfg.max_tile else None)
            cs = _splits(cols, cfg.max_tile[1] if cfg.max_tile else None)
            tiles: list[list[CrossbarBackend]] = []
            for r in range(len(rs) - 1):
                row: list[CrossbarBackend] = []
                for c in range(len(cs) - 1):
                    be = factory(rs[r + 1] - rs[r], cs[c + 1] - cs[c])
                    backends.append(be)
                    if be.shape != (rs[r + 1] - rs[r], cs[c + 1] - cs[c]):
                        raise ValueError(
                            f"deploy_to_backends: factory returned a {be.rows}x{be.cols} array for a "
                            f"{rs[r + 1] - rs[r]}x{cs[c + 1] - cs[c]} tile of layer {name!r}"
                        )
                    row.append(be)
                tiles.append(row)
            info = tiles[0][0].info
            w_range = cfg.headroom * min(abs(info.w_min), info.w_max)
            peak = float(w.abs().max())
            s_w = peak / w_range if peak > 0 else 1.0
            target = w / s_w
            if variation is not None and (variation.sigma > 0 or variation.additive_sigma > 0):
                target = sample_programmed_weights(target, variation, 1, gen)[0]
            target = target.clamp(info.w_min, info.w_max)
            targets[name] = target
            reports[name] = []
            for r, row in enumerate(tiles):
                for c, be in enumerate(row):
                    part = target[rs[r] : rs[r + 1], cs[c] : cs[c + 1]].contiguous().to(be.device)
                    reports[name].append(
                        be.program(
                            part,
                            tol=cfg.tol,
                            max_iter=cfg.max_iter,
                            n_reads=cfg.n_reads,
                            max_pulses_per_iter=cfg.max_pulses_per_iter,
                        )
                    )
            replace_module(new, name, BackendLayer(layer, tiles, rs, cs, s_w, x_scales[name]))
    except Exception:
        for be in backends:
            be.close()
        raise
    new.eval()
    return DeployedModel(new, reports, targets, backends)


def simulated_factory(
    device: str | Any = "ideal", periphery: Any = None, seed: int = 0, **kwargs: Any
) -> BackendFactory:
    """A factory of :class:`~hil.simulated.SimulatedCrossbar` arrays, each with its own seed.

    ``device``: preset name, DeviceModel or JSON path; ``periphery``: a ``PeripheryConfig``
    (``None``: the simulator's default).  Imports the simulator only when called.
    """
    from hil.simulated import SimulatedCrossbar

    counter = {"n": 0}

    def make(rows: int, cols: int) -> CrossbarBackend:
        counter["n"] += 1
        return SimulatedCrossbar(
            rows, cols, device=device, periphery=periphery, seed=seed * 100_003 + counter["n"], **kwargs
        )

    return make


@torch.no_grad()
def backend_monte_carlo_accuracy(
    model: nn.Module,
    factory: BackendFactory,
    x: torch.Tensor,
    y: torch.Tensor,
    variation: VariationConfig | None,
    n_samples: int = 5,
    seed: int = 0,
    calibration_x: torch.Tensor | None = None,
    cfg: DeployConfig | None = None,
) -> MCResult:
    """Accuracy over ``n_samples`` programmings of the model on fresh backends (slow, real path).

    Every sample builds new arrays from ``factory``, programs them (with one draw of
    ``variation``, seed ``seed + i``), classifies ``(x, y)`` and closes them.
    """
    accs = []
    for i in range(int(n_samples)):
        dep = deploy_to_backends(
            model, factory, variation=variation, seed=seed + i, calibration_x=calibration_x, cfg=cfg
        )
        try:
            accs.append(float((dep(x).argmax(-1) == y).double().mean()))
        finally:
            dep.close()
    return summarize(torch.tensor(accs, dtype=torch.float64), variation.sigma if variation is not None else 0.0)
