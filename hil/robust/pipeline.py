"""The CorrectNet pipeline on digits: train, measure, regularize, place and train compensation.

Steps of :func:`run_correctnet` (one network, MLP or CNN):

1. Train the *plain* network and the *Lipschitz*-regularized one (same
   initialization, same data, :func:`~hil.robust.models.train_classifier`).
2. Monte-Carlo accuracy of the plain network versus ``sigma``; ``sigma_star`` is
   the smallest sigma found (grid, then bisection) at which its mean accuracy is
   below half its variation-free accuracy.
3. Per-layer sensitivity of the regularized network at ``sigma_star`` (only that
   layer varies) on a validation part of the training set.
4. Placement search (REINFORCE, :mod:`hil.robust.placement`) whose cheap reward
   trains the blocks briefly (``search_train``) on the fit part and measures
   Monte-Carlo accuracy on the validation part, minus the overhead terms; the
   contenders the agent keeps revisiting and its best few are re-scored by the
   refined reward (blocks trained with the final recipe ``comp_train`` on the fit
   part, more validation chips of other seeds), which picks the placement.
   Baselines: no block, every layer, greedy by sensitivity, scored (both rewards)
   for the report; the agent is not handed them (``warm_start=False``, the
   default: its placement is its own).
5. Final blocks for the RL placement, for compensation everywhere (every layer
   at ``full_rank``) and for the baselines, trained on the whole training set at
   ``sigma_star``; everything is measured on the test set with fresh chips
   (seeds disjoint from the training draws).  In the accuracy-versus-sigma
   table the two compensated methods keep their placement (found at
   ``sigma_star``) and their blocks are trained again for each sigma's chips
   (at sigma 0 they are left untrained, i.e. the identity).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from hil.config import HilModel
from hil.robust.analog import analog_layers
from hil.robust.compensation import (
    CompensationConfig,
    TrainCompensationConfig,
    add_compensation,
    block_params,
    overhead,
    train_compensation,
)
from hil.robust.lipschitz import LipschitzConfig, layer_spectral_norms
from hil.robust.models import TrainConfig, accuracy, digits_cnn, digits_mlp, train_classifier
from hil.robust.montecarlo import MCResult, monte_carlo_accuracy
from hil.robust.placement import (
    AgentConfig,
    PlacementProblem,
    ReinforcePlacementAgent,
    greedy_placement,
    layer_features,
    no_placement,
    uniform_placement,
)
from hil.robust.variation import VariationConfig

METHODS = ("plain", "lipschitz", "lipschitz+rl_compensation", "lipschitz+full_compensation")

# seeds of the Monte-Carlo draws, kept apart so no evaluation reuses a training chip
_SEED_TEST = 10_000
_SEED_VAL = 20_000
_SEED_SENS = 30_000
_SEED_REFINE = 40_000


# ------------------------------------------------------------ building blocks
def layer_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    variation: VariationConfig,
    n_samples: int = 10,
    seed: int = _SEED_SENS,
) -> list[float]:
    """Accuracy lost (fraction) when each analog layer alone varies, in :func:`analog_layers` order."""
    clean = accuracy(model, x, y)
    return [
        clean - monte_carlo_accuracy(model, x, y, variation, n_samples, seed, only=[name]).accuracy_mean
        for name, _ in analog_layers(model)
    ]


class RewardConfig(HilModel):
    """Placement reward ``acc - cost_weight * c/budget - over_penalty * max(0, c/budget - 1)``.

    ``acc``: mean Monte-Carlo accuracy on the validation data after training the blocks;
    ``c``: compensation parameters / network parameters.
    """

    budget: float = Field(0.05, gt=0, description="overhead budget, fraction of the network's parameters")
    cost_weight: float = Field(0.02, ge=0, description="reward lost per budget spent")
    over_penalty: float = Field(1.0, ge=0, description="reward lost per budget overspent")
    n_samples: int = Field(30, ge=1, description="validation chips per placement")
    refine_samples: int = Field(
        100,
        ge=1,
        description="validation chips of the refined reward (other seeds); per-chip accuracy at sigma_star "
        "has a standard deviation of up to 5 points on the CNN, so 20 chips cannot rank the best placements",
    )


def compensation_problem(
    model: nn.Module,
    fit: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    variation: VariationConfig,
    ranks: Sequence[int],
    sensitivity: Sequence[float],
    comp: CompensationConfig | None = None,
    train: TrainCompensationConfig | None = None,
    reward: RewardConfig | None = None,
    refine_train: TrainCompensationConfig | None = None,
    accuracies: dict[tuple[str, tuple[int, ...]], float] | None = None,
) -> tuple[PlacementProblem, Callable[[Sequence[int]], list[int | None]], dict[tuple[int, ...], dict[str, float]]]:
    """The placement problem of compensating ``model`` (frozen) at ``variation``.

    Action 0 = no block, action ``k`` = a block of rank ``ranks[k-1]`` (rank 0: affine only).
    Returns the problem, the map actions -> ranks for :func:`add_compensation`, and the
    cache ``actions -> {"reward", "accuracy", "overhead"}`` that the reward fills.
    ``refine_train``, when given, makes the problem's ``refine`` reward: the same
    formula after training the blocks with this (longer, final) recipe, on
    ``reward.refine_samples`` validation chips of other seeds; it adds
    ``"refined_reward"`` and ``"refined_accuracy"`` to the cache entry.
    ``accuracies``: a memo ``("cheap" | "refined", actions) -> validation accuracy`` that
    several problems on the same model, data and recipes share (e.g. the same network at
    several budgets: the accuracy of a placement does not depend on the budget); it is
    read before training and filled after.
    """
    comp = comp or CompensationConfig()
    train = train or TrainCompensationConfig()
    reward = reward or RewardConfig()
    layers = analog_layers(model)
    if len(sensitivity) != len(layers):
        raise ValueError(f"compensation_problem: {len(sensitivity)} sensitivities for {len(layers)} layers")
    ov = overhead(model, val[0])
    net = ov.network_params
    costs = torch.zeros(len(layers), len(ranks) + 1)
    for i, (_, layer) in enumerate(layers):
        for k, r in enumerate(ranks):
            costs[i, k + 1] = block_params(layer, r, comp) / net
    params, macs = _layer_sizes(model, val[0])
    features = layer_features(params, macs, sensitivity)

    def to_ranks(actions: Sequence[int]) -> list[int | None]:
        return [None if a == 0 else int(ranks[a - 1]) for a in actions]

    cache: dict[tuple[int, ...], dict[str, float]] = {}

    memo = accuracies if accuracies is not None else {}

    def measure(
        key: tuple[int, ...], fidelity: str, tcfg: TrainCompensationConfig, n: int, seed: int
    ) -> tuple[float, float]:
        if (fidelity, key) in memo:
            acc = memo[(fidelity, key)]
        else:
            placed = to_ranks(key)
            if all(r is None for r in placed):
                m = model
            else:
                m = add_compensation(model, placed, comp, seed=tcfg.seed)
                train_compensation(m, fit[0], fit[1], variation, tcfg)
            acc = monte_carlo_accuracy(m, val[0], val[1], variation, n, seed).accuracy_mean
            memo[(fidelity, key)] = acc
        c = sum(float(costs[i, a]) for i, a in enumerate(key))
        r = acc - reward.cost_weight * c / reward.budget - reward.over_penalty * max(0.0, c / reward.budget - 1)
        return r, acc

    def entry(key: tuple[int, ...]) -> dict[str, float]:
        if key not in cache:
            cache[key] = {"overhead": sum(float(costs[i, a]) for i, a in enumerate(key))}
        return cache[key]

    def score(actions: tuple[int, ...]) -> float:
        e = entry(tuple(int(a) for a in actions))
        if "reward" not in e:
            e["reward"], e["accuracy"] = measure(
                tuple(int(a) for a in actions), "cheap", train, reward.n_samples, _SEED_VAL
            )
        return e["reward"]

    def refine(actions: tuple[int, ...]) -> float:
        assert refine_train is not None
        e = entry(tuple(int(a) for a in actions))
        if "refined_reward" not in e:
            e["refined_reward"], e["refined_accuracy"] = measure(
                tuple(int(a) for a in actions), "refined", refine_train, reward.refine_samples, _SEED_REFINE
            )
        return e["refined_reward"]

    names = [n for n, _ in layers]
    problem = PlacementProblem(
        features, costs, reward.budget, score, names, refine if refine_train is not None else None
    )
    return problem, to_ranks, cache


@torch.no_grad()
def _layer_sizes(model: nn.Module, example: torch.Tensor) -> tuple[list[int], list[int]]:
    """Weights and per-example MACs of every analog layer."""
    layers = analog_layers(model)
    macs: dict[str, int] = {}
    hooks = []
    for name, layer in layers:
        def hook(mod: nn.Module, inp: Any, out: torch.Tensor, name: str = name) -> None:
            per_out = mod.weight[0].numel()
            macs[name] = int(out[0].numel()) * per_out
        hooks.append(layer.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return [int(layer.weight.numel()) for _, layer in layers], [macs[n] for n, _ in layers]


@torch.no_grad()
def digital_only_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy with every analog layer's weights zeroed (its bias kept): what the digital parts alone do.

    A compensated network that scores high here routes the task around the
    crossbars instead of correcting them.
    """
    hooks = []
    for _, layer in analog_layers(model):
        def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> torch.Tensor:
            z = torch.zeros_like(out)
            if mod.bias is not None:
                shape = (1, -1, 1, 1) if isinstance(mod, nn.Conv2d) else (-1,)
                z = z + mod.bias.view(shape)
            return z
        hooks.append(layer.register_forward_hook(hook))
    try:
        return accuracy(model, x, y)
    finally:
        for h in hooks:
            h.remove()


