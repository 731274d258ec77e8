"""Where to put compensation, and how much: a REINFORCE agent and three baselines.

The decision is a sequence, one step per analog layer (in network order).  At
step ``l`` the agent sees

- the layer's own features (:func:`layer_features`): position in the network,
  size (log of its weights, normalized), sensitivity to variation (accuracy lost
  when this layer alone varies, normalized to the most sensitive layer), share
  of the network's MACs;
- the budget already used by steps ``< l`` and the cost of every action at this
  layer, both as fractions of the budget (so it can tell which actions still fit);

and picks an action: ``0`` = no block, ``k >= 1`` = the ``k``-th block size of
the caller's list (e.g. affine only, rank 1, 2, 4...).  Actions that would take
the placement over the budget are masked (probability 0, ``mask_over_budget``):
every sampled placement fits, so no costly evaluation is spent on one the reward
would reject.  After the last layer the
placement is scored once by ``reward(actions)`` (for compensation:
Monte-Carlo accuracy on held-out data after training the blocks, minus an
overhead term, see :func:`compensation_reward`); rewards are cached, so a
placement is trained and measured once however often it is sampled.

The policy is a small MLP shared by all steps (one set of weights for every
layer, so what it learns about "sensitive and cheap" carries over between
layers) plus a per-layer logit offset (so it can still single out one layer).
It is trained by REINFORCE on batches of placements sampled together with an
entropy bonus annealed to zero.  The advantage of a placement is, by default,
the centred rank of its reward within its batch (``advantage="rank"``, in
[-1/2, 1/2]: scale-free, so the step does not depend on how far apart the
rewards of good placements happen to be); ``advantage="scaled"`` is a
leave-one-out baseline (each placement against the mean of the others in its
batch) divided by the spread of the rewards seen so far.

Two reward fidelities.  A placement's reward is first the problem's cheap
``reward`` (short block training).  When the problem also gives ``refine`` (a
costlier, more faithful score, e.g. the final block-training recipe on more
validation chips), the contenders the agent keeps sampling (``promote_visits``
draws and among the best ``refine_top`` by cheap reward so far) are re-scored
with it during the search, and after the search the best ``refine_top``
placements by cheap reward are; up to ``max_refinements`` in all (the last
``refine_top`` of them kept for the end).  While learning (once 3 placements
are refined), a refined placement's reward is its refined score minus the
median (refined - cheap) shift over the refined placements, so the two
fidelities stay on one scale and the agent is steered by the faithful ranking
where it has one.  The placement returned is the best refined one (the best
cheap one when nothing was refined).

Baselines: :func:`no_placement`, :func:`uniform_placement` ("every layer", the
largest block size that fits the budget on every layer) and
:func:`greedy_placement` (layers by decreasing sensitivity, each given the
largest block that still fits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from hil.config import HilModel

Actions = tuple[int, ...]


@dataclass
class PlacementProblem:
    """One placement decision: per-layer features, per-action costs, a budget and a reward.

    features: ``[L, F]`` (any scale; :func:`layer_features` gives normalized ones).
    costs: ``[L, A]`` overhead of action ``a`` at layer ``l`` (same unit as ``budget``;
    action 0 must cost 0).  reward: placement -> float, higher is better.
    """

    features: torch.Tensor
    costs: torch.Tensor
    budget: float
    reward: Callable[[Actions], float]
    names: list[str] = field(default_factory=list)
    refine: Callable[[Actions], float] | None = None

    def __post_init__(self) -> None:
        if self.features.dim() != 2 or self.costs.dim() != 2:
            raise ValueError(
                f"PlacementProblem: features [L, F] and costs [L, A] expected, got "
                f"{list(self.features.shape)} and {list(self.costs.shape)}"
            )
        if self.features.shape[0] != self.costs.shape[0]:
            raise ValueError(
                f"PlacementProblem: {self.features.shape[0]} layers of features but "
                f"{self.costs.shape[0]} of costs"
            )
        if self.costs.shape[1] < 2:
            raise ValueError("PlacementProblem: at least two actions (none and one block) are needed")
        if bool((self.costs[:, 0] != 0).any()):
            raise ValueError("PlacementProblem: action 0 means 'no block' and must cost 0")
        if not self.budget > 0:
            raise ValueError(f"PlacementProblem: budget must be > 0, got {self.budget}")

    @property
    def n_layers(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.costs.shape[1])

    def cost(self, actions: Sequence[int]) -> float:
        """Total overhead of a placement."""
        return float(sum(float(self.costs[l_, a]) for l_, a in enumerate(actions)))


class AgentConfig(HilModel):
    """REINFORCE settings (module docstring)."""

    episodes: int = Field(1000, ge=1, description="placements sampled in total")
    batch_episodes: int = Field(16, ge=1, description="placements per policy update")
    max_evaluations: int | None = Field(
        None, ge=1, description="stop once this many distinct placements were scored"
    )
    lr: float = Field(0.05, gt=0, description="Adam learning rate of the policy")
    hidden: int = Field(32, ge=1)
    entropy: float = Field(0.2, ge=0, description="entropy bonus weight at the start (annealed to 0)")
    advantage: Literal["scaled", "rank"] = Field(
        "rank",
        description="scaled: reward minus the leave-one-out mean, divided by the spread of all rewards seen; "
        "rank: the centred rank of the reward within its batch (scale-free)",
    )
    baseline_decay: float = Field(
        0.8, ge=0, lt=1, description="moving-average baseline decay (only with batch_episodes=1)"
    )
    promote_visits: int | None = Field(
        None, ge=1, description="re-score a placement with the problem's refine reward once sampled this often"
    )
    refine_top: int = Field(0, ge=0, description="after the search, re-score the best this many by cheap reward")
    mask_over_budget: bool = Field(
        True,
        description="never sample an action that would take the placement over the budget (its "
        "probability is set to 0), so no evaluation is spent on a placement the reward rejects",
    )
    max_refinements: int | None = Field(None, ge=0, description="cap on refine calls (None: no cap)")
    seed: int = 0


class SearchResult(HilModel):
    """Outcome of a placement search."""

    best_actions: list[int]
    best_reward: float
    best_cost: float
    n_evaluations: int = Field(description="distinct placements scored (reward calls)")
    n_episodes: int = Field(description="placements sampled")
    mean_reward: list[float] = Field(default_factory=list, description="mean reward of every batch")
    evaluated: list[tuple[list[int], float]] = Field(
        default_factory=list, description="every distinct placement scored and its reward, in order"
    )
    refined: list[tuple[list[int], float, float]] = Field(
        default_factory=list, description="placements re-scored with refine: (actions, cheap reward, refined reward)"
    )
    best_cheap_actions: list[int] = Field(
        default_factory=list, description="the best placement by cheap reward (= best_actions without refine)"
    )


class _Policy(nn.Module):
    """Shared MLP over the step's state plus a per-layer correction of the logits."""

    def __init__(self, n_in: int, n_layers: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_actions))
        nn.init.zeros_(self.net[2].weight)  # start uniform over actions
        nn.init.zeros_(self.net[2].bias)
        self.layer_bias = nn.Parameter(torch.zeros(n_layers, n_actions))

    def forward(self, s: torch.Tensor, layer: int) -> torch.Tensor:
        return self.net(s) + self.layer_bias[layer]


