"""Deployment study: which deployment settings keep the averaged model's accuracy on ``pcm-noisy``.

``python examples/extract_and_deploy.py --quick --deploy-study`` (docs/extraction.md).
Per seed, constant-rate TTv2 is trained once and its digital average extracted
(:func:`hil.extraction.demo.run_extraction_seed`, no deployment there); every variant of
:data:`VARIANTS` then programs that average ``programmings`` times onto fresh arrays of
the deployment device (the same array seeds for every variant, :func:`deploy_seed`) and
reports, over all (seed, programming) pairs, the accuracy gap to the digital average, the
programming error, the pulses, the verify reads and the CPU time of one deployment.

The ``exact`` variant is a simulation-only reference: the arrays are set to the targets
without write-verify (``SimulatedCrossbar.set_weights``), so what it loses is the forward
noise of the deployment device alone (the floor no programming can beat at that number of
MVMs per input).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from hil.datasets import load_digits_split
from hil.extraction.demo import (
    CONSTANT_RATE,
    DEPLOY_DEVICE,
    DEPLOY_OUT_SCALE,
    DEPLOY_SETTINGS,
    DEPLOY_VERIFY,
    deploy_factory,
    deploy_seed,
    run_extraction_seed,
)
from hil.extraction.deploy import ColumnPeriphery, DifferentialPair, deploy
from hil.extraction.program import WriteVerifyConfig

CALIBRATION_INPUTS = 512  # training images used by the per-column calibration variant

# name -> (description, deploy() keyword arguments; "exact": set the weights instead of programming)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "legacy": ("layer mapping (out_scale), CrossbarBackend.program: tol 0.02, 64 reads, 100 rounds (the earlier setting)",
               {"pair": True, "mapping": "layer", "tol": 0.02, "n_reads": 64, "max_iter": 100}),
    "freeze": ("layer mapping, write_verify with the freeze rule, tol 0.02, 64 reads, 100 rounds",
               {"pair": True, "mapping": "layer", "verify": WriteVerifyConfig(tol=0.02, n_reads=64, max_iter=100)}),
    "freeze_tol01": ("layer mapping, freeze rule, tol 0.01, 128 reads, 150 rounds",
                     {"pair": True, "mapping": "layer", "verify": DEPLOY_VERIFY}),
    "column_tol02": ("per-column mapping (row max at 0.9 of the range), freeze rule, tol 0.02, 64 reads, 100 rounds",
                     {**DEPLOY_SETTINGS, "verify": WriteVerifyConfig(tol=0.02, n_reads=64, max_iter=100)}),
    "chosen": ("per-column mapping (row max at 0.9 of the range), freeze rule, tol 0.01, 128 reads, 150 rounds",
               dict(DEPLOY_SETTINGS)),
    "chosen_calibrated": ("chosen + per-column affine calibration (512 training inputs, 16 MVMs each)",
                          {**DEPLOY_SETTINGS, "calibration_reads": 16}),
    "chosen_2_mvm": ("chosen, 2 MVMs averaged per input (2x the inference reads)",
                     {**DEPLOY_SETTINGS, "forward_reads": 2}),
    "exact": ("per-column mapping, weights set exactly (simulation only): forward noise alone",
              {**DEPLOY_SETTINGS, "exact": True}),
    "exact_layer": ("layer mapping, weights set exactly (simulation only): forward noise alone",
                    {"pair": True, "mapping": "layer", "exact": True}),
}


def set_exact(model: nn.Module, extracted: nn.Module) -> None:
    """Simulation only: set every deployed array to its target (``W_i / gain_i``; pairs as
    ``G+ = t / 2``, ``G- = -t / 2``) with ``set_weights``, no write-verify."""
    for name, mod in model.named_modules():
        if not isinstance(mod, ColumnPeriphery):
            continue
        digital = extracted.get_submodule(name) if name else extracted
        t = digital.weight.detach().reshape(mod.analog.rows, mod.analog.cols).float() / mod.gain[:, None]
        backend = mod.analog.backend
        if isinstance(backend, DifferentialPair):
            backend.base.set_weights(torch.cat([t / 2, -t / 2], dim=1))  # type: ignore[attr-defined]
        else:
            backend.set_weights(t)  # type: ignore[attr-defined]


@torch.no_grad()
def layer_only_accuracy(model: nn.Module, extracted: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        precision: float = 0.005) -> list[float]:
    """Which layer costs the accuracy: per deployed layer, the test accuracy of ``extracted``
    (digital) with only that layer's weights replaced by the programmed ones, read back to
    ``precision`` (``read_precise``; times the column gains).  Hardware-compatible (reads only)."""
    import copy

    from hil.extraction.export import read_precise
    from hil.training.loop import evaluate

    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, ColumnPeriphery):
            continue
        w = read_precise(mod.analog.backend.read, precision, 1024).mean.cpu() * mod.gain[:, None].cpu()
        twin = copy.deepcopy(extracted)
        layer = twin.get_submodule(name) if name else twin
        layer.weight.copy_(w.reshape(layer.weight.shape))
        out.append(evaluate(twin, x, y))
    return out


def _deploy_variant(avg: nn.Module, seed: int, programming: int, kwargs: dict[str, Any], data: Any,
                    eval_passes: int) -> dict[str, Any]:
    from hil.training.digits import OUT_SCALE
    from hil.training.loop import evaluate

    kw = dict(kwargs)
    exact = bool(kw.pop("exact", False))
    if "calibration_reads" in kw:
        kw["calibration_inputs"] = data.x_train[:CALIBRATION_INPUTS]
    if exact:
        kw.update({"verify": None, "max_iter": 0})
    scale = [DEPLOY_OUT_SCALE * s for s in OUT_SCALE["mlp"]]
    t0 = time.process_time()
    model, rep = deploy(avg, deploy_factory(DEPLOY_DEVICE, seed=deploy_seed(seed, programming)), out_scale=scale,
                        **kw)
    cpu = time.process_time() - t0
    if exact:
        set_exact(model, avg)
    acc = sum(evaluate(model, data.x_test, data.y_test) for _ in range(eval_passes)) / eval_passes
    layer_only = None if exact else layer_only_accuracy(model, avg, data.x_test, data.y_test)
    return {"accuracy": acc, "layer_only_accuracy": layer_only, "rms_error": None if exact else rep.rms_error,
            "max_error": None if exact else max(L.max_error for L in rep.layers),
            "layer_max_error": None if exact else [L.max_error for L in rep.layers],
            "layer_far_off": None if exact else [L.far_off for L in rep.layers],
            "pulses": rep.pulses_spent, "reads": sum(L.program_reads for L in rep.layers), "cpu_seconds": cpu,
            "calibration_mvms": rep.calibration_mvms}


def run_deployment_study(
    quick: bool = True,
    seeds: tuple[int, ...] = (0, 1, 2),
    programmings: int = 3,
    variants: tuple[str, ...] | None = None,
    eval_passes: int = 20,
    progress: bool = False,
) -> dict[str, Any]:
    """The deployment study on constant-rate TTv2 averages (15 epochs with ``quick``, else 30).

    Returns ``{"models": [{"seed", "average_digital"}], "variants": {name: {"description",
    "gap": {"mean", "std", "min", "max"}, "seed_gaps": [...], "rms_error" (range over runs),
    "max_error", "layer_max_error", "far_off" (per layer, summed over runs),
    "layer_only_worst_gap" (per layer, :func:`layer_only_accuracy`, worst run), "pulses",
    "reads", "cpu_seconds" (means over runs), "runs": [...]}}}``; errors in effective weight
    units except ``far_off`` (arrays' units, :data:`~hil.extraction.deploy.FAR_OFF`); gaps are deployed - digital average
    in accuracy units (paired per programming), std with ddof 1 over all (seed,
    programming) pairs.
    """
    torch.set_num_threads(1)
    names = tuple(VARIANTS) if variants is None else variants
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"run_deployment_study: unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if programmings < 1:
        raise ValueError(f"run_deployment_study: programmings must be >= 1, got {programmings}")
    data = load_digits_split()
    epochs = 15 if quick else 30
    models = []
    for s in seeds:
        r = run_extraction_seed(s, epochs=epochs, overrides=CONSTANT_RATE, analog=False, programmings=0,
                                keep_models=True)
        models.append((s, r["average_model"], float(r["average_digital"])))
        if progress:
            print(f"seed {s}: average_digital {r['average_digital']:.4f} ({r['train_seconds']:.0f} s training)",
                  flush=True)
    out: dict[str, Any] = {"quick": quick, "epochs": epochs, "device": DEPLOY_DEVICE, "programmings": programmings,
                           "models": [{"seed": s, "average_digital": a} for s, _, a in models], "variants": {}}
    for name in names:
        desc, kwargs = VARIANTS[name]
        runs, seed_gaps = [], []
        for s, avg, a0 in models:
            rs = [_deploy_variant(avg, s, p, kwargs, data, eval_passes) for p in range(programmings)]
            for r in rs:
                r.update({"seed": s, "gap": r["accuracy"] - a0,
                          "layer_only_gap": None if r["layer_only_accuracy"] is None
                          else [a - a0 for a in r["layer_only_accuracy"]]})
            runs.extend(rs)
            seed_gaps.append(statistics.fmean(r["gap"] for r in rs))
        gaps = [r["gap"] for r in runs]
        errs = [r["rms_error"] for r in runs if r["rms_error"] is not None]
        maxs = [r["max_error"] for r in runs if r["max_error"] is not None]
        row = {
            "description": desc,
            "gap": {"mean": statistics.fmean(gaps), "std": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
                    "min": min(gaps), "max": max(gaps)},
            "seed_gaps": seed_gaps,
            "rms_error": [min(errs), max(errs)] if errs else None,
            "max_error": max(maxs) if maxs else None,
            # per layer: weights more than FAR_OFF off target, summed over the runs
            "far_off": None if runs[0]["layer_far_off"] is None
            else [sum(r["layer_far_off"][i] for r in runs) for i in range(len(runs[0]["layer_far_off"]))],
            "layer_max_error": None if runs[0]["layer_max_error"] is None
            else [max(r["layer_max_error"][i] for r in runs) for i in range(len(runs[0]["layer_max_error"]))],
            # per layer: the worst gap of the digital model with only that layer programmed
            "layer_only_worst_gap": None if runs[0]["layer_only_gap"] is None
            else [min(r["layer_only_gap"][i] for r in runs) for i in range(len(runs[0]["layer_only_gap"]))],
            "pulses": statistics.fmean(r["pulses"] for r in runs),
            "reads": statistics.fmean(r["reads"] for r in runs),
            "cpu_seconds": statistics.fmean(r["cpu_seconds"] for r in runs),
            "runs": runs,
        }
        out["variants"][name] = row
        if progress:
            g = row["gap"]
            print(f"{name}: gap {100 * g['mean']:+.2f} ± {100 * g['std']:.2f} (min {100 * g['min']:+.2f}), per seed "
                  f"{', '.join(f'{100 * x:+.2f}' for x in seed_gaps)}", flush=True)
    return out