# ------------------------------------------------------------------- config
def _comp(steps: int, batch: int, samples: int) -> dict[str, Any]:
    return {"steps": steps, "batch_size": batch, "n_samples": samples, "lr": 1e-2}


def _search(steps: int, batch: int) -> dict[str, Any]:
    """The cheap reward's block training: short, so a higher learning rate decayed to 0 (cosine).

    Chosen by how it ranks placements against the refined reward (docs/robust.md,
    "Reward fidelity"): at 150 steps the constant 1e-2 of the final recipe leaves the
    largest blocks far from converged and underrates them.
    """
    return {"steps": steps, "batch_size": batch, "n_samples": 4, "lr": 5e-2, "lr_schedule": "cosine"}


# per-network defaults of CorrectNetConfig (filled in where a field is not given)
_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {
        "sigmas": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3, 1.6],
        "lipschitz": {"kind": "variation", "beta": 10.0},
        "comp_train": _comp(1000, 128, 8),
        "table_train": _comp(300, 128, 4),
        "search_train": _search(150, 128),
        "agent": {
            "episodes": 1000, "batch_episodes": 16, "entropy": 0.2, "max_evaluations": 60,
            "promote_visits": 4, "refine_top": 3, "max_refinements": 6,
        },
    },
    "cnn": {
        "sigmas": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
        "lipschitz": {"kind": "variation", "beta": 1.0},
        "comp_train": _comp(1000, 64, 8),
        "table_train": _comp(300, 64, 4),
        "search_train": _search(150, 64),
        "agent": {
            "episodes": 1000, "batch_episodes": 16, "entropy": 0.2, "max_evaluations": 60,
            "promote_visits": 4, "refine_top": 3, "max_refinements": 5,
        },
    },
}


