"""`xregion demo`: the whole lifecycle on the embedded platform (the steps live in xregion/demo.py)."""

from __future__ import annotations

import contextlib
import json
import sys

import typer

from xregion.demo import DemoOptions, console, print_summary, run_demo

app = typer.Typer()


@app.command()
def demo(
    data: str | None = typer.Option(
        None, help="ml-100k (fetched once into the cache), a MovieLens/RecBole file or directory (default: synthetic)."
    ),
    epochs: int | None = typer.Option(None, help="Training epochs (default: the model's)."),
    drill_seconds: float = typer.Option(60, help="Length of the region-outage drill."),
    load: float = typer.Option(0.5, help="The drill's serving load as a share of the measured capacity."),
    users: int | None = typer.Option(None, help="Locust users in the drill, by hand (skips the capacity step)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every library's log on the terminal too."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Run the whole lifecycle on the embedded two-region platform and summarise it."""
    from xregion.home import xregion_home
    from xregion.infra.embedded.supervisor import SupervisorError, log_tail

    from .common import config_or_exit
    from .output import log_to_file

    cfg, home = config_or_exit(), xregion_home()
    log = log_to_file(home, "demo", verbose)
    console.print(f"[dim]full logs: {log} (and {home / 'logs'})[/dim]")
    opts = DemoOptions(
        data=data,
        epochs=epochs,
        drill_seconds=drill_seconds,
        load=None if users else load,
        users=users,
        verbose=verbose,
    )
    try:
        # stdout carries the summary alone (JSON with --json): what libraries print there on the way,
        # MLflow's "View run ... at" lines among them, goes to the log
        with open(log, "a") as sink, contextlib.redirect_stdout(sys.stdout if verbose else sink):
            s = run_demo(cfg, home, opts)
    except SupervisorError as err:
        console.print(f"[red]demo stopped:[/red] {err}")
        raise typer.Exit(1) from None
    except Exception as err:  # any other failing step: say which, show the platform's state
        console.print(f"[red]demo stopped:[/red] {type(err).__name__}: {err}")
        from xregion.infra.embedded import stack

        for row in stack.status(cfg, home):
            if row["state"] != "stopped" and not row["healthy"]:
                console.print(
                    f"[red]{row['service']} is {row['state']} ({row['detail']})[/red]; last lines of its log:"
                )
                console.print(log_tail(home / "logs" / f"{row['service']}.log", 15))
        raise typer.Exit(1) from None
    (home / "demo-summary.json").write_text(json.dumps(s, indent=2, default=str))
    if as_json:
        print(json.dumps(s, indent=2, default=str))
    print_summary(cfg, s)
    raise typer.Exit(0 if s["drill"].get("objectives_met") else 1)
