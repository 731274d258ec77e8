"""MVM-level and training-level validation (hil.validation.mvm, hil.validation.training)."""

from __future__ import annotations

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


def test_mvm_refuses_different_shapes() -> None:
    a = SimulatedCrossbar(4, 4, device="ideal")
    b = SimulatedCrossbar(4, 5, device="ideal")
    with pytest.raises(ValueError, match="one shape"):
        validate_mvm(a, b, MvmValidationConfig(program=False))


def _runs(acc_end: float, seeds: int, noise: float, rng: np.random.Generator) -> list[TrainingRun]:
    ep = np.arange(1, 6)
    out = []
    for s in range(seeds):
        acc = acc_end * (1 - np.exp(-ep)) + rng.normal(0, noise, ep.size)
        loss = 2.3 * np.exp(-0.5 * ep) + rng.normal(0, noise, ep.size)
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


@pytest.mark.slow
def test_short_ttv2_run_on_two_chips_of_one_model_passes_and_5_states_fails() -> None:
    from hil.training.digits import digits_device, digits_periphery

    cfg = TrainingValidationConfig(epochs=2, seeds=[0, 1, 2])
    ref = simulated_maker(digits_device(20, 1.0, 0.3), digits_periphery(0.06))
    same = validate_training(ref, simulated_maker(digits_device(20, 1.0, 0.3), digits_periphery(0.06), seed_offset=1), cfg)
    assert same.passed, [(s.name, s.value, s.threshold) for s in same.statistics]
    few = validate_training(ref, simulated_maker(digits_device(5, 1.0, 0.3), digits_periphery(0.06)), cfg)
    assert not few.passed
