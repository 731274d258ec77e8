"""``TrainingController``: analog SGD, Tiki-Taka v1, TTv2 and chopped TTv2 on any CrossbarBackend.

Optimizer-style use::

    model = convert_to_analog(torch_model)               # or build with hil.nn layers
    ctl = TrainingController(model, TrainingConfig(algorithm="ttv2"), factory)
    for x, y in batches:
        ctl.zero_grad()
        loss_fn(model(x), y).backward()                   # analog forward/backward MVMs
        ctl.step()                                        # pulsed updates, transfers, biases

The controller asks ``factory(rows, cols, role)`` for the arrays it needs, one
call per array, layer by layer in ``named_modules`` order: role ``"W"`` for
analog SGD, ``"A"`` then ``"C"`` for the Tiki-Taka family.  It owns all digital
state (H, the reference R, chopper signs, column pointers, sample counters, the
digital optimizer of the biases, its random generator) and talks to the arrays
only through the public contract: ``forward``, ``backward``, ``update``,
``pulse``, ``read``, ``info``, ``counts``, ``state_dict``/``load_state_dict``.
So a driver-backed array replaces a simulated one without a change here.

Per layer and algorithm (``x``: inputs ``[n, cols]``, ``d``: output errors ``[n, rows]``):

- ``analog_sgd``: ``W.update(x, d, lr)``.
- ``tt``: ``A.update(x, d, rate_A)``; every ``n_s`` samples the next
  ``transfer_columns`` columns ``k`` are read, ``z = A.forward(e_k) - R e_k``,
  and written by a pulsed update ``C.update(e_k, -z, transfer_lr)``.  The network
  uses ``gamma * A + C``.  ``rate_A`` is ``lambda_A`` (``lambda_A_unit="weight"``)
  or ``lambda_A * dw_min(A)`` (``"pulses"``).
- ``ttv2``: as ``tt`` up to the read; then ``H[:, k] += lambda_H * z`` (no decay);
  where ``|H| >= threshold * dw_min(C)``, ``n = trunc(H / (threshold dw_min))``
  clipped to the pulse cap (``max_pulses``, and ``floor(max_step / dw_min(C))``)
  fires as signed pulses on C (``C.pulse``) and H is set to 0 (``h_reset="zero"``),
  reduced by ``n * threshold * dw_min`` (``"decrement"``), reduced and clipped to
  ``+-threshold * dw_min`` (``"clip"``), or reduced by the change of C read back after
  the pulses (``"measured"``: the pulsed columns of C are read with one-hot inputs, and
  each pulsed device's H drops by what its conductance moved since its last read, so a
  pulse that over- or undershoots is corrected by the next ones).  Under ``"measured"``
  the read-backs also measure C's pulse noise (:meth:`TrainingController.c_pulse_noise`),
  and with ``threshold_noise`` the threshold widens to ``max(threshold, threshold_noise *
  s)`` steps, ``s`` that noise: a dead band that keeps the corrections from chasing the
  misses of their own pulses.  A is never reset.  The network uses
  ``gamma * A + C`` (``gamma = 0``: only C).
- ``cttv2``: ``ttv2`` with a sign ``c_j = +-1`` per input line: A is updated
  with ``x * c`` and the read of column ``k`` enters H as ``c_k * z``; after
  column ``k`` is read, ``c_k`` flips with probability ``in_chop_prob`` (scaled by
  ``in_chop_states / states(A)`` when ``in_chop_states`` is set).

Everything that depends on an array's step comes from its ``info`` (``dw_min``,
``w_min``, ``w_max``), so a setting given in pulses or normalized weight means the
same on a device of any granularity.

Before the first step (:meth:`prepare`): A is driven to its symmetry point by
alternating up/down single pulses (zero-shifting) and ``R`` is the mean of
reads of A taken after each pulse of the last ``zero_shift_reads`` pairs; the
weight array (W or C) is driven to its symmetry point the same way
(``reset_weights``) and then gets random initial weights as pulse counts.

Hook for model extraction and logging: :meth:`add_callback` with event
``"transfer"`` (``fn(controller, layer_state, columns, counts)`` after every
transfer of a layer; ``counts`` the pulses fired on C ``[rows, cols]`` or None)
or ``"step"`` (``fn(controller)`` after every step).  :attr:`layers` lists each
analog layer's :class:`LayerState` (its module, its arrays by role, H, R, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from hil.backend import BackendInfo, CrossbarBackend, OperationCounts
from hil.nn.layers import AnalogLayer, analog_layers
from hil.training.config import TrainingConfig

ArrayFactory = Callable[[int, int, str], CrossbarBackend]
"""``(rows, cols, role) -> CrossbarBackend``; role is ``"W"``, ``"A"`` or ``"C"``."""

COST_FIELDS = tuple(OperationCounts().as_dict())
STATE_FORMAT = "hil.training.TrainingController"
STATE_VERSION = "1.2"
NOISE_SUMS = ("miss_sq", "pulses", "pulsed", "still_sq", "still")
"""Fields of ``LayerState.C_noise``, the forgetful sums behind C's pulse-noise estimate."""
NOISE_MEMORY = 0.995
"""Factor applied to the ``C_noise`` sums before each read-back's (memory ~200 read-backs)."""


