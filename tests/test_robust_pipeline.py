"""The CorrectNet pipeline end to end on a tiny configuration, through the ``hil robust`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hil.robust.compensation import TrainCompensationConfig
from hil.robust.models import TrainConfig
from hil.robust.pipeline import (
    METHODS,
    CorrectNetConfig,
    CorrectNetReport,
    RewardConfig,
    format_table,
)
from hil.robust.placement import AgentConfig


def _tiny() -> CorrectNetConfig:
    return CorrectNetConfig(
        model="mlp",
        hidden=[24],
        train=TrainConfig(epochs=6),
        sigmas=[0.0, 0.5, 1.5, 3.0],
        bisection_steps=1,
        n_samples=4,
        ranks=[0, 1],
        full_rank=1,
        comp_train=TrainCompensationConfig(steps=15, n_samples=2),
        table_train=TrainCompensationConfig(steps=5, n_samples=2),
        search_train=TrainCompensationConfig(steps=5, n_samples=2),
        reward=RewardConfig(n_samples=2, refine_samples=2, budget=0.05),
        agent=AgentConfig(episodes=32, batch_episodes=8, max_evaluations=3, refine_top=1, max_refinements=2),
        sensitivity_samples=2,
    )


def test_config_json_round_trip() -> None:
    cfg = _tiny()
    assert CorrectNetConfig.model_validate_json(cfg.to_json()) == cfg
    assert CorrectNetConfig.quick("cnn").model == "cnn"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[str, dict, CorrectNetReport]:
    from hil.cli.main import cli

    tmp: Path = tmp_path_factory.mktemp("robust")
    cfg_path = tmp / "cfg.json"
    cfg_path.write_text(_tiny().to_json())
    res = CliRunner().invoke(
        cli,
        ["robust", "--config", str(cfg_path), "--json", str(tmp / "r.json"), "--report", str(tmp / "full.json"),
         "--backend", "sim:ideal", "--backend-samples", "1", "--quiet"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    return (
        res.output,
        json.loads((tmp / "r.json").read_text()),
        CorrectNetReport.model_validate_json((tmp / "full.json").read_text()),
    )


def test_results_json_has_exactly_the_documented_keys(cli_run) -> None:
    _, data, report = cli_run
    assert set(data) == {"clean_accuracy", "sigma_star", "results"}
    sigmas = sorted(set(report.config.sigmas) | {report.sigma_star})
    assert len(data["results"]) == len(METHODS) * len(sigmas)
    for row in data["results"]:
        assert set(row) == {"method", "sigma", "accuracy_mean", "accuracy_std", "overhead_params_frac"}
        assert row["method"] in METHODS and 0.0 <= row["accuracy_mean"] <= 1.0
        if row["method"] in ("plain", "lipschitz"):
            assert row["overhead_params_frac"] == 0.0
        elif row["method"] == "lipschitz+full_compensation":
            assert row["overhead_params_frac"] > 0.0
        else:  # the agent's placement (which may be no block at all on this tiny network)
            rl = next(p for p in report.placements if p.method == "rl")
            assert row["overhead_params_frac"] == pytest.approx(rl.overhead_params_frac)
            assert rl.overhead_params_frac <= report.config.reward.budget


def test_sigma_star_is_where_plain_falls_below_half(cli_run) -> None:
    _, data, report = cli_run
    plain = {r["sigma"]: r["accuracy_mean"] for r in data["results"] if r["method"] == "plain"}
    assert plain[data["sigma_star"]] < 0.5 * data["clean_accuracy"]
    # and it is the first crossing: every grid sigma below it is still above half
    below = [s for s in report.config.sigmas if s < report.sigma_star]
    assert below and all(plain[s] >= 0.5 * data["clean_accuracy"] for s in below)


def test_report_placements_and_table(cli_run) -> None:
    out, _, report = cli_run
    methods = {p.method for p in report.placements}
    assert methods == {"rl", "none", "every_layer", "greedy", "full"}
    full = next(p for p in report.placements if p.method == "full")
    assert full.ranks == [1, 1]
    assert report.rl_evaluations <= 3 + 8
    assert 1 <= report.rl_refinements <= 2
    rl = next(p for p in report.placements if p.method == "rl")
    assert rl.val_refined_reward is not None  # the agent returns a refined placement
    for p in report.placements:  # the baselines get the refined reward too, for the report
        if p.method in ("none", "every_layer", "greedy"):
            assert p.val_refined_reward is not None and p.val_reward is not None
    assert report.search_space == 3**2
    assert [row.name for row in report.layers] == ["0", "2"]
    assert "lipschitz+rl_compensation" in format_table(report)
    assert "sigma_star" in out and "on sim:ideal" in out


def test_cli_refuses_a_bad_config(tmp_path) -> None:
    from hil.cli.main import cli

    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "transformer"}')
    res = CliRunner().invoke(cli, ["robust", "--config", str(bad)])
    assert res.exit_code != 0 and "not a valid CorrectNetConfig" in res.output


def test_lipschitz_config_selects_the_spec_penalty() -> None:
    from hil.robust.pipeline import SPEC_BETA, lipschitz_config

    cfg = CorrectNetConfig(model="mlp")
    assert cfg.lipschitz.kind == "variation" and cfg.lipschitz.beta == 10.0  # our default
    spec = lipschitz_config(cfg, "orthogonal")
    assert spec.kind == "orthogonal" and spec.beta == SPEC_BETA["orthogonal"] and spec.lam == 1.0
    assert lipschitz_config(cfg, "orthogonal", beta=1e-2, lam=0.5).model_dump(include={"beta", "lam"}) == {
        "beta": 1e-2, "lam": 0.5,
    }
    assert lipschitz_config(cfg, beta=3.0).kind == "variation"
    with pytest.raises(ValueError):
        lipschitz_config(cfg, "orthogonal", beta=-1.0)


def test_cli_refuses_a_negative_beta() -> None:
    from hil.cli.main import cli

    res = CliRunner().invoke(cli, ["robust", "--quick", "--lipschitz", "orthogonal", "--beta", "-1"])
    assert res.exit_code != 0 and "beta" in res.output
