"""Placement search: the REINFORCE agent finds a known optimum; the baselines do what they say."""

from __future__ import annotations

import itertools

import pytest
import torch

from hil.robust.placement import (
    AgentConfig,
    PlacementProblem,
    ReinforcePlacementAgent,
    greedy_placement,
    layer_features,
    no_placement,
    uniform_placement,
)

# A knapsack with diminishing returns: 5 layers x (none, small, medium, large) blocks.
# The most sensitive layer (4) is also the most expensive, so spending the budget
# on it first (greedy) is not optimal, and neither is the same size everywhere.
COSTS = torch.tensor(
    [[0, 1, 2, 4], [0, 2, 4, 8], [0, 1, 2, 4], [0, 0.5, 1, 2], [0, 3, 6, 12]], dtype=torch.float32
)
BENEFIT = torch.tensor(
    [[0, 0.10, 0.15, 0.18], [0, 0.12, 0.20, 0.26], [0, 0.03, 0.05, 0.06], [0, 0.08, 0.12, 0.14],
     [0, 0.20, 0.28, 0.33]]
)
BUDGET = 8.0


def _reward(actions: tuple[int, ...]) -> float:
    c = sum(float(COSTS[i, a]) for i, a in enumerate(actions))
    b = sum(float(BENEFIT[i, a]) for i, a in enumerate(actions))
    return b - 0.002 * c - max(0.0, c / BUDGET - 1.0)


def _problem(calls: list | None = None) -> PlacementProblem:
    def reward(a: tuple[int, ...]) -> float:
        if calls is not None:
            calls.append(a)
        return _reward(a)

    sens = [float(BENEFIT[i, -1]) for i in range(5)]
    feats = layer_features([100, 200, 100, 50, 300], [1, 2, 1, 1, 3], sens)
    return PlacementProblem(feats, COSTS, BUDGET, reward)


def _optimum() -> tuple[int, ...]:
    space = list(itertools.product(range(4), repeat=5))
    return max(space, key=_reward)


def test_the_synthetic_problem_is_not_solved_by_the_baselines() -> None:
    opt = _optimum()
    pb = _problem()
    sens = [float(BENEFIT[i, -1]) for i in range(5)]
    for base in (no_placement(pb), uniform_placement(pb), greedy_placement(pb, sens)):
        assert _reward(tuple(base)) < _reward(opt) - 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_finds_the_known_optimum(seed) -> None:
    calls: list = []
    pb = _problem(calls)
    res = ReinforcePlacementAgent(
        AgentConfig(episodes=1000, batch_episodes=16, lr=0.05, entropy=0.2, seed=seed)
    ).search(pb)
    assert tuple(res.best_actions) == _optimum()
    assert res.best_reward == pytest.approx(_reward(_optimum()))
    assert res.best_cost <= BUDGET
    # every placement is scored once (rewards are cached), and far fewer than the whole space
    assert len(calls) == len(set(calls)) == res.n_evaluations < 4**5 // 3


# The digits failure mode in miniature: a cheap reward (short block training) that
# overrates one placement.  The decoy is a near-optimal placement that the cheap
# reward lifts above the optimum; the refined reward is the true one.
DECOY = (1, 1, 1, 2, 1)


def _cheap(actions: tuple[int, ...]) -> float:
    return _reward(actions) + (0.05 if tuple(actions) == DECOY else 0.0)


def _two_fidelity_problem(calls: list, fine_calls: list) -> PlacementProblem:
    def reward(a: tuple[int, ...]) -> float:
        calls.append(a)
        return _cheap(a)

    def refine(a: tuple[int, ...]) -> float:
        fine_calls.append(a)
        return _reward(a)

    pb = _problem()
    return PlacementProblem(pb.features, pb.costs, pb.budget, reward, refine=refine)


