"""The ``compass`` command line (click): one entry point, a module per subcommand.

click was chosen over argparse for nested commands, typed options and ``--help`` that reads
well, and over typer to keep the dependency list short (transformers already pulls click in).
Each subcommand lives in its own module under ``compass/cli/`` and is imported only when used,
so ``compass --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

from compass.cli.common import offline_defaults

# Subcommands: (module, attribute). Imported only when used.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("compass.cli.serve", "serve"),
    "sql": ("compass.cli.sql", "sql"),
    "route": ("compass.cli.route", "route_command"),
    "init": ("compass.cli.init", "init"),
    "keys": ("compass.cli.keys", "keys_command"),
    "replay": ("compass.cli.replay", "replay_command"),
    "train": ("compass.cli.train", "train_command"),
    "bench": ("compass.cli.bench", "bench_command"),
    "download-models": ("compass.cli.download_models", "download_models_command"),
}


class CompassGroup(click.Group):
    """A click group whose heavier subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._available_lazy()})

    @staticmethod
    def _available_lazy() -> list[str]:
        found = []
        for name, (module, _) in LAZY_COMMANDS.items():
            try:
                if importlib.util.find_spec(module) is not None:
                    found.append(name)
            except ModuleNotFoundError:
                continue
        return found

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in LAZY_COMMANDS:
            return command
        module_name, attr = LAZY_COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            return None
        return getattr(module, attr)


@click.group(cls=CompassGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llm-compass")
def main() -> None:
    """LLM Compass: an OpenAI-compatible gateway that routes each request to a just-right model."""
    offline_defaults()


if __name__ == "__main__":
    main()