def pulse_noise_steps(sums: torch.Tensor, dw: float) -> torch.Tensor:
    """Std of one pulse's change of C in units of ``dw`` (0-d tensor; 0 before any data),
    from the ``C_noise`` sums: ``(miss_sq - pulsed * still_sq / still) / pulses``, the
    squared misses of the pulsed devices less the read noise seen on the unpulsed ones."""
    miss_sq, pulses, pulsed, still_sq, still = sums.unbind()
    read_var = torch.where(still > 0, still_sq / still.clamp(min=1e-12), 0.0)
    var = (miss_sq - pulsed * read_var).clamp(min=0.0) / pulses.clamp(min=1e-12)
    return var.sqrt() / dw


def schedule_factor(config: TrainingConfig, progress: float) -> float:
    """Rate factor of ``config.schedule`` at ``progress`` (0: start, 1: end of the planned samples)."""
    if config.schedule == "constant":
        return 1.0
    t = min(max(float(progress), 0.0), 1.0)
    f = config.final_lr_fraction
    if config.schedule == "linear":
        return 1.0 - (1.0 - f) * t
    return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class LayerState:
    """One analog layer under training: its arrays and the controller's digital state for it.

    ``arrays`` maps role -> backend (``"W"``; or ``"A"`` and ``"C"``).  ``H``
    ``[rows, cols]`` is the TTv2 filter (normalized weight units), ``R``
    ``[rows, cols]`` the reference of A (its symmetry point, from reads), ``chop``
    ``[cols]`` the chopper signs (+-1), ``column`` the next column to read,
    ``pending_samples`` the samples since the last transfer, ``C_read`` ``[rows, cols]``
    the last read of C per device and ``C_noise`` the sums behind C's pulse-noise estimate
    (``NOISE_SUMS``; both ``h_reset="measured"`` only).  From the arrays' ``info`` (fixed
    at construction): ``dw_C`` C's nominal step and ``w_range_C`` its range, ``rate_A``
    the rate of ``A.update`` (normalized weight per unit gradient), ``max_n`` the pulse cap
    per device and transfer (None: none), ``chop_prob`` the chopper's flip probability per
    read.
    """

    name: str
    module: AnalogLayer
    arrays: dict[str, CrossbarBackend]
    H: torch.Tensor | None = None
    R: torch.Tensor | None = None
    chop: torch.Tensor | None = None
    column: int = 0
    pending_samples: int = 0
    transfers: int = 0
    dw_C: float = 0.0
    rate_A: float = 0.0
    max_n: int | None = None
    chop_prob: float = 0.0
    C_read: torch.Tensor | None = None
    C_noise: torch.Tensor | None = None
    w_range_C: tuple[float, float] = (-1.0, 1.0)
    eye: torch.Tensor | None = field(default=None, repr=False)

    @property
    def weight_array(self) -> CrossbarBackend:
        """The array the network's weights live on (W, or C)."""
        return self.arrays["W"] if "W" in self.arrays else self.arrays["C"]


