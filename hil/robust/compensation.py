"""Error compensation: small digital blocks added to an analog layer's output.

A :class:`CompensationBlock` (kept in variation-free digital memory, a
:class:`~hil.robust.analog.DigitalModule`) corrects the output ``y`` of one
analog layer computed from its input ``x``:

``y' = y * (1 + s) + t + B(A(x))``

- ``A``, ``B``: a rank-``r`` digital path beside the analog layer.  For a
  ``nn.Linear(in, out)``: ``A`` is ``r x in`` and ``B`` is ``out x r``
  (``r (in + out)`` weights).  For a ``nn.Conv2d``: ``A`` is a convolution to
  ``r`` channels with the layer's own kernel, stride, padding and dilation (or
  1x1 with ``conv_kernel="1x1"``) and ``B`` a 1x1 convolution back to ``out``
  channels.  ``B`` starts at zero, so a new block changes nothing.
- ``s``, ``t``: per-output-channel scale and shift (``2 out`` weights, ``affine``);
  they absorb the systematic part of the error (the log-normal model's mean gain
  ``exp(sigma^2 / 2)``, a shifted operating point of the next activation).

The blocks are trained with every other weight frozen, on freshly sampled
variations at every step (:func:`train_compensation`), so they learn a
correction that holds for chips they have never seen.  The overhead is counted
in parameters and multiply-accumulates relative to the network
(:func:`overhead`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hil.config import HilModel
from hil.robust.analog import DigitalModule, analog_layers, replace_module
from hil.robust.montecarlo import fold, monte_carlo_view
from hil.robust.variation import VariationConfig


class CompensationConfig(HilModel):
    """Form of the compensation blocks (module docstring)."""

    affine: bool = Field(True, description="per-output-channel scale and shift in every block")
    conv_kernel: Literal["same", "1x1"] = Field(
        "same", description="kernel of A for convolutions with source='input': the layer's own, or 1x1"
    )
    source: Literal["input", "output"] = Field(
        "input", description="what A reads: the layer's input x, or its (varied) output y"
    )


class CompensationBlock(DigitalModule):
    """Digital correction ``y * (1 + s) + t + B(A(x))`` for one analog layer (module docstring)."""

    def __init__(self, layer: nn.Module, rank: int, cfg: CompensationConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or CompensationConfig()
        if int(rank) < 0:
            raise ValueError(f"CompensationBlock: rank must be >= 0, got {rank}")
        if rank == 0 and not cfg.affine:
            raise ValueError("CompensationBlock: rank 0 without affine would be an empty block")
        self.rank = int(rank)
        self.a: nn.Module | None = None
        self.b: nn.Module | None = None
        self.source = cfg.source
        if isinstance(layer, nn.Linear):
            out = layer.out_features
            self.conv = False
            if rank:
                n_in = layer.in_features if cfg.source == "input" else out
                self.a = nn.Linear(n_in, rank, bias=False)
                self.b = nn.Linear(rank, out, bias=False)
        elif isinstance(layer, nn.Conv2d):
            out = layer.out_channels
            self.conv = True
            if rank:
                if cfg.source == "output":
                    self.a = nn.Conv2d(out, rank, 1, bias=False)
                elif cfg.conv_kernel == "same":
                    self.a = nn.Conv2d(
                        layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, bias=False,
                    )
                else:
                    self.a = nn.Conv2d(layer.in_channels, rank, 1, layer.stride, bias=False)
                self.b = nn.Conv2d(rank, out, 1, bias=False)
        else:
            raise ValueError(
                f"CompensationBlock: expected nn.Linear or nn.Conv2d, got {type(layer).__name__}"
            )
        if self.b is not None:
            nn.init.zeros_(self.b.weight)
        self.scale = nn.Parameter(torch.zeros(out)) if cfg.affine else None
        self.shift = nn.Parameter(torch.zeros(out)) if cfg.affine else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = None
        if self.a is not None and self.b is not None:
            c = self.b(self.a(x if self.source == "input" else y))
        if self.scale is not None and self.shift is not None:
            shape = (1, -1, 1, 1) if self.conv else (-1,)
            y = y * (1 + self.scale.view(shape)) + self.shift.view(shape)
        if c is not None:
            if c.shape != y.shape:  # 1x1 A on a padded/dilated layer: crop or pad to the layer's output
                c = F.interpolate(c, size=y.shape[-2:], mode="nearest")
            y = y + c
        return y


class Compensated(nn.Module):
    """An analog layer and its digital :class:`CompensationBlock`: ``block(x, layer(x))``."""

    def __init__(self, layer: nn.Module, block: CompensationBlock) -> None:
        super().__init__()
        self.layer = layer
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, self.layer(x))


def block_params(layer: nn.Module, rank: int, cfg: CompensationConfig | None = None) -> int:
    """Number of weights of a block of ``rank`` on ``layer`` (without building it)."""
    cfg = cfg or CompensationConfig()
    if isinstance(layer, nn.Linear):
        a, out = layer.in_features, layer.out_features
    elif isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size if cfg.conv_kernel == "same" else (1, 1)
        a, out = layer.in_channels * kh * kw, layer.out_channels
    else:
        raise ValueError(f"block_params: expected nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    if cfg.source == "output":
        a = out
    return int(rank) * (a + out) + (2 * out if cfg.affine else 0)


def add_compensation(
    model: nn.Module,
    placement: Sequence[int | None],
    cfg: CompensationConfig | None = None,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` with a block of rank ``placement[i]`` on analog layer ``i`` (``None``: none).

    ``placement`` has one entry per analog layer of ``model`` (:func:`analog_layers`
    order).  Existing blocks are kept; the new blocks' ``A`` are drawn from a
    generator seeded with ``seed``.
    """
    layers = analog_layers(model)
    if len(placement) != len(layers):
        raise ValueError(
            f"add_compensation: placement has {len(placement)} entries, the model has "
            f"{len(layers)} analog layers ({', '.join(n for n, _ in layers)})"
        )
    new = copy.deepcopy(model)
    new_layers = analog_layers(new)
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        for (name, layer), rank in zip(new_layers, placement, strict=True):
            if rank is None:
                continue
            replace_module(new, name, Compensated(layer, CompensationBlock(layer, int(rank), cfg)))
    finally:
        torch.random.set_rng_state(rng_state)
    return new


