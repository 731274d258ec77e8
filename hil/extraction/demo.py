"""The extraction experiment of examples/extract_and_deploy.py and ``hil demo``.

Per seed: TTv2 on the digits MLP with the 20-state noisy soft-bounds device
(``digits_device(20, c2c=1.0, d2d=0.3)`` = preset ``rram-softbounds-20``; read
noise 0.06), 15 epochs, at constant rates (``schedule="constant"``, the setting of
Gokmen 2021, where the average replaces the learning-rate decay) and, as a second
setting, with the recommended settings (``hil.training.digits.RECOMMENDED``: cosine
decay of the transfer rate to 0).  :class:`ModelAverager` s watch the same training:
the digital variant and, in the second setting, two analog ones (D on the training
device; D on the same device without cycle-to-cycle noise, as a control).
Figures: (1) last iterate used in place on the arrays, (2) last iterate read to
digital, (3) the digital average, (4) the digital average programmed onto fresh
arrays of another device (preset ``pcm-noisy`` with its read noise 0.02, same
periphery otherwise, each weight on a differential pair, per-column digital gain,
write-verify with the freeze rule), mean over ``DEPLOY_PROGRAMMINGS`` independent
programmings per trained model.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from hil.datasets import load_digits_split
from hil.extraction.averager import AveragingConfig, ModelAverager
from hil.extraction.deploy import deploy
from hil.extraction.export import extract
from hil.extraction.program import WriteVerifyConfig

KEYS = ("last_iterate_analog", "last_iterate_digital", "average_digital", "average_deployed")
ANALOG_KEYS = ("average_analog_D", "average_analog_D_no_c2c")
DEPLOY_DEVICE = "pcm-noisy"
# Our choice, from the deployment study (docs/extraction.md, hil.extraction.study): every weight
# on a differential pair of pcm-noisy devices (G+ = w/2, G- = -w/2, G+ trimmed against the read
# G-); per-column mapping: each array row's largest weight at 90 % of the pair's range (+-1.8),
# the row's digital gain max|W_i| / 1.8 in the periphery (one number per column); write-verify
# with the freeze rule (a device that verifies inside tol gets no more pulses), tol 0.01 per
# device, 128 reads averaged per verify read, at most 150 rounds per phase; one MVM per input.
DEPLOY_VERIFY = WriteVerifyConfig(tol=0.01, n_reads=128, max_iter=150)
DEPLOY_SETTINGS: dict[str, Any] = {"pair": True, "verify": DEPLOY_VERIFY, "mapping": "column", "column_fill": 0.9}
# the out_scale a "layer" mapping uses (the training OUT_SCALE; not used by the column mapping)
DEPLOY_OUT_SCALE = 1.0
# independent programmings (fresh arrays of the deployment device, different seeds) per trained model
DEPLOY_PROGRAMMINGS = 3
CONSTANT_RATE: dict[str, Any] = {"schedule": "constant"}
# noisy forward passes over the test set averaged for the accuracy of a model on arrays ((1) and
# (4)): one pass of the deployed digits MLP scatters by 0.6 points (std), so a 5-pass mean by
# 0.27 and a 20-pass mean by 0.13 (docs/extraction.md)
EVAL_PASSES = 20


def deploy_seed(seed: int, programming: int) -> int:
    """Seed of the deployment arrays of trained model ``seed``, programming ``programming``."""
    return 1000 * seed + 991 + programming


def deploy_factory(device: str = DEPLOY_DEVICE, seed: int = 0) -> Any:
    """Fresh arrays of ``device`` with the digits periphery (output noise 0.06) and the device
    model's own weight read noise (pcm-noisy: 0.02)."""
    from hil.simulated import resolve_device_model
    from hil.training import simulated_factory
    from hil.training.digits import digits_periphery

    model = resolve_device_model(device)
    periphery = digits_periphery(0.06).model_copy(update={"w_noise": model.read_noise})
    return simulated_factory(model, periphery, seed=seed)


