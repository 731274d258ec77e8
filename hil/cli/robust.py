"""``hil robust``: the CorrectNet pipeline on digits (MLP or CNN), printed as a table.

Trains a plain and a Lipschitz-regularized network, finds ``sigma_star`` (where the
plain network falls below half its variation-free accuracy), places compensation
blocks with the REINFORCE agent under the parameter budget, and prints Monte-Carlo
accuracy versus sigma for plain / lipschitz / +RL compensation / +full compensation.
``--backend SPEC`` then programs the RL-compensated network into arrays opened
from SPEC (``program()`` write-verify, one array per layer) and measures it there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@click.command()
@click.option("--model", type=click.Choice(["mlp", "cnn"]), default="mlp", show_default=True)
@click.option("--quick", is_flag=True, help="the small configuration (CorrectNetConfig.quick)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CorrectNetConfig JSON (overrides --model/--quick; the other options still apply)")
@click.option("--hidden", default=None, help="MLP hidden widths, e.g. 256,256")
@click.option("--channels", default=None, help="CNN channel widths, e.g. 16,32")
@click.option("--budget", type=float, default=None, help="compensation budget, fraction of parameters")
@click.option("--samples", type=int, default=None, help="Monte-Carlo chips per table entry")
@click.option("--evaluations", type=int, default=None, help="placements the RL agent may score")
@click.option("--lipschitz", "lipschitz_kind", type=click.Choice(["variation", "orthogonal", "spectral"]),
              default=None, help="penalty of the regularized network (default: variation, our form; "
              "orthogonal: the spec's beta * sum ||W^T W - lam I||_F^2; spectral: power iteration)")
@click.option("--beta", type=float, default=None, help="penalty weight (default: per network and kind)")
@click.option("--lam", type=float, default=None, help="lambda, target squared singular value (orthogonal, spectral)")
@click.option("--seed", type=int, default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write {clean_accuracy, sigma_star, results} here")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the full CorrectNetReport JSON here")
@click.option("--backend", "backend_spec", default=None,
              help="also run the RL-compensated network on backends from this spec (e.g. sim:ideal)")
@click.option("--backend-samples", type=int, default=3, show_default=True,
              help="programmings (chips) on the backend")
@click.option("--emulate-variation/--no-emulate-variation", default=True, show_default=True,
              help="apply log-normal variation at sigma_star to the targets before program() "
                   "(off on hardware: the chip's variation is real)")
@click.option("--quiet", is_flag=True, help="no progress lines")
def robust(
    model: str,
    quick: bool,
    config_path: Path | None,
    hidden: str | None,
    channels: str | None,
    budget: float | None,
    samples: int | None,
    evaluations: int | None,
    lipschitz_kind: str | None,
    beta: float | None,
    lam: float | None,
    seed: int | None,
    json_path: Path | None,
    report_path: Path | None,
    backend_spec: str | None,
    backend_samples: int,
    emulate_variation: bool,
    quiet: bool,
) -> None:
    """Robust inference under weight variation (CorrectNet): regularize, compensate, report."""
    import torch

    from hil.robust.pipeline import CorrectNetConfig, format_table, run_correctnet

    torch.set_num_threads(1)
    if config_path is not None:
        try:
            cfg = CorrectNetConfig.model_validate_json(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"{config_path}: not a valid CorrectNetConfig: {exc}") from exc
    else:
        cfg = CorrectNetConfig.quick(model) if quick else CorrectNetConfig(model=model)  # type: ignore[arg-type]
    upd: dict = {}
    if _ints(hidden) is not None:
        upd["hidden"] = _ints(hidden)
    if _ints(channels) is not None:
        upd["channels"] = _ints(channels)
    if samples is not None:
        upd["n_samples"] = samples
    if seed is not None:
        upd["seed"] = seed
    if budget is not None:
        upd["reward"] = cfg.reward.model_copy(update={"budget": budget})
    if evaluations is not None:
        upd["agent"] = cfg.agent.model_copy(update={"max_evaluations": evaluations})
    if lipschitz_kind is not None or beta is not None or lam is not None:
        from hil.robust.pipeline import lipschitz_config

        try:
            upd["lipschitz"] = lipschitz_config(cfg, lipschitz_kind, beta, lam)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    try:
        cfg = CorrectNetConfig.model_validate({**cfg.model_dump(), **{k: v for k, v in upd.items()}})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    models: dict = {}
    try:
        report = run_correctnet(cfg, progress=None if quiet else (lambda m: click.echo(m, err=True)),
                                models_out=models)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(format_table(report))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.results_json(), indent=2))
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(report.to_json())

    if backend_spec is not None:
        _run_on_backend(report, models["rl"], backend_spec, backend_samples, emulate_variation)


def _run_on_backend(report, model, spec: str, n: int, emulate: bool) -> None:
    from hil.backends import open_backend
    from hil.datasets import load_digits_split
    from hil.robust.deploy import backend_monte_carlo_accuracy

    data = load_digits_split()
    if report.config.model == "cnn":
        data = data.images()
    variation = report.config.variation.with_sigma(report.sigma_star) if emulate else None

    def factory(rows: int, cols: int):
        return open_backend(spec, rows=rows, cols=cols)

    try:
        res = backend_monte_carlo_accuracy(
            model, factory, data.x_test, data.y_test, variation, n_samples=n,
            seed=report.config.seed, calibration_x=data.x_train,
        )
    except ValueError as exc:
        click.echo(f"error: backend {spec!r}: {exc}", err=True)
        sys.exit(2)
    what = f"emulated sigma={report.sigma_star:g}" if emulate else "the backend's own variation"
    click.echo(
        f"\nRL-compensated {report.config.model} on {spec} ({what}, {n} programmings): "
        f"accuracy {100 * res.accuracy_mean:.1f} +- {100 * res.accuracy_std:.1f} %"
    )
