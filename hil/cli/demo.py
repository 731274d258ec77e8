"""``hil demo``: the main job on the embedded default backend (a simulated array).

1. builds a simulated array from a device preset,
2. characterizes it with a pulse-response protocol (``hil.characterization``),
3. fits a device model to those measurements (``hil.calibration``) and compares it
   with the preset that generated them,
4. runs the quick subset of the TTv2 robustness study (``examples/ttv2_robustness.py
   --quick``): the digits MLP with floating-point SGD, analog SGD, Tiki-Taka v1, TTv2 and
   chopped TTv2 at the base point, and analog SGD, TTv2 and c-TTv2 along the c2c-noise axis
   (3 seeds; ``--quick``: 1 seed),
5. extracts the TTv2 model by averaging iterates and deploys it onto a second array,

and prints a short table of everything it measured.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click


def _characterize(preset: str, quick: bool, seed: int, workdir: Path) -> dict[str, Any]:
    from hil.calibration.mapping import Mapping
    from hil.calibration.workflow import calibrate_path
    from hil.characterization.protocol import PulseProtocol
    from hil.characterization.runner import run_protocol
    from hil.device_model import ConductanceMapping
    from hil.simulated import SimulatedCrossbar, get_preset
    from hil.simulated.devices import nominal_dw

    model = get_preset(preset)
    states = (model.step.w_max - model.step.w_min) / nominal_dw(model)
    n = int(min(max(2 * states, 20), 200))
    size = 4 if quick else 8
    backend = SimulatedCrossbar(size, size, device=model, seed=seed)
    protocol = PulseProtocol(n_up=n, n_down=n, cycles=3 if quick else 5, repeated_reads=5)
    mapping = Mapping(
        model=ConductanceMapping(g_min_s=1e-6, g_max_s=1e-5, w_min=model.step.w_min, w_max=model.step.w_max),
        rule="demo: 1 uS at w_min, 10 uS at w_max",
    )
    csv = workdir / "pulse_response.csv"
    run_protocol(backend, protocol, mapping, csv, backend_spec=f"sim:{preset}", progress=True)
    fit = calibrate_path(csv, fmt="schema", replay=False, seed=seed)
    fitted = fit.model
    true_sym = float(backend.symmetry_point().mean())

    fitted_states = (fitted.step.w_max - fitted.step.w_min) / nominal_dw(fitted)
    return {
        "preset": preset,
        "devices": size * size,
        "pulses_per_direction": n,
        "cycles": protocol.cycles,
        "rows_measured": sum(1 for _ in csv.open()) - 1,
        "true_model": model.step.model,
        "true_states": round(states, 1),
        "true_symmetry_point": round(true_sym, 4),
        "fitted_model": fitted.step.model,
        "fitted_states": round(float(fitted_states), 1),
        "fitted_c2c": round(float(fitted.variation.c2c), 3),
        "true_c2c": model.variation.c2c,
    }


@click.command()
@click.option("--quick", is_flag=True, help="1 seed instead of 3, shorter characterization and extraction")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write every figure printed to this JSON file")
@click.option("--device", "preset", default="rram-softbounds-20", show_default=True, help="device preset to simulate")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch CPU threads")
def demo(quick: bool, json_path: Path | None, preset: str, seed: int, threads: int) -> None:
    """Characterize, calibrate, train (SGD, TT, TTv2, c-TTv2) and extract on a simulated array; print a table."""
    import torch

    from hil.config import dump_json

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"device": preset, "quick": quick, "seed": seed}

    click.echo(f"== 1-3. pulse-response characterization and calibration of '{preset}'")
    with tempfile.TemporaryDirectory() as tmp:
        char = _characterize(preset, quick, seed, Path(tmp))
    out["characterization"] = char
    for k, v in char.items():
        click.echo(f"  {k:<22} {v}")

    click.echo(
        "== 4. TTv2 robustness study, quick subset (examples/ttv2_robustness.py --quick): digits MLP 64-32-10, "
        "20-state soft-bounds device, c2c 1.0, d2d 0.3, read noise 0.06; c2c axis for analog SGD, TTv2 and c-TTv2"
    )
    from hil.training.robustness import BASE, run_robustness

    seeds = 1 if quick else 3
    robust = run_robustness(
        quick=True, networks=["mlp"], seeds=seeds, epochs=15, jobs=2, log=click.echo,
        command=f"hil demo{' --quick' if quick else ''} (seeds {seed}..{seed + seeds - 1})",
        first_seed=seed,
    )
    out["robustness"] = robust
    results = [{"name": "fp_sgd", "test_accuracy": round(robust["fp_sgd"], 4)}]
    for row in robust["results"]:
        if all(row[k] == v for k, v in BASE.items()):
            results.append({"name": row["algorithm"], "test_accuracy": round(row["accuracy_mean"], 4)})

    from hil.extraction import run_extraction_demo

    click.echo("== 5. model extraction: averaging constant-rate TTv2 iterates, deployment onto a second array")
    extraction = run_extraction_demo(quick=quick, seeds=(seed,), cosine=False, analog=False)
    out["extraction"] = extraction
    for key in ("last_iterate_digital", "average_digital", "average_deployed"):
        if key in extraction:
            acc = extraction[key]
            acc = acc["mean"] if isinstance(acc, dict) else acc
            results.append({"name": f"ttv2_{key}", "test_accuracy": round(float(acc), 4)})

    out["results"] = results
    click.echo("")
    click.echo(f"{'network / method':<32} {'test accuracy':>13}")
    click.echo("-" * 46)
    for r in results:
        click.echo(f"{r['name']:<32} {r['test_accuracy']:>13.4f}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    click.echo(f"wall time {out['seconds']} s")
    if json_path is not None:
        dump_json(json_path, out)
        click.echo(f"wrote {json_path}")
