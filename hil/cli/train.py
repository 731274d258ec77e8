"""``hil train``: train the digits network on a backend, with checkpoints and ``--resume``.

The network (the digits MLP 64-32-10 or the small CNN of docs/training.md), the
algorithm and its tuned settings (``recommended_config``) are those of the robustness
study; ``--set KEY=VALUE`` changes any field of ``TrainingConfig``.  Backends:

- ``sim`` (default): the study's soft-bounds device, at its base point (20 states, c2c 1,
  d2d 0.3, read noise 0.06) or at any other point (``--states``, ``--c2c``, ``--read-noise``,
  ``--d2d``); ``--seed S`` then reproduces ``train_digits(alg, net, seed=S, states=...)``
  exactly.  ``sim:PRESET`` / ``sim:DEVICE.json``: that device model, default periphery.
- ``serial...``: a test-chip board (spec with ``#limits=...``, as for every serial
  backend); every array the controller needs is a window of the board's one array, and
  the board is armed before the first pulse.

Checkpoints (``--checkpoint PATH``) are written atomically every ``--checkpoint-every``
steps, at the end, and on SIGINT/SIGTERM; ``--resume`` continues from one with the same
settings (on hardware the arrays are read back and their drift since the checkpoint is
reported).  An existing checkpoint is never overwritten without ``--resume``.

Exit status: 0 finished (or stopped by ``--stop-after-steps``), 1 an array or instrument
error (the last checkpoint is named), 2 unusable input, 130 interrupted by a signal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hil.training.config import ALGORITHMS


def _overrides(sets: tuple[str, ...]) -> dict[str, Any]:
    """``("lambda_H=0.05", "h_reset=measured")`` -> ``{"lambda_H": 0.05, "h_reset": "measured"}``."""
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare string: h_reset=measured
        out[key.strip()] = value
    return out


def _fail(message: str, code: int) -> None:
    click.echo(f"hil train: {message}", err=True)
    sys.exit(code)


@click.command()
@click.option("--backend", "spec", default="sim", show_default=True,
              help="backend spec: sim, sim:PRESET, sim:DEVICE.json, serial+socket://HOST:PORT#limits=L.json, "
                   "serial:///dev/ttyUSB0#limits=L.json, serial+xbarsim://NAME?rows=42&cols=128#limits=board")
@click.option("--network", type=click.Choice(["mlp", "cnn"]), default="mlp", show_default=True)
@click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default="ttv2", show_default=True)
@click.option("--preset", default=None, help="a settings preset of hil.training.digits.PRESETS (e.g. noise)")
@click.option("--epochs", type=click.IntRange(1, None), default=None, help="epochs (default: the recommended 15)")
@click.option("--seed", type=int, default=0, show_default=True, help="data order, initial weights, arrays' seeds")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="a TrainingConfig field, the value as JSON or a bare string (repeatable): "
                   "--set lambda_H=0.05 --set h_reset=measured")
@click.option("--checkpoint", "checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="checkpoint file (written atomically)")
@click.option("--checkpoint-every", type=click.IntRange(0, None), default=100, show_default=True,
              help="steps between checkpoints (0: only at the end and on interruption)")
@click.option("--resume", is_flag=True, help="continue from --checkpoint (same settings)")
@click.option("--stop-after-steps", type=click.IntRange(1, None), default=None,
              help="stop after this many steps in total, with a checkpoint (split a long run)")
@click.option("--eval-every-epoch", is_flag=True,
              help="also measure the test accuracy after every epoch (more MVMs on the arrays)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the TrainingReport JSON here")
@click.option("--states", type=float, default=20.0, show_default=True,
              help="bare 'sim' only: device states of the study's soft-bounds device")
@click.option("--c2c", type=float, default=1.0, show_default=True,
              help="bare 'sim' only: cycle-to-cycle noise, std relative to the step")
@click.option("--read-noise", type=float, default=0.06, show_default=True,
              help="bare 'sim' only: additive output noise of every MVM (full-scale units)")
@click.option("--d2d", type=float, default=0.3, show_default=True,
              help="bare 'sim' only: device-to-device spread of steps and bounds")
@click.option("--torch-device", default="cpu", show_default=True, help="torch device of simulated arrays")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def train(
    spec: str,
    network: str,
    algorithm: str,
    preset: str | None,
    epochs: int | None,
    seed: int,
    sets: tuple[str, ...],
    checkpoint: Path | None,
    checkpoint_every: int,
    resume: bool,
    stop_after_steps: int | None,
    eval_every_epoch: bool,
    json_path: Path | None,
    states: float,
    c2c: float,
    read_noise: float,
    d2d: float,
    torch_device: str,
    no_progress: bool,
) -> None:
    """Train the digits network on a backend (TTv2 by default) and report accuracy and hardware cost."""
    import torch
    from pydantic import ValidationError

    from hil.datasets import load_digits_split
    from hil.nn import convert_to_analog
    from hil.safety import SafetyError
    from hil.training import (
        TrainingConfig,
        TrainingController,
        TrainingInterrupted,
        array_factory,
        fit,
        load_checkpoint,
        recommended_config,
    )
    from hil.training.digits import OUT_SCALE, digits_device, digits_network, digits_periphery
    from hil.training.report import TrainingReport

    if resume and checkpoint is None:
        _fail("--resume needs --checkpoint PATH", 2)
    if checkpoint is not None and checkpoint.exists() and not resume:
        _fail(f"{checkpoint} exists: pass --resume to continue it, or choose another --checkpoint", 2)
    try:
        over = _overrides(sets)
        over["seed"] = seed
        if epochs is not None:
            over["epochs"] = epochs
        cfg = recommended_config(algorithm, network, preset=preset, **over)  # type: ignore[arg-type]
    except (ValueError, ValidationError, click.BadParameter) as exc:
        _fail(f"settings: {exc}", 2)
    if resume and checkpoint is not None and checkpoint.exists():
        try:
            saved = TrainingConfig.model_validate(load_checkpoint(checkpoint)["controller"]["config"])
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            _fail(f"{checkpoint} is not a readable training checkpoint: {exc}", 2)
        differ = sorted(k for k in TrainingConfig.model_fields if getattr(saved, k) != getattr(cfg, k))
        if differ:
            _fail(f"{checkpoint} was made with other settings ({', '.join(f'{k}={getattr(saved, k)!r}' for k in differ)}); "
                  "resume with the same options", 2)

    torch.manual_seed(seed)
    model = convert_to_analog(digits_network(network), out_scale=OUT_SCALE[network])  # type: ignore[arg-type]
    study_device = spec.strip() == "sim"
    if not study_device and (states, c2c, read_noise, d2d) != (20.0, 1.0, 0.06, 0.3):
        _fail("--states, --c2c, --read-noise and --d2d set the study's device of a bare 'sim' backend; "
              f"{spec!r} brings its own device model", 2)
    factory = None
    try:
        factory = array_factory(
            spec, bl=cfg.bl, seed=1000 * seed + 17, torch_device=torch_device,
            device=digits_device(states, c2c, d2d) if study_device else None,
            periphery=digits_periphery(read_noise) if study_device else None,
        )
        ctl = TrainingController(model, cfg, factory)
    except (ValueError, ConnectionError, TimeoutError, OSError) as exc:
        link = getattr(factory, "link", None)  # a board's allocator: SAFE and close the port
        if link is not None:
            link.close()
        _fail(f"backend {spec!r}: {exc}", 2)
    arrays = [
        {"layer": name, "role": role, "name": b.info.name, "rows": b.rows, "cols": b.cols,
         "hardware_id": b.info.hardware_id, **({"window": str(b.window)} if hasattr(b, "window") else {})}
        for name, role, b in ctl.arrays()
    ]
    click.echo(f"hil train: {algorithm} on the digits {network}, backend {spec}, {len(arrays)} arrays, "
               f"{cfg.epochs} epochs of batch {cfg.batch_size}, seed {seed}")
    data = load_digits_split()
    dev = torch.device(torch_device)
    model.to(dev)
    report: dict[str, Any] = {
        "backend": spec, "arrays": arrays, "network": network, "algorithm": algorithm,
        "config": cfg.model_dump(mode="json"), "finished": False,
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }
    code = 0
    try:
        for _, _, b in ctl.arrays():
            arm = getattr(b, "arm", None)
            if callable(arm):  # hardware refuses pulses until armed: training is about to pulse
                arm()
        res = fit(
            model, ctl, data.x_train.to(dev), data.y_train.to(dev), x_test=data.x_test.to(dev),
            y_test=data.y_test.to(dev), checkpoint=checkpoint, checkpoint_every=checkpoint_every,
            resume=resume, progress=not no_progress, eval_every_epoch=eval_every_epoch,
            stop_after_steps=stop_after_steps,
        )
        report.update(finished=True, steps=res.steps, samples=res.samples, seconds=res.seconds,
                      test_accuracy=res.test_accuracy, history=res.history, cost=res.cost,
                      c_pulse_noise=res.c_pulse_noise,
                      resumed_from_step=res.resumed_from_step, resume_drift=res.resume_drift)
    except TrainingInterrupted as stop:
        code = 0 if stop.signal_name == "stop_after_steps" else 130
        report.update(stopped_by=stop.signal_name, steps=ctl.steps, samples=ctl.samples,
                      cost=ctl.hardware_cost(), c_pulse_noise=ctl.c_pulse_noise(),
                      resume_drift=list(ctl.resume_drift))
        where = f"checkpoint {checkpoint}; continue with the same options and --resume" if checkpoint else \
            "no --checkpoint was given, nothing saved"
        click.echo(f"hil train: stopped at step {ctl.steps} ({stop.signal_name}); {where}", err=True)
    except (SafetyError, ConnectionError, TimeoutError, RuntimeError) as exc:
        last = None
        if checkpoint is not None and checkpoint.exists():
            try:
                last = int(load_checkpoint(checkpoint)["controller"]["steps"])
            except (ValueError, KeyError, OSError, RuntimeError):
                last = None
        where = (f"the last checkpoint, {checkpoint}, is at step {last}: fix the cause and continue with --resume"
                 if last is not None else "no checkpoint was written")
        _fail(f"array error at step {ctl.steps}: {type(exc).__name__}: {exc}; {where}", 1)
    except KeyboardInterrupt:  # outside fit's step loop (zero-shifting, the final evaluation)
        _fail(f"interrupted at step {ctl.steps} outside the training steps; nothing new was saved", 130)
    finally:
        _close(ctl)  # every window of a board closed: the board is left SAFE
    out = TrainingReport(**report)
    if out.finished:
        _print_summary(out)
    if json_path is not None:
        out.save(json_path)
        click.echo(f"wrote {json_path}")
    sys.exit(code)


def _close(ctl: Any) -> None:
    """Close every array (a board's windows release its link: SAFE, then the port closes)."""
    for _, _, backend in ctl.arrays():
        backend.close()


def _print_summary(r: Any) -> None:
    acc = "-" if r.test_accuracy is None else f"{r.test_accuracy:.4f}"
    this_run = (r.steps - (r.resumed_from_step or 0)) * int(r.config.get("batch_size", 1))
    rate = this_run / r.seconds if r.seconds > 0 else float("nan")
    resumed = "" if r.resumed_from_step is None else f" (resumed at step {r.resumed_from_step})"
    click.echo(f"test accuracy {acc}; {r.steps} steps, {r.samples} samples{resumed}; "
               f"{r.seconds:.1f} s in this run ({rate:.0f} samples/s)")
    for d in r.resume_drift:
        click.echo(f"  drift since the checkpoint: {d['layer']} {d['role']}: rms {d['rms']:.4f}, max {d['max_abs']:.4f}")
    per = r.cost.get("per_sample", {})
    if per:
        click.echo("backend calls per training sample:")
        for role, ops in per.items():
            shown = ", ".join(f"{k} {v:.3g}" for k, v in ops.items() if v)
            click.echo(f"  {role}: {shown}")
    if r.c_pulse_noise:
        shown = ", ".join(f"{layer} {s:.2f}" for layer, s in r.c_pulse_noise.items())
        click.echo(f"C's pulse noise read back, std of one pulse in dw_min: {shown}")