def run_extraction_seed(
    seed: int,
    *,
    epochs: int = 15,
    averaging: AveragingConfig | None = None,
    deploy_device: str = DEPLOY_DEVICE,
    eval_passes: int = EVAL_PASSES,
    overrides: dict[str, Any] | None = None,
    analog: bool = True,
    programmings: int = DEPLOY_PROGRAMMINGS,
    keep_models: bool = False,
    forward_reads: int = 1,
) -> dict[str, Any]:
    """One seed of the experiment; accuracies in [0, 1] and the details behind them.

    ``overrides`` replace fields of the recommended TTv2 config (e.g. ``CONSTANT_RATE``);
    ``analog``: also run the two analog (D) averagers.  The average is deployed
    ``programmings`` times, each onto fresh arrays (seed :func:`deploy_seed`);
    ``average_deployed`` is the mean over the programmings, ``average_deployed_each`` lists
    them (``programmings=0``: no deployment, no such keys).  ``forward_reads``: MVMs averaged
    per input by the deployed model (1: the default deployment; k costs k x the reads).  ``keep_models``: the record also holds the extracted ``"average_model"``.
    """
    from hil.nn import convert_to_analog
    from hil.training import (
        TrainingController,
        digits_device,
        digits_network,
        recommended_config,
        simulated_factory,
    )
    from hil.training.digits import OUT_SCALE, digits_periphery
    from hil.training.loop import evaluate, fit

    if programmings < 0:
        raise ValueError(f"run_extraction_seed: programmings must be >= 0, got {programmings}")
    data = load_digits_split()
    cfg = recommended_config("ttv2", "mlp", seed=seed, epochs=epochs, **(overrides or {}))
    torch.manual_seed(seed)
    model = convert_to_analog(digits_network("mlp"), out_scale=OUT_SCALE["mlp"])
    factory = simulated_factory(digits_device(20, 1.0, 0.3), digits_periphery(0.06), bl=cfg.bl, seed=1000 * seed + 17)
    ctl = TrainingController(model, cfg, factory)
    avg_cfg = averaging or AveragingConfig()
    dig = ModelAverager(ctl, avg_cfg.model_copy(update={"variant": "digital"}))
    analogs: dict[str, ModelAverager] = {}
    if analog:
        ana_cfg = avg_cfg.model_copy(update={"variant": "analog"})
        # D on the training device (the third array) and, as a control, on the same
        # 20-state device without cycle-to-cycle noise
        analogs["average_analog_D"] = ModelAverager(ctl, ana_cfg, factory)
        clean = simulated_factory(digits_device(20, 0.0, 0.3), digits_periphery(0.06), seed=1000 * seed + 29)
        analogs["average_analog_D_no_c2c"] = ModelAverager(ctl, ana_cfg, clean)
    t0 = time.perf_counter()
    fit(model, ctl, data.x_train, data.y_train, eval_every_epoch=False)
    t_train = time.perf_counter() - t0
    acc_analog = sum(evaluate(model, data.x_test, data.y_test) for _ in range(eval_passes)) / eval_passes
    last = extract(model)
    avg = extract(model, dig)
    out: dict[str, Any] = {"seed": seed, "overrides": dict(overrides or {}), "last_iterate_analog": acc_analog,
                           "last_iterate_digital": evaluate(last, data.x_test, data.y_test),
                           "average_digital": evaluate(avg, data.x_test, data.y_test)}
    for key, a in analogs.items():
        m = extract(model, a)
        out[key] = evaluate(m, data.x_test, data.y_test)
        out[f"extraction_{key}"] = m.extraction.model_dump(mode="json")
        out[f"{key}_pulses"] = sum(int(la.pulses) for la in a.layers)
    scale = [DEPLOY_OUT_SCALE * s for s in OUT_SCALE["mlp"]]
    reports = []
    for p in range(programmings):
        _, rep = deploy(avg, deploy_factory(deploy_device, seed=deploy_seed(seed, p)), out_scale=scale,
                        x_test=data.x_test, y_test=data.y_test, eval_passes=eval_passes,
                        forward_reads=forward_reads, **DEPLOY_SETTINGS)
        reports.append(rep)
    if reports:
        each = [float(r.accuracy) for r in reports]  # type: ignore[arg-type]
        out["average_deployed"] = statistics.fmean(each)
        out["average_deployed_each"] = each
    # how far the average is from the last iterate, in the arrays' units (C units)
    out["rms_average_minus_last"] = [
        float(((a.weight - b.weight).detach() / s).pow(2).mean().sqrt())
        for a, b, s in zip((avg[0], avg[2]), (last[0], last[2]), OUT_SCALE["mlp"], strict=True)
    ]
    out.update({
        "snapshots": dig.snapshots,
        "extraction_last": last.extraction.model_dump(mode="json"),
        "extraction_average": avg.extraction.model_dump(mode="json"),
        "deploy": [r.model_dump(mode="json") for r in reports],
        "train_seconds": t_train,
    })
    if keep_models:
        out["average_model"] = avg
    return out


def summarize(runs: list[dict[str, Any]], keys: tuple[str, ...] = KEYS) -> dict[str, dict[str, float]]:
    """``{key: {"mean", "std"}}`` over seeds (sample std, ddof 1; 0 for one seed)."""
    out = {}
    for k in keys:
        v = [float(r[k]) for r in runs]
        out[k] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
    return out


def paired(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, float]:
    """Mean and std (ddof 1) over seeds of the per-seed difference ``a - b``."""
    v = [float(r[a]) - float(r[b]) for r in runs]
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}