def test_decoy_fools_the_cheap_reward() -> None:
    assert _cheap(DECOY) > _cheap(_optimum()) > _reward(DECOY)
    assert sorted(itertools.product(range(4), repeat=5), key=_cheap)[-2] == _optimum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refined_reward_recovers_the_optimum_the_cheap_reward_misses(seed) -> None:
    base = AgentConfig(episodes=1000, batch_episodes=16, lr=0.05, entropy=0.2, seed=seed)
    # without refinement the agent trusts the cheap reward (and it is asked to, so it
    # must find the decoy: the best by that reward)
    calls: list = []
    plain = ReinforcePlacementAgent(base).search(_two_fidelity_problem(calls, []))
    assert tuple(plain.best_actions) == DECOY and plain.refined == []
    # with refinement: the revisited placements and the best 3 by cheap reward are
    # re-scored; the decoy is unmasked and the optimum returned, for few refine calls
    calls, fine = [], []
    cfg = base.model_copy(update={"promote_visits": 4, "refine_top": 3, "max_refinements": 12})
    res = ReinforcePlacementAgent(cfg).search(_two_fidelity_problem(calls, fine))
    assert tuple(res.best_actions) == _optimum()
    assert res.best_reward == pytest.approx(_reward(_optimum()))
    assert tuple(res.best_cheap_actions) == DECOY
    assert len(fine) == len(set(fine)) == len(res.refined) <= 12
    assert DECOY in fine and _optimum() in fine
    for acts, cheap, refined in res.refined:
        assert cheap == pytest.approx(_cheap(tuple(acts))) and refined == pytest.approx(_reward(tuple(acts)))


def test_refinements_respect_the_cap() -> None:
    fine: list = []
    cfg = AgentConfig(episodes=200, batch_episodes=8, seed=1, promote_visits=1, refine_top=50, max_refinements=4)
    res = ReinforcePlacementAgent(cfg).search(_two_fidelity_problem([], fine))
    assert len(fine) == 4 == len(res.refined)
    assert res.best_actions == max(res.refined, key=lambda t: t[2])[0]
    # no refine reward on the problem: the options are inert
    res2 = ReinforcePlacementAgent(cfg).search(_problem())
    assert res2.refined == [] and res2.best_actions == res2.best_cheap_actions


def test_agent_is_seeded_and_stops_at_max_evaluations() -> None:
    cfg = AgentConfig(episodes=200, batch_episodes=8, seed=4)
    a = ReinforcePlacementAgent(cfg).search(_problem())
    b = ReinforcePlacementAgent(cfg).search(_problem())
    assert a == b
    capped = ReinforcePlacementAgent(cfg.model_copy(update={"max_evaluations": 10})).search(_problem())
    assert capped.n_evaluations <= 10 + cfg.batch_episodes  # checked between batches


def test_baselines() -> None:
    pb = _problem()
    assert no_placement(pb) == [0] * 5
    # every layer at the largest size whose total fits: action 1 costs 7.5 <= 8, action 2 costs 15
    assert uniform_placement(pb) == [1] * 5
    # greedy: layer 4 first (largest action that fits: 2, cost 6), then layer 1 (action 1, cost 2)
    sens = [float(BENEFIT[i, -1]) for i in range(5)]
    assert greedy_placement(pb, sens) == [0, 1, 0, 0, 2]
    with pytest.raises(ValueError, match="sensitivities"):
        greedy_placement(pb, [1.0])


def test_problem_validation() -> None:
    f = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="must cost 0"):
        PlacementProblem(f, torch.ones(2, 3), 1.0, lambda a: 0.0)
    with pytest.raises(ValueError, match="layers of features"):
        PlacementProblem(f, torch.zeros(3, 3), 1.0, lambda a: 0.0)
    with pytest.raises(ValueError, match="budget"):
        PlacementProblem(f, torch.zeros(2, 3), 0.0, lambda a: 0.0)
    pb = PlacementProblem(f, torch.zeros(2, 3), 1.0, lambda a: float("nan"))
    with pytest.raises(ValueError, match="finite"):
        ReinforcePlacementAgent(AgentConfig(episodes=2)).search(pb)


