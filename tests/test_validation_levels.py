"""MVM-level and training-level validation (hil.validation.mvm, hil.validation.training)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hil.simulated import PeripheryConfig, SimulatedCrossbar, get_preset
from hil.validation.mvm import (
    MvmValidationConfig,
    MvmValidationReport,
    validate_mvm,
    write_mvm_figure,
)
from hil.validation.training import (
    TrainingRun,
    TrainingValidationConfig,
    TrainingValidationReport,
    compare_training,
    simulated_maker,
    validate_training,
)


def _array(read_noise: float, seed: int) -> SimulatedCrossbar:
    model = get_preset("rram-softbounds-20")
    return SimulatedCrossbar(16, 16, device=model, seed=seed,
                             periphery=PeripheryConfig(out_noise=read_noise))


def test_mvm_same_model_passes_and_round_trips(tmp_path) -> None:
    rep, a, b = validate_mvm(_array(0.06, 1), _array(0.06, 2))
    assert rep.passed, [(s.name, s.value, s.threshold) for s in rep.statistics]
    assert [s.name for s in rep.statistics] == [
        "mvm_error_std", "mvm_noise_std", "weight_error_std", "mvm_error_mean", "mvm_error_ks"]
    rep.save(tmp_path / "mvm.json")
    assert MvmValidationReport.load(tmp_path / "mvm.json") == rep
    assert write_mvm_figure(a, b, tmp_path / "mvm.png").stat().st_size > 5000


def test_mvm_three_times_the_read_noise_fails() -> None:
    rep, _, _ = validate_mvm(_array(0.06, 1), _array(0.18, 2))
    assert not rep.passed
    noise = next(s for s in rep.statistics if s.name == "mvm_noise_std")
    assert noise.status == "fail" and noise.candidate == pytest.approx(3 * noise.reference, rel=0.15)


def test_mvm_records_the_start_state_and_warns_when_the_sides_start_apart(tmp_path) -> None:
    model = get_preset("rram-softbounds-20")

    def at(w0: float, seed: int) -> SimulatedCrossbar:
        return SimulatedCrossbar(16, 16, device=model, seed=seed, initial_weight=w0,
                                 periphery=PeripheryConfig(out_noise=0.06))

    rep, _, _ = validate_mvm(at(-0.8, 1), at(-0.8, 2))
    assert rep.warnings == []
    assert rep.reference.start_weight_mean == pytest.approx(-0.8, abs=0.05)
    assert rep.candidate.start_weight_mean == pytest.approx(-0.8, abs=0.05)
    rep, _, _ = validate_mvm(at(-0.8, 1), at(0.0, 2))
    assert len(rep.warnings) == 1 and "different states" in rep.warnings[0]
    assert rep.candidate.start_weight_mean == pytest.approx(0.0, abs=0.05)
    # a 1.0 report (without start states and warnings) still loads
    old = rep.model_dump(mode="json")
    old.update(schema_version="1.0")
    old.pop("warnings")
    for side in ("reference", "candidate"):
        old[side].pop("start_weight_mean")
        old[side].pop("start_weight_std")
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert MvmValidationReport.load(tmp_path / "old.json").warnings == []


def test_mvm_refuses_different_shapes() -> None:
    a = SimulatedCrossbar(4, 4, device="ideal")
    b = SimulatedCrossbar(4, 5, device="ideal")
    with pytest.raises(ValueError, match="one shape"):
        validate_mvm(a, b, MvmValidationConfig(program=False))


def _runs(acc_end: float, seeds: int, noise: float, rng: np.random.Generator,
          seed_effect: np.ndarray | None = None) -> list[TrainingRun]:
    ep = np.arange(1, 6)
    out = []
    for s in range(seeds):
        shift = 0.0 if seed_effect is None else float(seed_effect[s])
        acc = acc_end * (1 - np.exp(-ep)) + shift + rng.normal(0, noise, ep.size)
        loss = 2.3 * np.exp(-0.5 * ep) - shift + rng.normal(0, noise, ep.size)
        out.append(TrainingRun(seed=s, train_loss=loss.tolist(), test_accuracy=acc.tolist(), seconds=1.0))
    return out


def test_training_curves_compare() -> None:
    rng = np.random.default_rng(0)
    ref = _runs(0.90, 4, 0.01, rng)
    same = compare_training(ref, _runs(0.90, 4, 0.01, rng))
    worse = compare_training(ref, _runs(0.80, 4, 0.01, rng))
    assert same.passed, [(s.name, s.value, s.threshold) for s in same.statistics]
    assert not worse.passed
    assert {"final_test_accuracy", "learning_curve_accuracy"} <= {s.name for s in worse.statistics if s.status == "fail"}
    assert TrainingValidationReport.model_validate_json(worse.to_json()) == worse
    with pytest.raises(ValueError, match="at least 2 runs"):
        compare_training(ref[:1], ref)


def test_training_allowance_is_inflated_for_few_seeds() -> None:
    """Student t at the same false-failure rate: 3 + 3 seeds (4 dof) widen the allowance ~2.2x."""
    rng = np.random.default_rng(1)
    ref, cand = _runs(0.9, 3, 0.02, rng), _runs(0.9, 3, 0.02, rng)
    plain = compare_training(ref, cand, TrainingValidationConfig(paired=False, small_sample=False))
    honest = compare_training(ref, cand, TrainingValidationConfig(paired=False, small_sample=True))
    for a, b in zip(plain.statistics, honest.statistics, strict=True):
        assert b.value == pytest.approx(a.value)
        assert b.allowance / a.allowance == pytest.approx(6.62 / 3.0, rel=0.02)  # t_4(0.99865) / z
        assert "4 dof" in b.note


def test_paired_training_comparison_cancels_the_seed_effect() -> None:
    """Same seeds on both sides share initialization and data order: a seed effect common to
    both sides hides a 6-point shift from the unpaired comparison, not from the paired one."""
    rng = np.random.default_rng(2)
    effect = rng.normal(0, 0.1, 8)
    ref = _runs(0.85, 8, 0.005, rng, effect)
    shifted = _runs(0.91, 8, 0.005, rng, effect)
    same = _runs(0.85, 8, 0.005, rng, effect)
    unpaired = compare_training(ref, shifted, TrainingValidationConfig(paired=False))
    paired = compare_training(ref, shifted, TrainingValidationConfig(paired=True))
    assert unpaired.passed, [(s.name, s.value, s.threshold) for s in unpaired.statistics]
    assert not paired.passed and "final_test_accuracy" in [s.name for s in paired.statistics if s.status == "fail"]
    assert "paired by seed" in paired.statistics[0].note
    assert compare_training(ref, same, TrainingValidationConfig(paired=True)).passed
    # other seeds on the candidate side: pairing does not apply
    moved = [r.model_copy(update={"seed": r.seed + 100}) for r in shifted]
    assert "unpaired" in compare_training(ref, moved, TrainingValidationConfig(paired=True)).statistics[0].note


@pytest.mark.slow
def test_analog_sgd_tells_the_measured_enode_device_from_a_constant_step_control(shared_data) -> None:
    """The model-sensitive training check (docs/validation.md): analog SGD, 5 seeds x 3 epochs.
    Two chips of the ENODe lookup-table device pass; the constant-step control fails on the
    learning curve (measured: loss-curve difference 0.58 against a threshold of 0.14)."""
    from hil.calibration.importers.base import import_measurements
    from hil.device_model import DeviceVariation
    from hil.validation.loop import constant_control

    _, res = import_measurements(shared_data / "enode-ecram-lut", "crosssim-lut")
    enode = res.device_model.model_copy(update={
        "variation": DeviceVariation(c2c=0.3, d2d={"dw_up": 0.1, "dw_down": 0.1}), "read_noise": 0.004})
    periphery = PeripheryConfig.ideal().model_copy(update={"w_noise": 0.004})
    cfg = TrainingValidationConfig(algorithm="analog_sgd", epochs=3, seeds=[0, 1, 2, 3, 4],
                                   overrides={"reset_weights": False})
    ref = simulated_maker(enode, periphery)
    same = validate_training(ref, simulated_maker(enode, periphery, seed_offset=1), cfg)
    assert same.passed, [(s.name, s.value, s.threshold) for s in same.statistics]
    wrong = validate_training(ref, simulated_maker(constant_control(enode), periphery, seed_offset=1), cfg)
    assert not wrong.passed
    assert wrong.statistics[1].name == "learning_curve_loss" and wrong.statistics[1].status == "fail"


@pytest.mark.slow
def test_short_ttv2_run_on_two_chips_of_one_model_passes_and_5_states_fails() -> None:
    from hil.training.digits import digits_device, digits_periphery

    cfg = TrainingValidationConfig(epochs=2, seeds=[0, 1, 2])
    ref = simulated_maker(digits_device(20, 1.0, 0.3), digits_periphery(0.06))
    same = validate_training(ref, simulated_maker(digits_device(20, 1.0, 0.3), digits_periphery(0.06), seed_offset=1), cfg)
    assert same.passed, [(s.name, s.value, s.threshold) for s in same.statistics]
    few = validate_training(ref, simulated_maker(digits_device(5, 1.0, 0.3), digits_periphery(0.06)), cfg)
    assert not few.passed