class CorrectNetConfig(HilModel):
    """Everything :func:`run_correctnet` does, with the defaults of the documented run.

    Fields left out take per-network defaults (``_MODEL_DEFAULTS``): the sigma grid
    (the CNN stops at 1.0, where every method is near chance), the Lipschitz
    penalty (``variation``, beta 10 for the MLP, 1 for the CNN: the best clean and
    robust accuracy in the ablation of docs/robust.md), the training of the blocks
    (mini-batch 64 for the CNN to halve its cost) and the agent's evaluation budget.
    """

    model: Literal["mlp", "cnn"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [256, 256], description="MLP hidden widths")
    channels: list[int] = Field(default_factory=lambda: [16, 32], description="CNN channel widths")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=40))
    lipschitz: LipschitzConfig
    variation: VariationConfig = Field(
        default_factory=VariationConfig, description="additive/read-noise terms; sigma is swept"
    )
    sigmas: list[float] = Field(min_length=2, description="the table's sigma grid (sigma_star is added)")
    bisection_steps: int = Field(3, ge=0, description="refinements of sigma_star between grid points")
    n_samples: int = Field(30, ge=2, description="Monte-Carlo chips per table entry")
    ranks: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 4, 8], description="block ranks, action k -> ranks[k-1]"
    )
    full_rank: int = Field(4, ge=0, description="rank of every block of 'full compensation'")
    compensation: CompensationConfig = Field(default_factory=CompensationConfig)
    comp_train: TrainCompensationConfig = Field(description="blocks at sigma_star (placements compared)")
    table_train: TrainCompensationConfig = Field(description="blocks retrained at the table's other sigmas")
    search_train: TrainCompensationConfig = Field(description="blocks inside the placement reward")
    refine: bool = Field(
        True,
        description="refined placement reward: blocks trained with comp_train (the final recipe) on the fit "
        "part, reward.refine_samples validation chips; see AgentConfig.promote_visits / refine_top",
    )
    reward: RewardConfig = Field(default_factory=RewardConfig)
    agent: AgentConfig
    sensitivity_samples: int = Field(10, ge=1)
    val_fraction: float = Field(0.25, gt=0, lt=1, description="part of the training set held out for placement")
    evaluate_baselines: bool = Field(True, description="also train and test the baseline placements")
    warm_start: bool = Field(
        False,
        description="score the baselines (every layer, greedy) first, inside the agent's search (off: the "
        "agent's placement is its own)",
    )
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            model = data.get("model", "mlp")
            defaults = _MODEL_DEFAULTS.get(model if isinstance(model, str) else "mlp", _MODEL_DEFAULTS["mlp"])
            data = {**defaults, **data}
        return data

    @classmethod
    def quick(cls, model: Literal["mlp", "cnn"] = "mlp") -> CorrectNetConfig:
        """A smaller run (fewer chips, shorter block training, fewer placements) for --quick."""
        batch = _MODEL_DEFAULTS[model]["comp_train"]["batch_size"]
        return cls(
            model=model,
            bisection_steps=2,
            n_samples=16,
            comp_train=_comp(600, batch, 6),
            table_train=_comp(150, batch, 4),
            search_train=_search(60, batch),
            reward=RewardConfig(n_samples=20),
            agent=AgentConfig(
                episodes=600, batch_episodes=16, entropy=0.2, max_evaluations=16,
                promote_visits=4, refine_top=3, max_refinements=4,
            ),
            sensitivity_samples=6,
            evaluate_baselines=False,
        )