def compensation_blocks(model: nn.Module) -> list[CompensationBlock]:
    """Every :class:`CompensationBlock` of ``model``."""
    return [m for m in model.modules() if isinstance(m, CompensationBlock)]


class TrainCompensationConfig(HilModel):
    """Training of the compensation blocks on sampled variations (main weights frozen)."""

    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(128, ge=1)
    n_samples: int = Field(8, ge=1, description="chips drawn per step (fresh every step)")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate: constant, or cosine decay from lr to 0 over the steps"
    )
    loss: Literal["normalized_ce", "ce"] = Field(
        "normalized_ce", description="cross-entropy of scale-normalized logits (default) or of raw logits"
    )
    temperature: float = Field(10.0, gt=0, description="logit norm of the normalized_ce loss")
    clip_grad_norm: float | None = Field(1.0, gt=0, description="gradient-norm clipping (None: off)")
    seed: int = 0


def normalized_logits(out: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits centred and scaled to norm ``temperature``: ``T (z - mean z) / ||z - mean z||``.

    Argmax (the prediction) is unchanged; the loss can no longer be lowered by
    shrinking every logit, which is what plain cross-entropy under heavy-tailed
    variation rewards (a few catastrophic chips dominate its mean).
    """
    zc = out - out.mean(dim=-1, keepdim=True)
    return temperature * zc / (zc.norm(dim=-1, keepdim=True) + 1e-6)


def train_compensation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    variation: VariationConfig,
    cfg: TrainCompensationConfig | None = None,
) -> list[float]:
    """Train the compensation blocks of ``model`` in place; every other weight is frozen.

    Each step draws ``n_samples`` new chips (:func:`~hil.robust.montecarlo.monte_carlo_view`)
    and a mini-batch of ``(x, y)``; the loss is the cross-entropy (of normalized logits by
    default, :func:`normalized_logits`) averaged over chips and examples.  The model runs in eval mode (frozen batch-norm statistics).  Returns the
    loss of every step.
    """
    cfg = cfg or TrainCompensationConfig()
    blocks = compensation_blocks(model)
    if not blocks:
        raise ValueError("train_compensation: the model has no CompensationBlock (see add_compensation)")
    params = [p for b in blocks for p in b.parameters()]
    block_ids = {id(p) for p in params}
    frozen = [(p, p.requires_grad) for p in model.parameters() if id(p) not in block_ids]
    for p, _ in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(int(cfg.seed))
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps) if cfg.lr_schedule == "cosine" else None
    )
    was = model.training
    model.eval()
    losses: list[float] = []
    try:
        n = x.shape[0]
        for _ in range(cfg.steps):
            idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen, device=x.device)
            xb, yb = x[idx], y[idx]
            with monte_carlo_view(model, variation, cfg.n_samples, gen):
                out = model(fold(xb, cfg.n_samples))
            if cfg.loss == "normalized_ce":
                out = normalized_logits(out, cfg.temperature)
            loss = F.cross_entropy(out, yb.repeat(cfg.n_samples))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(float(loss.detach()))
    finally:
        for p, req in frozen:
            p.requires_grad_(req)
        model.train(was)
    return losses


class Overhead(HilModel):
    """Size and cost of the compensation relative to the network it corrects."""

    network_params: int = Field(description="every weight outside the compensation blocks (biases included)")
    compensation_params: int
    params_frac: float = Field(description="compensation_params / network_params")
    network_macs: int = Field(description="multiply-accumulates of the analog layers per input example")
    compensation_macs: int = Field(description="multiply-accumulates of the blocks per input example")
    macs_frac: float


def _layer_macs(mod: nn.Module, out: torch.Tensor) -> int:
    if isinstance(mod, nn.Linear):
        return int(out[0].numel()) * mod.in_features
    if isinstance(mod, nn.Conv2d):
        kh, kw = mod.kernel_size
        return int(out[0].numel()) * (mod.in_channels // mod.groups) * kh * kw
    return 0


@torch.no_grad()
def overhead(model: nn.Module, example_input: torch.Tensor) -> Overhead:
    """Parameters and per-example MACs of the compensation vs the network (one forward of one example)."""
    blocks = compensation_blocks(model)
    comp_ids = {id(p) for b in blocks for p in b.parameters()}
    net_params = sum(p.numel() for p in model.parameters() if id(p) not in comp_ids)
    comp_params = sum(p.numel() for b in blocks for p in b.parameters())
    macs = {"net": 0, "comp": 0}
    inside: set[int] = {id(m) for b in blocks for m in b.modules()}
    hooks = []
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            key = "comp" if id(mod) in inside else "net"
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, key=key: macs.__setitem__(key, macs[key] + _layer_macs(m, o))
                )
            )
        elif isinstance(mod, CompensationBlock) and mod.scale is not None:
            hooks.append(  # one multiply-add per output element for the affine part
                mod.register_forward_hook(
                    lambda m, i, o: macs.__setitem__("comp", macs["comp"] + int(o[0].numel()))
                )
            )
    was = model.training
    model.eval()
    try:
        model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return Overhead(
        network_params=int(net_params),
        compensation_params=int(comp_params),
        params_frac=comp_params / max(1, net_params),
        network_macs=macs["net"],
        compensation_macs=macs["comp"],
        macs_frac=macs["comp"] / max(1, macs["net"]),
    )
