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
    from .common import act_as

    try:
        cfg = load_config()
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    act_as("admin", cfg)  # DR proves MLflow writes after a failover and reads every reference
    return cfg, xregion_home()


def _run(fn, *args, **kwargs):
    from xregion.dr.nodes import DRError
    from xregion.infra.embedded.patroni import PatroniError
    from xregion.infra.embedded.postgres import PostgresError
    from xregion.infra.embedded.supervisor import SupervisorError
    from xregion.store import StoreError

    try:
        return fn(*args, **kwargs)
    except (DRError, ConfigError, SupervisorError, StoreError, PatroniError, PostgresError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


def _json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "unknown"
    return f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def _show_promotion(res: dict) -> None:
    out.print(f"{res['action']} {res['from'] or '(no leader)'} -> {res['to']} ({res['replication']} replication)")
    out.print(
        f"  Patroni: {res['patroni_answer']}; lag of {res['to']} before: {_fmt(res['lag_bytes_before'], ' bytes')}"
        f", synchronous standby before: {', '.join(res['sync_standbys_before']) or 'none'}"
    )
    out.print(
        f"  {res['to']} leader after {res['command_seconds']:.3f} s; first MLflow write after "
        f"{_fmt(res['rto_seconds'], ' s')} (from the start of the command)"
    )
    if res.get("old_primary_following") is not None:
        out.print(f"  {res['from']} follows {res['to']}: {'yes' if res['old_primary_following'] else 'NO'}")
    for name, m in res["mlflow"].items():
        out.print(f"  MLflow {name}: " + ("writes" if m["ok"] else (m["error"] or "no write")))


@app.command()
def failover(
    to: str = typer.Option(..., "--to", help="Region whose replica becomes the primary."),
    mlflow_timeout: float = typer.Option(60.0, help="Seconds to wait for each MLflow server to write."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Promote REGION now through Patroni (POST /failover); prove that every MLflow server writes again.

    Patroni fails over by itself when the primary is lost (within the leader lock's ttl); this is
    for an operator who will not wait, or who must leave a region that still answers."""
    from xregion.dr import failover as fo

    cfg, home = _ctx()
    res = _run(fo.failover, cfg, home, to, progress=_progress, mlflow_timeout=mlflow_timeout).to_dict()
    _json(res) if as_json else _show_promotion(res)
    if not res["ok"]:
        raise typer.Exit(1)


@app.command()
def switchover(
    to: str = typer.Option(..., "--to", help="Region whose replica becomes the primary."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Planned, zero-loss change of primary (POST /switchover); the old primary follows the new one."""
    from xregion.dr import failover as fo

    cfg, home = _ctx()
    res = _run(fo.switchover, cfg, home, to, progress=_progress).to_dict()
    _json(res) if as_json else _show_promotion(res)
    if not res["ok"]:
        raise typer.Exit(1)


@app.command()
def rejoin(
    region: str = typer.Argument(..., help="A region whose node is down, frozen or no longer streaming."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Make REGION's node a streaming replica of the leader: Patroni's own rejoin (pg_rewind),
    and a fresh copy of the leader (POST /reinitialize) when rewinding is impossible."""
    from xregion.dr import failover as fo

    cfg, home = _ctx()
    res = _run(fo.rejoin, cfg, home, region, progress=_progress).to_dict()
    if as_json:
        _json(res)
    else:
        out.print(f"{res['region']} streams from {res['primary']} ({res['method']}, {res['seconds']:.1f} s)")


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Patroni's view: the leader, each node's role, state, timeline and lag, the synchronous
    standby, and each etcd member's health. Exit 1 when there is no leader or a node is down."""
    from xregion.dr import failover as fo

    cfg, home = _ctx()
    res = _run(fo.status, cfg, home).to_dict()
    if as_json:
        _json(res)
    else:
        out.print(
            f"leader: {res['leader'] or '[red]none[/red]'}  (replication: {res['replication']}; "
            f"synchronous standby: {', '.join(res['sync_standbys']) or 'none'}; view from {res['answered_by']})"
        )
        t = Table("region", "configured", "role", "state", "timeline", "lag bytes", "replay lsn")
        for m in res["members"]:
            t.add_row(
                m["name"],
                m["configured_role"],
                m["role"] or "[red]down[/red]",
                m["state"] or "",
                str(m["timeline"] or ""),
                "" if m["lag_bytes"] is None else str(m["lag_bytes"]),
                m["replay_lsn"] or "",
            )
        out.print(t)
        t = Table("etcd member", "healthy", "detail")
        for name, e in res["etcd"].items():
            t.add_row(name, "yes" if e["healthy"] else "[red]no[/red]", e["detail"])
        out.print(t)
    down = [m for m in res["members"] if m["state"] not in ("running", "streaming")]
    if not res["leader"] or down:
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
    force: bool = typer.Option(False, "--force", help="Replace a database that already holds runs or model versions."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a backup into a fresh stack, keeping every id; put back and verify every artifact."""
    from xregion.dr import restore as rs

    cfg, home = _ctx()
    res = _run(rs.restore, cfg, home, backup_ref, force=force, progress=_progress)
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
        t = Table("standby", "node", "state", "sync", "lag bytes")
        for r in res["replication"]:
            t.add_row(r["standby"], r["node"], r["state"], str(r.get("sync_state", "")), _fmt(r.get("lag_bytes")))
        out.print(t)
        for u in res["unchecked"][:10]:
            out.print(f"[yellow]unchecked (not a replicated location): {u['owner']} {u['uri']}[/yellow]")
        out.print("[green]consistent[/green]" if res["ok"] else "[red]" + "; ".join(res["problems"]) + "[/red]")
    if not res["ok"]:
        raise typer.Exit(1)
