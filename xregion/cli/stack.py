"""`xregion up | status | down | fault`: the embedded platform on loopback."""

from __future__ import annotations

import json
from enum import StrEnum

import typer
from rich.console import Console
from rich.table import Table

from xregion.config import ConfigError
from xregion.home import xregion_home

from .common import config_or_exit, console, progress

app = typer.Typer()


@app.command()
def up() -> None:
    """Start the embedded two-region stack on loopback and wait until every component is healthy."""
    from xregion.infra.embedded import stack
    from xregion.infra.embedded.supervisor import SupervisorError

    from .output import log_to_file

    cfg, home = config_or_exit(), xregion_home()
    log_to_file(home, "up")  # MLflow's and Starlette's warnings on the way: the log, not the terminal
    console.print(f"regions file: {cfg.source}\nstate, logs, pid files: {home}")
    try:
        seconds = stack.up(cfg, home, progress)
    except SupervisorError as err:
        console.print(f"[red]start-up failed:[/red] {err}")
        console.print("Fix the cause, then run `xregion up` again (it resumes); `xregion down` stops what started.")
        raise typer.Exit(1) from None
    console.print(f"[green]stack up in {seconds:.1f}s[/green]")
    from xregion.topology import effective_config

    for r in effective_config(cfg).regions:  # the roles of today: Patroni's leader is the primary
        console.print(
            f"  region {r.name} ({r.role}): MLflow {r.mlflow_url}  S3 {r.s3.endpoint_url}/{r.s3.bucket}"
            f"  Postgres {r.postgres}"
        )
    console.print("Check with `xregion status`; stop with `xregion down`.")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Health of every component of the stack (exit 1 if any is not healthy)."""
    from xregion.infra.embedded import stack

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
def down(
    purge: bool = typer.Option(
        False, "--purge", help="Also delete the data (Postgres, etcd; /var/lib/xregion/<hash> as root) and secrets."
    ),
) -> None:
    """Stop every process the stack started (by pid), leaving none behind. Data stays unless --purge."""
    from xregion.infra.embedded import stack

    stopped = stack.down(xregion_home(), progress, purge=purge)
    console.print(f"stopped {len(stopped)} service(s)" if stopped else "nothing was running")


class FaultAction(StrEnum):
    kill = "kill"
    freeze = "freeze"
    thaw = "thaw"
    restart = "restart"
    wipe = "wipe"


@app.command()
def fault(
    action: FaultAction = typer.Argument(
        ..., help="kill (SIGKILL), freeze (SIGSTOP), thaw (SIGCONT), restart, wipe (an S3 store loses its disk)"
    ),
    region: str = typer.Argument(..., help="Region name from the regions file, the witness, or global (front door)."),
    component: str | None = typer.Argument(
        None, help="s3, etcd, patroni (= postgres: Patroni and its Postgres), mlflow, serving, ... (default: all)"
    ),
) -> None:
    """Inject a fault into real processes of one region; recorded in the event log.

    `wipe REGION s3` stops the region's S3 store, deletes its data and starts it empty: every object
    of the region is gone (`xregion dr verify` reports them, `xregion replicate resync` restores them)."""
    from xregion.infra.embedded import stack
    from xregion.infra.embedded.supervisor import SupervisorError
    from xregion.store import StoreError

    cfg, home = config_or_exit(), xregion_home()
    try:
        done = stack.fault(cfg, home, action.value, region, component, progress)
    except (ConfigError, SupervisorError, StoreError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{action.value}: {', '.join(done) if done else 'nothing running'}")


region_app = typer.Typer(help="A whole region: bring it back after a loss or a partition.", no_args_is_help=True)
app.add_typer(region_app, name="region")


@region_app.command("restore")
def region_restore(
    region: str = typer.Argument(..., help="Region name from the regions file (or the witness)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Bring REGION back: etcd, S3 (bucket re-created), the database node rejoined by Patroni as a
    replica, MLflow, model servers restarted, then `replicate resync`. Reports every step."""
    from xregion.dr.nodes import DRError
    from xregion.dr.region import restore_region

    cfg, home = config_or_exit(), xregion_home()
    try:
        res = restore_region(cfg, home, region, progress).to_dict()
    except (ConfigError, DRError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(res, indent=2, default=str))
    else:
        table = Table("service", "done")
        for name, what in res["services"].items():
            table.add_row(name, what)
        Console().print(table)
        if res["resync"]:
            r = res["resync"]
            console.print(f"resync: {r['differences']} differences, {r['repaired']} repaired, {r['still_owed']} owed")
        for p in res["problems"]:
            console.print(f"[red]{p}[/red]")
        console.print(
            f"region {region} restored in {res['seconds']:.1f}s" if res["ok"] else "[red]not fully restored[/red]"
        )
    if not res["ok"]:
        raise typer.Exit(1)


bench_app = typer.Typer()


@bench_app.command("s3")
def bench_s3(
    as_json: bool = typer.Option(False, "--json"),
    small: int = typer.Option(400, help="4 KiB objects written then read."),
    large: int = typer.Option(12, help="8 MiB objects written."),
) -> None:
    """The embedded S3 store that keeps objects on disk against plain moto (in memory)."""
    from xregion.infra.embedded.bench_s3 import as_json as rows
    from xregion.infra.embedded.bench_s3 import run_bench

    result = rows(run_bench(small=small, large=large, progress=progress))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("store", "4 KiB PUT/s", "4 KiB GET/s", "8 MiB PUT MiB/s", "objects kept over kill -9")
    for r in result:
        table.add_row(
            r["store"],
            str(r["small_put_per_s"]),
            str(r["small_get_per_s"]),
            str(r["large_put_mib_per_s"]),
            "yes" if r["restart_keeps_objects"] else "no",
        )
    Console().print(table)
