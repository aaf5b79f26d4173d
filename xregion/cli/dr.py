"""`xregion dr ...`: database failover, switchover, rejoin, backup/restore and consistency checks.

Thin: every command calls one function of dr.failover, dr.backup or dr.verify and prints it.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from xregion.config import ConfigError, load_config
from xregion.home import xregion_home

app = typer.Typer(
    help="Disaster recovery of the database half: failover, switchover, rejoin, backup, restore, verify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def _progress(msg: str) -> None:
    console.print(f"[dim]{msg}[/dim]")


def _ctx():
    try:
        return load_config(), xregion_home()
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


def _run(fn, *args, **kwargs):
    from xregion.dr.nodes import DRError
    from xregion.infra.embedded.supervisor import SupervisorError
    from xregion.store import StoreError

    try:
        return fn(*args, **kwargs)
    except (DRError, ConfigError, SupervisorError, StoreError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


def _json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "unknown"
    return f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}"


@app.command()
def failover(
    to: str = typer.Option(..., "--to", help="Region whose standby becomes the primary."),
    mlflow_timeout: float = typer.Option(60.0, help="Seconds to wait for each MLflow server to write."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Promote REGION's standby, fence the old primary, prove that every MLflow server writes again."""
    from xregion.dr import failover as fo

    cfg, home = _ctx()
    res = _run(fo.failover, cfg, home, to, progress=_progress, mlflow_timeout=mlflow_timeout)
    if as_json:
        _json(res)
    else:
        lag = res["lag"]
        out.print(f"failover {res['from']} -> {res['to']} ({res['replication']} replication)")
        out.print(
            f"  replication lag before promotion: {_fmt(lag['bytes'], ' bytes')}, {_fmt(lag['seconds'], ' s')}"
            + (
                f", {lag['commits']} committed transaction(s) not on {res['to']}"
                if lag.get("commits") is not None
                else ""
            )
            + f"  [{lag['source']}]"
        )
        out.print(f"  fenced: {res['fenced']} (standby.signal; `xregion dr rejoin {res['fenced']}` to bring it back)")
        out.print(
            f"  RTO: {_fmt(res['rto_seconds'], ' s')} from the {res['rto_start']} to the first MLflow write "
            f"(database writable after {res['database_writable_seconds']:.3f} s)"
        )
        for name, m in res["mlflow"].items():
            out.print(f"  MLflow {name}: " + ("writes" if m["ok"] else (m["error"] or "no write")))
    if not res["ok"]:
        raise typer.Exit(1)


