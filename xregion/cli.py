"""`xregion`: one command line for the platform (stack, replication, registry, DR, drills)."""

from __future__ import annotations

import json
import sys
from enum import Enum

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, load_config
from .home import xregion_home

app = typer.Typer(
    help="mlflow-xregion: keep MLflow models available through the loss of a region.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def progress(msg: str) -> None:
    console.print(f"[dim]{msg}[/dim]")


def config_or_exit():
    try:
        return load_config()
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


@app.command()
def up() -> None:
    """Start the embedded two-region stack on loopback and wait until every component is healthy."""
    from xregion.infra import stack
    from xregion.infra.supervisor import SupervisorError

    cfg, home = config_or_exit(), xregion_home()
    console.print(f"regions file: {cfg.source}\nstate, logs, pid files: {home}")
    try:
        seconds = stack.up(cfg, home, progress)
    except SupervisorError as err:
        console.print(f"[red]start-up failed:[/red] {err}")
        console.print("Fix the cause, then run `xregion up` again (it resumes); `xregion down` stops what started.")
        raise typer.Exit(1) from None
    console.print(f"[green]stack up in {seconds:.1f}s[/green]")
    for r in cfg.regions:
        console.print(
            f"  region {r.name} ({r.role}): MLflow {r.mlflow_url}  S3 {r.s3.endpoint_url}/{r.s3.bucket}"
            f"  Postgres {r.postgres}"
        )
    console.print("Check with `xregion status`; stop with `xregion down`.")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Health of every component of the stack (exit 1 if any is not healthy)."""
    from xregion.infra import stack

    rows = stack.status(config_or_exit(), xregion_home())
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table("service", "state", "pid", "listen", "health")
        for r in rows:
            health = "[green]healthy[/green]" if r["healthy"] else "[red]down[/red]"
            table.add_row(r["service"], r["state"], str(r["pid"] or "-"), r["listen"], f"{health} {r['detail']}")
        Console().print(table)
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop every process the stack started (by pid), leaving none behind. Data stays in XREGION_HOME."""
    from xregion.infra import stack

    stopped = stack.down(xregion_home(), progress)
    console.print(f"stopped {len(stopped)} service(s)" if stopped else "nothing was running")


class FaultAction(str, Enum):
    kill = "kill"
    freeze = "freeze"
    thaw = "thaw"
    restart = "restart"


@app.command()
def fault(
    action: FaultAction = typer.Argument(..., help="kill (SIGKILL), freeze (SIGSTOP), thaw (SIGCONT), restart"),
    region: str = typer.Argument(..., help="Region name from the regions file."),
    component: str | None = typer.Argument(None, help="s3, postgres, mlflow, serving, ... (default: all)"),
) -> None:
    """Inject a fault into real processes of one region; recorded in the event log."""
    from xregion.infra import stack
    from xregion.infra.supervisor import Supervisor, SupervisorError

    cfg, home = config_or_exit(), xregion_home()
    sup = Supervisor(home)
    try:
        done = sup.fault(action.value, stack.select(cfg, home, sup, region, component), progress)
    except (ConfigError, SupervisorError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{action.value}: {', '.join(done) if done else 'nothing running'}")


# Sub-commands of the other concerns: (module, typer app, mount name or None to merge its commands
# at the top level, the top-level command names it provides). Importing a concern costs seconds
# (MLflow, TensorFlow), so a command line imports only the module of the command it names.
MOUNTS = [
    ("xregion.plugins.cli", "replicate_app", "replicate", ("replicate",)),
    ("xregion.recsys_model.cli", "app", None, ("train",)),
    ("xregion.plugins.registry_cli", "app", None, ("promote", "rollback")),
    ("xregion.dr.cli", "app", "dr", ("dr",)),
    ("xregion.loadtests.cli", "app", None, ("drill",)),
    ("xregion.infra.router_cli", "app", None, ("router",)),
    ("xregion.demo", "app", None, ("demo",)),
]


def _mount_optional(argv: list[str] | None = None) -> None:
    import importlib

    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    named = [m for m in MOUNTS if wanted in m[3]]
    if wanted in ("up", "status", "down", "fault"):
        return
    bench = typer.Typer(help="Benchmarks: print figures, compare side by side in one run.", no_args_is_help=True)
    bench_used = False
    for module, attr, name, _ in named or MOUNTS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                continue
            raise
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
    _mount_optional(sys.argv[1:])
    try:
        app()
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        sys.exit(2)
