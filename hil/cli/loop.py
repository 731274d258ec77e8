"""``hil loop --backend SPEC``: characterize -> calibrate -> simulate -> characterize the simulator -> validate.

Exit status as ``hil validate``: 0 when the fitted simulator passes validation
against the backend, 1 when it fails, 2 for unusable input (a spec that does not
open, a protocol file that is not valid, too little data to compare, or too
little replication to judge: one cycle of one device).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option("--backend", "spec", required=True,
              help="backend spec: serial+xbarsim://NAME#limits=board, serial+socket://HOST:PORT#limits=L.json, "
                   "bench:BENCH.yaml, sim:DEVICE.json, ...")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("loop"),
              show_default=True, help="folder for chip.csv, device.json, simulated.csv and report/")
@click.option("--rows", type=int, default=8, show_default=True, help="rows of the window characterized")
@click.option("--cols", type=int, default=8, show_default=True, help="columns of the window characterized")
@click.option("--protocol", "protocol_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PROTOCOL.json (PulseProtocol); default: 10 cycles of 5 reads, 100 up, 100 down")
@click.option("--g-range", "g_range", type=float, nargs=2, default=(1e-6, 1e-5), show_default=True,
              help="readout range of the backend: conductance (S) at w_min and at w_max")
@click.option("--model", type=click.Choice(["auto", "constant", "linear", "softbounds", "pow", "exp", "table"]),
              default="auto", show_default=True, help="step model to fit (auto: model selection)")
@click.option("--control", type=click.Choice(["none", "constant"]), default="none", show_default=True,
              help="also validate a deliberately wrong constant-step model (it must fail)")
@click.option("--mvm", is_flag=True, help="also compare MVM output errors on the backend and the simulator")
@click.option("--sim-seed", type=int, default=1, show_default=True, help="seed of the fitted simulator")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the loop result (LoopResult JSON) here")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option("--jobs", default=0, show_default=True, type=click.IntRange(0, None),
              help="worker processes for the calibration's candidate fits (0: one per CPU core for files of at "
                   "least 2000 reads, else none; 1: none); the fitted model is the same with any number")
def loop(
    spec: str,
    out_dir: Path,
    rows: int,
    cols: int,
    protocol_path: Path | None,
    g_range: tuple[float, float],
    model: str,
    control: str,
    mvm: bool,
    sim_seed: int,
    json_path: Path | None,
    no_progress: bool,
    jobs: int,
) -> None:
    """Close the loop on a backend and end with the verdict: does the fitted simulator match it?"""
    from hil.validation.loop import LoopConfig, default_loop_protocol, run_loop
    from hil.validation.measurements import UnusableInputError
    from hil.validation.report import format_table

    try:
        if protocol_path is not None:
            from hil.characterization.protocol import PulseProtocol

            protocol = PulseProtocol.load(protocol_path)
        else:
            protocol = default_loop_protocol()
        cfg = LoopConfig(
            rows=rows, cols=cols, protocol=protocol, g_range_s=g_range, calibration={"model": model},
            sim_seed=sim_seed, control=control, mvm=mvm, progress=not no_progress, jobs=jobs,
        )
        result = run_loop(spec, out_dir, cfg, log=click.echo)
    except (UnusableInputError, ValueError) as exc:
        click.echo(f"hil loop: unusable input: {exc}", err=True)
        sys.exit(2)
    click.echo(format_table(result.validation))
    if result.control is not None:
        verdict = {"pass": "PASSES: validation could not tell it apart", "fail": "FAILS as it must",
                   "insufficient": "cannot be judged (insufficient replication)"}.get(
            result.control.verdict, "FAILS as it must" if not result.control.passed else "PASSES")
        click.echo(f"control ({result.control.model} step): {verdict}; failed: {', '.join(result.control.failed) or '-'}")
    if result.mvm is not None:
        failed = [s["name"] for s in result.mvm["statistics"] if s["status"] == "fail"]
        click.echo(f"MVM validation: {'PASS' if result.mvm['passed'] else 'FAIL'}"
                   + (f" ({', '.join(failed)})" if failed else ""))
        for warning in result.mvm.get("warnings", []):
            click.echo(f"MVM warning: {warning}")
    click.echo(f"report: {result.report_dir}/report.md")
    verdict = result.validation.verdict
    text = {"pass": "PASSES", "fail": "FAILS", "insufficient": "CANNOT BE JUDGED (insufficient replication) in"}
    click.echo(f"verdict: the fitted {result.chosen_model} simulator {text[verdict]} validation against {spec}")
    if json_path is not None:
        result.save(json_path)
    sys.exit({"pass": 0, "fail": 1, "insufficient": 2}[verdict])
