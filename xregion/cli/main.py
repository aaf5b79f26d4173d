"""`xregion`: one command line for the platform (stack, replication, registry, DR, drills, benchmarks)."""

from __future__ import annotations

import importlib
import sys

import typer

from xregion.config import ConfigError, config_path
from xregion.errors import XRegionError

from .common import console

HELP = """mlflow-xregion: keep MLflow models available through the loss of a region.

Start here:

  xregion up       start the embedded two-region platform

  xregion demo     run the whole lifecycle (train, gate, serve, lose a region)

  xregion status   every component's health
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _group() -> None:
    # a root callback keeps `xregion` a group: with only one command mounted (`xregion drill X`
    # imports just the drill module) typer would otherwise run that command as the root itself
    pass


# Sub-commands: (module, typer app, mount name or None to merge its commands at the top level, the
# top-level command names it provides). Importing a concern costs seconds (MLflow, TensorFlow), so
# a command line imports only the module of the command it names.
MOUNTS = [
    ("xregion.cli.stack", "app", None, ("up", "status", "down", "fault", "region")),
    ("xregion.cli.replicate", "replicate_app", "replicate", ("replicate",)),
    ("xregion.cli.train", "app", None, ("train",)),
    ("xregion.cli.registry", "app", None, ("promote", "rollback")),
    ("xregion.cli.dr", "app", "dr", ("dr",)),
    ("xregion.cli.drill", "app", None, ("drill",)),
    ("xregion.cli.chaos", "app", None, ("chaos",)),
    ("xregion.cli.router", "app", None, ("router",)),
    ("xregion.cli.demo", "app", None, ("demo",)),
]


def mount(argv: list[str] | None = None) -> None:
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    named = [m for m in MOUNTS if wanted in m[3]]
    bench = typer.Typer(help="Benchmarks: print figures, compare side by side in one run.", no_args_is_help=True)
    bench_used = False
    for module, attr, name, _ in named or MOUNTS:
        mod = importlib.import_module(module)
        sub = getattr(mod, attr)
        if name:
            app.add_typer(sub, name=name)
        else:
            app.registered_commands.extend(sub.registered_commands)
            app.registered_groups.extend(sub.registered_groups)
        if hasattr(mod, "bench_app"):
            bench.registered_commands.extend(mod.bench_app.registered_commands)
            bench_used = True
    if bench_used:
        app.add_typer(bench, name="bench")


def main() -> None:
    app.info.help = HELP + f"\nRegions file in use: {config_path()} (set XREGION_CONFIG to change it)."
    mount(sys.argv[1:])
    try:
        app()
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        sys.exit(2)
    except XRegionError as err:  # a concern's error: its message says what is wrong and what to do
        console.print(f"[red]{type(err).__name__}: {err}[/red]")
        sys.exit(1)
