"""Checkpoint and resume: bit-identical on SimulatedCrossbar, drift recorded on hardware-like arrays."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hil.backend import BackendInfo, CrossbarBackend
from hil.nn import AnalogLinear
from hil.simulated import PeripheryConfig, SimulatedCrossbar
from hil.training import (
    TrainingConfig,
    TrainingController,
    TrainingInterrupted,
    fit,
    load_checkpoint,
    save_checkpoint,
    simulated_factory,
)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 8, generator=g)
    y = (x[:, :3].argmax(1)).long()
    return x, y


def build(algorithm: str, factory: Any = None, h_reset: str = "decrement") -> tuple[nn.Module, TrainingController]:
    torch.manual_seed(0)
    model = nn.Sequential(AnalogLinear(8, 6), nn.Sigmoid(), AnalogLinear(6, 3))
    cfg = TrainingConfig(
        algorithm=algorithm, epochs=3, batch_size=7, lambda_A=1.0, lambda_H=0.2, n_s=2,
        in_chop_prob=0.3, schedule="cosine", seed=4, h_reset=h_reset,
        threshold_noise=0.8 if h_reset == "measured" else None,
    )
    # the noisy preset: c2c and d2d noise, default periphery with read noise, so every
    # random generator (arrays, controller) matters for bit-identity
    factory = factory or simulated_factory("rram-softbounds-20", seed=9)
    return model, TrainingController(model, cfg, factory)


def snapshot(model: nn.Module, ctl: TrainingController) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for name, role, backend in ctl.arrays():
        out[f"{name}.{role}.w"] = backend.true_weights()
        out[f"{name}.{role}.gen"] = backend.generator.get_state()
    for st in ctl.layers:
        for key in ("H", "R", "chop", "C_read", "C_noise"):
            value = getattr(st, key)
            if value is not None:
                out[f"{st.name}.{key}"] = value.clone()
    out["ctl.gen"] = ctl.generator.get_state()
    return out


@pytest.mark.parametrize(
    "algorithm, how, h_reset",
    [("cttv2", "sigterm", "decrement"), ("cttv2", "stop", "measured"), ("analog_sgd", "stop", "decrement"),
     ("tt", "stop", "decrement")],
)
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, algorithm: str, how: str, h_reset: str) -> None:
    x, y = data()
    model, ctl = build(algorithm, h_reset=h_reset)
    ref = fit(model, ctl, x, y, x_test=x, y_test=y)
    expected = snapshot(model, ctl)
    expected_cost = ctl.hardware_cost()

    ckpt = tmp_path / "run.ckpt"
    model, ctl = build(algorithm, h_reset=h_reset)
    if how == "sigterm":
        ctl.add_callback("step", lambda c: os.kill(os.getpid(), signal.SIGTERM) if c.steps == 13 else None)
        with pytest.raises(TrainingInterrupted) as info:
            fit(model, ctl, x, y, x_test=x, y_test=y, checkpoint=ckpt)
        assert info.value.signal_name == "SIGTERM"
    else:
        with pytest.raises(TrainingInterrupted):
            fit(model, ctl, x, y, x_test=x, y_test=y, checkpoint=ckpt, stop_after_steps=13)
    loop = load_checkpoint(ckpt)["loop"]  # 9 batches per epoch: step 13 = epoch 1, batch 4
    assert (loop["epoch"], loop["batch"], loop["history"]) == (1, 4, ref.history[:1])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    model, ctl = build(algorithm, h_reset=h_reset)  # a fresh process would build the same objects
    res = fit(model, ctl, x, y, x_test=x, y_test=y, checkpoint=ckpt, resume=True)
    assert res.resumed_from_step == 13
    got = snapshot(model, ctl)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert res.history == ref.history
    assert res.test_accuracy == ref.test_accuracy
    assert ctl.hardware_cost()["total"] == expected_cost["total"]


def test_resume_with_measured_reset_from_a_decrement_checkpoint_reads_c() -> None:
    """A checkpoint made with h_reset="decrement" has no last read of C; a controller that
    resumes it with "measured" takes one read of C and trains on."""
    x, y = data()
    model, ctl = build("cttv2")
    with pytest.raises(TrainingInterrupted):
        fit(model, ctl, x, y, stop_after_steps=4)
    state = ctl.state_dict()
    assert all(ls["C_read"] is None for ls in state["layers"])
    model2, ctl2 = build("cttv2", h_reset="measured")
    ctl2.load_state_dict(state)
    for st in ctl2.layers:
        c = st.arrays["C"]
        assert st.C_read is not None and st.C_read.shape == (c.rows, c.cols)
        # one read of each column with one-hot inputs: C's weights within the read noise
        assert float((st.C_read - c.true_weights()).abs().max()) < 0.2
    ctl2.zero_grad()
    F.cross_entropy(model2(x[:7]), y[:7]).backward()
    ctl2.step()
    assert ctl2.steps == 5


class HardwareLike(CrossbarBackend):
    """Keeps its own state like a chip: ``state_dict()`` is None; wraps an exact simulated array."""

    def __init__(self, rows: int, cols: int, seed: int) -> None:
        super().__init__(rows, cols)
        self.inner = SimulatedCrossbar(rows, cols, device="softbounds-20", periphery=PeripheryConfig.ideal(), seed=seed)

    def _info(self) -> BackendInfo:
        return self.inner.info.model_copy(update={"name": "HardwareLike", "hardware_id": f"chip-{id(self)}"})

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward(x)

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        return self.inner.backward(d)

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        self.inner.update(x, d, lr)

    def _pulse(self, counts: torch.Tensor) -> None:
        self.inner.pulse(counts)


def test_hardware_resume_reads_back_and_records_drift(tmp_path: Path) -> None:
    x, y = data()
    chips: list[HardwareLike] = []

    def factory(rows: int, cols: int, role: str) -> HardwareLike:
        chips.append(HardwareLike(rows, cols, seed=len(chips)))
        return chips[-1]

    model, ctl = build("ttv2", factory)
    ckpt = tmp_path / "hw.ckpt"
    with pytest.raises(TrainingInterrupted):
        fit(model, ctl, x, y, checkpoint=ckpt, stop_after_steps=5)
    saved = load_checkpoint(ckpt)["controller"]["layers"][0]["arrays"]["C"]
    assert saved["state"] is None and saved["read"].shape == (6, 8)
    # between checkpoint and resume, one device of layer 0's C moves by 3 up pulses
    counts = torch.zeros(6, 8, dtype=torch.int64)
    counts[2, 5] = 3
    c0 = chips[1]
    before = c0.inner.true_weights()[2, 5]
    c0.pulse(counts)
    moved = float(c0.inner.true_weights()[2, 5] - before)
    assert moved > 0

    reuse = iter(chips)
    model, ctl = build("ttv2", lambda r, c, role: next(reuse))
    res = fit(model, ctl, x, y, checkpoint=ckpt, resume=True)
    drift = {(d["layer"], d["role"]): d for d in res.resume_drift}
    assert set(drift) == {("0", "A"), ("0", "C"), ("2", "A"), ("2", "C")}
    # exact reads (ideal periphery): the moved device is the only change
    assert drift[("0", "C")]["max_abs"] == pytest.approx(moved, abs=1e-6)
    for key in (("0", "A"), ("2", "A"), ("2", "C")):
        assert drift[key]["max_abs"] <= 1e-6
    assert res.steps == 27


def test_checkpoint_file_is_versioned_and_atomic(tmp_path: Path) -> None:
    model, ctl = build("ttv2")
    ctl.prepare()
    path = save_checkpoint(tmp_path / "a.ckpt", ctl, {"epoch": 0, "batch": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # no temporary left
    payload = load_checkpoint(path)
    assert payload["schema_version"] == "1.0" and payload["controller"]["format"] == "hil.training.TrainingController"
    payload["schema_version"] = "2.0"
    torch.save(payload, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match="schema_version"):
        load_checkpoint(tmp_path / "b.ckpt")
    (tmp_path / "c.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="c.ckpt"):
        load_checkpoint(tmp_path / "c.ckpt")
    other_model, other = build("analog_sgd")
    with pytest.raises(ValueError, match="algorithm"):
        other.load_state_dict(load_checkpoint(path)["controller"])


def test_periodic_checkpoints(tmp_path: Path) -> None:
    x, y = data()
    model, ctl = build("ttv2")
    ckpt = tmp_path / "p.ckpt"
    seen = []
    ctl.add_callback("step", lambda c: seen.append(ckpt.exists()))
    fit(model, ctl, x, y, checkpoint=ckpt, checkpoint_every=4)
    assert seen[:5] == [False, False, False, False, True]  # written after step 4
    assert load_checkpoint(ckpt)["loop"]["epoch"] == 3  # and at the end
