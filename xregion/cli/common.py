"""What every command shares: the stderr console, progress lines and the regions file or a clean exit."""

from __future__ import annotations

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