def test_layer_features_are_normalized() -> None:
    f = layer_features([10, 1000], [5, 15], [0.2, 0.1])
    assert f.shape == (2, 4)
    assert f[:, 0].tolist() == [0.0, 1.0]
    assert float(f[1, 1]) == pytest.approx(1.0) and float(f[0, 2]) == pytest.approx(1.0)
    assert float(f[:, 3].sum()) == pytest.approx(1.0)


def test_initial_placements_are_scored_first() -> None:
    calls: list = []
    pb = _problem(calls)
    opt = list(_optimum())
    res = ReinforcePlacementAgent(AgentConfig(episodes=16, batch_episodes=16, seed=0)).search(pb, [opt, [0] * 5])
    assert calls[:2] == [tuple(opt), (0,) * 5]
    assert res.best_actions == opt  # never worse than what it was given
    with pytest.raises(ValueError, match="does not fit"):
        ReinforcePlacementAgent(AgentConfig(episodes=1)).search(pb, [[9, 0, 0, 0, 0]])


def test_masking_spends_no_evaluation_over_the_budget() -> None:
    pb = _problem()
    masked = ReinforcePlacementAgent(AgentConfig(episodes=160, batch_episodes=16, seed=0)).search(pb)
    assert masked.evaluated and all(pb.cost(a) <= BUDGET for a, _ in masked.evaluated)
    free = ReinforcePlacementAgent(
        AgentConfig(episodes=160, batch_episodes=16, seed=0, mask_over_budget=False)
    ).search(pb)
    assert any(pb.cost(a) > BUDGET for a, _ in free.evaluated)  # what the mask saves


def test_centred_ranks() -> None:
    from hil.robust.placement import _centred_ranks

    r = _centred_ranks(torch.tensor([0.3, 0.1, 0.2, 0.2]))
    torch.testing.assert_close(r, torch.tensor([0.5, -0.5, 0.0, 0.0]))


# Interactions between layers: layers 0 and 1 are both sensitive, but their errors are
# the same ones (a block on one makes a block on the other nearly useless: together
# they add only 10 % of the smaller benefit).  A one-layer-at-a-time sensitivity
# ranking spends the budget on both; the optimum spends it on layer 0 and the rest.
I_COSTS = torch.tensor([[0, 1, 2, 4]] * 6, dtype=torch.float32)
I_BENEFIT = torch.tensor(
    [[0, 0.20, 0.28, 0.32], [0, 0.19, 0.27, 0.31], [0, 0.08, 0.11, 0.12], [0, 0.06, 0.08, 0.09],
     [0, 0.05, 0.07, 0.075], [0, 0.02, 0.03, 0.035]]
)
I_BUDGET = 6.0


def _i_reward(actions: tuple[int, ...]) -> float:
    b = [float(I_BENEFIT[i, a]) for i, a in enumerate(actions)]
    c = sum(float(I_COSTS[i, a]) for i, a in enumerate(actions))
    return sum(b) - 0.9 * min(b[0], b[1]) - 0.002 * c - max(0.0, c / I_BUDGET - 1.0)


def _i_problem() -> PlacementProblem:
    sens = [float(I_BENEFIT[i, -1]) for i in range(6)]  # each layer's benefit alone
    feats = layer_features([100] * 6, [1] * 6, sens)
    return PlacementProblem(feats, I_COSTS, I_BUDGET, _i_reward)


def test_interacting_layers_fool_greedy_not_the_agent() -> None:
    opt = max(itertools.product(range(4), repeat=6), key=_i_reward)
    pb = _i_problem()
    greedy = tuple(greedy_placement(pb, [float(I_BENEFIT[i, -1]) for i in range(6)]))
    assert greedy == (3, 2, 0, 0, 0, 0)  # both redundant layers first
    assert _i_reward(greedy) < _i_reward(opt) - 0.1
    for seed in (0, 1, 2):
        res = ReinforcePlacementAgent(AgentConfig(seed=seed)).search(pb)
        assert tuple(res.best_actions) == opt, (seed, res.best_actions, opt)
        assert res.n_evaluations < 4**6 // 10