# beta of the literature's penalties when only the kind is given: the best of the
# ablation grid (docs/robust.md) for the robust accuracy at sigma_star
SPEC_BETA = {"orthogonal": 1e-3, "spectral": 1e-3}


def lipschitz_config(
    cfg: CorrectNetConfig, kind: str | None = None, beta: float | None = None, lam: float | None = None
) -> LipschitzConfig:
    """``cfg.lipschitz`` with ``kind`` / ``beta`` / ``lam`` replaced where given.

    A new kind without a beta takes the documented default of that kind (``variation``: the
    network's default; ``orthogonal`` / ``spectral``: ``SPEC_BETA``).
    """
    base = cfg.lipschitz
    upd: dict[str, Any] = {}
    if kind is not None and kind != base.kind:
        upd["kind"] = kind
        if beta is None:
            upd["beta"] = SPEC_BETA.get(kind, _MODEL_DEFAULTS[cfg.model]["lipschitz"]["beta"])
    if beta is not None:
        upd["beta"] = beta
    if lam is not None:
        upd["lam"] = lam
    return LipschitzConfig.model_validate({**base.model_dump(), **upd})


# ------------------------------------------------------------------- report
class ResultRow(HilModel):
    method: str
    sigma: float
    accuracy_mean: float
    accuracy_std: float
    accuracy_p5: float
    overhead_params_frac: float
    overhead_macs_frac: float


