"""``hil info``: versions, torch device, available backends and device models."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@click.option("--backend", "spec", default=None,
              help="also open this backend spec (e.g. 'bench:BENCH.yaml?dry_run=1') and show its capabilities")
def info(as_json: bool, spec: str | None) -> None:
    """Show versions, torch device, backend schemes and device presets (and a backend's capabilities)."""
    if spec is not None:
        _backend_info(spec, as_json)
        return
    import torch

    import hil
    from hil.backends import known_schemes
    from hil.simulated.presets import get_preset, list_presets

    data = {
        "crossbar_hil": hil.__version__,
        "torch": torch.__version__,
        "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "backend_schemes": known_schemes(),
        "device_presets": {n: get_preset(n).description for n in list_presets()},
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"crossbar-hil {data['crossbar_hil']}  (torch {data['torch']}, device {data['torch_device']})")
    if data["cuda_devices"]:
        click.echo("CUDA: " + ", ".join(data["cuda_devices"]))
    click.echo("backends: " + ", ".join(f"{s}:" for s in data["backend_schemes"]))
    click.echo("device presets:")
    for name, desc in data["device_presets"].items():
        click.echo(f"  {name:<20} {desc}")


def _backend_info(spec: str, as_json: bool) -> None:
    """Open ``spec``, print its :class:`~hil.backend.BackendInfo`, close it (nothing is written)."""
    from hil.backends import open_backend

    try:
        with open_backend(spec) as backend:
            data = backend.info.model_dump(mode="json")
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"cannot open backend {spec!r}: {exc}") from exc
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{data['name']} ({data['kind']}) {data['rows']}x{data['cols']}  {data['hardware_id']}")
    for key in ("w_min", "w_max", "dw_min", "parallel_update", "transposed_read", "max_pulses_per_call"):
        click.echo(f"  {key:<20} {data[key]}")
    for key, value in data["details"].items():
        click.echo(f"  {key:<20} {value}")
