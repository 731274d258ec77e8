"""CorrectNet on digits: accuracy versus weight variation for plain, Lipschitz and compensated networks.

Runs :func:`hil.robust.pipeline.run_correctnet` on the sklearn digits (MLP
64-256-256-10 or a small CNN) and prints the table: Monte-Carlo accuracy (mean
+- std over programmed chips, log-normal variation ``w * exp(theta)``,
``theta ~ N(0, sigma^2)``) for

- ``plain``: cross-entropy training only;
- ``lipschitz``: + the Lipschitz penalty (our variation-Lipschitz form, docs/robust.md);
- ``lipschitz+rl_compensation``: + digital compensation blocks where the
  REINFORCE agent put them (budget: 5 % of the network's parameters);
- ``lipschitz+full_compensation``: + a block of rank ``full_rank`` on every layer;

with the overhead of each method (added parameters and MACs), ``sigma_star``
(where plain training falls below half its variation-free accuracy), and the
placement comparison at ``sigma_star`` (RL against no block, every layer and
greedy-by-sensitivity).  One torch thread.

``--placement-study`` instead asks whether the RL placement earns its place
(:mod:`hil.robust.study`): the agent searches from scratch with several seeds
(no baseline handed to it) at each budget, every placement is trained with the
final recipe and measured on the same test chips as greedy (paired), and the
cheap and refined rewards are checked for how they rank random placements.

``--ablation`` instead measures why each part is built the way it is (the
tables of docs/robust.md): the regularizers (none, orthogonal, spectral,
variation-Lipschitz at several beta) and the compensation block (affine only,
low rank from the input or from the output, cross-entropy of raw or of
normalized logits, trained with or without sampled variation).

Usage::

    python examples/correctnet_digits.py --quick --json correctnet.json
    python examples/correctnet_digits.py --model cnn --json correctnet_cnn.json
    python examples/correctnet_digits.py --ablation --model mlp
    python examples/correctnet_digits.py --placement-study --model cnn --budgets 0.05,0.03 --search-seeds 5
    python examples/correctnet_digits.py --quick --lipschitz orthogonal --beta 1e-3   # the spec's penalty

JSON: ``{"clean_accuracy": ..., "sigma_star": ..., "results": [{"method":
"plain"|"lipschitz"|"lipschitz+rl_compensation"|"lipschitz+full_compensation",
"sigma": ..., "accuracy_mean": ..., "accuracy_std": ..., "overhead_params_frac":
...}, ...]}``; ``--report PATH`` writes everything measured (placements, layer
sensitivities and spectral norms, timings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from hil.robust.pipeline import CorrectNetConfig, format_table, lipschitz_config, run_correctnet

# sigma of the ablations: sigma_star of the documented runs and points below it
ABLATION_SIGMAS = {"mlp": [0.0, 0.7, 1.0, 1.3], "cnn": [0.0, 0.2, 0.3, 0.45]}


def ablation(model: str, seed: int = 0, n_samples: int = 30) -> dict:
    """Regularizer and compensation-block ablations on one network (docs/robust.md)."""
    from hil.datasets import load_digits_split
    from hil.robust.compensation import (
        CompensationConfig,
        add_compensation,
        overhead,
        train_compensation,
    )
    from hil.robust.lipschitz import LipschitzConfig, layer_spectral_norms
    from hil.robust.models import accuracy, train_classifier
    from hil.robust.montecarlo import monte_carlo_accuracy
    from hil.robust.pipeline import digital_only_accuracy
    from hil.robust.variation import VariationConfig

    cfg = CorrectNetConfig(model=model, seed=seed)
    data = load_digits_split()
    if model == "cnn":
        data = data.images()
    sigmas = ABLATION_SIGMAS[model]
    star = VariationConfig(sigma=sigmas[-1])

    def build():
        from hil.robust.models import digits_cnn, digits_mlp

        return digits_cnn(cfg.channels, seed) if model == "cnn" else digits_mlp(cfg.hidden, seed)

    def mc(m, s):
        return monte_carlo_accuracy(m, data.x_test, data.y_test, VariationConfig(sigma=s), n_samples, 10_000)

    regs = [("none", None)]
    regs += [(f"orthogonal beta={b:g}", LipschitzConfig(kind="orthogonal", beta=b)) for b in (1e-3, 1e-2)]
    regs += [(f"spectral beta={b:g}", LipschitzConfig(kind="spectral", beta=b)) for b in (1e-3, 1e-2)]
    regs += [(f"variation beta={b:g}", LipschitzConfig(kind="variation", beta=b)) for b in (0.3, 1.0, 3.0, 10.0)]
    out: dict = {"model": model, "sigmas": sigmas, "regularizers": [], "compensation": []}
    lip = None
    print(f"{model}: regularizers (accuracy % at sigma = {sigmas}; largest layer spectral norm)")
    for name, reg in regs:
        m = build()
        train_classifier(m, data.x_train, data.y_train, cfg.train, reg)
        accs = [mc(m, s).accuracy_mean for s in sigmas]
        norm = max(layer_spectral_norms(m, data.x_test).values())
        out["regularizers"].append({"name": name, "accuracy": accs, "max_spectral_norm": norm})
        print(f"  {name:<24}" + "".join(f"{100 * a:8.1f}" for a in accs) + f"   |W|_2 max {norm:6.2f}")
        if reg is not None and reg == cfg.lipschitz:
            lip = m
    assert lip is not None
    n_layers = len([1 for _ in lip.modules() if isinstance(_, (torch.nn.Linear, torch.nn.Conv2d))])
    base_train = cfg.comp_train
    variants = [
        ("no block", None, CompensationConfig(), base_train, star),
        ("affine only (rank 0)", [0] * n_layers, CompensationConfig(), base_train, star),
        ("rank 2, input, normalized CE", [2] * n_layers, CompensationConfig(), base_train, star),
        ("rank 2, input, plain CE", [2] * n_layers, CompensationConfig(),
         base_train.model_copy(update={"loss": "ce"}), star),
        ("rank 2, input, no variation", [2] * n_layers, CompensationConfig(), base_train, VariationConfig()),
        ("rank 2, output", [2] * n_layers, CompensationConfig(source="output"), base_train, star),
    ]
    if model == "cnn":
        variants.append(("rank 2, input 1x1", [2] * n_layers, CompensationConfig(conv_kernel="1x1"), base_train, star))
    print(f"{model}: compensation blocks on the '{cfg.lipschitz.kind}' network, at sigma {star.sigma:g} "
          f"(clean {100 * accuracy(lip, data.x_test, data.y_test):.1f} %)")
    for name, ranks, ccfg, tcfg, train_var in variants:
        if ranks is None:
            m = lip
        else:
            m = add_compensation(lip, ranks, ccfg, seed=seed)
            train_compensation(m, data.x_train, data.y_train, train_var, tcfg)
        r = mc(m, star.sigma)
        ov = overhead(m, data.x_test)
        dig = digital_only_accuracy(m, data.x_test, data.y_test)
        out["compensation"].append({"name": name, "accuracy_mean": r.accuracy_mean, "accuracy_std": r.accuracy_std,
                                    "params_frac": ov.params_frac, "digital_only_accuracy": dig})
        print(f"  {name:<32}{100 * r.accuracy_mean:6.1f} +- {100 * r.accuracy_std:4.1f} %   "
              f"params +{100 * ov.params_frac:5.2f} %   digital only {100 * dig:5.1f} %")
    return out


def _placement_study(args: argparse.Namespace) -> int:
    from hil.robust.study import StudyConfig, format_study, placement_study

    try:
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        print(f"--budgets: expected comma-separated fractions, got {args.budgets!r}", file=sys.stderr)
        return 2
    net = CorrectNetConfig.quick(args.model) if args.quick else CorrectNetConfig(model=args.model)
    upd: dict = {"seed": args.seed}
    if args.hidden is not None:
        upd["hidden"] = [int(h) for h in args.hidden.split(",") if h.strip()]
    net = CorrectNetConfig.model_validate({**net.model_dump(), **upd})
    cfg = StudyConfig(
        correctnet=net, budgets=budgets, search_seeds=list(range(args.search_seeds)), rank_sample=args.rank_sample
    )
    t0 = time.perf_counter()
    report = placement_study(cfg, progress=lambda m: print(m, file=sys.stderr))
    print(format_study(report))
    print(f"{time.perf_counter() - t0:.0f} s in all")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report.to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small configuration (minutes)")
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--json", type=Path, default=None, help="write the results JSON here")
    ap.add_argument("--report", type=Path, default=None, help="write the full report JSON here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lipschitz", choices=["variation", "orthogonal", "spectral"], default=None,
                    help="penalty of the regularized network (default variation; orthogonal = the spec's "
                         "beta * sum ||W^T W - lam I||_F^2)")
    ap.add_argument("--beta", type=float, default=None, help="penalty weight")
    ap.add_argument("--lam", type=float, default=None, help="lambda of the orthogonal / spectral penalties")
    ap.add_argument("--ablation", action="store_true", help="regularizer and block ablations instead")
    ap.add_argument("--placement-study", action="store_true",
                    help="RL against the baselines over search seeds and budgets, paired on test chips, "
                         "and the rank correlation of the rewards (hil.robust.study)")
    ap.add_argument("--budgets", default="0.05", help="placement study: budgets, comma-separated fractions")
    ap.add_argument("--search-seeds", type=int, default=5, help="placement study: seeds 0..N-1 of the search")
    ap.add_argument("--rank-sample", type=int, default=12,
                    help="placement study: random feasible placements ranked by both rewards and on test")
    ap.add_argument("--hidden", default=None, help="MLP hidden widths, e.g. 256,256 (default 256,256)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    if args.placement_study:
        return _placement_study(args)
    if args.ablation:
        out = ablation(args.model, args.seed)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2))
        return 0
    cfg = CorrectNetConfig.quick(args.model) if args.quick else CorrectNetConfig(model=args.model)
    cfg = cfg.model_copy(update={"seed": args.seed})
    if args.hidden is not None:
        cfg = CorrectNetConfig.model_validate(
            {**cfg.model_dump(), "hidden": [int(h) for h in args.hidden.split(",") if h.strip()]}
        )
    if args.lipschitz is not None or args.beta is not None or args.lam is not None:
        cfg = cfg.model_copy(update={"lipschitz": lipschitz_config(cfg, args.lipschitz, args.beta, args.lam)})
    t0 = time.perf_counter()
    report = run_correctnet(cfg, progress=lambda m: print(f"[{time.perf_counter() - t0:6.0f} s] {m}", file=sys.stderr))
    print(format_table(report))
    star = {r.method: r for r in report.results if r.sigma == report.sigma_star}
    full = star["lipschitz+rl_compensation"]
    target = 0.95 * report.clean_accuracy
    print(
        f"\nat sigma_star = {report.sigma_star:g}: plain {100 * star['plain'].accuracy_mean:.1f} %, "
        f"full framework {100 * full.accuracy_mean:.1f} % with {100 * full.overhead_params_frac:.2f} % "
        f"added parameters (target >= {100 * target:.1f} % with < 5 %): "
        + ("met" if full.accuracy_mean >= target and full.overhead_params_frac < 0.05 else "missed")
    )
    print(f"{report.seconds['total']:.0f} s in all")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.results_json(), indent=2))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
