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
    """Compare every object in every region with its newest write; objects the ledger knows that
    are missing everywhere count too. Exit 1 on any difference."""
    from xregion.plugins.verify import check

    rep = _replicator()
    with _bar() as bar:
        task = bar.add_task("comparing", total=None)
        report = check(rep.stores, prefix, rep.outbox, deep, lambda i, n: bar.update(task, completed=i, total=n))
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        counts = ", ".join(f"{n} {p}" for p, n in report.counts.items() if n)
        table = Table(
            "key",
            "region",
            "problem",
            "detail",
            "good copy in",
            title=f"{report.objects} objects in {len(rep.stores)} regions: {len(report.differences)} difference(s)"
            + (f" ({counts})" if counts else ""),
        )
        for d in report.differences:
            table.add_row(d.key, d.region, d.problem, d.detail, d.good_source or "-")
        Console().print(table)
        if report.differences:
            console.print("Repair with `xregion replicate resync`.")
    raise typer.Exit(0 if report.ok else 1)


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
    rep.close()
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        console.print(
            f"{result.objects} objects, {result.differences} difference(s), "
            f"{result.repaired} operation(s) applied, {result.still_owed} still owed"
        )
        for region in result.unreachable:
            console.print(f"[red]region {region} unreachable[/red]: run resync again when it is back")
        for d in result.unrepairable:
            console.print(f"[red]no good copy of {d['key']} anywhere[/red]")
    raise typer.Exit(0 if not result.still_owed and not result.unrepairable and not result.unreachable else 1)


@replicate_app.command()
def run(
    metrics_port: int = typer.Option(0, help="Serve Prometheus metrics on this port (0: off)."),
    seconds: float = typer.Option(0, help="Stop after this many seconds (0: run until stopped)."),
    metrics_host: str = typer.Option(
        "127.0.0.1", help="Where the metrics listen (a container: 0.0.0.0, for a scraper outside it)."
    ),
    until_drained: bool = typer.Option(
        False,
        "--until-drained",
        help="Stop once nothing is owed: exit 0, or 1 if something still is after --seconds (default 300).",
    ),
) -> None:
    """Run the replicator: pay what regions are owed, as it is owed (a long-running service)."""
    from prometheus_client import start_http_server

    rep = _replicator()
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
    console.print(f"replicating ({rep.mode}); ledger {rep.outbox.path}")
    if until_drained:
        try:
            drained = rep.wait_drained(timeout=seconds or 300)
        finally:
            rep.close()
        if not drained.drained:
            console.print(
                f"[red]{drained.remaining} still owed after {drained.seconds:.1f}s[/red]: see `xregion replicate status`"
            )
            raise typer.Exit(1)
        console.print(f"nothing owed: drained in {drained.seconds:.1f}s")
        return
    rep.start()
    try:
        deadline = time.monotonic() + seconds if seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())) if deadline else 1.0)
    except KeyboardInterrupt:
        pass
    finally:
        rep.close()


@bench_app.command()
def replication(
    as_json: bool = typer.Option(False, "--json"),
    max_mib: int = typer.Option(64, help="Largest file of the artifact set, MiB."),
) -> None:
    """Upload one artifact set by plain boto3, xregion sync and async, sequential and parallel plain uploads."""
    from xregion.plugins.bench_replication import BenchError, run_bench

    try:
        result = run_bench(max_mib=max_mib, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    except BenchError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        render_bench(result, Console())


def render_bench(result: dict, out: Console) -> None:
    """The benchmark's figures as a table, then its ratios against the targets."""
    ratios = result["ratios"]
    t = Table(
        "method",
        "seconds",
        "MiB/s",
        "ratio to (a)",
        title=f"replication benchmark: {result['artifact_set']['files']} files, "
        f"{result['artifact_set']['bytes'] / 2**20:.1f} MiB, regions {', '.join(result['regions'])}",
    )
    to_a = {
        "a_plain_boto3": 1.0,
        "b_xregion_sync": ratios["b_over_a"],
        "c_xregion_async": ratios["c_over_a"],
        "d_sequential_regions": ratios["d_over_a"],
        "e_parallel_plain": ratios["e_over_a"],
    }
    for k, s in result["seconds"].items():
        t.add_row(k, f"{s:.2f}", f"{result['throughput_mib_s'][k]:.1f}", f"{to_a[k]:.2f}")
    out.print(t)
    lag = result["async_lag_s"]
    out.print(
        f"async lag p50 {lag['p50']}s, p99 {lag['p99']}s ({lag['samples']} objects); "
        f"async set fully replicated after {result['async_fully_replicated_s']}s"
    )
    out.print(
        f"sync / (e) parallel plain = {ratios['sync_over_e']} (target >= 0.9); "
        f"async foreground / (a) = {ratios['async_over_a']} (target >= 0.8); async lag p99 {lag['p99']}s (target <= 2)"
    )
    if "load_average" in result:
        out.print(f"load average during the run: {result['load_average'][0]} -> {result['load_average'][1]}")
