"""What every command shares: the stderr console, progress lines and the regions file or a clean exit."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from xregion.config import ConfigError, XRegionConfig, load_config

console = Console(stderr=True)


def progress(msg: str) -> None:
    console.print(f"[dim]{msg}[/dim]")


def config_or_exit() -> XRegionConfig:
    try:
        return load_config()
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


def act_as(role: str, cfg: XRegionConfig | None = None) -> None:
    """Talk to the platform's MLflow servers as ``role`` (scientist, release-manager, admin, ...):
    the embedded platform's account from XREGION_HOME/secrets, unless the user named an account
    (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), which always wins."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return
    from xregion.home import xregion_home
    from xregion.infra.embedded import auth

    os.environ.update(auth.existing_client_env(xregion_home(), role, cfg or config_or_exit()))