class PlacementRow(HilModel):
    method: str = Field(description="none | every_layer | greedy | rl | full")
    ranks: list[int | None] = Field(description="block rank per analog layer (None: no block)")
    overhead_params_frac: float
    overhead_macs_frac: float
    val_reward: float | None = Field(None, description="search reward (fit/val split, short training)")
    val_accuracy: float | None = None
    val_refined_reward: float | None = Field(
        None, description="refined search reward (fit/val split, final-length training, other chips)"
    )
    val_refined_accuracy: float | None = None
    test_accuracy_mean: float | None = Field(None, description="test, final training, at sigma_star")
    test_accuracy_std: float | None = None
    digital_only_accuracy: float | None = Field(
        None, description="test accuracy with the analog weights zeroed (compensation alone)"
    )


class LayerRow(HilModel):
    name: str
    params: int
    sensitivity: float = Field(description="accuracy lost when only this layer varies (Lipschitz net, sigma_star)")
    spectral_norm_plain: float
    spectral_norm_lipschitz: float


class CorrectNetReport(HilModel):
    """What :func:`run_correctnet` measured."""

    config: CorrectNetConfig
    clean_accuracy: float = Field(description="variation-free test accuracy of the plain network")
    clean_accuracy_lipschitz: float
    sigma_star: float
    results: list[ResultRow]
    placements: list[PlacementRow]
    layers: list[LayerRow]
    rl_evaluations: int = Field(description="distinct placements the agent scored")
    rl_refinements: int = Field(0, description="placements the agent re-scored with the refined reward")
    rl_cheap_choice: list[int | None] = Field(
        default_factory=list, description="the agent's best placement by the cheap reward alone (ranks)"
    )
    rl_refined: list[tuple[list[int | None], float, float]] = Field(
        default_factory=list, description="placements the agent refined: (ranks, cheap reward, refined reward)"
    )
    search_space: int = Field(description="number of possible placements")
    seconds: dict[str, float]

    def results_json(self) -> dict[str, Any]:
        """The documented JSON: clean_accuracy, sigma_star and the result rows (five keys each)."""
        keys = ("method", "sigma", "accuracy_mean", "accuracy_std", "overhead_params_frac")
        return {
            "clean_accuracy": self.clean_accuracy,
            "sigma_star": self.sigma_star,
            "results": [{k: getattr(r, k) for k in keys} for r in self.results],
        }


# ------------------------------------------------------------------ pipeline
def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _find_sigma_star(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    base: VariationConfig,
    clean: float,
    cfg: CorrectNetConfig,
    curve: dict[float, MCResult],
) -> float:
    """Smallest sigma seen where mean accuracy < clean / 2: first grid crossing, then bisection."""
    grid = sorted(cfg.sigmas)
    below = [s for s in grid if curve[s].accuracy_mean < 0.5 * clean]
    if not below:
        raise ValueError(
            f"plain network stays above half its clean accuracy ({clean:.3f}) up to sigma={grid[-1]}; "
            "extend CorrectNetConfig.sigmas"
        )
    hi = below[0]
    lo = max([s for s in grid if s < hi], default=0.0)
    for _ in range(cfg.bisection_steps):
        mid = round(0.5 * (lo + hi), 4)
        r = monte_carlo_accuracy(model, x, y, base.with_sigma(mid), cfg.n_samples, _SEED_TEST)
        curve[mid] = r
        if r.accuracy_mean < 0.5 * clean:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass
class Prepared:
    """Steps 1-3 of :func:`run_correctnet`: the trained networks, the data splits, sigma_star, sensitivities."""

    plain: nn.Module
    lip: nn.Module
    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_te: torch.Tensor
    y_te: torch.Tensor
    fit: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    clean: float
    clean_lip: float
    curve: dict[float, MCResult]
    sigma_star: float
    sensitivity: list[float]
    names: list[str]
    seconds: dict[str, float]
    variation: VariationConfig = field(default_factory=VariationConfig)

    @property
    def at_star(self) -> VariationConfig:
        """The variation at sigma_star (the other terms of the configuration kept)."""
        return self.variation.with_sigma(self.sigma_star)


