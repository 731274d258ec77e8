"""The CrossbarBackend contract: input validation, shapes, counters, lifecycle, file formats.

Exercised through ``SimulatedCrossbar`` (the contract's reference implementation)
and through a minimal pure-Python backend that implements only the underscore
primitives, so that the base class's own behaviour is tested as well.
"""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from hil.backend import BackendInfo, CrossbarBackend, OperationCounts, ProgramReport
from hil.config import VersionedFile
from hil.device_model import (
    ConductanceMapping,
    ConstantStep,
    DeviceModel,
    DeviceVariation,
    ExpStep,
    LinearStep,
    PowStep,
    SoftBoundsStep,
    TableStep,
)
from hil.pulse_response import PulseResponse, PulseShape, SwitchingLaw
from hil.simulated import (
    PeripheryConfig,
    SimulatedCrossbar,
    SimulatedCrossbarConfig,
    UpdateConfig,
    get_preset,
    list_presets,
)

ROWS, COLS = 3, 5


@pytest.fixture
def xbar() -> SimulatedCrossbar:
    return SimulatedCrossbar(ROWS, COLS, device="ideal", periphery=PeripheryConfig.ideal(), seed=1)


class DictBackend(CrossbarBackend):
    """The smallest possible backend: exact weights in a tensor, pulses of a fixed step."""

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__(rows, cols)
        self.w = torch.zeros(rows, cols)
        self.closed_hook_calls = 0

    def _info(self) -> BackendInfo:
        return BackendInfo(
            name="DictBackend", rows=self.rows, cols=self.cols, w_min=-1, w_max=1, dw_min=0.01,
            max_pulses_per_call=4,
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        return d @ self.w

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        self.w -= lr * d.T @ x

    def _pulse(self, counts: torch.Tensor) -> None:
        self.w += 0.01 * counts.to(self.w.dtype)

    def _close(self) -> None:
        self.closed_hook_calls += 1


# ----------------------------------------------------------------- shapes
def test_forward_backward_shapes_and_values(xbar: SimulatedCrossbar) -> None:
    w = torch.linspace(-0.9, 0.9, ROWS * COLS).reshape(ROWS, COLS)
    xbar.set_weights(w)
    w = xbar.true_weights()
    x2 = torch.rand(4, COLS)
    d2 = torch.rand(4, ROWS)
    y2 = xbar.forward(x2)
    z2 = xbar.backward(d2)
    assert y2.shape == (4, ROWS) and z2.shape == (4, COLS)
    torch.testing.assert_close(y2, x2 @ w.T)
    torch.testing.assert_close(z2, d2 @ w)
    # 1-D in, 1-D out, same numbers as the batch of one
    y1 = xbar.forward(x2[0])
    z1 = xbar.backward(d2[0])
    assert y1.shape == (ROWS,) and z1.shape == (COLS,)
    torch.testing.assert_close(y1, y2[0])
    torch.testing.assert_close(z1, z2[0])
    # empty batch is a valid batch
    assert xbar.forward(torch.zeros(0, COLS)).shape == (0, ROWS)


def test_update_accepts_1d_and_2d(xbar: SimulatedCrossbar) -> None:
    xbar.update(torch.rand(COLS), torch.rand(ROWS), 0.01)
    xbar.update(torch.rand(2, COLS), torch.rand(2, ROWS), 0.01)
    assert xbar.counts.update_calls == 2 and xbar.counts.update_vectors == 3
    w = xbar.true_weights()
    xbar.update(torch.zeros(0, COLS), torch.zeros(0, ROWS), 0.01)  # empty batch: counted, no-op
    assert xbar.counts.update_calls == 3 and torch.equal(xbar.true_weights(), w)


def test_read_returns_weights(xbar: SimulatedCrossbar) -> None:
    w = torch.rand(ROWS, COLS) - 0.5
    xbar.set_weights(w)
    r = xbar.read(n_reads=3)
    assert r.shape == (ROWS, COLS)
    torch.testing.assert_close(r, xbar.true_weights())


# ------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: b.forward(torch.zeros(2, COLS + 1)), rf"shape \[batch, {COLS}\] or \[{COLS}\], got \[2, {COLS + 1}\]"),
        (lambda b: b.forward(torch.zeros(2, 3, COLS)), r"got \[2, 3, 5\]"),
        (lambda b: b.forward(torch.zeros(())), r"got \[\]"),
        (lambda b: b.backward(torch.zeros(COLS)), rf"d must have shape \[batch, {ROWS}\]"),
        (lambda b: b.forward(torch.zeros(2, COLS, dtype=torch.int64)), "floating-point tensor, got dtype torch.int64"),
        (lambda b: b.forward(torch.zeros(2, COLS, dtype=torch.bool)), "floating-point tensor, got dtype torch.bool"),
        (lambda b: b.forward([0.0] * COLS), "must be a torch.Tensor, got list"),
        (lambda b: b.forward(torch.tensor([float("nan")] + [0.0] * (COLS - 1))), r"x contains 1 NaN/inf"),
        (lambda b: b.backward(torch.full((2, ROWS), float("inf"))), r"d contains 6 NaN/inf"),
        (lambda b: b.forward(torch.zeros(2, COLS, device="meta")), "x is on meta, the backend is on cpu"),
        (lambda b: b.update(torch.zeros(2, COLS), torch.zeros(3, ROWS), 0.1), "same batch size, got 2 and 3"),
        (lambda b: b.update(torch.zeros(2, COLS), torch.zeros(2, ROWS + 1), 0.1), "d must have shape"),
        (lambda b: b.update(torch.zeros(COLS), torch.zeros(ROWS), float("nan")), "lr must be finite"),
        (lambda b: b.update(torch.zeros(COLS), torch.zeros(ROWS), "0.1"), "lr must be a real number, got str"),
        (lambda b: b.update(torch.zeros(COLS), torch.zeros(ROWS), torch.ones(2)), "lr must be a scalar"),
        (lambda b: b.pulse(torch.ones(ROWS, COLS)), "integer tensor, got dtype torch.float32"),
        (lambda b: b.pulse(torch.ones(ROWS, COLS, dtype=torch.bool)), "integer tensor, got dtype torch.bool"),
        (lambda b: b.pulse(torch.ones(COLS, ROWS, dtype=torch.int64)), rf"counts must have shape \[{ROWS}, {COLS}\]"),
        (lambda b: b.pulse(torch.ones(ROWS, COLS, dtype=torch.int64, device="meta")), "counts is on meta"),
        (lambda b: b.read(n_reads=0), "n_reads must be >= 1, got 0"),
        (lambda b: b.program(torch.zeros(ROWS, COLS), tol=0.0), "tol must be > 0"),
        (lambda b: b.program(torch.zeros(ROWS, COLS), max_iter=-1), "max_iter must be >= 0"),
        (lambda b: b.program(torch.zeros(ROWS, COLS, dtype=torch.int32)), "target must be a floating-point"),
        (lambda b: b.program(torch.full((ROWS, COLS), float("nan"))), "target contains 15 NaN/inf"),
    ],
)
def test_bad_input_is_refused_with_a_useful_message(xbar: SimulatedCrossbar, call, match: str) -> None:
    w0 = xbar.true_weights()
    before = xbar.counts.as_dict()
    with pytest.raises(ValueError, match=match) as err:
        call(xbar)
    assert type(xbar).__name__ in str(err.value)  # says where
    # nothing happened: no state change, no counted call
    assert torch.equal(xbar.true_weights(), w0)
    assert xbar.counts.as_dict() == before


