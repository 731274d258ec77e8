"""Analog torch layers whose matrix products run on :class:`~hil.backend.CrossbarBackend` arrays.

``AnalogLinear`` and ``AnalogConv2d`` hold no weight tensor: their weights are
the analog arrays ("tiles") attached to them.  The forward pass calls
``backend.forward`` and the backward pass ``backend.backward`` through a custom
autograd Function; the bias is digital (an ordinary ``nn.Parameter``).

A layer computes ``y = out_scale * sum_i coeff_i * (x W_i^T)`` over its tiles
``[(W_i, coeff_i), ...]``: one tile ``(W, 1.0)`` for inference or analog SGD,
``(C, 1.0)`` (and ``(A, gamma)`` for Tiki-Taka v1) for the Tiki-Taka family.
``out_scale`` is a fixed digital factor (the effective weight is
``out_scale * W`` in normalized weight units).

Noise management (our choice, as aihwkit's default ``ABS_MAX``): every input
vector is divided by its largest magnitude before it enters the array and the
output is multiplied back, in the forward and in the backward pass, so that
the additive output noise and the DAC range act relative to each vector's
full scale.  Small back-propagated errors would otherwise drown in read noise.

During training, the backward pass records each layer's inputs ``x`` and
output errors ``d`` (``[n, cols]``, ``[n, rows]``); a training controller
(:class:`hil.training.TrainingController`) takes them with
:meth:`AnalogLayer.pop_pending` and turns them into pulsed array updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hil.backend import CrossbarBackend

Tile = tuple[CrossbarBackend, float]


def _abs_max_rows(t: torch.Tensor) -> torch.Tensor:
    """Per-row scale ``max_j |t_ij|`` ``[n, 1]`` (1 for an all-zero row)."""
    m = t.abs().amax(dim=1, keepdim=True)
    return torch.where(m > 0, m, 1.0)


class _AnalogMatmul(torch.autograd.Function):
    """``y = layer.mvm_forward(x)``; backward: ``dx = layer.mvm_backward(dy)`` and records (x, dy)."""

    @staticmethod
    def forward(ctx, x, anchor, layer, samples):  # anchor only makes autograd call backward
        ctx.layer = layer
        ctx.samples = samples
        ctx.save_for_backward(x)
        return layer.mvm_forward(x)

    @staticmethod
    def backward(ctx, grad_y):
        layer = ctx.layer
        (x,) = ctx.saved_tensors
        layer._record(x, grad_y, ctx.samples)
        grad_x = layer.mvm_backward(grad_y) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


class AnalogLayer(nn.Module):
    """Common part of the analog layers: the tiles, noise management, the recorded (x, d) pairs.

    ``rows`` (outputs) x ``cols`` (inputs) is the shape of every attached array.
    """

    def __init__(self, rows: int, cols: int, bias: bool, out_scale: float) -> None:
        super().__init__()
        if rows <= 0 or cols <= 0:
            raise ValueError(f"analog layer needs rows, cols > 0, got rows={rows}, cols={cols}")
        if not (math.isfinite(out_scale) and out_scale > 0):
            raise ValueError(f"out_scale must be a finite number > 0, got {out_scale}")
        self.rows = int(rows)
        self.cols = int(cols)
        self.out_scale = float(out_scale)
        self.noise_management = True
        self.bias = nn.Parameter(torch.zeros(rows)) if bias else None
        self.tiles: list[Tile] = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    # ------------------------------------------------------------------ tiles
    def attach(self, tiles: CrossbarBackend | Sequence[Tile]) -> None:
        """Use these arrays for the matrix products: one backend, or ``[(backend, coeff), ...]``."""
        if isinstance(tiles, CrossbarBackend):
            tiles = [(tiles, 1.0)]
        checked: list[Tile] = []
        for backend, coeff in tiles:
            if not isinstance(backend, CrossbarBackend):
                raise ValueError(f"{type(self).__name__}.attach: expected CrossbarBackend, got {type(backend).__name__}")
            if backend.shape != (self.rows, self.cols):
                raise ValueError(
                    f"{type(self).__name__}.attach: array is {backend.rows}x{backend.cols}, "
                    f"this layer needs {self.rows}x{self.cols} (rows = outputs, cols = inputs)"
                )
            checked.append((backend, float(coeff)))
        self.tiles = checked

    @property
    def backend(self) -> CrossbarBackend:
        """The first (main) array of this layer."""
        self._need_tiles()
        return self.tiles[0][0]

    def _need_tiles(self) -> None:
        if not self.tiles:
            raise RuntimeError(
                f"{type(self).__name__} has no analog array: pass backend=..., call attach(), "
                "or build a hil.training.TrainingController on the model"
            )

    def read_weights(self, n_reads: int = 1) -> torch.Tensor:
        """Effective weights ``out_scale * sum coeff * read()`` ``[rows, cols]`` (normalized units)."""
        self._need_tiles()
        w = None
        for backend, coeff in self.tiles:
            if coeff == 0.0:
                continue
            r = backend.read(n_reads) * coeff
            w = r if w is None else w + r
        assert w is not None
        return w * self.out_scale

    # -------------------------------------------------------------- products
    def mvm_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``out_scale * sum coeff * (x W^T)``: x ``[n, cols]`` -> ``[n, rows]`` through the arrays."""
        self._need_tiles()
        if self.noise_management:
            s = _abs_max_rows(x)
            xs = x / s
        else:
            s, xs = None, x
        y = None
        for backend, coeff in self.tiles:
            if coeff == 0.0:
                continue
            part = backend.forward(xs)
            part = part if coeff == 1.0 else part * coeff
            y = part if y is None else y + part
        assert y is not None, "every tile has coefficient 0"
        if s is not None:
            y = y * s
        return y * self.out_scale if self.out_scale != 1.0 else y

    def mvm_backward(self, d: torch.Tensor) -> torch.Tensor:
        """``out_scale * sum coeff * (d W)``: d ``[n, rows]`` -> ``[n, cols]`` (transposed reads)."""
        if self.noise_management:
            s = _abs_max_rows(d)
            ds = d / s
        else:
            s, ds = None, d
        z = None
        for backend, coeff in self.tiles:
            if coeff == 0.0:
                continue
            part = backend.backward(ds)
            part = part if coeff == 1.0 else part * coeff
            z = part if z is None else z + part
        assert z is not None
        if s is not None:
            z = z * s
        return z * self.out_scale if self.out_scale != 1.0 else z

    def _matmul(self, x2: torch.Tensor, samples: int) -> torch.Tensor:
        x2 = x2.contiguous()
        if torch.is_grad_enabled():
            anchor = torch.empty(0, device=x2.device, requires_grad=True)
            return _AnalogMatmul.apply(x2, anchor, self, samples)
        return self.mvm_forward(x2)

    # ------------------------------------------------------ recorded updates
    def _record(self, x: torch.Tensor, grad_y: torch.Tensor, samples: int) -> None:
        d = grad_y * self.out_scale if self.out_scale != 1.0 else grad_y
        self._pending.append((x.detach(), d.detach().contiguous(), int(samples)))

    def pop_pending(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """The (x ``[n, cols]``, d ``[n, rows]``, samples) recorded since the last call, or None.

        ``d`` is the gradient of the loss with respect to ``x W^T`` (the array
        output in weight units): the weight gradient is ``sum_b outer(d_b, x_b)``.
        ``samples`` counts training examples (a convolution contributes one
        vector per output pixel of each example).
        """
        if not self._pending:
            return None
        # list methods, not attribute assignment (nn.Module.__setattr__ costs ~10 us a call)
        if len(self._pending) == 1:
            return self._pending.pop()
        pending = self._pending.copy()
        self._pending.clear()
        x = torch.cat([p[0] for p in pending])
        d = torch.cat([p[1] for p in pending])
        return x, d, sum(p[2] for p in pending)

    def clear_pending(self) -> None:
        self._pending.clear()

    def extra_repr(self) -> str:
        arrays = ", ".join(f"{type(b).__name__}x{c:g}" for b, c in self.tiles) or "no array"
        return f"rows={self.rows}, cols={self.cols}, bias={self.bias is not None}, out_scale={self.out_scale:g}, arrays=[{arrays}]"


class AnalogLinear(AnalogLayer):
    """``y = x W^T + b`` with ``W`` ``[out_features, in_features]`` on analog arrays and ``b`` digital.

    Parameters
    ----------
    in_features, out_features:
        Array columns and rows.
    bias:
        Digital bias (``nn.Parameter``, trained by the controller's digital optimizer).
    backend:
        An array to use right away (inference); a training controller attaches its own.
    out_scale:
        Fixed digital factor on the output (effective weight ``out_scale * W``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        backend: CrossbarBackend | None = None,
        out_scale: float = 1.0,
    ) -> None:
        super().__init__(out_features, in_features, bias, out_scale)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        if backend is not None:
            self.attach(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"AnalogLinear: input has {x.shape[-1]} features, expected {self.in_features}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = self._matmul(x2, x2.shape[0] if x.dim() <= 2 else int(lead[0]))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class AnalogConv2d(AnalogLayer):
    """2-D convolution as an analog matrix product over unfolded patches (``F.unfold``).

    The array is ``[out_channels, in_channels * kh * kw]``; every output pixel of
    every image is one input vector of length ``in_channels * kh * kw`` (the
    ordering of ``F.unfold``, equal to ``nn.Conv2d.weight.reshape(out, -1)``).
    Groups and dilation other than 1 are not supported (``ValueError``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        backend: CrossbarBackend | None = None,
        out_scale: float = 1.0,
    ) -> None:
        self.kernel_size = _pair(kernel_size)
        kh, kw = self.kernel_size
        super().__init__(out_channels, in_channels * kh * kw, bias, out_scale)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        if backend is not None:
            self.attach(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AnalogConv2d: expected input [batch, {self.in_channels}, H, W], got {list(x.shape)}"
            )
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"AnalogConv2d: input {h}x{w} is smaller than the kernel {kh}x{kw}")
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        x2 = patches.transpose(1, 2).reshape(n * ho * wo, self.cols)
        y = self._matmul(x2, n)
        y = y.reshape(n, ho * wo, self.rows).transpose(1, 2).reshape(n, self.rows, ho, wo)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, " + super().extra_repr()
        )


def analog_layers(module: nn.Module) -> list[tuple[str, AnalogLayer]]:
    """``(name, layer)`` for every analog layer of ``module``, in ``named_modules`` order."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, AnalogLayer)]
