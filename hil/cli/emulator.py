"""``hil emulator``: serve the test-chip board emulator on a loopback TCP port."""

from __future__ import annotations

import json
import time

import click


@click.command()
@click.option("--device", default="rram-softbounds-20", show_default=True,
              help="device preset name or device-model JSON file")
@click.option("--rows", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--cols", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 (0: a free one)")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="EmulatorConfig JSON (overrides --device/--rows/--cols/--seed)")
@click.option("--fault", "faults", multiple=True, metavar="KEY=VALUE",
              help="fault injection, e.g. --fault corrupt_reply_rate=0.01 --fault drop_ack_rate=0.01")
@click.option("--duration", default=0.0, show_default=True, type=float,
              help="stop after this many seconds (0: until Ctrl-C)")
@click.option("--pulse-log", type=click.Path(dir_okay=False),
              help="write the log of every applied pulse operation here (JSON) at exit")
def emulator(
    device: str,
    rows: int,
    cols: int,
    seed: int,
    port: int,
    config_path: str | None,
    faults: tuple[str, ...],
    duration: float,
    pulse_log: str | None,
) -> None:
    """Serve an emulated test-chip board (SimulatedCrossbar behind the board protocol).

    Connect with the backend spec printed at start, e.g.
    ``--backend 'serial+socket://127.0.0.1:PORT#limits=board'``.
    """
    from hil.config import dump_json
    from hil.drivers.chip.emulator import ChipEmulator, EmulatorConfig, FaultConfig
    from hil.drivers.chip.transports import EmulatorTcpServer

    if config_path:
        with open(config_path) as fh:
            cfg = EmulatorConfig.model_validate(json.load(fh))
    else:
        cfg = EmulatorConfig(rows=rows, cols=cols, device=device, seed=seed)
    if faults:
        values = cfg.faults.model_dump()
        for item in faults:
            key, sep, value = item.partition("=")
            if not sep or key not in FaultConfig.model_fields:
                raise click.BadParameter(
                    f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(FaultConfig.model_fields)}",
                    param_hint="--fault",
                )
            values[key] = value
        try:
            cfg = cfg.model_copy(update={"faults": FaultConfig.model_validate(values)})
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fault") from None
    emu = ChipEmulator(cfg)
    server = EmulatorTcpServer(emu, port=port).start()
    click.echo(f"emulated board {cfg.rows}x{cfg.cols}, device {emu.sim.config.device.name}, seed {cfg.seed}")
    click.echo(f"url:  {server.url}")
    click.echo(f"spec: serial+{server.url}#limits=board")
    start = time.monotonic()
    try:
        while duration <= 0 or time.monotonic() - start < duration:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        n = len(emu.pulse_log)
        click.echo(f"stopped: {server.connections} connection(s), {n} pulse operation(s), "
                   f"{sum(r.pulses for r in emu.pulse_log)} pulses")
        if pulse_log:
            dump_json(pulse_log, {"pulse_log": [r.as_dict() for r in emu.pulse_log],
                                  "stats": dict(emu.stats)})
            click.echo(f"pulse log: {pulse_log}")