def prepare(cfg: CorrectNetConfig, progress: Callable[[str], None] | None = None) -> Prepared:
    """Train the plain and the regularized network, find sigma_star, measure each layer's sensitivity."""
    from hil.datasets import load_digits_split

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    data = load_digits_split()
    if cfg.model == "cnn":
        data = data.images()
    x_tr, y_tr, x_te, y_te = data.x_train, data.y_train, data.x_test, data.y_test
    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    perm = torch.randperm(x_tr.shape[0], generator=gen)
    n_val = int(round(cfg.val_fraction * x_tr.shape[0]))
    val = (x_tr[perm[:n_val]], y_tr[perm[:n_val]])
    fit = (x_tr[perm[n_val:]], y_tr[perm[n_val:]])

    def build() -> nn.Module:
        if cfg.model == "cnn":
            return digits_cnn(cfg.channels, seed=cfg.seed)
        return digits_mlp(cfg.hidden, seed=cfg.seed)

    # 1. networks
    plain = build()
    train_classifier(plain, x_tr, y_tr, cfg.train)
    lip = build()
    train_classifier(lip, x_tr, y_tr, cfg.train, cfg.lipschitz)
    clean = accuracy(plain, x_te, y_te)
    clean_lip = accuracy(lip, x_te, y_te)
    seconds["train"] = time.perf_counter() - t0
    _log(progress, f"trained {cfg.model}: clean accuracy plain {clean:.4f}, lipschitz {clean_lip:.4f}")

    # 2. sigma_star
    base = cfg.variation
    curve = {s: monte_carlo_accuracy(plain, x_te, y_te, base.with_sigma(s), cfg.n_samples, _SEED_TEST) for s in cfg.sigmas}
    sigma_star = _find_sigma_star(plain, x_te, y_te, base, clean, cfg, curve)
    seconds["sigma_star"] = time.perf_counter() - t0 - sum(seconds.values())
    _log(progress, f"sigma_star = {sigma_star:g} (plain accuracy {curve[sigma_star].accuracy_mean:.4f})")

    # 3. sensitivity
    sens = layer_sensitivity(lip, val[0], val[1], base.with_sigma(sigma_star), cfg.sensitivity_samples)
    names = [n for n, _ in analog_layers(lip)]
    _log(progress, "sensitivity at sigma_star: " + ", ".join(f"{n}={s:.3f}" for n, s in zip(names, sens, strict=True)))
    return Prepared(
        plain=plain, lip=lip, x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te, fit=fit, val=val, clean=clean,
        clean_lip=clean_lip, curve=curve, sigma_star=sigma_star, sensitivity=sens, names=names,
        seconds=seconds, variation=base,
    )


