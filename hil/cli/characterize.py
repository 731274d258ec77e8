"""``hil characterize``: run a pulse protocol, or replay a measurement, on any backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

DEFAULT_G_RANGE = (1e-6, 1e-5)


def _g_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected GMIN,GMAX in siemens, got {text!r}", param_hint="--g-range") from None
    if not lo < hi:
        raise click.BadParameter(f"GMIN must be below GMAX, got {text!r}", param_hint="--g-range")
    return lo, hi


def open_for_characterization(
    spec: str,
    rows: int | None,
    cols: int | None,
    seed: int,
    sim_periphery: str,
    g_range: tuple[float, float] | None,
    sim_shape: tuple[int, int] = (4, 4),
) -> tuple[Any, Any, str]:
    """Open the backend and choose the conductance mapping; returns ``(backend, mapping, why)``.

    Mapping precedence: ``--g-range``; the device model of a ``sim:`` spec (with its
    per-device ranges when it was fitted with per-device normalization); a backend's
    ``info.details["conductance"]`` (``{"g_min_s": ..., "g_max_s": ...}``); else 1 uS at
    ``w_min`` and 10 uS at ``w_max``.  ``sim_shape`` is the array shape of a ``sim:``
    backend when ``rows``/``cols`` are not given; other backends (``serial:``,
    ``bench:``) take their shape from the hardware and only check given ones.
    """
    from hil.backends import open_backend, split_spec
    from hil.calibration.mapping import Mapping
    from hil.device_model import ConductanceMapping

    scheme, rest = split_spec(spec)
    kwargs: dict[str, Any] = {}
    model = None
    if scheme == "sim":
        from hil.calibration.workflow import device_periphery
        from hil.simulated.crossbar import resolve_device_model
        from hil.simulated.factory import DEFAULT_PRESET

        model = resolve_device_model(rest or DEFAULT_PRESET)
        rows, cols = rows or sim_shape[0], cols or sim_shape[1]  # hardware: the shape of the device
        kwargs["seed"] = seed
        if sim_periphery == "device":
            kwargs["periphery"] = device_periphery(model)
        backend = open_backend(spec, rows=rows, cols=cols, **kwargs)
    else:
        backend = open_backend(spec, rows=rows, cols=cols)
    info = backend.info
    if g_range is not None:
        cm = ConductanceMapping(g_min_s=g_range[0], g_max_s=g_range[1], w_min=info.w_min, w_max=info.w_max)
        return backend, Mapping(model=cm, rule="--g-range"), f"--g-range {g_range[0]:g},{g_range[1]:g} S"
    if model is not None and model.conductance is not None:
        m = Mapping.from_model(model.conductance, model.provenance)
        why = "the device model's mapping" + (" (per-device ranges)" if m.per_device else "")
        return backend, m, why
    details = info.details.get("conductance") if isinstance(info.details, dict) else None
    if isinstance(details, dict) and {"g_min_s", "g_max_s"} <= set(details):
        cm = ConductanceMapping(g_min_s=float(details["g_min_s"]), g_max_s=float(details["g_max_s"]),
                                w_min=info.w_min, w_max=info.w_max)
        return backend, Mapping(model=cm, rule="backend info"), "the backend's mapping"
    cm = ConductanceMapping(g_min_s=DEFAULT_G_RANGE[0], g_max_s=DEFAULT_G_RANGE[1], w_min=info.w_min, w_max=info.w_max)
    return backend, Mapping(model=cm, rule="default"), (
        f"default: {DEFAULT_G_RANGE[0]:g} S at w_min, {DEFAULT_G_RANGE[1]:g} S at w_max (no mapping known; pass --g-range)"
    )


@click.command()
@click.option("--backend", "spec", required=True, help="backend spec: sim:DEVICE.json, sim:PRESET, serial://..., bench:...")
@click.option("--replay", "replay_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="measurement CSV whose pulse sequence to replay")
@click.option("--protocol", "protocol_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PROTOCOL.json (hil.characterization.PulseProtocol)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="measurement CSV to write (rows appended as measured)")
@click.option("--resume", is_flag=True, help="continue an interrupted run into the same -o file")
@click.option("--rows", default=None, type=click.IntRange(1), help="array rows (sim: default 4 for --protocol, 1 for --replay)")
@click.option("--cols", default=None, type=click.IntRange(1), help="array columns (sim: default 4 for --protocol, the device count for --replay)")
@click.option("--g-range", default=None, help="GMIN,GMAX siemens at w_min, w_max (default: the device model's mapping)")
@click.option("--sim-periphery", default="device", show_default=True, type=click.Choice(["device", "array"]), help="sim: reads as a single-device measurement (model read noise only) or through the array's default DAC/ADC")
@click.option("--seed", default=0, show_default=True, help="seed of a sim: backend")
@click.option("--reads", default=1, show_default=True, type=click.IntRange(1), help="replay: full-array reads averaged per recorded read")
@click.option("--program-tol", default=0.02, show_default=True, type=click.FloatRange(0, min_open=True), help="write-verify tolerance for start states, normalized units")
@click.option("--program-reads", default=4, show_default=True, type=click.IntRange(1))
@click.option("--compare/--no-compare", default=True, show_default=True, help="replay: print the figures of merit against the measured file")
@click.option("--holdout", default=1 / 3, show_default="1/3", type=click.FloatRange(0, 1, max_open=True), help="replay: the held-out split calibrate uses (for --compare and --restart-at-holdout)")
@click.option("--restart-at-holdout", is_flag=True, help="replay: write each device to its measured conductance at its first held-out read (calibrate's replay check writes the fitted model's prediction of that read instead)")
@click.option("--progress/--no-progress", default=True, show_default=True)
def characterize(
    spec: str,
    replay_path: Path | None,
    protocol_path: Path | None,
    output: Path,
    resume: bool,
    rows: int | None,
    cols: int | None,
    g_range: str | None,
    sim_periphery: str,
    seed: int,
    reads: int,
    program_tol: float,
    program_reads: int,
    compare: bool,
    holdout: float,
    restart_at_holdout: bool,
    progress: bool,
) -> None:
    """Measure pulse responses on a backend, writing a measurement CSV (-o) as it goes.

    --protocol PROTOCOL.json runs cycles of up and down pulses with reads on a sample of
    devices; --replay MEASUREMENTS.csv applies the exact pulse sequence of a measured
    file, each device starting from its first measured conductance, and writes one row
    per input row.  A crash loses nothing already written; --resume continues.
    """
    import time

    import torch

    torch.set_num_threads(1)
    if (replay_path is None) == (protocol_path is None):
        raise click.UsageError("give exactly one of --replay MEASUREMENTS.csv or --protocol PROTOCOL.json")
    if output.exists() and not resume:
        raise click.ClickException(f"{output} exists: pass --resume to continue it, or choose another -o")
    from hil.calibration.measurements import load_measurements
    from hil.characterization.protocol import PulseProtocol
    from hil.characterization.runner import replay_to_file, run_protocol

    t0 = time.perf_counter()
    try:
        if replay_path is not None:
            ms = load_measurements(replay_path)
            n_dev = len(ms.devices)
            sim_rows = rows or 1
            sim_cols = cols or -(-n_dev // sim_rows)
            backend, mapping, why = open_for_characterization(spec, rows, cols, seed, sim_periphery, _g_range(g_range),
                                                              sim_shape=(sim_rows, sim_cols))
            restart = None
            if restart_at_holdout:
                from hil.calibration.compare import holdout_starts
                from hil.calibration.split import holdout_rows

                restart = holdout_starts(ms, holdout_rows(ms, holdout)[0])
            with backend:
                from hil.characterization.runner import replay_shape_columns

                shapes = replay_shape_columns(ms, backend)
                have = [k for k in ("amplitude_v", "width_s") if k in ms.optional]
                click.echo(f"replaying {len(ms)} rows of {n_dev} device(s) from {replay_path} on {backend.info.name} "
                           f"{backend.rows}x{backend.cols}; mapping: {why}; pulses: "
                           + (f"each row's {' and '.join(shapes)}" if shapes else
                              "the backend's nominal pulse" + (f" (the file's {', '.join(have)} not applied: the backend "
                                                               "has no pulse shapes)" if have else "")))
                meta = replay_to_file(backend, ms, mapping, output, backend_spec=spec, reads=reads, tol=program_tol,
                                      program_reads=program_reads, resume=resume, progress=progress,
                                      restart_rows=restart)
            click.echo(f"wrote {meta.rows_written} rows to {output} ({'complete' if meta.complete else 'incomplete'}); "
                       f"time {time.perf_counter() - t0:.1f} s")
            if compare and meta.complete:
                _compare(ms, output, holdout)
        else:
            assert protocol_path is not None
            protocol = PulseProtocol.load(protocol_path)
            backend, mapping, why = open_for_characterization(spec, rows, cols, seed, sim_periphery, _g_range(g_range))
            with backend:
                n = len(protocol.select_devices(backend.rows, backend.cols))
                click.echo(f"protocol {protocol.name}: {len(protocol.schedule())} steps x {n} devices on "
                           f"{backend.info.name} {backend.rows}x{backend.cols}; mapping: {why}")
                meta = run_protocol(backend, protocol, mapping, output, backend_spec=spec, resume=resume,
                                    progress=progress, program_reads=program_reads)
            click.echo(f"wrote {meta.rows_written} rows to {output} ({'complete' if meta.complete else 'incomplete'}); "
                       f"time {time.perf_counter() - t0:.1f} s")
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _compare(measured: Any, output: Path, holdout: float) -> None:
    from hil.calibration.compare import format_metrics, replay_metrics
    from hil.calibration.measurements import load_measurements
    from hil.calibration.split import holdout_rows

    replayed = load_measurements(output, min_pulses=1)
    click.echo(format_metrics(replay_metrics(measured, replayed), "all rows:"))
    held, unit = holdout_rows(measured, holdout)
    if held.any():
        click.echo(format_metrics(replay_metrics(measured, replayed, held), f"held-out rows ({unit}, fraction {holdout:.3g}):"))
