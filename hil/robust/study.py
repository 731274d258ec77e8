"""Does the RL placement earn its place?  Seeds, budgets, baselines and reward fidelity, paired on test chips.

:func:`placement_study` takes one network of the CorrectNet pipeline (steps 1-3 of
:func:`~hil.robust.pipeline.run_correctnet`: the same trained networks, sigma_star
and sensitivities, :func:`~hil.robust.pipeline.prepare`) and, for each budget:

- places blocks with the baselines: no block, every layer (the largest rank that
  fits everywhere) and greedy by sensitivity;
- runs the REINFORCE agent from scratch (no baseline handed to it) with each of
  ``search_seeds``; the rewards are deterministic (fixed validation chips, seeded
  block training), so the searches share one memo of rewards: a seed's result is
  exactly what it would be alone, only the compute is shared;
- measures every resulting placement on the test set: blocks trained with the
  final recipe (``comp_train``) on the whole training set at sigma_star, Monte-Carlo
  accuracy on the **same** ``test_samples`` test chips for every placement, so
  differences are paired chip by chip (mean and standard error of the per-chip
  difference);
- measures how faithfully the rewards rank placements: Spearman rank correlation
  of the cheap reward, the refined reward and the test accuracy over a uniform
  random sample of the placements that fit the first budget (the test accuracies of
  that sample are a diagnostic: nothing is chosen by them).

Nothing here is tuned on the test set: the agent sees validation rewards only.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence

import torch
from pydantic import Field

from hil.config import HilModel
from hil.robust.compensation import (
    CompensationConfig,
    TrainCompensationConfig,
    add_compensation,
    train_compensation,
)
from hil.robust.montecarlo import MCResult, monte_carlo_accuracy
from hil.robust.pipeline import (
    _SEED_TEST,
    _SEED_VAL,
    CorrectNetConfig,
    Prepared,
    compensation_problem,
    prepare,
)
from hil.robust.placement import (
    PlacementProblem,
    ReinforcePlacementAgent,
    greedy_placement,
    no_placement,
    uniform_placement,
)

Ranks = tuple[int | None, ...]


class StudyConfig(HilModel):
    """What :func:`placement_study` runs (module docstring)."""

    correctnet: CorrectNetConfig = Field(description="network, recipes, reward and agent settings")
    budgets: list[float] = Field(default_factory=lambda: [0.05], min_length=1, description="parameter budgets")
    search_seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], min_length=1, description="seeds of the agent's searches"
    )
    rank_sample: int = Field(
        12,
        ge=0,
        description="random placements within the first budget scored with both rewards for the rank "
        "correlation (a placement's accuracy does not depend on the budget, so once is enough)",
    )
    rank_sample_test: bool = Field(True, description="also measure the sample on test (diagnostic)")
    compare_previous_reward: bool = Field(
        True,
        description="also score the sample with the previous cheap reward (the same steps at the constant "
        "lr 1e-2 of the final recipe, 10 validation chips) to show what the current one changes",
    )
    test_samples: int = Field(
        100, ge=2, description="test chips per placement (the same for all: paired); the tables use n_samples"
    )
    sample_seed: int = 0
    tie_se: float = Field(
        2.0, gt=0, description="a paired difference within this many standard errors counts as a tie"
    )


class StudyPlacement(HilModel):
    """One placement at one budget, with its rewards and its test accuracy."""

    method: str = Field(description="none | every_layer | greedy | rl")
    seed: int | None = Field(None, description="search seed (rl only)")
    ranks: list[int | None]
    overhead_params_frac: float
    cheap_accuracy: float | None = Field(None, description="validation accuracy, short block training")
    refined_accuracy: float | None = Field(None, description="validation accuracy, final block training")
    test_accuracy_mean: float
    test_accuracy_std: float
    diff_vs_greedy: float = Field(description="mean over the test chips of (this - greedy) accuracy")
    diff_vs_greedy_se: float = Field(description="standard error of that mean (paired, chip by chip)")
    n_evaluations: int | None = Field(None, description="distinct placements the search scored (rl only)")
    n_refined: int | None = None
    cheap_choice: list[int | None] | None = Field(None, description="the search's best by the cheap reward")


class RankCorrelation(HilModel):
    """Spearman rank correlations over a random sample of feasible placements."""

    n: int
    cheap_vs_refined: float
    cheap_vs_test: float | None = None
    refined_vs_test: float | None = None
    top_half_cheap_vs_refined: float | None = Field(
        None, description="the same over the better half by refined reward (where the choice is made)"
    )
    top_half_refined_vs_test: float | None = None
    previous_vs_refined: float | None = Field(None, description="the previous cheap reward (StudyConfig)")
    previous_vs_test: float | None = None
    top_half_previous_vs_refined: float | None = None
    samples: list[tuple[list[int | None], float, float, float | None, float | None]] = Field(
        default_factory=list,
        description="(ranks, cheap accuracy, refined accuracy, test accuracy, previous cheap accuracy)",
    )


class BudgetStudy(HilModel):
    budget: float
    feasible: int = Field(description="placements within the budget")
    search_space: int
    placements: list[StudyPlacement]
    rl_test_mean: float = Field(description="test accuracy of the agent's placement, mean over seeds")
    rl_test_std: float = Field(description="its standard deviation over seeds")
    rl_test_min: float
    rl_test_max: float
    rl_wins: int = Field(description="seeds whose placement beats greedy by more than tie_se standard errors")
    rl_ties: int
    rl_losses: int
    rank: RankCorrelation | None = None


class StudyReport(HilModel):
    config: StudyConfig
    model: str
    clean_accuracy_lipschitz: float
    sigma_star: float
    sensitivity: list[float]
    layer_names: list[str]
    budgets: list[BudgetStudy]
    seconds: dict[str, float]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when one side is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman: two sequences of the same length >= 2 expected, got {len(a)} and {len(b)}")

    def ranks(v: Sequence[float]) -> torch.Tensor:
        t = torch.tensor([float(x) for x in v], dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for value in torch.unique(t):  # ties share their average rank
            idx = (t == value).nonzero().flatten()
            if idx.numel() > 1:
                r[idx] = r[idx].mean()
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def feasible_placements(problem: PlacementProblem, limit: int = 200_000) -> list[tuple[int, ...]] | None:
    """Every placement within the budget (None when the space has more than ``limit`` placements)."""
    if problem.n_actions**problem.n_layers > limit:
        return None
    b = problem.budget * (1 + 1e-9)
    return [a for a in itertools.product(range(problem.n_actions), repeat=problem.n_layers) if problem.cost(a) <= b]


def _sample_feasible(problem: PlacementProblem, n: int, seed: int) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    feas = feasible_placements(problem)
    if feas is not None:
        return rng.sample(feas, min(n, len(feas)))
    out: dict[tuple[int, ...], None] = {}
    for _ in range(1000 * max(1, n)):  # rejection sampling: uniform over the feasible set
        a = tuple(rng.randrange(problem.n_actions) for _ in range(problem.n_layers))
        if problem.cost(a) <= problem.budget * (1 + 1e-9):
            out[a] = None
            if len(out) >= n:
                break
    return list(out)


def _paired(a: MCResult, b: MCResult) -> tuple[float, float]:
    d = torch.tensor(a.accuracies, dtype=torch.float64) - torch.tensor(b.accuracies, dtype=torch.float64)
    se = float(d.std() / d.numel() ** 0.5) if d.numel() > 1 else 0.0
    return float(d.mean()), se


def placement_study(
    cfg: StudyConfig, progress: Callable[[str], None] | None = None, prepared: Prepared | None = None
) -> StudyReport:
    """Run the study (module docstring); ``prepared`` reuses networks from :func:`prepare`."""
    net = cfg.correctnet
    t0 = time.perf_counter()
    prep = prepared or prepare(net, progress)
    seconds: dict[str, float] = {"prepare": time.perf_counter() - t0}
    at_star = prep.at_star
    accuracies: dict[tuple[str, tuple[int, ...]], float] = {}
    tests: dict[Ranks, MCResult] = {}

    def log(msg: str) -> None:
        if progress is not None:
            progress(f"[{time.perf_counter() - t0:6.0f} s] {msg}")

    def test(ranks: Sequence[int | None]) -> MCResult:
        key = tuple(ranks)
        if key not in tests:
            if all(r is None for r in key):
                m = prep.lip
            else:
                m = add_compensation(prep.lip, list(key), net.compensation, seed=net.seed)
                train_compensation(m, prep.x_tr, prep.y_tr, at_star, net.comp_train)
            tests[key] = monte_carlo_accuracy(m, prep.x_te, prep.y_te, at_star, cfg.test_samples, _SEED_TEST)
        return tests[key]

    studies: list[BudgetStudy] = []
    for budget in cfg.budgets:
        tb = time.perf_counter()
        problem, to_ranks, _ = compensation_problem(
            prep.lip, prep.fit, prep.val, at_star, net.ranks, prep.sensitivity, net.compensation,
            net.search_train, net.reward.model_copy(update={"budget": budget}),
            net.comp_train if net.refine else None, accuracies,
        )
        feas = feasible_placements(problem)
        base = {
            "none": no_placement(problem),
            "every_layer": uniform_placement(problem),
            "greedy": greedy_placement(problem, prep.sensitivity),
        }
        greedy_test = test(to_ranks(base["greedy"]))

        def row(
            method: str, acts: Sequence[int], seed: int | None = None, *, problem: PlacementProblem = problem,
            to_ranks: Callable[[Sequence[int]], list[int | None]] = to_ranks, greedy_test: MCResult = greedy_test,
            **extra: object,
        ) -> StudyPlacement:
            key = tuple(int(a) for a in acts)
            ranks = to_ranks(key)
            res = test(ranks)
            d, se = _paired(res, greedy_test)
            return StudyPlacement(
                method=method, seed=seed, ranks=ranks, overhead_params_frac=problem.cost(key),
                cheap_accuracy=accuracies.get(("cheap", key)), refined_accuracy=accuracies.get(("refined", key)),
                test_accuracy_mean=res.accuracy_mean, test_accuracy_std=res.accuracy_std,
                diff_vs_greedy=d, diff_vs_greedy_se=se, **extra,  # type: ignore[arg-type]
            )

        rows: list[StudyPlacement] = []
        for seed in cfg.search_seeds:
            res = ReinforcePlacementAgent(net.agent.model_copy(update={"seed": seed})).search(problem)
            rows.append(
                row("rl", res.best_actions, seed, n_evaluations=res.n_evaluations, n_refined=len(res.refined),
                    cheap_choice=to_ranks(res.best_cheap_actions))
            )
            log(f"budget {budget:g}, seed {seed}: RL {rows[-1].ranks} test {rows[-1].test_accuracy_mean:.4f} "
                f"({res.n_evaluations} scored, {len(res.refined)} refined; greedy {to_ranks(base['greedy'])} "
                f"{greedy_test.accuracy_mean:.4f}); {len({k for f, k in accuracies if f == 'cheap'})} "
                "distinct placements scored so far")
        for key, acts in base.items():  # both rewards for the report (outside the searches)
            problem.reward(tuple(acts))
            if problem.refine is not None:
                problem.refine(tuple(acts))
            rows.append(row(key, acts))
        rank = None
        if cfg.rank_sample >= 3 and problem.refine is not None and budget == cfg.budgets[0]:
            sample = _sample_feasible(problem, cfg.rank_sample, cfg.sample_seed)
            pts: list[tuple[list[int | None], float, float, float | None, float | None]] = []
            previous = net.search_train.model_copy(update={"lr": 1e-2, "lr_schedule": "constant"})
            for acts in sample:
                problem.reward(acts)
                problem.refine(acts)
                ranks = to_ranks(acts)
                t_acc = test(ranks).accuracy_mean if cfg.rank_sample_test else None
                p_acc = _val_accuracy(prep, ranks, net.compensation, previous, 10) if cfg.compare_previous_reward else None
                pts.append((ranks, accuracies[("cheap", acts)], accuracies[("refined", acts)], t_acc, p_acc))
            if len(pts) >= 3:  # fewer placements fit: no ranking to measure
                rank = _rank_correlation(pts)
                log(f"budget {budget:g}: rank correlation over {len(pts)} placements: cheap/refined "
                    f"{rank.cheap_vs_refined:.3f}, refined/test {rank.refined_vs_test}")
        rl = [r for r in rows if r.method == "rl"]
        accs = torch.tensor([r.test_accuracy_mean for r in rl], dtype=torch.float64)
        studies.append(
            BudgetStudy(
                budget=budget,
                feasible=len(feas) if feas is not None else -1,
                search_space=problem.n_actions**problem.n_layers,
                placements=rows,
                rl_test_mean=float(accs.mean()),
                rl_test_std=float(accs.std()) if accs.numel() > 1 else 0.0,
                rl_test_min=float(accs.min()),
                rl_test_max=float(accs.max()),
                rl_wins=sum(r.diff_vs_greedy > cfg.tie_se * r.diff_vs_greedy_se for r in rl),
                rl_losses=sum(r.diff_vs_greedy < -cfg.tie_se * r.diff_vs_greedy_se for r in rl),
                rl_ties=sum(abs(r.diff_vs_greedy) <= cfg.tie_se * r.diff_vs_greedy_se for r in rl),
                rank=rank,
            )
        )
        seconds[f"budget {budget:g}"] = time.perf_counter() - tb
    seconds["total"] = time.perf_counter() - t0
    return StudyReport(
        config=cfg, model=net.model, clean_accuracy_lipschitz=prep.clean_lip, sigma_star=prep.sigma_star,
        sensitivity=list(prep.sensitivity), layer_names=list(prep.names), budgets=studies, seconds=seconds,
    )


def _val_accuracy(
    prep: Prepared, ranks: Sequence[int | None], comp: CompensationConfig, train: TrainCompensationConfig, n: int
) -> float:
    """Validation accuracy of ``ranks`` with blocks trained by ``train`` on the fit part (a cheap reward)."""
    if all(r is None for r in ranks):
        m = prep.lip
    else:
        m = add_compensation(prep.lip, list(ranks), comp, seed=train.seed)
        train_compensation(m, prep.fit[0], prep.fit[1], prep.at_star, train)
    return monte_carlo_accuracy(m, prep.val[0], prep.val[1], prep.at_star, n, _SEED_VAL).accuracy_mean


def _rank_correlation(
    pts: list[tuple[list[int | None], float, float, float | None, float | None]],
) -> RankCorrelation:
    cheap = [p[1] for p in pts]
    fine = [p[2] for p in pts]
    has_test = all(p[3] is not None for p in pts)
    tst = [float(p[3]) for p in pts if p[3] is not None]
    has_prev = all(p[4] is not None for p in pts)
    prev = [float(p[4]) for p in pts if p[4] is not None]
    top = sorted(range(len(pts)), key=lambda i: -fine[i])[: max(3, len(pts) // 2)]
    return RankCorrelation(
        previous_vs_refined=spearman(prev, fine) if has_prev else None,
        previous_vs_test=spearman(prev, tst) if has_prev and has_test else None,
        top_half_previous_vs_refined=spearman([prev[i] for i in top], [fine[i] for i in top]) if has_prev else None,
        n=len(pts),
        cheap_vs_refined=spearman(cheap, fine),
        cheap_vs_test=spearman(cheap, tst) if has_test else None,
        refined_vs_test=spearman(fine, tst) if has_test else None,
        top_half_cheap_vs_refined=spearman([cheap[i] for i in top], [fine[i] for i in top]),
        top_half_refined_vs_test=spearman([fine[i] for i in top], [tst[i] for i in top]) if has_test else None,
        samples=pts,
    )


def _fmt(ranks: Sequence[int | None]) -> str:
    return "[" + " ".join("-" if r is None else str(r) for r in ranks) + "]"


def format_study(report: StudyReport) -> str:
    """The study's tables: per budget, every placement with its rewards and paired test difference."""
    lines = [
        f"{report.model}: sigma_star = {report.sigma_star:g}, Lipschitz network clean "
        f"{100 * report.clean_accuracy_lipschitz:.1f} %, sensitivity "
        + ", ".join(f"{n}={s:.3f}" for n, s in zip(report.layer_names, report.sensitivity, strict=True))
    ]
    for b in report.budgets:
        lines.append("")
        lines.append(
            f"budget {100 * b.budget:g} % ({b.feasible} of {b.search_space} placements fit): RL over "
            f"{len([p for p in b.placements if p.method == 'rl'])} seeds, test {100 * b.rl_test_mean:.1f} "
            f"+- {100 * b.rl_test_std:.1f} % (min {100 * b.rl_test_min:.1f}, max {100 * b.rl_test_max:.1f}); "
            f"vs greedy: {b.rl_wins} better, {b.rl_ties} tied, {b.rl_losses} worse"
        )
        lines.append(
            f"{'placement':<13}{'ranks':<14}{'params+':>8}{'cheap':>8}{'refined':>9}{'test %':>14}"
            f"{'- greedy (pts)':>18}{'scored':>8}"
        )
        for p in b.placements:
            name = p.method + (f" s{p.seed}" if p.seed is not None else "")
            ch = f"{p.cheap_accuracy:.3f}" if p.cheap_accuracy is not None else "-"
            rf = f"{p.refined_accuracy:.3f}" if p.refined_accuracy is not None else "-"
            lines.append(
                f"{name:<13}{_fmt(p.ranks):<14}{100 * p.overhead_params_frac:>7.2f}%{ch:>8}{rf:>9}"
                f"{100 * p.test_accuracy_mean:>8.1f}+-{100 * p.test_accuracy_std:<4.1f}"
                f"{100 * p.diff_vs_greedy:>+10.2f} +- {100 * p.diff_vs_greedy_se:<4.2f}"
                f"{(str(p.n_evaluations) if p.n_evaluations is not None else ''):>8}"
            )
        if b.rank is not None:
            r = b.rank

            def f(v: float | None) -> str:
                return "-" if v is None else f"{v:.2f}"

            lines.append(
                f"rank correlation over {r.n} random feasible placements: cheap/refined {f(r.cheap_vs_refined)}, "
                f"cheap/test {f(r.cheap_vs_test)}, refined/test {f(r.refined_vs_test)}; better half: "
                f"cheap/refined {f(r.top_half_cheap_vs_refined)}, refined/test {f(r.top_half_refined_vs_test)}"
            )
            if r.previous_vs_refined is not None:
                lines.append(
                    f"previous cheap reward (constant lr 1e-2, 10 chips) on the same placements: previous/refined "
                    f"{f(r.previous_vs_refined)}, previous/test {f(r.previous_vs_test)}; better half: "
                    f"previous/refined {f(r.top_half_previous_vs_refined)}"
                )
    return "\n".join(lines)
