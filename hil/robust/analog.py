"""Which modules of a torch model are analog (on crossbars) and which stay digital.

Every ``nn.Linear`` and ``nn.Conv2d`` of a model is an *analog* layer (its weight
matrix is programmed into a crossbar; a convolution as its unfolded kernel
matrix ``[out, in/groups * kh * kw]``), except inside a :class:`DigitalModule`:
those (the error-compensation blocks) live in variation-free digital memory.
Biases, normalization and activations are digital everywhere.
"""

from __future__ import annotations

from torch import nn

ANALOG_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


class DigitalModule(nn.Module):
    """Marker base class: this module and everything in it run digitally, without variation.

    ``hil_digital = True`` is the duck-typed form of the marker, for code that must not
    import :mod:`hil.robust` (a converter to analog layers should leave such a subtree
    as it is: ``getattr(module, "hil_digital", False)``).
    """

    hil_digital: bool = True


def analog_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every analog layer, in registration order.

    The model itself may be an analog layer (name ``""``).  Sub-modules of a
    :class:`DigitalModule` are skipped.
    """
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, mod: nn.Module) -> None:
        if isinstance(mod, DigitalModule):
            return
        if isinstance(mod, ANALOG_TYPES):
            found.append((prefix, mod))
            return
        for name, child in mod.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return found


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The parent module of the sub-module ``name`` (dotted) and its attribute name there."""
    if not name:
        raise ValueError("the model itself has no parent; wrap a bare layer in nn.Sequential first")
    parts = name.split(".")
    parent = model
    for p in parts[:-1]:
        parent = getattr(parent, p)
    return parent, parts[-1]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the sub-module ``name`` was; returns the old module."""
    parent, attr = get_parent(model, name)
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def weight_matrix(layer: nn.Module) -> tuple[int, int]:
    """Shape ``(rows, cols)`` of the crossbar matrix of an analog layer (per group for convolutions)."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return layer.out_channels // layer.groups, layer.in_channels // layer.groups * kh * kw
    raise ValueError(f"not an analog layer: {type(layer).__name__} (expected nn.Linear or nn.Conv2d)")
