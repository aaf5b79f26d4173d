"""`xregion promote` and `xregion rollback`: stage and alias moves through the gated registry."""

from __future__ import annotations

import json

import typer
from mlflow.exceptions import MlflowException
from rich.console import Console

from xregion.plugins.registry_client import RegistryError, client, promote, rollback

from .common import act_as, config_or_exit

app = typer.Typer()
console = Console(stderr=True)


def _fail(err: Exception) -> None:
    msg = err.message if isinstance(err, MlflowException) else str(err)
    console.print(f"[red]{msg}[/red]")
    raise typer.Exit(1)


@app.command("promote")
def promote_cmd(
    model: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version number."),
    stage: str = typer.Option(None, "--stage", help="Stage to move it to (e.g. Production)."),
    alias: str = typer.Option(None, "--alias", help="Alias to point at it (e.g. champion)."),
    reason: str = typer.Option("", "--reason", help="Why; recorded with the transition."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow server (default: a healthy region's)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Promote a version (default: the production stage and alias), gated on replication in every region."""
    cfg = config_or_exit()
    act_as("release-manager", cfg)
    try:
        done = promote(client(cfg, tracking_uri), cfg, model, version, stage, alias, reason)
    except (MlflowException, RegistryError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(done))
    else:
        console.print(
            f"[green]{model} version {version}:[/green] "
            + ", ".join(f"{k} {v}" for k, v in done.items() if k in ("stage", "alias"))
        )


@app.command("rollback")
def rollback_cmd(
    model: str = typer.Argument(..., help="Registered model name."),
    reason: str = typer.Option("", "--reason", help="Why; recorded with the transition."),
    to: str = typer.Option(None, "--to", help="Version to go back to (default: the previous production one)."),
    tracking_uri: str = typer.Option(None, "--tracking-uri"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Put the previous production version back (stage and alias); archive the current one."""
    cfg = config_or_exit()
    act_as("release-manager", cfg)
    try:
        done = rollback(client(cfg, tracking_uri), cfg, model, reason, to_version=to)
    except (MlflowException, RegistryError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(done))
    else:
        console.print(
            f"[green]{model}: version {done['to_version']} back in production[/green], "
            f"version {done['from_version']} archived ({done['reason']})"
        )