class TrainingController:
    """Trains the analog layers of ``model`` on arrays made by ``factory``.

    Parameters
    ----------
    model:
        An ``nn.Module`` with :class:`~hil.nn.AnalogLinear` / :class:`~hil.nn.AnalogConv2d`
        layers (see :func:`hil.nn.convert_to_analog`).  Its other parameters
        (biases, ...) are trained digitally by plain SGD with ``config.digital_lr``
        (no momentum: the digital optimizer has no state beyond the parameters).
    config:
        :class:`TrainingConfig`.
    factory:
        ``(rows, cols, role) -> CrossbarBackend``, called once per array (see module doc).
    """

    def __init__(self, model: nn.Module, config: TrainingConfig, factory: ArrayFactory) -> None:
        self.model = model
        self.config = config
        self.generator = torch.Generator()
        self.generator.manual_seed(int(config.seed))
        self.layers: list[LayerState] = []
        self.prepared = False
        self.steps = 0
        self.samples = 0
        self.planned_samples: int | None = None
        self.resume_drift: list[dict[str, Any]] = []
        self._rate = 1.0
        self._pulse_limit: dict[int, int | None] = {}
        self._callbacks: dict[str, list[Callable[..., None]]] = {"step": [], "transfer": []}
        found = analog_layers(model)
        if not found:
            raise ValueError("TrainingController: the model has no AnalogLinear/AnalogConv2d layer")
        roles = ("W",) if config.algorithm == "analog_sgd" else ("A", "C")
        for name, layer in found:
            arrays = {}
            for role in roles:
                backend = factory(layer.rows, layer.cols, role)
                if not isinstance(backend, CrossbarBackend):
                    raise ValueError(
                        f"array factory returned {type(backend).__name__} for layer {name!r} role "
                        f"{role!r}; expected a CrossbarBackend"
                    )
                if backend.shape != (layer.rows, layer.cols):
                    raise ValueError(
                        f"array factory returned a {backend.rows}x{backend.cols} array for layer "
                        f"{name!r} role {role!r}; expected {layer.rows}x{layer.cols}"
                    )
                arrays[role] = backend
            st = LayerState(name=name or "<root>", module=layer, arrays=arrays)
            if config.uses_transfer:
                a, c = arrays["A"], arrays["C"]
                dev = a.device
                st.H = torch.zeros(layer.rows, layer.cols, device=dev)
                st.R = torch.zeros(layer.rows, layer.cols, device=dev)
                st.chop = torch.ones(layer.cols, device=dev)
                st.dw_C = float(c.info.dw_min)
                st.w_range_C = (float(c.info.w_min), float(c.info.w_max))
                self._granularity(st, a.info, c.info)
                st.eye = torch.eye(layer.cols, device=dev)
                tiles = [(c, 1.0)] + ([(a, config.gamma)] if config.gamma != 0.0 else [])
            else:
                tiles = [(arrays["W"], 1.0)]
            layer.attach(tiles)
            self.layers.append(st)
        self.digital_params = [p for p in model.parameters() if p.requires_grad]
        self._cost_base = self._snapshot()
        self._cost_carry = self._zero_costs()
        self._prep_cost = self._zero_costs()

    # ------------------------------------------------------------ public API
    def add_callback(
        self, event: Literal["step", "transfer"], fn: Callable[..., None]
    ) -> None:
        """Call ``fn`` after every step (``fn(controller)``) or transfer
        (``fn(controller, layer_state, columns, counts)``)."""
        if event not in self._callbacks:
            raise ValueError(f"unknown callback event {event!r}; expected 'step' or 'transfer'")
        self._callbacks[event].append(fn)

    def arrays(self) -> Iterator[tuple[str, str, CrossbarBackend]]:
        """``(layer name, role, backend)`` for every array, in creation order."""
        for st in self.layers:
            for role, backend in st.arrays.items():
                yield st.name, role, backend

    def zero_grad(self) -> None:
        """Clear the digital gradients and the recorded (x, d) pairs of the analog layers."""
        for p in self.digital_params:
            p.grad = None
        for st in self.layers:
            st.module.clear_pending()

    def prepare(self) -> None:
        """Zero-shift A (and set R), reset and initialize the weight arrays.  Called once.

        :meth:`step` calls it if needed; a resumed controller is already prepared.
        """
        if self.prepared:
            return
        before = self._snapshot()
        cfg = self.config
        for st in self.layers:
            if cfg.uses_transfer:
                st.R = self._zero_shift(st.arrays["A"], cfg.zero_shift_reads)
                if cfg.chopped:
                    flips = torch.rand(st.module.cols, generator=self.generator) < 0.5
                    st.chop = torch.where(flips, -1.0, 1.0).to(st.chop.device)  # type: ignore[union-attr]
            w = st.weight_array
            if cfg.reset_weights:
                self._zero_shift(w, 0)
            if cfg.init_scale > 0:
                dw = float(w.info.dw_min)
                s = cfg.init_scale / math.sqrt(st.module.cols)
                u = torch.rand(w.shape, generator=self.generator) * 2.0 - 1.0
                counts = torch.round(u * s / dw).to(torch.int64)
                self._pulse(w, counts.to(w.device))
            if cfg.uses_transfer and cfg.h_reset == "measured":
                st.C_read = self._read_columns(w, list(range(st.module.cols)))
                st.C_noise = torch.zeros(len(NOISE_SUMS), dtype=torch.float64, device=w.device)
        after = self._snapshot()
        self._prep_cost = self._add(self._prep_cost, self._diff(after, before))
        self._cost_base = after
        self.prepared = True

    def rate_factor(self) -> float:
        """Factor of the scheduled rates now: 1 (constant schedule, or no ``planned_samples``)
        decaying to ``final_lr_fraction`` at ``planned_samples`` (set by :func:`fit`)."""
        if not self.planned_samples:
            return 1.0
        return schedule_factor(self.config, self.samples / self.planned_samples)

    def step(self) -> None:
        """Apply the recorded (x, d) of every analog layer as pulsed updates, transfer, step biases."""
        if not self.prepared:
            self.prepare()
        cfg = self.config
        self._rate = self.rate_factor()
        n_samples = 0
        for st in self.layers:
            rec = st.module.pop_pending()
            if rec is None:
                continue
            x, d, samples = rec
            n_samples = max(n_samples, samples)
            if cfg.algorithm == "analog_sgd":
                st.arrays["W"].update(x, d, cfg.lr * self._rate)
                continue
            if cfg.chopped:
                x = x * st.chop
            st.arrays["A"].update(x, d, st.rate_A)
            st.pending_samples += samples
            due = st.pending_samples // cfg.n_s
            if due:
                st.pending_samples -= due * cfg.n_s
                self._transfer_columns(st, due * cfg.transfer_columns)
        self._digital_step()
        self.steps += 1
        self.samples += n_samples
        for fn in self._callbacks["step"]:
            fn(self)

    def transfer(self, layer: int | str, columns: list[int]) -> torch.Tensor | None:
        """Read ``columns`` of the layer's A and transfer them to C now (as a scheduled transfer does).

        Returns the pulse counts fired on C (``[rows, cols]``, ttv2/cttv2; None if
        none fired or for tt).  Does not move the cyclic column pointer.
        """
        st = self._layer(layer)
        if not self.config.uses_transfer:
            raise ValueError("transfer: analog_sgd has no A array")
        return self._transfer(st, [int(k) for k in columns])

    def c_pulse_noise(self) -> dict[str, float]:
        """C's cycle-to-cycle pulse noise as the read-backs measured it (``h_reset="measured"``):
        per layer, the std of one pulse's change of C in units of C's ``dw_min``, over about
        the last 200 read-backs (0 before any).  It includes what the nominal step does not
        predict: the device's state dependence and its device-to-device spread, not the read
        noise.  Empty for other ``h_reset`` modes."""
        return {
            st.name: float(pulse_noise_steps(st.C_noise, st.dw_C))
            for st in self.layers
            if st.C_noise is not None
        }

    def hardware_cost(self) -> dict[str, Any]:
        """Backend calls during training (after :meth:`prepare`), total and per training sample.

        ``{"samples", "steps", "total": {role: {op: n}}, "per_sample": {role: {op: n/samples}},
        "per_layer": {layer: {role: {op: n}}}, "preparation": {role: {op: n}}}``; ops are the
        fields of :class:`~hil.backend.OperationCounts`.
        """
        per_layer = self._add(self._cost_carry, self._diff(self._snapshot(), self._cost_base))
        by_role: dict[str, dict[str, int]] = {}
        for roles in per_layer.values():
            for role, ops in roles.items():
                acc = by_role.setdefault(role, dict.fromkeys(COST_FIELDS, 0))
                for k, v in ops.items():
                    acc[k] += v
        prep: dict[str, dict[str, int]] = {}
        for roles in self._prep_cost.values():
            for role, ops in roles.items():
                acc = prep.setdefault(role, dict.fromkeys(COST_FIELDS, 0))
                for k, v in ops.items():
                    acc[k] += v
        n = max(self.samples, 1)
        return {
            "samples": self.samples,
            "steps": self.steps,
            "total": by_role,
            "per_sample": {r: {k: v / n for k, v in ops.items()} for r, ops in by_role.items()},
            "per_layer": per_layer,
            "preparation": prep,
        }

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: digital state, RNG, optimizer, digital model
        parameters, and per array its ``state_dict()`` (simulator) or, where that is
        None (hardware), a read of it to measure drift on resume."""
        layers = []
        for st in self.layers:
            arrays = {}
            for role, backend in st.arrays.items():
                sd = backend.state_dict()
                arrays[role] = {
                    "state": sd,
                    "read": backend.read() if sd is None else None,
                    "hardware_id": backend.info.hardware_id,
                }
            layers.append(
                {
                    "name": st.name,
                    "shape": [st.module.rows, st.module.cols],
                    "H": None if st.H is None else st.H.cpu().clone(),
                    "R": None if st.R is None else st.R.cpu().clone(),
                    "chop": None if st.chop is None else st.chop.cpu().clone(),
                    "C_read": None if st.C_read is None else st.C_read.cpu().clone(),
                    "C_noise": None if st.C_noise is None else st.C_noise.cpu().clone(),
                    "column": st.column,
                    "pending_samples": st.pending_samples,
                    "transfers": st.transfers,
                    "arrays": arrays,
                }
            )
        cost = self._add(self._cost_carry, self._diff(self._snapshot(), self._cost_base))
        return {
            "format": STATE_FORMAT,
            "schema_version": STATE_VERSION,
            "config": self.config.model_dump(mode="json"),
            "prepared": self.prepared,
            "steps": self.steps,
            "samples": self.samples,
            "planned_samples": self.planned_samples,
            "generator": self.generator.get_state(),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "layers": layers,
            "cost": cost,
            "preparation_cost": self._prep_cost,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.  Arrays without a saved state (hardware) are read back;
        how far they moved since the checkpoint is appended to :attr:`resume_drift`."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a TrainingController state (format {state.get('format')!r})")
        major = str(state.get("schema_version", "?")).split(".")[0]
        if major != STATE_VERSION.split(".")[0]:
            raise ValueError(
                f"TrainingController state has schema_version {state.get('schema_version')!r}, "
                f"this release reads {STATE_VERSION}"
            )
        saved = TrainingConfig.model_validate(state["config"])
        if saved.algorithm != self.config.algorithm:
            raise ValueError(
                f"checkpoint was made with algorithm {saved.algorithm!r}, this controller runs "
                f"{self.config.algorithm!r}"
            )
        if len(state["layers"]) != len(self.layers):
            raise ValueError(
                f"checkpoint has {len(state['layers'])} analog layers, the model has {len(self.layers)}"
            )
        for st, ls in zip(self.layers, state["layers"], strict=True):
            if list(ls["shape"]) != [st.module.rows, st.module.cols]:
                raise ValueError(
                    f"checkpoint layer {ls['name']!r} is {ls['shape']}, model layer {st.name!r} is "
                    f"{[st.module.rows, st.module.cols]}"
                )
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"])
        self.prepared = bool(state["prepared"])
        self.steps = int(state["steps"])
        self.samples = int(state["samples"])
        self.planned_samples = state["planned_samples"]
        self.resume_drift = []
        for st, ls in zip(self.layers, state["layers"], strict=True):
            dev = st.module.tiles[0][0].device
            st.H = None if ls["H"] is None else ls["H"].to(dev)
            st.R = None if ls["R"] is None else ls["R"].to(dev)
            st.chop = None if ls["chop"] is None else ls["chop"].to(dev)
            c_read = ls.get("C_read")  # absent before schema 1.1
            st.C_read = None if c_read is None else c_read.to(dev)
            c_noise = ls.get("C_noise")  # absent before schema 1.2
            st.C_noise = None if c_noise is None else c_noise.to(dev)
            st.column = int(ls["column"])
            st.pending_samples = int(ls["pending_samples"])
            st.transfers = int(ls["transfers"])
            for role, backend in st.arrays.items():
                saved_array = ls["arrays"][role]
                if saved_array["state"] is not None:
                    backend.load_state_dict(saved_array["state"])
                    continue
                now = backend.read()
                before = saved_array["read"].to(now.device, now.dtype)
                diff = now - before
                self.resume_drift.append(
                    {
                        "layer": st.name,
                        "role": role,
                        "hardware_id": backend.info.hardware_id,
                        "saved_hardware_id": saved_array["hardware_id"],
                        "max_abs": float(diff.abs().max()),
                        "rms": float(diff.pow(2).mean().sqrt()),
                        "mean": float(diff.mean()),
                    }
                )
        if self.prepared and self.config.uses_transfer and self.config.h_reset == "measured":
            for st in self.layers:
                if st.C_read is None:  # saved with another h_reset: start from a read of C now
                    st.C_read = self._read_columns(st.arrays["C"], list(range(st.module.cols)))
        self._cost_base = self._snapshot()
        self._cost_carry = state["cost"]
        self._prep_cost = state["preparation_cost"]

    # ------------------------------------------------------------- internals
    @torch.no_grad()
    def _digital_step(self) -> None:
        """Plain SGD (no momentum, no state) on the digital parameters: p -= digital_lr * grad."""
        grads = [p.grad for p in self.digital_params if p.grad is not None]
        if grads:
            params = [p for p in self.digital_params if p.grad is not None]
            torch._foreach_add_(params, grads, alpha=-self.config.digital_lr * self._rate)

    def _layer(self, layer: int | str) -> LayerState:
        if isinstance(layer, int):
            return self.layers[layer]
        for st in self.layers:
            if st.name == layer:
                return st
        raise ValueError(f"no analog layer named {layer!r}; known: {[s.name for s in self.layers]}")

    def _granularity(self, st: LayerState, info_a: BackendInfo, info_c: BackendInfo) -> None:
        """The settings that depend on the arrays' step, from their ``info`` only."""
        cfg = self.config
        st.rate_A = cfg.lambda_A * (float(info_a.dw_min) if cfg.lambda_A_unit == "pulses" else 1.0)
        caps = [] if cfg.max_pulses is None else [int(cfg.max_pulses)]
        if cfg.max_step is not None:
            caps.append(max(1, math.floor(cfg.max_step / float(info_c.dw_min) + 1e-9)))
        st.max_n = min(caps) if caps else None
        p = cfg.in_chop_prob
        if cfg.in_chop_states is not None:
            states_a = (float(info_a.w_max) - float(info_a.w_min)) / float(info_a.dw_min)
            p = min(1.0, p * cfg.in_chop_states / states_a)
        st.chop_prob = p

    def _limit(self, backend: CrossbarBackend) -> int | None:
        """The backend's ``info.max_pulses_per_call`` (asked once)."""
        key = id(backend)
        if key not in self._pulse_limit:
            self._pulse_limit[key] = backend.info.max_pulses_per_call
        return self._pulse_limit[key]

    def _pulse(self, backend: CrossbarBackend, counts: torch.Tensor) -> None:
        """``backend.pulse(counts)``, split into calls the backend accepts (max_pulses_per_call)."""
        limit = self._limit(backend)
        if limit is None or int(counts.abs().max()) <= limit:
            backend.pulse(counts)
            return
        rest = counts.clone()
        while bool((rest != 0).any()):
            part = rest.clamp(-limit, limit)
            backend.pulse(part)
            rest = rest - part

    def _zero_shift(self, backend: CrossbarBackend, reads: int) -> torch.Tensor | None:
        """Alternating +1/-1 pulses on every device; with ``reads``, the mean of the reads
        after each pulse of the last ``reads`` pairs (the reference R)."""
        info = backend.info
        cycles = self.config.zero_shift_cycles
        if cycles is None:
            cycles = math.ceil(1.5 * (info.w_max - info.w_min) / info.dw_min)
        up = torch.ones(backend.shape, dtype=torch.int64, device=backend.device)
        down = -up
        for _ in range(cycles):
            backend.pulse(up)
            backend.pulse(down)
        if not reads:
            return None
        acc = torch.zeros(backend.shape, device=backend.device)
        for _ in range(reads):
            backend.pulse(up)
            acc += backend.read()
            backend.pulse(down)
            acc += backend.read()
        return acc / (2 * reads)

    def _read_columns(self, backend: CrossbarBackend, ks: list[int]) -> torch.Tensor:
        """Columns ``ks`` of ``backend`` read with one-hot inputs, ``n_reads`` averaged: ``[rows, len(ks)]``."""
        n = self.config.n_reads
        if n > 1:
            return backend.forward_columns(ks * n).view(n, len(ks), -1).mean(0).T
        return backend.forward_columns(ks).T

    def _measure_fired(self, st: LayerState, ks: list[int], fired: torch.Tensor) -> None:
        """``h_reset="measured"``: read back the columns of C that got pulses and reduce H, on
        each pulsed device, by the change of C since that device's last read.  The last read
        is kept (``C_read``), so read errors telescope instead of adding up."""
        assert st.C_read is not None and st.H is not None
        hit = fired != 0  # [rows, m]
        pulsed = hit.any(0)
        idx = [k for k, f in zip(ks, pulsed.tolist(), strict=True) if f]
        at = torch.tensor(idx, device=st.H.device)
        mask = hit[:, pulsed]  # [rows, len(idx)]
        new = self._read_columns(st.arrays["C"], idx)
        old = st.C_read[:, at]
        moved = new - old
        st.H[:, at] -= torch.where(mask, moved, 0.0)
        st.C_read[:, at] = torch.where(mask, new, old)
        self._observe_pulse_noise(st, old, moved, fired[:, pulsed], mask)

    def _observe_pulse_noise(
        self, st: LayerState, old: torch.Tensor, moved: torch.Tensor, fired: torch.Tensor, mask: torch.Tensor
    ) -> None:
        """Accumulate (with forgetting) the read-back statistics of C's pulse noise:
        on the pulsed devices the squared miss ``(moved - n dw_C)^2`` and ``|n|``, on the
        unpulsed devices of the same columns the squared change (two reads' noise).  A device
        whose nominal target ``old + n dw_C`` lies outside C's range is left out: a pulse
        lost at a bound is not noise."""
        if st.C_noise is None:
            st.C_noise = torch.zeros(len(NOISE_SUMS), dtype=torch.float64, device=moved.device)
        step = fired * st.dw_C
        target = old + step
        lo, hi = st.w_range_C
        counted = (mask & (target >= lo) & (target <= hi)).double()
        still = (~mask).double()
        obs = torch.stack(
            [
                ((moved - step).double().square() * counted).sum(),
                (fired.abs().double() * counted).sum(),
                counted.sum(),
                (moved.double().square() * still).sum(),
                still.sum(),
            ]
        )
        st.C_noise.mul_(NOISE_MEMORY).add_(obs)

    def _threshold(self, st: LayerState) -> float | torch.Tensor:
        """The firing threshold of H in normalized weight: ``threshold * dw_C``, or with
        ``threshold_noise`` ``max(threshold, threshold_noise * s) * dw_C`` (a 0-d tensor)."""
        cfg = self.config
        if cfg.threshold_noise is None or st.C_noise is None:
            return cfg.threshold * st.dw_C
        s = pulse_noise_steps(st.C_noise, st.dw_C)
        return torch.clamp(cfg.threshold_noise * s, min=cfg.threshold).float() * st.dw_C

    def _transfer_columns(self, st: LayerState, m: int) -> None:
        """Transfer the next ``m`` columns (cyclic), in groups without repeated columns."""
        cols = st.module.cols
        while m > 0:
            g = min(m, cols)
            ks = [(st.column + i) % cols for i in range(g)]
            st.column = (st.column + g) % cols
            self._transfer(st, ks, full_counts=bool(self._callbacks["transfer"]))
            m -= g

    def _transfer(self, st: LayerState, ks: list[int], full_counts: bool = True) -> torch.Tensor | None:
        """Read columns ``ks`` (distinct) of A and move them into H / C; returns the pulses fired
        (``[rows, cols]``; with ``full_counts=False`` only whether any fired: a tensor or None)."""
        cfg = self.config
        a, c = st.arrays["A"], st.arrays["C"]
        assert st.eye is not None and st.R is not None and st.H is not None and st.chop is not None
        m = len(ks)
        if ks == list(range(ks[0], ks[0] + m)):
            sel: slice | torch.Tensor = slice(ks[0], ks[0] + m)  # a view, no gather
            r_cols = st.R[:, sel]
            h_old = st.H[:, sel]
            chop = st.chop[sel]
        else:
            sel = torch.tensor(ks, device=a.device)
            r_cols = st.R.index_select(1, sel)
            h_old = st.H.index_select(1, sel)
            chop = st.chop.index_select(0, sel)
        # [m, rows]: column reads with one-hot inputs e_k (forward_columns: the same as
        # forward(e) on every backend, without building the one-hot inputs where it can)
        z = self._read_columns(a, ks) - r_cols  # [rows, m] = (A - R) e_k
        counts = None
        if cfg.algorithm == "tt":
            e = st.eye[sel] if isinstance(sel, slice) else st.eye.index_select(0, sel)
            c.update(e, -z.T, cfg.transfer_lr * self._rate)
        else:
            if cfg.chopped:
                z = z * chop
            thr = self._threshold(st)
            h = h_old + (cfg.lambda_H * self._rate) * z
            n = torch.trunc(h / thr)
            if st.max_n is not None:
                n.clamp_(-st.max_n, st.max_n)
            if cfg.h_reset == "zero":
                h = torch.where(n != 0, torch.zeros_like(h), h)
            elif cfg.h_reset == "measured":
                pass  # reduced below by the change of C read back after the pulses
            else:
                h = h - n * thr
                if cfg.h_reset == "clip":
                    h = h.clamp(-thr, thr)
            st.H[:, sel] = h
            if bool(n.any()):
                fired = n.to(torch.int64)  # [rows, m]
                counts = fired
                if full_counts or self._limit(c) is not None:
                    counts = torch.zeros(c.shape, dtype=torch.int64, device=c.device)
                    counts[:, sel] = fired
                if self._limit(c) is None:
                    c.pulse_columns(ks, fired)  # the same as c.pulse(counts), one call
                else:
                    self._pulse(c, counts)
                if cfg.h_reset == "measured":
                    self._measure_fired(st, ks, fired)
        if cfg.chopped and st.chop_prob > 0:
            flip = torch.rand(m, generator=self.generator) < st.chop_prob
            if bool(flip.any()):
                st.chop[sel] = chop * torch.where(flip, -1.0, 1.0).to(chop.device)
        st.transfers += 1
        for fn in self._callbacks["transfer"]:
            fn(self, st, ks, counts)
        return counts

    # cost bookkeeping: {layer: {role: {op: n}}}
    def _snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        return {st.name: {r: b.counts.as_dict() for r, b in st.arrays.items()} for st in self.layers}

    def _zero_costs(self) -> dict[str, dict[str, dict[str, int]]]:
        return {st.name: {r: dict.fromkeys(COST_FIELDS, 0) for r in st.arrays} for st in self.layers}

    @staticmethod
    def _diff(a: dict, b: dict) -> dict:
        return {
            layer: {role: {k: a[layer][role][k] - b[layer][role][k] for k in ops} for role, ops in roles.items()}
            for layer, roles in a.items()
        }

    @staticmethod
    def _add(a: dict, b: dict) -> dict:
        return {
            layer: {role: {k: a[layer][role][k] + b[layer][role][k] for k in ops} for role, ops in roles.items()}
            for layer, roles in a.items()
        }