class ReinforcePlacementAgent:
    """Policy-gradient placement search (module docstring)."""

    def __init__(self, cfg: AgentConfig | None = None) -> None:
        self.cfg = cfg or AgentConfig()

    def _states(self, problem: PlacementProblem, layer: int, used: torch.Tensor) -> torch.Tensor:
        """States ``[k, F + 2 + A]`` of ``k`` episodes at ``layer`` with budget ``used`` ``[k]`` spent."""
        b = problem.budget
        k = used.shape[0]
        u = (used / b).unsqueeze(1)
        return torch.cat(
            [
                problem.features[layer].float().expand(k, -1),
                u,
                (1.0 - u).clamp(min=0.0),
                (problem.costs[layer].float() / b).expand(k, -1),
            ],
            dim=1,
        )

    def search(self, problem: PlacementProblem, initial: Sequence[Sequence[int]] = ()) -> SearchResult:
        """Run REINFORCE on ``problem``; returns the best placement scored (module docstring).

        ``initial``: placements scored before the first episode (e.g. the baselines), so
        the result is never worse than them by cheap reward; they count as evaluations and
        are promoted to the refined reward by the same rules as the agent's own placements.
        """
        cfg = self.cfg
        torch.manual_seed(int(cfg.seed))  # the policy's initial weights
        n_in = problem.features.shape[1] + 2 + problem.n_actions
        policy = _Policy(n_in, problem.n_layers, problem.n_actions, cfg.hidden)
        opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        gen = torch.Generator()
        gen.manual_seed(int(cfg.seed))
        cache: dict[Actions, float] = {}
        fine: dict[Actions, float] = {}
        visits: dict[Actions, int] = {}
        evaluated: list[tuple[list[int], float]] = []
        baseline: float | None = None
        means: list[float] = []
        episodes = 0
        can_refine = problem.refine is not None

        def score(actions: Actions) -> float:
            visits[actions] = visits.get(actions, 0) + 1
            if actions not in cache:
                r = float(problem.reward(actions))
                if not math.isfinite(r):
                    raise ValueError(f"placement reward for {list(actions)} is {r}; rewards must be finite")
                cache[actions] = r
                evaluated.append((list(actions), r))
            return cache[actions]

        def refine(actions: Actions) -> bool:
            """Score ``actions`` with the refined reward, once; False when the cap is reached."""
            if actions in fine:
                return True
            if problem.refine is None or (cfg.max_refinements is not None and len(fine) >= cfg.max_refinements):
                return False
            r = float(problem.refine(actions))
            if not math.isfinite(r):
                raise ValueError(f"refined reward for {list(actions)} is {r}; rewards must be finite")
            fine[actions] = r
            return True

        def learning_reward(actions: Actions) -> float:
            if actions not in fine or len(fine) < 3:
                return cache[actions]
            # the refined scale differs from the cheap one (longer training scores higher);
            # the median shift over the refined placements maps one onto the other
            offset = float(torch.tensor([fine[a] - cache[a] for a in fine]).median())
            return fine[actions] - offset

        for acts0 in initial:
            if len(acts0) != problem.n_layers or not all(0 <= int(a) < problem.n_actions for a in acts0):
                raise ValueError(
                    f"initial placement {list(acts0)} does not fit {problem.n_layers} layers x "
                    f"{problem.n_actions} actions"
                )
            score(tuple(int(a) for a in acts0))

        while episodes < cfg.episodes:
            if cfg.max_evaluations is not None and len(cache) >= cfg.max_evaluations:
                break
            k = min(cfg.batch_episodes, cfg.episodes - episodes)
            used = torch.zeros(k)
            acts = torch.zeros(k, problem.n_layers, dtype=torch.long)
            lp = torch.zeros(k)
            ent = torch.zeros(k)
            for layer in range(problem.n_layers):  # the k episodes of a batch step together
                logits = policy(self._states(problem, layer, used), layer)
                if cfg.mask_over_budget:  # action 0 costs nothing, so one action always remains
                    over = used.unsqueeze(1) + problem.costs[layer].float().unsqueeze(0) > problem.budget * (1 + 1e-9)
                    logits = logits.masked_fill(over, -1e9)
                dist = torch.distributions.Categorical(logits=logits)
                a = torch.multinomial(dist.probs.detach(), 1, generator=gen).squeeze(1)
                lp = lp + dist.log_prob(a)
                ent = ent + dist.entropy()
                used = used + problem.costs[layer, a].float()
                acts[:, layer] = a
            rows = [tuple(int(v) for v in row) for row in acts]
            for row in rows:
                score(row)
            if can_refine and cfg.promote_visits is not None:
                # contenders the agent keeps coming back to; the last refine_top refinements
                # are kept for the end of the search
                top = sorted(cache.values(), reverse=True)[: max(1, cfg.refine_top)]
                for row in dict.fromkeys(rows):
                    if visits[row] >= cfg.promote_visits and cache[row] >= top[-1] and row not in fine:
                        if cfg.max_refinements is not None and len(fine) >= cfg.max_refinements - cfg.refine_top:
                            break
                        refine(row)
            rewards = [learning_reward(row) for row in rows]
            episodes += k
            r = torch.tensor(rewards)
            mean = float(r.mean())
            means.append(mean)
            if k > 1 and cfg.advantage == "rank":  # centred ranks in [-1/2, 1/2], ties averaged
                adv = _centred_ranks(r)
            elif k > 1:  # leave-one-out baseline: each episode against the others of its batch
                adv = r - (r.sum() - r) / (k - 1)
            else:
                baseline = mean if baseline is None else cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean
                adv = r - baseline
            scale = float(torch.tensor(list(cache.values())).std()) if len(cache) > 1 else 0.0
            if scale > 0 and not (k > 1 and cfg.advantage == "rank"):
                adv = adv / scale
            frac = episodes / cfg.episodes
            ent_w = cfg.entropy * max(0.0, 1.0 - frac)  # annealed to zero
            loss = -(adv * lp).mean() - ent_w * ent.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        best_cheap = max(cache, key=lambda a: cache[a])
        if can_refine:  # the best few by cheap reward, in order, until the cap
            for acts_ in sorted(cache, key=lambda a: -cache[a])[: cfg.refine_top]:
                if not refine(acts_):
                    break
        best = max(fine, key=lambda a: fine[a]) if fine else best_cheap
        return SearchResult(
            best_actions=list(best),
            best_reward=fine.get(best, cache[best]),
            best_cost=problem.cost(best),
            n_evaluations=len(cache),
            n_episodes=episodes,
            mean_reward=means,
            evaluated=evaluated,
            refined=[(list(a), cache[a], fine[a]) for a in fine],
            best_cheap_actions=list(best_cheap),
        )


