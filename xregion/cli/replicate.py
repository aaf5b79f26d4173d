"""`xregion replicate status | verify | resync | run` and `xregion bench replication`."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

replicate_app = typer.Typer(help="Cross-region artifact replication: status, verify, resync.", no_args_is_help=True)
bench_app = typer.Typer()
console = Console(stderr=True)


def _replicator():
    from xregion.plugins.replication import Replicator

    from .common import config_or_exit

    return Replicator(config_or_exit())


@replicate_app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """What each region is owed, and whether its store answers."""
    rep = _replicator()
    pending = rep.outbox.pending()
    rows = []
    for name, store in rep.stores.items():
        p = pending.get(name, {})
        rows.append(
            {
                "region": name,
                "healthy": store.healthy(),
                "pending_objects": p.get("objects", 0),
                "pending_bytes": p.get("bytes", 0),
                "oldest_pending_s": round(time.time() - p["oldest"], 1) if p.get("oldest") else 0,
                "last_error": p.get("last_error"),
            }
        )
    if as_json:
        print(json.dumps({"mode": rep.mode, "regions": rows}, indent=2))
        return
    table = Table(
        "region",
        "store",
        "owed objects",
        "owed bytes",
        "oldest owed",
        "last error",
        title=f"artifact replication ({rep.mode})",
    )
    for r in rows:
        table.add_row(
            r["region"],
            "[green]up[/green]" if r["healthy"] else "[red]down[/red]",
            str(r["pending_objects"]),
            str(r["pending_bytes"]),
            f"{r['oldest_pending_s']}s",
            r["last_error"] or "",
        )
    Console().print(table)


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@replicate_app.command()
def verify(
    prefix: str = typer.Option("", help="Only keys under this prefix."),
    deep: bool = typer.Option(False, help="Download and hash every copy, not only suspects."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compare every object in every region (key, size, hash). Exit 1 on any difference."""
    from xregion.plugins.verify import as_rows
    from xregion.plugins.verify import verify as run_verify

    rep = _replicator()
    with _bar() as bar:
        task = bar.add_task("comparing", total=None)
        total, diffs = run_verify(rep, prefix, deep, lambda i, n: bar.update(task, completed=i, total=n))
    if as_json:
        print(json.dumps({"objects": total, "regions": list(rep.stores), "differences": as_rows(diffs)}, indent=2))
    else:
        table = Table(
            "key",
            "region",
            "problem",
            "detail",
            "good copy in",
            title=f"{total} objects in {len(rep.stores)} regions: {len(diffs)} difference(s)",
        )
        for d in diffs:
            table.add_row(d.key, d.region, d.problem, d.detail, d.good_source or "-")
        Console().print(table)
        if diffs:
            console.print("Repair with `xregion replicate resync`.")
    raise typer.Exit(1 if diffs else 0)


@replicate_app.command()
def resync(
    prefix: str = typer.Option("", help="Only keys under this prefix."),
    deep: bool = typer.Option(False, help="Hash every copy to find silent corruption."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Repair every difference from a good copy, and pay everything owed. Safe to run again."""
    from xregion.plugins.verify import resync as run_resync

    rep = _replicator()
    with _bar() as bar:
        tasks = {}

        def progress(phase: str, i: int, n: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=n)
            bar.update(tasks[phase], completed=i, total=n)

        result = run_resync(rep, prefix, deep, progress)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(
            f"{result['objects']} objects, {result['differences']} difference(s), "
            f"{result['repaired']} operation(s) applied, {result['still_owed']} still owed"
        )
        for region in result["unreachable"]:
            console.print(f"[red]region {region} unreachable[/red]: run resync again when it is back")
        for d in result["unrepairable"]:
            console.print(f"[red]no good copy of {d['key']} anywhere[/red]")
    raise typer.Exit(0 if not result["still_owed"] and not result["unrepairable"] and not result["unreachable"] else 1)


@replicate_app.command()
def run(
    metrics_port: int = typer.Option(0, help="Serve Prometheus metrics on this port (0: off)."),
    seconds: float = typer.Option(0, help="Stop after this many seconds (0: run until stopped)."),
) -> None:
    """Run the replicator: pay what regions are owed, as it is owed (a long-running service)."""
    from prometheus_client import start_http_server

    rep = _replicator()
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1")
    console.print(f"replicating ({rep.mode}); outbox {rep.outbox.path}")
    deadline = time.monotonic() + seconds if seconds else None
    while deadline is None or time.monotonic() < deadline:
        if not rep.drain_once(limit=32):
            time.sleep(0.2)


@bench_app.command()
def replication(
    as_json: bool = typer.Option(False, "--json"),
    max_mib: int = typer.Option(64, help="Largest file of the artifact set, MiB."),
) -> None:
    """Upload one artifact set by plain boto3, xregion sync, xregion async and two sequential uploads."""
    from xregion.plugins.bench_replication import render, run_bench

    result = run_bench(max_mib=max_mib, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        render(result, Console())