def run_correctnet(
    cfg: CorrectNetConfig | None = None,
    progress: Callable[[str], None] | None = None,
    models_out: dict[str, nn.Module] | None = None,
) -> CorrectNetReport:
    """Run the whole pipeline (module docstring) on digits; ``progress`` receives log lines.

    ``models_out``, when given, receives the trained networks: ``plain``, ``lipschitz``,
    ``rl`` and ``full`` (the two compensated ones), and the baselines' when trained.
    """
    cfg = cfg or CorrectNetConfig()
    t0 = time.perf_counter()
    prep = prepare(cfg, progress)
    seconds = dict(prep.seconds)
    plain, lip, fit, val = prep.plain, prep.lip, prep.fit, prep.val
    x_tr, y_tr, x_te, y_te = prep.x_tr, prep.y_tr, prep.x_te, prep.y_te
    clean, clean_lip, curve, sigma_star = prep.clean, prep.clean_lip, prep.curve, prep.sigma_star
    sens, names, base = prep.sensitivity, prep.names, prep.variation
    at_star = base.with_sigma(sigma_star)
    sigmas = sorted(set(cfg.sigmas) | {sigma_star})

    # 4. placement search
    problem, to_ranks, cache = compensation_problem(
        lip, fit, val, at_star, cfg.ranks, sens, cfg.compensation, cfg.search_train, cfg.reward,
        cfg.comp_train if cfg.refine else None,
    )
    t_search = time.perf_counter()
    initial = [uniform_placement(problem), greedy_placement(problem, sens)] if cfg.warm_start else []
    result = ReinforcePlacementAgent(cfg.agent).search(problem, initial)
    seconds["rl_search"] = time.perf_counter() - t_search
    _log(
        progress,
        f"RL placement {to_ranks(result.best_actions)} reward {result.best_reward:.4f} "
        f"after {result.n_evaluations} placements, {len(result.refined)} refined "
        f"(cheap-reward choice {to_ranks(result.best_cheap_actions)}; {seconds['rl_search']:.0f} s)",
    )
    candidates: dict[str, list[int]] = {"rl": result.best_actions}
    if cfg.evaluate_baselines:
        candidates["none"] = no_placement(problem)
        candidates["every_layer"] = uniform_placement(problem)
        candidates["greedy"] = greedy_placement(problem, sens)
        for key in ("none", "every_layer", "greedy"):  # both rewards, for the report (not the search)
            problem.reward(tuple(candidates[key]))
            if problem.refine is not None:
                problem.refine(tuple(candidates[key]))
    full_ranks: list[int | None] = [cfg.full_rank] * len(names)

    # 5. final blocks and the table
    t_final = time.perf_counter()
    results: list[ResultRow] = []
    placements: list[PlacementRow] = []

    def row(method: str, s: float, r: MCResult, ovh_p: float, ovh_m: float) -> None:
        results.append(
            ResultRow(
                method=method, sigma=s, accuracy_mean=r.accuracy_mean, accuracy_std=r.accuracy_std,
                accuracy_p5=r.accuracy_p5, overhead_params_frac=ovh_p, overhead_macs_frac=ovh_m,
            )
        )

    def test_mc(m: nn.Module, s: float) -> MCResult:
        return monte_carlo_accuracy(m, x_te, y_te, base.with_sigma(s), cfg.n_samples, _SEED_TEST)

    for s in sigmas:
        row("plain", s, curve[s] if s in curve else test_mc(plain, s), 0.0, 0.0)
        row("lipschitz", s, test_mc(lip, s), 0.0, 0.0)

    def compensated(ranks: list[int | None], s: float) -> nn.Module:
        """Blocks of ``ranks`` on the Lipschitz network, trained at sigma ``s`` (untrained at 0)."""
        if all(r is None for r in ranks):
            return lip
        m = add_compensation(lip, ranks, cfg.compensation, seed=cfg.seed)
        if s > 0:
            train_compensation(
                m, x_tr, y_tr, base.with_sigma(s), cfg.comp_train if s == sigma_star else cfg.table_train
            )
        return m

    finals: dict[str, tuple[nn.Module, list[int | None]]] = {}
    for key, acts in candidates.items():
        ranks = to_ranks(acts)
        finals[key] = (compensated(ranks, sigma_star), ranks)
    finals["full"] = (compensated(full_ranks, sigma_star), full_ranks)

    for key, (m, ranks) in finals.items():
        ov = overhead(m, x_te)
        res = test_mc(m, sigma_star)
        method = {"rl": "lipschitz+rl_compensation", "full": "lipschitz+full_compensation"}.get(key)
        if method is not None:
            for s in sigmas:  # the table: blocks trained for each sigma's chips
                if s == sigma_star:
                    row(method, s, res, ov.params_frac, ov.macs_frac)
                else:
                    row(method, s, test_mc(compensated(ranks, s), s), ov.params_frac, ov.macs_frac)
        acts_key = tuple(0 if r is None else cfg.ranks.index(r) + 1 for r in ranks) if key != "full" else None
        entry = cache.get(acts_key) if acts_key is not None else None
        placements.append(
            PlacementRow(
                method=key,
                ranks=ranks,
                overhead_params_frac=ov.params_frac,
                overhead_macs_frac=ov.macs_frac,
                val_reward=entry["reward"] if entry else None,
                val_accuracy=entry["accuracy"] if entry else None,
                val_refined_reward=entry.get("refined_reward") if entry else None,
                val_refined_accuracy=entry.get("refined_accuracy") if entry else None,
                test_accuracy_mean=res.accuracy_mean,
                test_accuracy_std=res.accuracy_std,
                digital_only_accuracy=digital_only_accuracy(m, x_te, y_te),
            )
        )
    seconds["final"] = time.perf_counter() - t_final
    if models_out is not None:
        models_out.update({"plain": plain, "lipschitz": lip})
        models_out.update({k: m for k, (m, _) in finals.items()})

    norms_plain = layer_spectral_norms(plain, x_te)
    norms_lip = layer_spectral_norms(lip, x_te)
    params, _ = _layer_sizes(lip, x_te)
    layers = [
        LayerRow(
            name=n, params=p, sensitivity=s, spectral_norm_plain=norms_plain[n], spectral_norm_lipschitz=norms_lip[n]
        )
        for n, p, s in zip(names, params, sens, strict=True)
    ]
    order = {m: i for i, m in enumerate(METHODS)}
    results.sort(key=lambda r: (order[r.method], r.sigma))
    seconds["total"] = time.perf_counter() - t0
    return CorrectNetReport(
        config=cfg,
        clean_accuracy=clean,
        clean_accuracy_lipschitz=clean_lip,
        sigma_star=sigma_star,
        results=results,
        placements=placements,
        layers=layers,
        rl_evaluations=result.n_evaluations,
        rl_refinements=len(result.refined),
        rl_cheap_choice=to_ranks(result.best_cheap_actions),
        rl_refined=[(to_ranks(a), c, f) for a, c, f in result.refined],
        search_space=(len(cfg.ranks) + 1) ** len(names),
        seconds=seconds,
    )