def _centred_ranks(r: torch.Tensor) -> torch.Tensor:
    """Ranks of ``r`` [k] (ties share their average rank) scaled to [-1/2, 1/2]."""
    k = r.numel()
    below = (r.unsqueeze(0) < r.unsqueeze(1)).sum(1).double()
    equal = (r.unsqueeze(0) == r.unsqueeze(1)).sum(1).double()
    rank = below + (equal - 1) / 2  # 0 .. k-1
    return (rank / (k - 1) - 0.5).to(r.dtype)


# ----------------------------------------------------------------- baselines
def no_placement(problem: PlacementProblem) -> list[int]:
    """No block anywhere."""
    return [0] * problem.n_layers


def uniform_placement(problem: PlacementProblem) -> list[int]:
    """"Every layer": the largest action whose cost summed over all layers fits the budget.

    Actions are assumed ordered by size.  When even action 1 everywhere is over
    budget, action 1 everywhere is returned (the smallest "every layer" there is).
    """
    for a in range(problem.n_actions - 1, 0, -1):
        if float(problem.costs[:, a].sum()) <= problem.budget:
            return [a] * problem.n_layers
    return [1] * problem.n_layers


def greedy_placement(problem: PlacementProblem, sensitivity: Sequence[float]) -> list[int]:
    """Layers by decreasing ``sensitivity``; each gets the largest action that still fits the budget."""
    if len(sensitivity) != problem.n_layers:
        raise ValueError(
            f"greedy_placement: {len(sensitivity)} sensitivities for {problem.n_layers} layers"
        )
    order = sorted(range(problem.n_layers), key=lambda i: -float(sensitivity[i]))
    acts = [0] * problem.n_layers
    used = 0.0
    for layer in order:
        for a in range(problem.n_actions - 1, 0, -1):
            c = float(problem.costs[layer, a])
            if used + c <= problem.budget:
                acts[layer] = a
                used += c
                break
    return acts


def layer_features(
    params: Sequence[int], macs: Sequence[int], sensitivity: Sequence[float]
) -> torch.Tensor:
    """Normalized per-layer state ``[L, 4]``: position, log size, sensitivity, MAC share."""
    n = len(params)
    if not (len(macs) == len(sensitivity) == n) or n == 0:
        raise ValueError(
            f"layer_features: params, macs, sensitivity must have one entry per layer, got "
            f"{len(params)}, {len(macs)}, {len(sensitivity)}"
        )
    pos = torch.tensor([i / max(1, n - 1) for i in range(n)])
    logp = torch.log(torch.tensor([float(p) for p in params]).clamp(min=1))
    size = logp / logp.max().clamp(min=1e-9)
    sens = torch.tensor([max(0.0, float(s)) for s in sensitivity])
    sens = sens / sens.max() if float(sens.max()) > 0 else sens
    mt = torch.tensor([float(m) for m in macs])
    share = mt / mt.sum().clamp(min=1)
    return torch.stack([pos, size, sens, share], dim=1)
