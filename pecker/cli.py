"""The ``pecker`` command line: one subcommand per workflow step, each runnable by hand.

    pecker data prepare      -d mnist --out data/mnist
    pecker teacher train     -d mnist --out results/mnist/teacher
    pecker teacher sample    -d mnist --teacher results/mnist/teacher/ema --out ...
    pecker classifier train  -d mnist --out results/mnist/classifier
    ...

Every subcommand takes ``--config`` (default ``config/config.yaml``) and ``--set key=value``.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

# (module, attribute) of each subcommand group; imported lazily so `pecker --help` is fast.
COMMANDS = {
    "data": ("pecker.data.cli", "data"),
    "teacher": ("pecker.diffusion.cli", "teacher"),
    "classifier": ("pecker.classifier.cli", "classifier"),
    "unlearn": ("pecker.unlearn.cli", "unlearn"),
    "evaluate": ("pecker.evaluate.cli", "evaluate"),
    "report": ("pecker.report.cli", "report"),
    "audit": ("pecker.report.cli", "audit"),
    "config": ("pecker.config_cli", "config"),
    "assets": ("pecker.assets_cli", "assets"),
}


class LazyGroup(click.Group):
    def invoke(self, ctx):
        """Every subcommand turns the errors a user can fix (bad config, refused resume, corrupt or
        edited artefact, diverged run) into one line and exit code 1, never a traceback."""
        from pecker.clitools import clean_errors

        with clean_errors():
            return super().invoke(ctx)

    def list_commands(self, ctx):
        return [name for name, (mod, _) in COMMANDS.items() if importlib.util.find_spec(mod)]

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        mod, attr = COMMANDS[name]
        if importlib.util.find_spec(mod) is None:
            return None
        return getattr(importlib.import_module(mod), attr)


@click.group(cls=LazyGroup)
@click.version_option(package_name="pecker")
def main() -> None:
    """pecker: reproducible PECKER / SFD unlearning for diffusion models."""


if __name__ == "__main__":
    main()
