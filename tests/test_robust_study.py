"""The placement study (RL against the baselines over seeds, paired on test chips) on a tiny network."""

from __future__ import annotations

import pytest

from hil.robust.compensation import TrainCompensationConfig
from hil.robust.models import TrainConfig
from hil.robust.pipeline import CorrectNetConfig, RewardConfig
from hil.robust.placement import AgentConfig
from hil.robust.study import StudyConfig, format_study, placement_study, spearman


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties share their rank
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1])


def test_study_on_a_tiny_network() -> None:
    net = CorrectNetConfig(
        model="mlp",
        hidden=[24],
        train=TrainConfig(epochs=6),
        sigmas=[0.0, 0.5, 1.5, 3.0],
        bisection_steps=0,
        n_samples=4,
        ranks=[0, 1],
        comp_train=TrainCompensationConfig(steps=10, n_samples=2),
        table_train=TrainCompensationConfig(steps=5, n_samples=2),
        search_train=TrainCompensationConfig(steps=5, n_samples=2),
        reward=RewardConfig(n_samples=2, refine_samples=2),
        agent=AgentConfig(episodes=32, batch_episodes=8, max_evaluations=4, refine_top=1, max_refinements=2),
        sensitivity_samples=2,
    )
    report = placement_study(
        StudyConfig(correctnet=net, budgets=[0.05, 0.02], search_seeds=[0, 1], rank_sample=4, test_samples=3)
    )
    assert [b.budget for b in report.budgets] == [0.05, 0.02]
    for b in report.budgets:
        methods = [p.method for p in b.placements]
        assert methods.count("rl") == 2 and {"none", "every_layer", "greedy"} <= set(methods)
        greedy = next(p for p in b.placements if p.method == "greedy")
        assert greedy.diff_vs_greedy == 0.0 and greedy.diff_vs_greedy_se == 0.0
        for p in b.placements:
            assert p.overhead_params_frac <= b.budget + 1e-9 or p.method == "every_layer"
            assert p.refined_accuracy is not None and p.cheap_accuracy is not None
            if p.method == "rl":
                assert p.n_evaluations is not None and p.n_evaluations >= 1
        assert b.rl_wins + b.rl_ties + b.rl_losses == 2
        assert 1 <= b.feasible <= b.search_space == 9
    first, second = report.budgets
    assert first.feasible >= 4 and first.rank is not None and first.rank.n == 4
    assert -1.0 <= first.rank.cheap_vs_refined <= 1.0 and first.rank.refined_vs_test is not None
    assert first.rank.previous_vs_refined is not None and all(p[4] is not None for p in first.rank.samples)
    assert second.rank is None  # measured once, on the first budget's placements
    assert "budget 5 %" in format_study(report)
