"""``hil validate REFERENCE.csv CANDIDATE.csv``: compare two measurement files statistically.

Exit status: 0 when every evaluated statistic passes, 1 when any fails, 2 for
unusable input (a file that cannot be read, too little data, files of
different protocols, a bad thresholds file) and for input too little
replicated to be judged (verdict "insufficient replication": a file holding one
cycle of one device, whose run-to-run variability cannot be estimated; the
table and the report are still written).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_UNUSABLE = 2


@click.command()
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write report.md, report.json and PNG figures into this folder")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the report as JSON (schema_version 1.0) to this file")
@click.option("--thresholds", "thresholds_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="JSON file overriding the default thresholds (see docs/validation.md)")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the bootstrap and permutation resampling")
@click.option("--quiet", is_flag=True, help="print only the verdict line")
def validate(
    reference: Path,
    candidate: Path,
    report_dir: Path | None,
    json_path: Path | None,
    thresholds_path: Path | None,
    seed: int,
    quiet: bool,
) -> None:
    """Compare CANDIDATE with REFERENCE (two measurement CSVs of one protocol).

    Prints a pass/fail table: trajectory, step size and spread against the
    state, KS tests of the step distributions, asymmetry, number of states,
    symmetry point, device-to-device spread and read noise.  Exit 0: all pass,
    1: any fails, 2: unusable input, or too little replication to judge
    (one cycle of one device in a file).
    """
    code = run_validate(reference, candidate, report_dir, json_path, thresholds_path, seed, quiet)
    sys.exit(code)


def run_validate(
    reference: Path,
    candidate: Path,
    report_dir: Path | None = None,
    json_path: Path | None = None,
    thresholds_path: Path | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> int:
    """The body of ``hil validate``; returns the exit status."""
    from hil.validation.compare import compare_measurements
    from hil.validation.measurements import UnusableInputError, load_measurements
    from hil.validation.report import format_table, write_report
    from hil.validation.thresholds import ValidationThresholds

    try:
        th = ValidationThresholds()
        if thresholds_path is not None:
            try:
                th = ValidationThresholds.model_validate_json(Path(thresholds_path).read_text())
            except (OSError, ValueError) as exc:
                raise UnusableInputError(f"thresholds file {thresholds_path}: {exc}") from exc
        ref = load_measurements(reference)
        cand = load_measurements(candidate)
        comp = compare_measurements(ref, cand, th, seed=seed)
    except (UnusableInputError, ValueError) as exc:
        click.echo(f"hil validate: unusable input: {exc}", err=True)
        return EXIT_UNUSABLE
    report = comp.report
    if report_dir is not None:
        md = write_report(comp, report_dir)
        if not quiet:
            click.echo(f"report: {md}")
    if json_path is not None:
        report.save(json_path)
    if quiet:
        click.echo(format_table(report).splitlines()[-1])
    else:
        for label, path, f in (("reference", reference, report.reference), ("candidate", candidate, report.candidate)):
            units = ("1 replication unit: its sampling error cannot be estimated" if f.units < 2 else
                     f"{f.units} replication units: {'devices' if f.resampled_by == 'device' else 'cycles'}, "
                     f"{f.resampling}")
            click.echo(f"{label}: {path} ({f.devices} devices, {f.blocks} device-cycles; {units})")
        click.echo(format_table(report))
        for w in report.warnings:
            click.echo(f"warning: {w}")
    if report.verdict == "insufficient":
        click.echo(
            "hil validate: unusable input: insufficient replication to judge "
            f"{', '.join(report.insufficient()) or 'any statistic'}: "
            + _why_insufficient(report), err=True,
        )
        return EXIT_UNUSABLE
    return EXIT_PASS if report.passed else EXIT_FAIL


def _why_insufficient(report: object) -> str:
    """The reason of the first insufficient statistic (they share it in the usual case)."""
    for s in getattr(report, "statistics", []):
        if s.status == "insufficient":
            return s.note.split("; ")[0].removeprefix("insufficient replication: ")
    return "no statistic could be evaluated"