@app.command()
def switchover(
    to: str = typer.Option(..., "--to", help="Region whose standby becomes the primary."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Planned, zero-loss change of primary for maintenance; the old primary becomes a standby."""
    from xregion.dr import failover as fo

    cfg, home = _ctx()
    res = _run(fo.switchover, cfg, home, to, progress=_progress)
    if as_json:
        _json(res)
    else:
        out.print(
            f"switchover {res['from']} -> {res['to']}: 0 bytes lost (shutdown checkpoint "
            f"{res['shutdown_checkpoint']} on {res['to']} before promotion)"
        )
        out.print(
            f"  write downtime {res['write_downtime_seconds']:.3f} s; {res['from']} rejoined by "
            f"{res['rejoin']['method']}"
        )
    if not res["ok"]:
        raise typer.Exit(1)


@app.command()
def rejoin(
    region: str = typer.Argument(..., help="The old primary (or any broken standby) to turn into a standby."),
    no_basebackup: bool = typer.Option(False, help="Fail rather than fall back to a fresh base backup."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Make REGION's node a streaming standby of the current primary (pg_rewind, else pg_basebackup)."""
    from xregion.dr import failover as fo

    cfg, home = _ctx()
    res = _run(fo.rejoin, cfg, home, region, progress=_progress, allow_basebackup=not no_basebackup)
    if as_json:
        _json(res)
    else:
        out.print(f"{res['region']} streams from {res['primary']} ({res['method']}, {res['seconds']:.1f} s)")


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """The current primary, each node's role, and each standby's replication lag (bytes, seconds)."""
    from xregion.dr import failover as fo

    cfg, home = _ctx()
    res = _run(fo.status, cfg, home)
    if as_json:
        _json(res)
    else:
        out.print(f"primary: {res['primary']}  (replication: {res.get('replication_mode')})")
        t = Table("region", "configured", "now", "fenced", "timeline", "lsn", "detail")
        for name, n in res["nodes"].items():
            t.add_row(
                name,
                n.get("configured_role", ""),
                n["role"] or "[red]down[/red]",
                "yes" if n.get("fenced") else "",
                str(n["timeline"] or ""),
                n["lsn"] or "",
                n["error"] or "",
            )
        out.print(t)
        t = Table("standby", "state", "sync", "lag bytes", "lag s")
        for r in res["replication"]:
            t.add_row(r["standby"], r["state"], r["sync_state"], str(r["lag_bytes"]), f"{r['lag_seconds']:.3f}")
        out.print(t)
    if res.get("error") or any(not n["reachable"] for n in res["nodes"].values()):
        raise typer.Exit(1)


@app.command()
def backup(
    verify: bool = typer.Option(False, "--verify", help="Then restore it into a scratch database and compare."),
    retention: int = typer.Option(7, "--retention", help="Keep this many backups in the backup region."),
    region: str | None = typer.Option(None, "--region", help="Backup region (default: first non-primary)."),
    include_artifacts: bool = typer.Option(
        False, "--include-artifacts", help="Also copy every artifact object into the backup."
    ),
    copy_to: Path | None = typer.Option(None, "--copy-to", help="Also write the backup to this local dir."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """pg_dump of the MLflow database + manifest of every artifact, stored in a non-primary region."""
    from xregion.dr import backup as bk

    cfg, home = _ctx()
    res = _run(
        bk.backup,
        cfg,
        home,
        retention=retention,
        region=region,
        include_artifacts=include_artifacts,
        copy_to=copy_to,
        verify=verify,
        progress=_progress,
    )
    if as_json:
        _json(res)
    else:
        out.print(f"backup {res['id']} in region {res['region']}: s3://{res['bucket']}/{res['prefix']}")
        out.print(
            f"  dump {res['dump_bytes']} bytes ({res['dump_seconds']:.2f} s), {res['tables']} tables, "
            f"{res['artifact_objects']} artifact objects in the manifest; {res['seconds']:.2f} s in all"
        )
        if res["retention_removed"]:
            out.print(f"  retention {retention}: removed {', '.join(res['retention_removed'])}")
        if "verify" in res:
            v = res["verify"]
            out.print(f"  verify: {'identical' if v['ok'] else 'DIFFERENT'} ({v['seconds']:.2f} s)")
            for d in v["differences"]:
                out.print(f"    {d}")
    if "verify" in res and not res["verify"]["ok"]:
        raise typer.Exit(1)


@app.command()
def backups(as_json: bool = typer.Option(False, "--json")) -> None:
    """List complete backups in every region."""
    from xregion.dr import backup as bk

    cfg, _ = _ctx()
    rows = _run(bk.list_backups, cfg)
    if as_json:
        _json(rows)
        return
    t = Table("id", "region")
    for b in rows:
        t.add_row(b["id"], b["region"])
    out.print(t)


@app.command()
def restore(
    backup_ref: str = typer.Argument(..., metavar="BACKUP", help="Backup id, 'latest', or a local backup dir."),
    force: bool = typer.Option(False, "--force", help="Replace a database that already holds runs."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a backup into a fresh stack, keeping every id; put back and verify every artifact."""
    from xregion.dr import backup as bk

    cfg, home = _ctx()
    res = _run(bk.restore, cfg, home, backup_ref, force=force, progress=_progress)
    if as_json:
        _json(res)
    else:
        a = res["artifacts"]
        out.print(
            f"restored {res['id']} into {res['database']} on {res['region']} in {res['db_seconds']:.2f} s: "
            + ("every table identical to the backup" if not res["differences"] else "DIFFERENCES")
        )
        for d in res["differences"]:
            out.print(f"  {d}")
        out.print(
            f"artifacts: {a['verified']} verified, {a['copied']} put back, {len(a['missing'])} missing, "
            f"{len(a['mismatched'])} mismatched"
        )
        for m in a["missing"][:20]:
            out.print(f"  missing {m['key']} in {m['region']}")
    if not res["ok"]:
        raise typer.Exit(1)


@app.command()
def verify(
    deep: bool = typer.Option(False, "--deep", help="Also compare recorded sha256 across regions."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every referenced artifact in every region, orphans, standby lag; exit 1 on any inconsistency."""
    from xregion.dr import verify as vf

    cfg, home = _ctx()
    res = _run(vf.verify, cfg, home, deep=deep)
    if as_json:
        _json(res)
    else:
        out.print(
            f"primary {res['primary']}: {res['references']} references, {res['locations']} artifact locations; "
            + ", ".join(f"{n}: {c} objects" for n, c in res["objects"].items())
        )
        t = Table("problem", "key", "region(s)", "owner")
        for m in res["missing"]:
            t.add_row("missing", m["key"], m["region"], m["owner"])
        for m in res["mismatched"]:
            t.add_row("differs", m["key"], ", ".join(m.get("sizes") or m.get("sha256") or {}), m["owner"])
        for o in res["orphans"]:
            t.add_row("orphan", o["key"], ", ".join(o["regions"]), "")
        if t.row_count:
            out.print(t)
        t = Table("standby", "node", "state", "sync", "lag bytes", "lag s")
        for r in res["replication"]:
            t.add_row(
                r["standby"],
                r["node"],
                r["state"],
                str(r.get("sync_state", "")),
                str(r.get("lag_bytes", "")),
                _fmt(r.get("lag_seconds")),
            )
        out.print(t)
        for u in res["unchecked"][:10]:
            out.print(f"[yellow]unchecked (not a replicated location): {u['owner']} {u['uri']}[/yellow]")
        out.print("[green]consistent[/green]" if res["ok"] else "[red]" + "; ".join(res["problems"]) + "[/red]")
    if not res["ok"]:
        raise typer.Exit(1)
