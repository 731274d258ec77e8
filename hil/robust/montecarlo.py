"""Fast pure-torch Monte-Carlo evaluation under weight variation, vectorized over samples.

Inside :func:`monte_carlo_view` every analog layer (:func:`~hil.robust.analog.analog_layers`)
is swapped for a sample-batched twin that holds ``S`` independent programmings of
its weight (:func:`~hil.robust.variation.sample_programmed_weights`).  The model
then takes a *sample-folded* batch: an input ``[S * B, ...]`` whose first ``B``
rows go through sample 0, the next ``B`` through sample 1, and so on.  Layers
that act on each example alone (activations, pooling, flatten, eval-mode
batch-norm, the digital compensation blocks) run unchanged on the folded batch;
Linear layers become one batched matmul and convolutions one grouped
convolution, so ``S`` chips are evaluated in one pass without a Python loop.
Read noise is drawn fresh for every input vector (patch) in every pass.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hil.config import HilModel
from hil.robust.analog import analog_layers, replace_module
from hil.robust.variation import VariationConfig, full_scale, sample_programmed_weights


class _MCLinear(nn.Module):
    """``S`` programmings of one ``nn.Linear``; input ``[S*B, ..., in]`` (sample-major)."""

    def __init__(
        self, layer: nn.Linear, weights: torch.Tensor, read_std: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.layer = layer
        self.weights = weights  # [S, out, in]
        self.read_std = read_std  # read_noise * max|W|
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.weights.shape[0]
        if x.shape[0] % s:
            raise ValueError(
                f"Monte-Carlo view: batch {x.shape[0]} is not a multiple of the {s} samples "
                "(inputs must be sample-folded, see monte_carlo_logits)"
            )
        lead = x.shape[:-1]
        xs = x.reshape(s, -1, x.shape[-1])
        y = torch.bmm(xs, self.weights.transpose(1, 2))
        if self.read_std > 0:
            std = self.read_std * xs.pow(2).sum(-1, keepdim=True).sqrt()
            y = y + std * torch.randn(y.shape, generator=self.generator, device=y.device, dtype=y.dtype)
        if self.layer.bias is not None:
            y = y + self.layer.bias
        return y.reshape(*lead, y.shape[-1])


class _MCConv2d(nn.Module):
    """``S`` programmings of one ``nn.Conv2d`` as one grouped convolution over a folded batch."""

    def __init__(
        self, layer: nn.Conv2d, weights: torch.Tensor, read_std: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"Monte-Carlo view supports zero padding only, the layer uses padding_mode={layer.padding_mode!r}"
            )
        self.layer = layer
        self.weights = weights  # [S, out, in/g, kh, kw]
        self.read_std = read_std
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.weights.shape[0]
        if x.dim() != 4 or x.shape[0] % s:
            raise ValueError(
                f"Monte-Carlo view: conv input must be [S*B, C, H, W] with S={s}, got {list(x.shape)}"
            )
        lay = self.layer
        b = x.shape[0] // s
        c, h, w = x.shape[1:]
        xg = x.reshape(s, b, c, h, w).transpose(0, 1).reshape(b, s * c, h, w)
        wg = self.weights.reshape(s * lay.out_channels, *self.weights.shape[2:])
        y = F.conv2d(xg, wg, None, lay.stride, lay.padding, lay.dilation, lay.groups * s)
        ho, wo = y.shape[-2:]
        y = y.reshape(b, s, lay.out_channels, ho, wo).transpose(0, 1).reshape(s * b, lay.out_channels, ho, wo)
        if self.read_std > 0:
            ones = torch.ones(
                lay.out_channels, c // lay.groups, *lay.kernel_size, device=x.device, dtype=x.dtype
            )
            sq = F.conv2d(x.pow(2), ones, None, lay.stride, lay.padding, lay.dilation, lay.groups)
            noise = torch.randn(y.shape, generator=self.generator, device=y.device, dtype=y.dtype)
            y = y + self.read_std * sq.clamp(min=0).sqrt() * noise
        if lay.bias is not None:
            y = y + lay.bias.view(1, -1, 1, 1)
        return y


@contextmanager
def monte_carlo_view(
    model: nn.Module,
    variation: VariationConfig,
    n_samples: int,
    generator: torch.Generator,
    only: Collection[str] | None = None,
) -> Iterator[nn.Module]:
    """Temporarily make ``model`` evaluate ``n_samples`` varied chips at once (module docstring).

    Yields the model itself; its analog layers are restored on exit (also on error).
    The draws come from ``generator`` chip by chip and, within a chip, layer by layer,
    so a seed fixes every chip whatever the chunking.
    ``only``: names of the analog layers that vary (default: all); the others compute
    exactly (used to measure each layer's sensitivity on its own).
    """
    layers = analog_layers(model)
    if only is not None:
        known = {name for name, _ in layers}
        unknown = sorted(set(only) - known)
        if unknown:
            raise ValueError(
                f"monte_carlo_view: {unknown} are not analog layers of the model ({sorted(known)})"
            )
    if not layers:
        raise ValueError("monte_carlo_view: the model has no analog layer (nn.Linear / nn.Conv2d)")
    if any(name == "" for name, _ in layers):
        raise ValueError("monte_carlo_view: wrap a bare layer in nn.Sequential first")
    varied = [(n, lay) for n, lay in layers if only is None or n in only]
    # chip by chip, layer by layer: the draws of chip i do not depend on how many chips
    # are evaluated at once, nor on digital blocks added to the model
    draws: dict[str, list[torch.Tensor]] = {n: [] for n, _ in varied}
    for _ in range(int(n_samples)):
        for name, layer in varied:
            draws[name].append(sample_programmed_weights(layer.weight, variation, 1, generator)[0])
    swapped: list[tuple[str, nn.Module]] = []
    try:
        for name, layer in layers:
            w = layer.weight
            if name in draws:
                ws = torch.stack(draws[name])
                read_std = float(variation.read_noise * full_scale(w)) if variation.read_noise > 0 else 0.0
            else:
                ws, read_std = w.unsqueeze(0).expand(n_samples, *w.shape), 0.0
            twin: nn.Module
            if isinstance(layer, nn.Linear):
                twin = _MCLinear(layer, ws, read_std, generator)
            else:
                twin = _MCConv2d(layer, ws, read_std, generator)  # type: ignore[arg-type]
            replace_module(model, name, twin)
            swapped.append((name, layer))
        yield model
    finally:
        for name, layer in reversed(swapped):
            replace_module(model, name, layer)


def fold(x: torch.Tensor, n_samples: int) -> torch.Tensor:
    """``[B, ...]`` -> ``[S*B, ...]``: the batch repeated once per sample (sample-major)."""
    return x.unsqueeze(0).expand(n_samples, *x.shape).reshape(n_samples * x.shape[0], *x.shape[1:])


def monte_carlo_logits(
    model: nn.Module,
    x: torch.Tensor,
    variation: VariationConfig,
    n_samples: int,
    generator: torch.Generator,
    only: Collection[str] | None = None,
) -> torch.Tensor:
    """Outputs of ``n_samples`` varied chips for the batch ``x`` ``[B, ...]``: ``[S, B, ...]``."""
    with monte_carlo_view(model, variation, n_samples, generator, only):
        out = model(fold(x, n_samples))
    return out.reshape(n_samples, x.shape[0], *out.shape[1:])


class MCResult(HilModel):
    """Accuracy of one model over ``n_samples`` independently varied chips (fractions in [0, 1])."""

    sigma: float = Field(description="log-normal sigma of the variation evaluated")
    n_samples: int
    accuracy_mean: float
    accuracy_std: float = Field(description="sample standard deviation over the chips (ddof=1)")
    accuracy_p5: float = Field(description="5th percentile over the chips (linear interpolation)")
    accuracies: list[float] = Field(default_factory=list, description="accuracy of every chip")


def summarize(accs: torch.Tensor, sigma: float) -> MCResult:
    """Mean, std (ddof=1) and 5th percentile of per-chip accuracies."""
    accs = accs.double().flatten()
    n = accs.numel()
    return MCResult(
        sigma=float(sigma),
        n_samples=n,
        accuracy_mean=float(accs.mean()),
        accuracy_std=float(accs.std()) if n > 1 else 0.0,
        accuracy_p5=float(torch.quantile(accs, 0.05)),
        accuracies=[float(a) for a in accs],
    )


@torch.no_grad()
def monte_carlo_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    variation: VariationConfig,
    n_samples: int = 20,
    seed: int = 0,
    max_rows: int = 40_000,
    only: Collection[str] | None = None,
) -> MCResult:
    """Classification accuracy of ``n_samples`` varied chips on ``(x, y)``.

    x ``[B, ...]``, y int64 ``[B]``.  Chips are evaluated ``chunk`` at a time with
    ``chunk * B <= max_rows`` (at least one); each chip sees the whole data set with
    one programming draw.  Without variation one pass is made and copied
    (every chip is the same).  ``seed`` seeds a ``torch.Generator`` on x's device.
    ``only``: vary these analog layers alone (see :func:`monte_carlo_view`).
    """
    if int(n_samples) < 1:
        raise ValueError(f"monte_carlo_accuracy: n_samples must be >= 1, got {n_samples}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"monte_carlo_accuracy: {x.shape[0]} inputs but {y.shape[0]} labels")
    was_training = model.training
    model.eval()
    try:
        if variation.is_zero:
            acc = (model(x).argmax(-1) == y).double().mean()
            return summarize(acc.repeat(int(n_samples)), variation.sigma)
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(seed))
        per_chunk = max(1, min(int(n_samples), int(max_rows) // max(1, x.shape[0])))
        accs: list[torch.Tensor] = []
        done = 0
        while done < n_samples:
            s = min(per_chunk, int(n_samples) - done)
            logits = monte_carlo_logits(model, x, variation, s, gen, only)
            accs.append((logits.argmax(-1) == y.unsqueeze(0)).double().mean(dim=1))
            done += s
        return summarize(torch.cat(accs), variation.sigma)
    finally:
        model.train(was_training)


def accuracy_vs_sigma(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sigmas: list[float],
    base: VariationConfig | None = None,
    n_samples: int = 20,
    seed: int = 0,
) -> list[MCResult]:
    """:func:`monte_carlo_accuracy` at each log-normal ``sigma`` (other terms from ``base``)."""
    base = base or VariationConfig()
    return [
        monte_carlo_accuracy(model, x, y, base.with_sigma(s), n_samples=n_samples, seed=seed)
        for s in sigmas
    ]
