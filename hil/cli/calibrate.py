"""``hil calibrate``: fit a device model to pulse-response measurements."""

from __future__ import annotations

from pathlib import Path

import click

MODELS = ["auto", "constant", "linear", "softbounds", "pow", "exp", "table"]


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {it!r}", param_hint="-O/--import-option")
        out[key.strip()] = val.strip()
    return out


def _g_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected GMIN,GMAX in siemens, got {text!r}", param_hint="--g-range") from None
    return lo, hi


@click.command()
@click.argument("measurements", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="device model JSON to write")
@click.option("--format", "fmt", default="auto", show_default=True, help="auto|schema|updown-columns|crosssim-lut|wgfmu-summary (or a plug-in's name)")
@click.option("--model", default="auto", show_default=True, type=click.Choice(MODELS), help="step model, or auto (model selection)")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False, path_type=Path), help="write report.txt, report.png, report.json here")
@click.option("--holdout", default=1 / 3, show_default="1/3", type=click.FloatRange(0, 1, max_open=True), help="fraction of later cycles held out")
@click.option("--g-range", default=None, help="GMIN,GMAX (siemens) mapped to w = -1, +1 (default: 1st/99th percentile)")
@click.option("--mapping", "mapping_kind", default="gmin-gmax", show_default=True, type=click.Choice(["gmin-gmax", "differential"]))
@click.option("--normalize", default="auto", show_default=True, type=click.Choice(["auto", "pooled", "per-device"]), help="one conductance range for all devices, or one per device")
@click.option("--final-fit", default="all", show_default=True, type=click.Choice(["all", "train"]), help="refit the chosen model on all rows, or keep the fit on the fitting rows")
@click.option("--table-nodes", default=10, show_default=True, type=click.IntRange(3, 200))
@click.option("--write-noise", default="auto", show_default=True, type=click.Choice(["auto", "off"]),
              help="also fit a non-accumulating write-noise offset (kept only where the data determine it and BIC falls)")
@click.option("--d2d-groups", default="pulse-width", show_default=True, type=click.Choice(["pulse-width", "none"]),
              help="measure the device-to-device spread within groups of devices pulsed with the same widths "
                   "(a width difference is protocol, not device variation), or around the mean of all devices")
@click.option("--pulse-response", default="auto", show_default=True, type=click.Choice(["auto", "merz", "none"]),
              help="where pulses differ in amplitude or width (amplitude_v, width_s columns): fit a KAI/Merz law "
                   "of the pulse, with a field exponent where the BIC supports it, and keep it if the BIC falls "
                   "(auto); the same with Merz's exponent 1 only (merz); or treat every pulse as the same pulse (none)")
@click.option("--noise-match", default="steps", show_default=True, type=click.Choice(["steps", "none"]),
              help="scale the fitted noise terms by one factor where a free-running replay of the fitting rows "
                   "spreads the per-pulse change more (or less) than measured (steps), or keep the likelihood's "
                   "values (none)")
@click.option("--jobs", default=0, show_default=True, type=click.IntRange(0, None),
              help="worker processes for the candidate models' fits (0: one per CPU core for files of at least "
                   "2000 reads, else none; 1: all in this process); the result is the same with any number")
@click.option("--chunk", default=None, type=click.IntRange(8, None),
              help="cut runs longer than this many reads into chunks for the filter (default: the pipeline's)")