def format_table(report: CorrectNetReport) -> str:
    """Accuracy (mean +- std over chips, %) per method and sigma, with the overhead of each method."""
    sig = sorted({r.sigma for r in report.results})
    head = f"{'method':<30}{'params+':>8}{'MACs+':>8}" + "".join(
        f"{('s=' + format(s, 'g') + ('*' if s == report.sigma_star else '')):>14}" for s in sig
    )
    lines = [
        f"{report.config.model}: clean accuracy {100 * report.clean_accuracy:.2f} %, "
        f"sigma_star = {report.sigma_star:g} (* column), target >= {95 * report.clean_accuracy:.2f} %",
        head,
    ]
    for method in METHODS:
        rows = {r.sigma: r for r in report.results if r.method == method}
        if not rows:
            continue
        any_row = next(iter(rows.values()))
        cells = "".join(
            f"{100 * rows[s].accuracy_mean:>8.1f}+-{100 * rows[s].accuracy_std:<4.1f}" if s in rows else f"{'':>14}"
            for s in sig
        )
        lines.append(
            f"{method:<30}{100 * any_row.overhead_params_frac:>7.2f}%{100 * any_row.overhead_macs_frac:>7.2f}%{cells}"
        )
    lines.append("")
    lines.append(
        f"placements at sigma_star (budget {100 * report.config.reward.budget:g} % of parameters; "
        f"RL scored {report.rl_evaluations} of {report.search_space} placements, refined "
        f"{report.rl_refinements}; cheap-reward choice "
        + "[" + ", ".join("-" if r is None else str(r) for r in report.rl_cheap_choice) + "]):"
    )
    lines.append(
        f"{'placement':<13}{'ranks':<28}{'params+':>8}{'val reward':>12}{'refined':>10}{'test acc':>14}"
        f"{'digital only':>14}"
    )
    for p in report.placements:
        ranks = "[" + ", ".join("-" if r is None else str(r) for r in p.ranks) + "]"
        vr = f"{p.val_reward:.4f}" if p.val_reward is not None else "-"
        vf = f"{p.val_refined_reward:.4f}" if p.val_refined_reward is not None else "-"
        ta = f"{100 * p.test_accuracy_mean:.1f}+-{100 * (p.test_accuracy_std or 0):.1f}" if p.test_accuracy_mean is not None else "-"
        do = f"{100 * p.digital_only_accuracy:.1f}" if p.digital_only_accuracy is not None else "-"
        lines.append(
            f"{p.method:<13}{ranks:<28}{100 * p.overhead_params_frac:>7.2f}%{vr:>12}{vf:>10}{ta:>14}{do:>14}"
        )
    return "\n".join(lines)
