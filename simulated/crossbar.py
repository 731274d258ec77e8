"""``SimulatedCrossbar``: a torch-vectorized resistive crossbar that implements the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from hil.backend import BackendInfo, CrossbarBackend
from hil.config import VersionedFile
from hil.device_model import DeviceModel
from hil.simulated.devices import DeviceArray, nominal_dw
from hil.simulated.periphery import PeripheryConfig, analog_mvm
from hil.simulated.pulse_trains import UpdateConfig, coincidence_pulsed, coincidence_total_net


class SimulatedCrossbarConfig(VersionedFile):
    """Everything that defines a simulated array (shape, device model, periphery, update, seed)."""

    SCHEMA_VERSION = "1.0"
    rows: int = Field(gt=0)
    cols: int = Field(gt=0)
    device: DeviceModel
    periphery: PeripheryConfig = Field(default_factory=PeripheryConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    seed: int = 0
    initial_weight: float | None = Field(
        0.0, description="weight every device starts at (None: its symmetry point)"
    )


class SimulatedCrossbar(CrossbarBackend):
    """A simulated ``rows x cols`` array of resistive devices in normalized weight units.

    Parameters
    ----------
    rows, cols:
        Array shape: ``W`` is ``[rows, cols]``.
    device:
        A :class:`~hil.device_model.DeviceModel`, a preset name (see
        :func:`hil.simulated.presets.list_presets`) or a path to a device-model JSON file.
    periphery:
        DAC/ADC/noise settings (default: aihwkit's default IO; ``PeripheryConfig.ideal()``
        for an exact MVM).  If ``None`` and the device model has a ``read_noise``,
        that read noise is used as additive weight read noise.
    update:
        Stochastic pulse-train settings of :meth:`update` (bit length, update management).
    seed:
        Seeds this backend's own ``torch.Generator``: two backends built with one seed on
        one torch device behave bit-identically.
    torch_device:
        ``"cpu"`` or ``"cuda"``: one code path for both.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        device: DeviceModel | str | Path = "softbounds-20",
        periphery: PeripheryConfig | None = None,
        update: UpdateConfig | None = None,
        seed: int = 0,
        torch_device: str | torch.device = "cpu",
        initial_weight: float | None = 0.0,
    ) -> None:
        super().__init__(rows, cols, torch_device)
        model = resolve_device_model(device)
        if periphery is None:
            periphery = PeripheryConfig()
            if model.read_noise > 0:
                periphery = periphery.model_copy(update={"w_noise": model.read_noise})
        self.config = SimulatedCrossbarConfig(
            rows=self.rows,
            cols=self.cols,
            device=model,
            periphery=periphery,
            update=update or UpdateConfig(),
            seed=int(seed),
            initial_weight=initial_weight,
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.devices = DeviceArray(model, self.rows, self.cols, self.generator, self.device)
        self.dw_nominal = nominal_dw(model)
        if initial_weight is None:
            w = self.devices.symmetry_point()
        else:
            w = torch.full(self.shape, float(initial_weight), device=self.device)
        self.weights = self.devices.clamp(w)
        self._eyes: dict[int, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: SimulatedCrossbarConfig, torch_device: str = "cpu") -> SimulatedCrossbar:
        return cls(
            cfg.rows,
            cfg.cols,
            device=cfg.device,
            periphery=cfg.periphery,
            update=cfg.update,
            seed=cfg.seed,
            torch_device=torch_device,
            initial_weight=cfg.initial_weight,
        )

    # ------------------------------------------------------------- contract
    def _info(self) -> BackendInfo:
        step = self.config.device.step
        return BackendInfo(
            name="SimulatedCrossbar",
            kind="simulated",
            rows=self.rows,
            cols=self.cols,
            w_min=float(step.w_min),
            w_max=float(step.w_max),
            dw_min=self.dw_nominal,
            parallel_update=True,
            transposed_read=True,
            max_pulses_per_call=None,
            pulse_shapes=self._pulse_shapes(),
            hardware_id=f"simulated:{self.config.device.name}",
            details={
                "device_model": self.config.device.step.model,
                "torch_device": str(self.device),
                "bl": self.config.update.bl,
                "seed": self.config.seed,
            },
        )

    def _apparent(self) -> torch.Tensor:
        """The weights reads and MVMs see: hidden weights plus the write-noise offset (if any)."""
        off = self.devices.offset
        return self.weights if off is None else self.weights + off

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return analog_mvm(x.to(self.weights.dtype), self._apparent(), self.config.periphery, self.generator)

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        return analog_mvm(d.to(self.weights.dtype), self._apparent().T, self.config.periphery, self.generator)

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        # total and net coincidences as exact integers (int32 where the int8 GEMM runs); the
        # up / down counts are formed only on the devices the update computes.  On arrays
        # that DeviceArray may compute gathered, the counts are computed only on the block
        # of rows and columns that fire, and the pulsed devices applied gathered, when
        # that block is small enough (the same trains, counts and results as the full path).
        xs, ds = x.to(self.weights.dtype), d.to(self.weights.dtype)
        cfg, chunks = self.config.update, self.config.update.max_chunks
        limit = self.devices.sparse_devices()
        if limit <= 0:
            total, net = coincidence_total_net(
                xs, ds, lr, self.dw_nominal, cfg, self.generator, counts_dtype=None
            )
            self.weights = self.devices.apply_total_net(self.weights, total, net, self.generator, chunks)
            return
        idx, total, net = coincidence_pulsed(xs, ds, lr, self.dw_nominal, cfg, self.generator, limit)
        if idx is None:
            self.weights = self.devices.apply_total_net(self.weights, total, net, self.generator, chunks)
        elif idx.numel():
            self.weights = self.devices.apply_total_net_at(
                self.weights, idx, total, net, self.generator, chunks, inplace=True
            )

    def _pulse(self, counts: torch.Tensor) -> None:
        # signed (integer) counts, split into up / down pulses and converted to floats only
        # on the pulsed devices when few are pulsed
        self.weights = self.devices.apply_signed(
            self.weights, counts, self.generator, self.config.update.max_chunks
        )

    def _pulse_shapes(self) -> bool:
        return self.config.device.pulse_response is not None

    def _pulse_shaped(
        self, counts: torch.Tensor, amplitude_v: torch.Tensor | None, width_s: torch.Tensor | None
    ) -> None:
        # the device model's pulse response scales each direction's step (None: its nominal pulse)
        pr = self.config.device.pulse_response
        assert pr is not None  # pulse() checked _pulse_shapes()
        scales = []
        for up, nom in ((True, pr.nominal_up), (False, pr.nominal_down)):
            amp = amplitude_v if amplitude_v is not None else torch.tensor(nom.amplitude_v, device=self.device)
            wid = width_s if width_s is not None else torch.tensor(nom.width_s, device=self.device)
            scale = pr.scale_torch(amp.to(torch.float64), wid.to(torch.float64), up)
            scales.append(scale.expand(self.shape).to(self.weights.dtype))
        with self.devices.scaled_steps(scales[0], scales[1]):
            self._pulse(counts)

    def _pulse_limit(self) -> int | None:
        return None  # info.max_pulses_per_call (without building the info)

    def _forward_columns(self, ks: list[int]) -> torch.Tensor:
        # The one-hot MVM of the columns ks, as the [m, m] identity times those columns:
        # the same DAC level on the diagonal, the same products (a one-hot row adds only
        # exact zeros), the same output noise draws [m, rows] and ADC: bit for bit
        # _forward(eye[ks]), without the [m, cols] x [cols, rows] product.
        w = self._apparent()
        m = len(ks)
        if ks == list(range(ks[0], ks[0] + m)):
            w_cols = w[:, ks[0] : ks[0] + m]
        else:
            w_cols = w.index_select(1, torch.tensor(ks, device=self.device))
        eye = self._eye(m)
        return analog_mvm(eye, w_cols, self.config.periphery, self.generator)

    def _eye(self, m: int) -> torch.Tensor:
        eye = self._eyes.get(m)
        if eye is None:
            eye = torch.eye(m, device=self.device, dtype=self.weights.dtype)
            self._eyes[m] = eye
        return eye

    def _pulse_columns(self, ks: list[int], counts: torch.Tensor) -> None:
        # only the devices of these columns with a nonzero count are gathered and pulsed
        # (the sparse path of DeviceArray.apply; the rest of the array is not looked at),
        # unless the array is one that DeviceArray computes whole anyway (small arrays)
        if self.devices.computes_whole():
            super()._pulse_columns(ks, counts)
            return
        m = len(ks)
        flat_counts = counts.reshape(-1)  # [rows * m], row-major
        nz = torch.nonzero(flat_counts).view(-1)
        if nz.numel() == 0:
            return
        col = torch.remainder(nz, m)
        if ks != list(range(ks[0], ks[0] + m)):
            col = torch.tensor(ks, device=self.device).index_select(0, col)
        elif ks[0]:
            col = col + ks[0]
        idx = torch.div(nz, m, rounding_mode="floor").mul_(self.cols).add_(col)
        self.weights = self.devices.apply_signed_at(
            self.weights, idx, flat_counts.index_select(0, nz), self.generator,
            self.config.update.max_chunks, inplace=True,
        )

    def _read(self) -> torch.Tensor:
        # One-hot column reads through the full periphery, all columns in one batched MVM.
        eye = torch.eye(self.cols, device=self.device, dtype=self.weights.dtype)
        return self._forward(eye).T.contiguous()

    # --------------------------------------------------------- simulation-only
    def true_weights(self) -> torch.Tensor:
        """The exact weights MVMs compute with ``[rows, cols]``: no read noise, but the write-noise
        offset included (not available on hardware)."""
        return self._apparent().clone()

    def hidden_weights(self) -> torch.Tensor:
        """The hidden weights ``[rows, cols]`` that pulses move (without the write-noise offset;
        equal to :meth:`true_weights` for a model without write noise)."""
        return self.weights.clone()

    def set_weights(self, w: torch.Tensor) -> None:
        """Set the hidden weights directly (clamped to each device's bounds; stuck devices stay stuck).

        Like a write to every device, this draws a fresh write-noise offset (when the model
        has write noise; aihwkit's ``apply_write_noise_on_set``)."""
        if tuple(w.shape) != self.shape:
            raise ValueError(f"set_weights: expected shape {list(self.shape)}, got {list(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("set_weights: weights contain NaN/inf")
        self.weights = self.devices.clamp(w.to(self.device, self.weights.dtype))
        if self.devices.offset is not None:
            self.devices.offset = self.devices.fresh_offset(self.generator)

    def symmetry_point(self) -> torch.Tensor:
        """Per-device symmetry point ``[rows, cols]`` (where mean up and down steps cancel)."""
        return self.devices.symmetry_point()

    def n_states(self) -> torch.Tensor:
        """Per-device number of states ``[rows, cols]`` (weight range / step at the symmetry point)."""
        return self.devices.n_states()

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "weights": self.weights.clone().cpu(),
            "devices": {k: v.cpu() for k, v in self.devices.state_dict().items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cfg = SimulatedCrossbarConfig.model_validate(state["config"])
        if (cfg.rows, cfg.cols) != self.shape:
            raise ValueError(
                f"checkpoint is for a {cfg.rows}x{cfg.cols} array, this one is {self.rows}x{self.cols}"
            )
        if cfg.device != self.config.device:
            # another device model: rebuild the parameter tensors' layout (their values,
            # the stuck mask and the weights all come from the checkpoint below)
            scratch = torch.Generator(device=self.device)
            self.devices = DeviceArray(cfg.device, self.rows, self.cols, scratch, self.device)
            self.dw_nominal = nominal_dw(cfg.device)
        self.config = cfg
        self.devices.load_state_dict(state["devices"])
        # a copy: pulses update the weights in place, the caller's state must stay as it is
        self.weights = state["weights"].to(self.device, self.weights.dtype, copy=True)
        self.generator.set_state(state["generator"])


def resolve_device_model(device: DeviceModel | str | Path) -> DeviceModel:
    """A device model from an object, a preset name or a JSON file path."""
    if isinstance(device, DeviceModel):
        return device
    from hil.simulated.presets import get_preset, list_presets

    text = str(device)
    if text in list_presets():
        return get_preset(text)
    path = Path(text)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.exists():
            raise ValueError(f"device model file {path} does not exist")
        return DeviceModel.load(path)
    raise ValueError(
        f"unknown device {text!r}: not a preset ({', '.join(list_presets())}) and not a JSON file"
    )

