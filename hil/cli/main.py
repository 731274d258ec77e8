"""``hil``: the crossbar-hil command line.

Sub-commands are imported lazily from the modules named in ``COMMANDS`` so that
``hil --help`` stays fast and one command's heavy imports never slow another.
Add a command: write ``hil/cli/<name>.py`` with a click command and list it here.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "info": "hil.cli.info:info",
    "demo": "hil.cli.demo:demo",
    "calibrate": "hil.cli.calibrate:calibrate",
    "characterize": "hil.cli.characterize:characterize",
    "validate": "hil.cli.validate:validate",
    "loop": "hil.cli.loop:loop",
    "emulator": "hil.cli.emulator:emulator",
    "robust": "hil.cli.robust:robust",
    "train": "hil.cli.train:train",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crossbar-hil", prog_name="hil")
def cli() -> None:
    """crossbar-hil: one CrossbarBackend for simulated and physical analog crossbar arrays."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