@click.option("-O", "--import-option", "import_options", multiple=True, help="importer option KEY=VALUE (repeatable)")
@click.option("--export", default=None, type=click.Path(dir_okay=False, path_type=Path), help="also write the imported measurements as a schema CSV")
@click.option("--replay-check/--no-replay-check", default=True, show_default=True, help="replay the held-out rows on the simulator and score them")
@click.option("--fit-samples", is_flag=True, help="lookup tables: fit pulse trains sampled from the table instead of importing it")
@click.option("--seed", default=0, show_default=True, help="seed of the replay check")
@click.option("--name", default=None, help="name stored in the device model")
def calibrate(
    measurements: Path,
    output: Path,
    fmt: str,
    model: str,
    report_dir: Path | None,
    holdout: float,
    g_range: str | None,
    mapping_kind: str,
    normalize: str,
    final_fit: str,
    table_nodes: int,
    write_noise: str,
    d2d_groups: str,
    pulse_response: str,
    noise_match: str,
    jobs: int,
    chunk: int | None,
    import_options: tuple[str, ...],
    export: Path | None,
    replay_check: bool,
    fit_samples: bool,
    seed: int,
    name: str | None,
) -> None:
    """Fit a device model to MEASUREMENTS (a file or directory) and write it to -o DEVICE.json.

    Every step model is fitted (pooled and per device, up and down separately) and
    the best is chosen by BIC among those that predict the held-out later cycles
    well; or give --model.  The JSON loads directly into SimulatedCrossbar
    (hil characterize --backend sim:DEVICE.json ...).
    """
    import time

    import torch

    from hil.calibration.compare import format_metrics
    from hil.calibration.mapping import MappingSpec
    from hil.calibration.pipeline import CalibrationConfig
    from hil.calibration.report import write_report
    from hil.calibration.workflow import calibrate_path

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        cfg = CalibrationConfig(
            model=model,  # type: ignore[arg-type]
            holdout_fraction=holdout,
            mapping=MappingSpec(
                kind="differential" if mapping_kind == "differential" else "gmin_gmax",
                normalize=normalize.replace("-", "_"),  # type: ignore[arg-type]
                g_range=_g_range(g_range),
            ),
            table_nodes=table_nodes,
            final_fit=final_fit,  # type: ignore[arg-type]
            name=name or measurements.stem,
            write_noise=write_noise,  # type: ignore[arg-type]
            d2d_groups=d2d_groups.replace("-", "_"),  # type: ignore[arg-type]
            pulse_response=pulse_response,  # type: ignore[arg-type]
            noise_match=noise_match,  # type: ignore[arg-type]
            **({} if chunk is None else {"chunk": chunk}),
        )
        run = calibrate_path(measurements, fmt, _pairs(import_options), cfg, replay=replay_check, seed=seed,
                             fit_samples=fit_samples, jobs=jobs)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    run.model.save(output)
    click.echo(f"format {run.format}: {measurements}")
    if export is not None:
        if run.measurements is None:
            raise click.ClickException(f"--export: the {run.format} import has no measurements (a table model); "
                                       "use --model other than table to sample pulse trains")
        run.measurements.save(export)
        click.echo(f"measurements written to {export} ({len(run.measurements)} rows)")
    cal = run.calibration
    if cal is None:
        click.echo(f"imported a {run.model.step.model} device model directly (no fit): {output}")
        for n in run.notes:
            click.echo(f"  note: {n}")
        click.echo(f"time {time.perf_counter() - t0:.1f} s")
        return
    click.echo(f"{len(cal.measurements)} rows, {len(cal.measurements.devices)} devices; held out "
               f"{int(cal.heldout.sum())} rows ({cal.heldout_unit})")
    for c in cal.candidates:
        mark = "  <- chosen" if c.model == cal.chosen else ""
        held = f"{c.nll_heldout:.1f}" if c.nll_heldout is not None else "-"
        status = ("eligible" if c.eligible else "not eligible") if c.determined else "rejected: undetermined"
        click.echo(f"  {c.model:<11} BIC {c.bic:>12.1f}  held-out NLL {held:>10}  {status}{mark}")
    m = run.model
    params = ", ".join(f"{k}={getattr(m.step, k):.4g}" for k in m.step.parameters)
    click.echo(f"chosen {cal.chosen}: {params}; c2c {m.variation.c2c:.3g}, read noise {m.read_noise:.3g}, "
               f"d2d {{{', '.join(f'{k}: {v:.3g}' for k, v in m.variation.d2d.items())}}}")
    s = m.provenance.get("summary", {})
    if m.pulse_response is not None:
        r = m.pulse_response
        click.echo("pulse response (KAI/Merz, step x f(|V|, t) / f(nominal)): " + "; ".join(
            f"{d} t0 10^{law.log10_t0_s:.3g} s, V_a {law.activation_v:.3g} V, n {law.exponent:.3g}"
            + (f", alpha {law.field_exponent:.3g}" if law.field_exponent != 1.0 else "") + ", nominal "
            f"{nom.amplitude_v:.4g} V x {nom.width_s:.3g} s"
            for d, law, nom in (("up", r.up, r.nominal_up), ("down", r.down, r.nominal_down))))
    if cal.noise_match is not None:
        click.echo(cal.noise_match.line())
    if m.variation.write_noise > 0:
        click.echo(f"write noise {m.variation.write_noise:.3g} (correlation per pulse {m.variation.write_noise_rho:.3g})")
    click.echo(f"symmetry point {s.get('symmetry_point', float('nan')):.4g}, dw_min {s.get('dw_min', float('nan')):.4g}, "
               f"states {s.get('n_states', float('nan')):.4g}")
    if cal.replay is not None:
        click.echo(format_metrics(cal.replay, "held-out replay (model fitted on the fitting rows):"))
    for n in cal.notes:
        click.echo(f"note: {n}")
    if report_dir is not None:
        paths = write_report(cal, report_dir, run.reference)
        click.echo(f"report: {paths['text']}, {paths['figure']}, {paths['json']}")
    click.echo(f"device model written to {output}; time {time.perf_counter() - t0:.1f} s")
