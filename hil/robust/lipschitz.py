"""Lipschitz regularization of the analog layers, and its measurement.

Three penalties.  The first two act on the matrix that the crossbar actually
holds: ``W`` for a ``nn.Linear`` and, for a ``nn.Conv2d``, its unfolded kernel
matrix ``M = W.reshape(out, in/groups * kh * kw)`` (one block per group; the
array multiplies every input patch by ``M``).

- ``orthogonal``: ``beta * sum_layers ||G - lam I||_F^2`` with ``G`` the
  *smaller* Gram matrix of ``M`` (``M M^T`` when ``M`` has fewer rows than
  columns, else ``M^T M``).  Both Gram matrices give the same gradient (their
  squared Frobenius norms differ by the constant ``lam^2 |rows - cols|``); the
  smaller one is cheaper and its penalty reaches zero, at ``M``'s singular
  values all equal to ``sqrt(lam)``.  In singular values ``s_i`` it is
  ``sum_i (s_i^2 - lam)^2``: it pins the largest one (the Lipschitz constant of
  the layer with respect to its input) and the others with it.
- ``spectral``: only the top term, ``beta * sum_layers (s_1^2 - lam)^2``, with
  ``s_1`` estimated by power iteration with a persistent vector per layer (one
  iteration per call, as in ``torch.nn.utils.spectral_norm``); its gradient is
  ``u v^T`` scaled.
- ``variation`` (our modification, the default): the Lipschitz constant of the
  loss with respect to the *variation itself*.  A chip perturbs weight ``ij`` by
  ``w_ij (exp(theta_ij) - 1) ~ w_ij theta_ij``; to first order the loss of
  example ``n`` moves by ``sum_ij d l_n / d theta_ij * theta_ij`` with
  ``d l_n / d theta_ij = g_ni w_ij x_nj`` (``g`` = dl/dy at the layer output,
  ``x`` its input), so ``E_theta[(dl_n)^2] = sigma^2 ||d l_n / d theta||^2``.
  The penalty is ``beta * mean_n sum_layers sum_i g_ni^2 (x_n^2 . w_i^2)`` — a
  gradient-norm (local Lipschitz) penalty in the coordinates the hardware
  perturbs, computed by double back-propagation from the activations of the
  same forward pass (:meth:`LipschitzRegularizer.capture`).  For a convolution
  the per-example weight gradient is ``G X_unf^T`` (gradients at every output
  position times the unfolded input patches).  With ``additive_ratio = a / sigma``
  the additive term ``a^2 max|W|^2 sum_i g_ni^2 ||x_n||^2`` is added.

Why the third: on the digits networks the first two make the network *less*
robust to multiplicative variation (docs/robust.md has the measurements).  A
weight error ``W o (exp(theta) - 1)`` is relative to ``W``, so bounding the
gain of ``W`` bounds the error's gain and the signal's gain alike; pinning all
singular values also makes noise in every direction pass as strongly as the
signal.  What limits accuracy is the sensitivity of the loss to the relative
weight errors, which the third penalty bounds directly.

For a stride-1 convolution the Lipschitz constant of the whole operator obeys
``s_1(M) <= ||conv||_2 <= sqrt(n_overlap) * s_1(M)`` with ``n_overlap``
``kh * kw`` (each input pixel is in at most that many patches), so pinning
``s_1(M)`` bounds the operator too; :func:`operator_norm` measures the operator
itself by power iteration on the convolution and its adjoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hil.config import HilModel
from hil.robust.analog import analog_layers
from hil.robust.variation import full_scale


class LipschitzConfig(HilModel):
    """Penalty ``beta * sum_layers ...`` (module docstring) with target squared singular value ``lam``."""

    kind: Literal["variation", "orthogonal", "spectral"] = "variation"
    beta: float = Field(1.0, ge=0, description="weight of the penalty in the training loss")
    lam: float = Field(
        1.0, gt=0, description="target squared singular value, lambda in ||G - lambda I|| (orthogonal, spectral)"
    )
    power_iterations: int = Field(1, ge=1, description="power iterations per call (spectral kind)")
    additive_ratio: float = Field(
        0.0, ge=0, description="additive_sigma / sigma of the variation the penalty targets (variation kind)"
    )


def unfolded_weight(layer: nn.Module) -> torch.Tensor:
    """The crossbar matrix of an analog layer, one block per group: ``[groups, rows, cols]``."""
    if isinstance(layer, nn.Linear):
        return layer.weight.unsqueeze(0)
    if isinstance(layer, nn.Conv2d):
        g = layer.groups
        return layer.weight.reshape(g, layer.out_channels // g, -1)
    raise ValueError(f"unfolded_weight: expected nn.Linear or nn.Conv2d, got {type(layer).__name__}")


def gram_penalty(m: torch.Tensor, lam: float) -> torch.Tensor:
    """``sum_blocks ||G - lam I||_F^2`` with ``G`` the smaller Gram matrix of each block of ``m`` ``[g, r, c]``."""
    g = m @ m.transpose(1, 2) if m.shape[1] <= m.shape[2] else m.transpose(1, 2) @ m
    eye = torch.eye(g.shape[-1], device=m.device, dtype=m.dtype)
    return (g - lam * eye).pow(2).sum()


class LipschitzRegularizer:
    """The penalty of :class:`LipschitzConfig` over a model's analog layers.

    Weight-only kinds (``orthogonal``, ``spectral``): ``reg()`` after any forward.
    ``variation`` needs the activations and per-example losses of the forward pass::

        with reg.capture():
            out = model(x)
        per_example = F.cross_entropy(out, y, reduction="none")
        loss = per_example.mean() + reg(per_example)

    The power-iteration vectors of the ``spectral`` kind persist between calls,
    drawn from ``seed`` on the first call.
    """

    def __init__(self, model: nn.Module, cfg: LipschitzConfig, seed: int = 0) -> None:
        self.model = model
        self.cfg = cfg
        self.layers = analog_layers(model)
        if not self.layers:
            raise ValueError("LipschitzRegularizer: the model has no analog layer (nn.Linear / nn.Conv2d)")
        self._u: dict[str, torch.Tensor] = {}
        self._gen = torch.Generator()
        self._gen.manual_seed(int(seed))
        self._acts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def needs_activations(self) -> bool:
        return self.cfg.kind == "variation"

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record every analog layer's input and output during the forward passes inside."""
        self._acts = {}
        hooks = [
            layer.register_forward_hook(
                lambda mod, inp, out, name=name: self._acts.__setitem__(name, (inp[0], out))
            )
            for name, layer in self.layers
        ]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def __call__(self, per_example_loss: torch.Tensor | None = None) -> torch.Tensor:
        device = self.layers[0][1].weight.device
        if self.cfg.beta == 0:
            return torch.zeros((), device=device)
        if self.cfg.kind == "variation":
            return self.cfg.beta * self._variation_penalty(per_example_loss)
        terms = []
        for name, layer in self.layers:
            m = unfolded_weight(layer)
            if self.cfg.kind == "orthogonal":
                terms.append(gram_penalty(m, self.cfg.lam))
            else:
                s1 = self._top_singular_value(name, m)
                terms.append((s1.pow(2) - self.cfg.lam).pow(2).sum())
        return self.cfg.beta * torch.stack(terms).sum()

    def _variation_penalty(self, per_example_loss: torch.Tensor | None) -> torch.Tensor:
        """``mean_n sum_layers ||d l_n / d theta||^2`` (module docstring), differentiable."""
        if per_example_loss is None or per_example_loss.dim() != 1:
            raise ValueError(
                "LipschitzRegularizer(kind='variation'): pass the per-example losses [batch] "
                "of a forward pass run inside reg.capture()"
            )
        missing = [name for name, _ in self.layers if name not in self._acts]
        if missing:
            raise ValueError(
                f"LipschitzRegularizer(kind='variation'): no activations captured for {missing}; "
                "run the forward pass inside reg.capture()"
            )
        outs = [self._acts[name][1] for name, _ in self.layers]
        grads = torch.autograd.grad(per_example_loss.sum(), outs, create_graph=True)
        n = per_example_loss.shape[0]
        total = per_example_loss.new_zeros(n)
        a2 = self.cfg.additive_ratio**2
        for (name, layer), g in zip(self.layers, grads, strict=True):
            x = self._acts[name][0]
            if isinstance(layer, nn.Linear):
                g2 = g.pow(2).reshape(n, -1, g.shape[-1])  # [n, positions, out]
                x2 = x.pow(2).reshape(n, -1, x.shape[-1])  # [n, positions, in]
                if g2.shape[1] == 1:  # [n, in] inputs: the per-example gradient is g x^T, factorized
                    term = (g2[:, 0] * (x2[:, 0] @ layer.weight.pow(2).T)).sum(-1)
                    if a2:
                        fs2 = full_scale(layer.weight) ** 2
                        term = term + a2 * fs2 * g2[:, 0].sum(-1) * x2[:, 0].sum(-1)
                else:  # extra dims: form the per-example weight gradient (sum over positions)
                    pg = torch.einsum("npo,npi->noi", g.reshape(n, -1, g.shape[-1]), x.reshape(n, -1, x.shape[-1]))
                    term = (pg * layer.weight).pow(2).sum((1, 2))
                    if a2:
                        term = term + a2 * full_scale(layer.weight) ** 2 * pg.pow(2).sum((1, 2))
            else:
                grp = layer.groups
                xu = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
                xu = xu.reshape(n, grp, -1, xu.shape[-1])  # [n, g, C/g*kh*kw, P]
                gg = g.reshape(n, grp, layer.out_channels // grp, -1)  # [n, g, O/g, P]
                pg = gg @ xu.transpose(2, 3)  # per-example weight gradient [n, g, O/g, C/g*kh*kw]
                wm = unfolded_weight(layer)  # [g, O/g, C/g*kh*kw]
                term = (pg * wm).pow(2).sum((1, 2, 3))
                if a2:
                    term = term + a2 * full_scale(layer.weight) ** 2 * pg.pow(2).sum((1, 2, 3))
            total = total + term
        return total.mean()

    def _top_singular_value(self, name: str, m: torch.Tensor) -> torch.Tensor:
        """``s_1`` of every block of ``m`` ``[g, r, c]`` by power iteration (differentiable in m)."""
        u = self._u.get(name)
        if u is None:
            u = torch.randn(m.shape[0], m.shape[1], generator=self._gen).to(m.device, m.dtype)
            u = F.normalize(u, dim=1)
        with torch.no_grad():
            md = m.detach()
            for _ in range(self.cfg.power_iterations):
                v = F.normalize(torch.einsum("grc,gr->gc", md, u), dim=1)
                u = F.normalize(torch.einsum("grc,gc->gr", md, v), dim=1)
        self._u[name] = u
        return torch.einsum("gr,grc,gc->g", u, m, v)


def matrix_spectral_norm(layer: nn.Module) -> float:
    """Exact largest singular value of the crossbar matrix (max over groups), by SVD."""
    m = unfolded_weight(layer).detach()
    return float(torch.linalg.matrix_norm(m, ord=2).max())


@torch.no_grad()
def operator_norm(
    layer: nn.Module, input_shape: tuple[int, ...], n_iter: int = 100, seed: int = 0
) -> float:
    """Lipschitz constant (spectral norm) of the layer's linear map, bias excluded.

    ``nn.Linear``: exact, by SVD.  ``nn.Conv2d``: power iteration on
    ``conv^T conv`` for an input of shape ``input_shape`` = ``(C, H, W)``
    (the adjoint by autograd's vector-Jacobian product), ``n_iter`` rounds.
    """
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2))
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"operator_norm: expected nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    if len(input_shape) != 3:
        raise ValueError(f"operator_norm: input_shape must be (C, H, W), got {tuple(input_shape)}")
    w = layer.weight.detach()

    def conv(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)

    gen = torch.Generator()
    gen.manual_seed(int(seed))
    v = torch.randn((1, *input_shape), generator=gen).to(w.device, w.dtype)
    v = v / v.norm()
    for _ in range(int(n_iter)):
        with torch.enable_grad():
            y, vjp = torch.func.vjp(conv, v)
        v = vjp(y)[0]
        nv = v.norm()
        if float(nv) == 0.0:
            return 0.0
        v = v / nv
    return float(conv(v).norm())


@torch.no_grad()
def layer_spectral_norms(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """Operator norm (:func:`operator_norm`) of every analog layer, at the input shapes of one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, layer in analog_layers(model):
        hooks.append(
            layer.register_forward_hook(
                lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(inp[0].shape[1:]))
            )
        )
    try:
        was = model.training
        model.eval()
        model(example_input[:1])
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return {name: operator_norm(layer, shapes[name]) for name, layer in analog_layers(model)}