def test_max_pulses_per_call_is_enforced() -> None:
    b = DictBackend(2, 2)
    b.pulse(torch.full((2, 2), -4, dtype=torch.int64))
    with pytest.raises(ValueError, match="up to 5 requested, this backend accepts at most 4"):
        b.pulse(torch.full((2, 2), 5, dtype=torch.int64))
    torch.testing.assert_close(b.w, torch.full((2, 2), -0.04))


def test_integer_dtypes_accepted_for_pulse(xbar: SimulatedCrossbar) -> None:
    for dt in (torch.int8, torch.int16, torch.int32, torch.int64):
        xbar.pulse(torch.ones(ROWS, COLS, dtype=dt))
    torch.testing.assert_close(xbar.true_weights(), torch.full((ROWS, COLS), 4 * 0.001))


def test_bad_array_shape() -> None:
    with pytest.raises(ValueError, match="rows=0, cols=3"):
        DictBackend(0, 3)
    with pytest.raises(ValueError, match="positive"):
        SimulatedCrossbar(2, -1, device="ideal")


def test_unknown_device_model_names_presets(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a preset .*ideal"):
        SimulatedCrossbar(2, 2, device="no-such-device")
    with pytest.raises(ValueError, match="does not exist"):
        SimulatedCrossbar(2, 2, device=str(tmp_path / "missing.json"))


def test_set_weights_validates(xbar: SimulatedCrossbar) -> None:
    with pytest.raises(ValueError, match=r"expected shape \[3, 5\], got \[5, 3\]"):
        xbar.set_weights(torch.zeros(COLS, ROWS))
    with pytest.raises(ValueError, match="NaN/inf"):
        xbar.set_weights(torch.full((ROWS, COLS), float("nan")))


# ---------------------------------------------------------------- counters
def test_counters_count_every_call(xbar: SimulatedCrossbar) -> None:
    xbar.forward(torch.rand(4, COLS))
    xbar.forward(torch.rand(COLS))
    xbar.backward(torch.rand(2, ROWS))
    xbar.update(torch.rand(6, COLS), torch.rand(6, ROWS), 0.01)
    xbar.pulse(torch.tensor([[1, -2, 0, 0, 3]] * ROWS))
    xbar.read(n_reads=2)
    c = xbar.counts
    assert (c.forward_calls, c.forward_vectors) == (2, 5)
    assert (c.backward_calls, c.backward_vectors) == (1, 2)
    assert (c.update_calls, c.update_vectors) == (1, 6)
    assert (c.pulse_calls, c.pulses_requested) == (1, 6 * ROWS)
    assert c.read_calls == 1 and c.program_calls == 0
    # lr == 0 is a counted call that changes nothing
    w0 = xbar.true_weights()
    xbar.update(torch.rand(COLS), torch.rand(ROWS), 0.0)
    assert c.update_calls == 2 and torch.equal(xbar.true_weights(), w0)
    c.reset()
    assert c == OperationCounts() and set(c.as_dict().values()) == {0}


def test_program_counts_its_reads_and_pulses(xbar: SimulatedCrossbar) -> None:
    target = torch.full((ROWS, COLS), 0.05)
    rep = xbar.program(target, tol=0.0015, max_iter=10)
    assert rep.converged
    assert xbar.counts.program_calls == 1
    assert xbar.counts.pulses_requested == rep.pulses_spent
    assert xbar.counts.read_calls == rep.reads  # n_reads=1: one read call per read
    assert rep.reads == rep.iterations + 1


# --------------------------------------------------------------- lifecycle
def test_closed_backend_refuses_everything() -> None:
    b = DictBackend(2, 2)
    with b as same:
        assert same is b
        b.forward(torch.zeros(2))
    assert b.closed_hook_calls == 1
    b.close()  # idempotent
    assert b.closed_hook_calls == 1
    for call in (
        lambda: b.forward(torch.zeros(2)),
        lambda: b.backward(torch.zeros(2)),
        lambda: b.update(torch.zeros(2), torch.zeros(2), 0.1),
        lambda: b.pulse(torch.zeros(2, 2, dtype=torch.int64)),
        lambda: b.read(),
        lambda: b.program(torch.zeros(2, 2)),
    ):
        with pytest.raises(RuntimeError, match="DictBackend is closed"):
            call()


def test_context_manager_closes_on_error() -> None:
    with pytest.raises(KeyError):
        with SimulatedCrossbar(2, 2, device="ideal") as b:
            raise KeyError("boom")
    with pytest.raises(RuntimeError, match="closed"):
        b.forward(torch.zeros(2))


def test_base_class_defaults() -> None:
    b = DictBackend(2, 3)
    assert b.shape == (2, 3) and "rows=2, cols=3" in repr(b)
    assert b.state_dict() is None  # hardware keeps its own state
    b.load_state_dict({})  # and ignores a checkpoint
    b.w = torch.arange(6.0).reshape(2, 3)
    torch.testing.assert_close(b.read(), b.w)  # default read: one-hot forward
    # the base program() loop works on any backend with the four primitives
    rep = b.program(torch.full((2, 3), 0.3), tol=0.006, max_iter=40)
    # the weights start far outside the range: at most 4 pulses of 0.01 per round
    assert not rep.converged and rep.iterations == 40
    b.w = torch.zeros(2, 3)
    rep = b.program(torch.full((2, 3), 0.1), tol=0.006, max_iter=40)
    assert rep.converged and rep.max_error <= 0.006 and rep.pulses_spent == 6 * 10


def test_info(xbar: SimulatedCrossbar) -> None:
    info = xbar.info
    assert (info.rows, info.cols, info.kind) == (ROWS, COLS, "simulated")
    assert (info.w_min, info.w_max) == (-1.0, 1.0)
    assert info.dw_min == pytest.approx(0.001)
    assert info.parallel_update and info.details["bl"] == 31


# ------------------------------------------------------------ file formats
def _table_step() -> TableStep:
    return TableStep(
        grid=[-1.0, 0.0, 1.0],
        up_mean=[0.02, 0.01, 0.0],
        down_mean=[0.0, -0.01, -0.02],
        up_std=[0.001, 0.001, 0.0],
        down_std=[0.0, 0.001, 0.001],
    )


STEPS = {
    "constant": ConstantStep(dw_up=0.002, dw_down=0.003, w_min=-0.8, w_max=0.9),
    "linear": LinearStep(gamma_up=0.3, gamma_down=0.7),
    "softbounds": SoftBoundsStep(dw_up=0.05, dw_down=0.04),
    "pow": PowStep(gamma_up=1.5, gamma_down=0.5, w_min=0.0, w_max=2.0),
    "exp": ExpStep(gamma_up=2.0, gamma_down=-1.0),
    "table": _table_step(),
}


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_device_model_round_trip_every_step_model(kind: str, tmp_path) -> None:
    step = STEPS[kind]
    assert step.model == kind
    m = DeviceModel(
        name=f"dev-{kind}",
        step=step,
        variation=DeviceVariation(c2c=0.2, d2d={p: 0.1 for p in step.parameters}, stuck_fraction=0.01, stuck_at="max"),
        read_noise=0.01,
        conductance=ConductanceMapping(g_min_s=1e-6, g_max_s=1e-4),
        provenance={"fit": {"rmse": 0.1}, "files": ["a.csv"]},
        pulse_response=PulseResponse(
            up=SwitchingLaw(log10_t0_s=-8.0, activation_v=3.0, exponent=0.4, field_exponent=2.0),
            down=SwitchingLaw(log10_t0_s=-7.0, activation_v=2.0, exponent=0.3),
            nominal_up=PulseShape(amplitude_v=2.5, width_s=1e-6),
            nominal_down=PulseShape(amplitude_v=3.0, width_s=1e-6),
        ),
    )
    again = DeviceModel.from_json(m.to_json())
    assert again == m and type(again.step) is type(step)
    path = m.save(tmp_path / "sub" / "dev.json")
    assert DeviceModel.load(path) == m
    assert json.loads(path.read_text())["schema_version"] == DeviceModel.SCHEMA_VERSION == "1.3"
    # and the simulator builds from the file
    sim = SimulatedCrossbar(2, 2, device=str(path))
    assert sim.config.device == m


@pytest.mark.parametrize("name", list_presets())
def test_presets_round_trip(name: str) -> None:
    m = get_preset(name)
    assert m.source and m.description
    assert DeviceModel.from_json(m.to_json()) == m


def test_other_models_round_trip() -> None:
    models = [
        PeripheryConfig(),
        PeripheryConfig.ideal(),
        PeripheryConfig(inp_res_bits=4, out_bound=None, w_noise=0.1, w_noise_relative=0.05),
        UpdateConfig(bl=7, update_management=False, max_chunks=3),
        DeviceVariation(c2c=0.5, d2d={"dw_up": 0.1}, stuck_fraction=0.2, stuck_at="min"),
        ConductanceMapping(kind="differential", g_min_s=0.0, g_max_s=2e-5),
        BackendInfo(name="x", rows=2, cols=3, w_min=-1, w_max=1, dw_min=0.01, details={"a": [1, 2]}),
        ProgramReport(
            converged=False, iterations=3, tol=0.01, max_error=0.5, rms_error=0.1,
            converged_fraction=0.75, unconverged_devices=2, pulses_spent=40, reads=4,
        ),
        SimulatedCrossbarConfig(rows=2, cols=3, device=get_preset("pcm-noisy"), seed=7, initial_weight=None),
        SimulatedCrossbar(2, 3, device="asymmetric", seed=3).config,
        SimulatedCrossbar(2, 3, device="ideal").info,
    ]
    for m in models:
        again = type(m).from_json(m.to_json())
        assert again == m, type(m).__name__
        assert type(m).model_validate(json.loads(m.to_json(indent=None))) == m


def test_program_report_is_json(xbar: SimulatedCrossbar) -> None:
    rep = xbar.program(torch.zeros(ROWS, COLS) + 0.01, tol=0.002)
    assert ProgramReport.from_json(rep.to_json()) == rep


def test_simulated_config_rebuilds_the_same_array(tmp_path) -> None:
    a = SimulatedCrossbar(4, 3, device="rram-softbounds-20", seed=11, update=UpdateConfig(bl=15))
    path = a.config.save(tmp_path / "array.json")
    b = SimulatedCrossbar.from_config(SimulatedCrossbarConfig.load(path))
    assert b.config == a.config
    for k, v in a.devices.state_dict().items():
        assert torch.equal(v, b.devices.state_dict()[k]), k


@pytest.mark.parametrize(
    "cls", [DeviceModel, SimulatedCrossbarConfig], ids=lambda c: c.__name__
)
def test_schema_version_mismatch_refused(cls: type[VersionedFile], tmp_path) -> None:
    if cls is DeviceModel:
        obj = get_preset("ideal")
    else:
        obj = SimulatedCrossbarConfig(rows=1, cols=1, device=get_preset("ideal"))
    data = json.loads(obj.to_json())
    data["schema_version"] = "2.0"
    with pytest.raises(ValidationError, match=r"schema_version '2.0' is not readable .*expected major version 1"):
        cls.model_validate(data)
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{path.name}: not a valid {cls.__name__} file"):
        cls.load(path)
    # a minor version bump is readable
    data["schema_version"] = "1.7"
    assert cls.model_validate(data).schema_version == "1.7"


def test_invalid_files_and_models_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot read DeviceModel file"):
        DeviceModel.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid DeviceModel file"):
        DeviceModel.load(bad)
    with pytest.raises(ValidationError, match="extra"):
        PeripheryConfig.model_validate({"out_noise": 0.1, "typo_field": 1})
    with pytest.raises(ValidationError, match=r"w_min \(1.0\) must be below w_max \(0.5\)"):
        ConstantStep(w_min=1.0, w_max=0.5)
    with pytest.raises(ValidationError, match="needs w_min < 0 < w_max"):
        SoftBoundsStep(w_min=0.0, w_max=1.0)
    with pytest.raises(ValidationError, match="does not have"):
        DeviceModel(step=ConstantStep(), variation=DeviceVariation(d2d={"gamma_up": 0.1}))
    with pytest.raises(ValidationError, match="grid must be strictly increasing"):
        TableStep(grid=[0, 0], up_mean=[0, 0], down_mean=[0, 0], up_std=[0, 0], down_std=[0, 0])
    with pytest.raises(ValidationError, match="up_std has 1 values, grid has 2"):
        TableStep(grid=[0, 1], up_mean=[0, 0], down_mean=[0, 0], up_std=[0], down_std=[0, 0])
    with pytest.raises(ValidationError, match="unknown device preset|discriminator|model"):
        DeviceModel.model_validate({"step": {"model": "quadratic"}})
    with pytest.raises(ValidationError):
        UpdateConfig(bl=0)
