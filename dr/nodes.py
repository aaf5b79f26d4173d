"""The Postgres nodes as they are now, and the small state file that remembers a failover.

The regions file says which region was *configured* primary; after a failover that is no longer
true. Who is primary right now is decided by asking Postgres (``pg_is_in_recovery()`` on every
node): exactly one node accepting writes is the primary. ``XREGION_HOME/dr-state.json`` keeps
what Postgres cannot tell when a node is down: the current primary and the fenced nodes (old
primaries that must never take writes on their own again). ``effective_config`` turns the
regions file plus that state into the config with today's roles, so ``xregion up`` and every
``xregion dr`` command agree on who is primary.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
from pathlib import Path

import psycopg2

from xregion.config import RegionConfig, XRegionConfig
from xregion.infra.embedded import postgres as pg
from xregion.infra.embedded.postgres import (
    PG_BIN,
    SUPERUSER,
    data_dir,
    pg_user_kwargs,
    run_as_postgres,
    superuser_dsn,
)
from xregion.topology import effective_config, load_state, save_state, state_path  # noqa: F401 (dr's API)


class DRError(RuntimeError):
    """A DR operation cannot proceed; the message says why and what to do."""


# --- probing ---------------------------------------------------------------------------------
def connect(region: RegionConfig, dbname: str = "postgres", timeout: int = 3):
    dsn = superuser_dsn(region, dbname).replace("connect_timeout=3", f"connect_timeout={timeout}")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def probe(region: RegionConfig, timeout: int = 3) -> dict:
    """One node: reachable, role, WAL positions, and (standby) the last replayed commit time."""
    out = {
        "region": region.name,
        "reachable": False,
        "role": None,
        "lsn": None,
        "receive_lsn": None,
        "replay_lsn": None,
        "last_replay_ts": None,
        "timeline": None,
        "error": None,
    }
    try:
        conn = connect(region, timeout=timeout)
    except psycopg2.Error as exc:
        out["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return out
    try:
        with conn.cursor() as cur:
            cur.execute("select pg_is_in_recovery(), (select timeline_id from pg_control_checkpoint())")
            standby, tli = cur.fetchone()
            out.update(reachable=True, role="standby" if standby else "primary", timeline=tli)
            if standby:
                cur.execute("""select pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
                                      extract(epoch from pg_last_xact_replay_timestamp())""")
                rcv, rpl, ts = cur.fetchone()
                out.update(receive_lsn=rcv, replay_lsn=rpl, lsn=rpl, last_replay_ts=float(ts) if ts else None)
            else:  # the checkpoint's timeline lags a promotion; the current WAL file's name does not
                cur.execute(
                    "select pg_current_wal_lsn()::text, "
                    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
                )
                out["lsn"], out["timeline"] = cur.fetchone()
    finally:
        conn.close()
    return out


def probe_all(cfg: XRegionConfig, timeout: int = 3) -> dict[str, dict]:
    return {r.name: probe(r, timeout) for r in cfg.regions}


def current_primary(cfg: XRegionConfig, home: Path, nodes: dict[str, dict] | None = None) -> str | None:
    """The region whose node accepts writes now; if none answers as primary, the recorded one.

    Two writable nodes (split brain) is refused: a fenced node is never considered.
    """
    nodes = nodes if nodes is not None else probe_all(cfg)
    fenced = set(load_state(home).get("fenced", []))
    writable = [n for n, p in nodes.items() if p["role"] == "primary"]
    live = [n for n in writable if n not in fenced]
    if len(writable) > 1:
        raise DRError(
            f"more than one node accepts writes ({', '.join(writable)}): split brain. "
            f"Fence the stale one with `xregion dr rejoin REGION`."
        )
    if live:
        return live[0]
    return load_state(home).get("primary") or cfg.primary.name


def lsn_int(lsn: str | None) -> int | None:
    if not lsn:
        return None
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def replication_rows(primary: RegionConfig) -> list[dict]:
    """pg_stat_replication of a primary: per standby its state and lag in bytes and seconds."""
    conn = connect(primary)
    with conn.cursor() as cur:
        cur.execute("""select application_name, state, sync_state,
                              pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint,
                              pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
                              extract(epoch from coalesce(replay_lag, '0'::interval))::float8
                       from pg_stat_replication""")
        rows = [
            dict(zip(("standby", "state", "sync_state", "flush_lag_bytes", "lag_bytes", "lag_seconds"), r))
            for r in cur.fetchall()
        ]
    conn.close()
    return rows


# --- data directory edits (as the postgres user owns them) ---------------------------------
def _chown_pg(path: Path) -> None:
    if run_as_postgres():
        pw = pwd.getpwnam(SUPERUSER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def set_auto_conf(datadir: Path, settings: dict[str, str]) -> None:
    """Set keys in postgresql.auto.conf (the file ALTER SYSTEM writes), replacing earlier lines."""
    path = datadir / "postgresql.auto.conf"
    lines = path.read_text().splitlines() if path.exists() else ["# Do not edit this file manually!"]
    keys = set(settings)
    kept = [ln for ln in lines if ln.split("=", 1)[0].strip() not in keys]
    for k, v in settings.items():
        kept.append(f"{k} = '{v}'")
    path.write_text("\n".join(kept) + "\n")
    _chown_pg(path)


def conninfo(primary: RegionConfig, application_name: str) -> str:
    return f"host={primary.pg_host} port={primary.pg_port} user={SUPERUSER} application_name={application_name}"


def make_standby_config(home: Path, region: RegionConfig, primary: RegionConfig) -> None:
    """standby.signal plus primary_conninfo: started by anyone, this node can only be a standby."""
    ddir = data_dir(home, region)
    sig = ddir / "standby.signal"
    sig.write_text("")
    _chown_pg(sig)
    set_auto_conf(
        ddir,
        {
            "cluster_name": region.name,
            "primary_conninfo": conninfo(primary, region.name),
            "synchronous_standby_names": "",
        },
    )


def controldata(datadir: Path) -> dict[str, str]:
    proc = subprocess.run(
        [str(PG_BIN / "pg_controldata"), "-D", str(datadir)], capture_output=True, text=True, **pg_user_kwargs()
    )
    if proc.returncode != 0:
        raise DRError(f"pg_controldata {datadir} failed: {proc.stderr.strip()}")
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in proc.stdout.splitlines()) if v}


_WAL_LINE = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+),.*?lsn: ([0-9A-F]+/[0-9A-F]+)")
_COMMIT_TS = re.compile(r"desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\S+)")


def unshipped_wal(home: Path, region: RegionConfig, from_lsn: str) -> dict | None:
    """What a dead primary's own WAL holds beyond ``from_lsn`` (what the standby received).

    Reads the old primary's pg_wal with pg_waldump (only when its data directory is local, as in
    the embedded stack): bytes, committed transactions and the time of the last one. Those
    commits were acknowledged to clients and are lost by a failover in asynchronous mode.
    """
    ddir = data_dir(home, region)
    if not (ddir / "pg_wal").is_dir() or not from_lsn:
        return None
    # the newest timeline in pg_wal: a promoted node's control file names the old one until its
    # first checkpoint after promotion completes
    tlis = [int(p.name[:8], 16) for p in (ddir / "pg_wal").iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name)]
    if not tlis:
        return None
    tli = str(max(tlis))
    proc = subprocess.run(
        [str(PG_BIN / "pg_waldump"), "-p", str(ddir / "pg_wal"), "-t", tli, "-s", from_lsn],
        capture_output=True,
        text=True,
        timeout=60,
        **pg_user_kwargs(),
    )
    end, commits, last_commit = lsn_int(from_lsn), 0, None
    from datetime import datetime

    for line in proc.stdout.splitlines():
        m = _WAL_LINE.search(line)
        if m:
            end = max(end, lsn_int(m.group(2)) + int(m.group(1)))
        c = _COMMIT_TS.search(line)
        if c:
            commits += 1
            try:
                last_commit = datetime.fromisoformat(c.group(1) + "+00:00").timestamp() if c.group(2) == "UTC" else None
            except ValueError:
                pass
    return {"bytes": end - lsn_int(from_lsn), "commits": commits, "last_commit_ts": last_commit}


def wait_streaming(primary: RegionConfig, standby: str, timeout: float = 90.0) -> dict:
    """Wait until ``standby`` streams from ``primary`` and has caught up; returns its row."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        try:
            rows = {r["standby"]: r for r in replication_rows(primary)}
        except psycopg2.Error:
            rows = {}
        row = rows.get(standby)
        if row and row["state"] == "streaming" and (row["flush_lag_bytes"] or 0) == 0:
            return row
        time.sleep(0.3)
    raise DRError(f"{standby} is not streaming from {primary.name} after {timeout:.0f}s (last: {row})")


def set_synchronous_standbys(cfg: XRegionConfig, primary: RegionConfig, standbys: list[str]) -> str:
    """synchronous_standby_names on the primary: ANY 1 of the given standbys in sync mode, else empty.

    With no standby left the value is empty, so commits never wait on a standby that does not
    exist (Patroni's synchronous_mode without synchronous_mode_strict).
    """
    value = ""
    if cfg.postgres.replication == "sync" and standbys:
        value = "ANY 1 (" + ", ".join(f'"{s}"' for s in standbys) + ")"
    conn = connect(primary)
    with conn.cursor() as cur:
        cur.execute("alter system set synchronous_standby_names = %s", (value,))
        cur.execute("select pg_reload_conf()")
    conn.close()
    return value


__all__ = [
    "DRError",
    "pg",
    "load_state",
    "save_state",
    "effective_config",
    "probe",
    "probe_all",
    "current_primary",
    "replication_rows",
    "make_standby_config",
    "set_auto_conf",
    "unshipped_wal",
    "wait_streaming",
    "set_synchronous_standbys",
    "lsn_int",
    "controldata",
]