def _summary(runs: list[dict[str, Any]], analog: bool) -> dict[str, Any]:
    out: dict[str, Any] = dict(summarize(runs))
    if analog:
        out.update(summarize(runs, ANALOG_KEYS))
    out["average_minus_last_digital"] = paired(runs, "average_digital", "last_iterate_digital")
    out["deployed_minus_average"] = paired(runs, "average_deployed", "average_digital")
    out["deployment"] = deployment_summary(runs)
    return out


def deployment_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Deployment over several programmings per trained model: per seed the accuracies of
    every programming and their gaps to the digital average; over all (seed, programming)
    pairs the gap's mean, std (ddof 1), min and max; ``std_within_model``: the pooled std
    of the programmings of one model (ddof 1 per model); ``worst_seed_gap``: the most
    negative per-seed mean gap."""
    per_seed, gaps, within = [], [], []
    for r in runs:
        each = [float(a) for a in r["average_deployed_each"]]
        g = [a - float(r["average_digital"]) for a in each]
        gaps.extend(g)
        if len(g) > 1:
            within.append(statistics.variance(g))
        per_seed.append({"seed": r["seed"], "average_digital": r["average_digital"], "deployed_each": each,
                         "gap_each": g, "gap_mean": statistics.fmean(g),
                         "rms_error_effective": [d["rms_error"] for d in r["deploy"]],
                         "pulses": [d["pulses_spent"] for d in r["deploy"]]})
    return {
        "device": DEPLOY_DEVICE,
        "programmings": len(runs[0]["average_deployed_each"]) if runs else 0,
        "settings": {k: (v.model_dump(mode="json") if isinstance(v, WriteVerifyConfig) else v)
                     for k, v in DEPLOY_SETTINGS.items()},
        "forward_reads": runs[0]["deploy"][0].get("forward_reads", 1) if runs and runs[0]["deploy"] else 1,
        "per_seed": per_seed,
        "gap_all": {"mean": statistics.fmean(gaps), "std": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
                    "min": min(gaps), "max": max(gaps)},
        "std_within_model": statistics.fmean(within) ** 0.5 if within else 0.0,
        "worst_seed_gap": min(p["gap_mean"] for p in per_seed),
    }


def run_extraction_demo(
    quick: bool = True,
    seeds: tuple[int, ...] = (0, 1, 2),
    json_path: str | Path | None = None,
    details: list[dict[str, Any]] | None = None,
    progress: bool = False,
    cosine: bool = True,
    analog: bool = True,
    programmings: int = DEPLOY_PROGRAMMINGS,
    forward_reads: int = 1,
) -> dict[str, Any]:
    """The four accuracies ``{"last_iterate_analog", "last_iterate_digital", "average_digital",
    "average_deployed"}``, each ``{"mean", "std"}`` over ``seeds``, and the paired per-seed
    differences ``average_minus_last_digital`` and ``deployed_minus_average``.

    The top level is TTv2 at constant rates (:data:`CONSTANT_RATE`, the protocol of the seed
    paper, Gokmen 2021, whose iterates the average is meant for).  With ``cosine``, the same
    figures for the recommended settings (cosine decay of the transfer rate to 0, the better
    last iterate) under ``"cosine_schedule"``, with the analog-D variants
    ``average_analog_D`` / ``average_analog_D_no_c2c`` there when ``analog``.

    ``average_deployed`` is per seed the mean over ``programmings`` independent
    programmings (fresh arrays), each inferring with ``forward_reads`` MVMs per input;
    ``"deployment"`` (:func:`deployment_summary`) holds every programming.  ``quick``: 15 epochs (the recommended TTv2 run); otherwise 30.
    ``details``, if a list, receives every seed's full record; ``json_path`` writes the
    summary as JSON.
    """
    torch.set_num_threads(1)
    epochs = 15 if quick else 30
    settings: list[tuple[str, dict[str, Any] | None, bool]] = [("constant_rate", CONSTANT_RATE, False)]
    if cosine:
        settings.append(("cosine_schedule", None, analog))
    summary: dict[str, Any] = {"setting": "constant_rate"}
    for name, over, with_analog in settings:
        runs = []
        for s in seeds:
            r = run_extraction_seed(s, epochs=epochs, overrides=over, analog=with_analog, programmings=programmings,
                                    forward_reads=forward_reads)
            r["setting"] = name
            if progress:
                keys = (*KEYS, *ANALOG_KEYS) if with_analog else KEYS
                print(f"{name} seed {s}: " + ", ".join(f"{k} {r[k]:.4f}" for k in keys)
                      + f" (programmings {', '.join(f'{a:.4f}' for a in r['average_deployed_each'])}; "
                      f"{r['train_seconds']:.0f} s training)", flush=True)
            runs.append(r)
        if details is not None:
            details.extend(runs)
        if name == "constant_rate":
            summary.update(_summary(runs, with_analog))
        else:
            summary[name] = _summary(runs, with_analog)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
