"""Postgres nodes of the embedded stack: the primary made with initdb, each standby a real
streaming replica made with ``pg_basebackup -R``.

The server binaries refuse to run as root, so as root every Postgres command runs as the
``postgres`` user; the data directories under XREGION_HOME are handed to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

import psycopg2

from xregion.config import RegionConfig, XRegionConfig

from .supervisor import Service, SupervisorError

PG_BIN = Path(os.environ.get("XREGION_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"

# Settings every node shares; port and addresses come from the regions file on the command line,
# so a base backup copied from the primary needs no edits to run as a standby.
POSTGRES_CONF = """
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
hot_standby = on
hot_standby_feedback = on
wal_log_hints = on              # pg_rewind needs it to turn an old primary into a standby
wal_receiver_status_interval = 1s
shared_buffers = 64MB
max_connections = 100
fsync = on
synchronous_commit = on
log_line_prefix = '%m [%p] '
"""

HBA = """
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
host replication all 127.0.0.1/32 trust
host replication all ::1/128 trust
"""


def run_as_postgres() -> bool:
    return os.geteuid() == 0


def pg_user_kwargs() -> dict:
    return {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []} if run_as_postgres() else {}


def data_dir(home: Path, region: RegionConfig) -> Path:
    return home / "pg" / region.name


def prepare_dir(path: Path) -> None:
    """An empty directory the postgres user owns, and a path it can walk to."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if run_as_postgres():
        pw = pwd.getpwnam(SUPERUSER)
        os.chown(path.parent, pw.pw_uid, pw.pw_gid)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        probe = subprocess.run(["test", "-w", str(path)], **pg_user_kwargs())
        if probe.returncode != 0:
            raise SupervisorError(
                f"the postgres user cannot reach {path}: a parent directory is not searchable by others. "
                f"Set XREGION_HOME to a directory under a world-searchable path (e.g. /var/tmp/xregion)."
            )


def run_pg(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, **pg_user_kwargs())
    if proc.returncode != 0:
        raise SupervisorError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")


def service(cfg: XRegionConfig, region: RegionConfig, home: Path) -> Service:
    argv = [
        str(PG_BIN / "postgres"),
        "-D",
        str(data_dir(home, region)),
        "-p",
        str(region.pg_port),
        "-c",
        f"listen_addresses={region.pg_host}",
        "-c",
        "unix_socket_directories=",
    ]
    return Service(
        name=f"{region.name}-postgres",
        region=region.name,
        component="postgres",
        argv=argv,
        listen=(region.pg_host, region.pg_port),
        health={"type": "postgres", "dsn": superuser_dsn(region)},
        user=SUPERUSER if run_as_postgres() else None,
        stop_signal=signal.SIGINT,  # "fast" shutdown: SIGTERM would wait for clients to leave
        lock_file=str(data_dir(home, region) / "postmaster.pid"),
        start_timeout=60,
    )


def superuser_dsn(region: RegionConfig, dbname: str = "postgres") -> str:
    return f"host={region.pg_host} port={region.pg_port} dbname={dbname} user={SUPERUSER} connect_timeout=3"


def init_primary(cfg: XRegionConfig, region: RegionConfig, home: Path, progress=print) -> None:
    path = data_dir(home, region)
    if (path / "PG_VERSION").exists():
        return
    progress(f"{region.name}-postgres: initdb")
    prepare_dir(path)
    run_pg(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(path),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ],
        "initdb",
    )
    with open(path / "postgresql.conf", "a") as f:
        f.write(POSTGRES_CONF)
    (path / "pg_hba.conf").write_text(HBA)


def bootstrap_database(cfg: XRegionConfig, progress=print) -> None:
    """The MLflow role and database on the primary (idempotent)."""
    pg = cfg.postgres
    conn = psycopg2.connect(superuser_dsn(cfg.primary))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("select 1 from pg_roles where rolname = %s", (pg.user,))
        if not cur.fetchone():
            cur.execute(f'create role "{pg.user}" login')
        cur.execute("select 1 from pg_database where datname = %s", (pg.database,))
        if not cur.fetchone():
            progress(f"creating database {pg.database}")
            cur.execute(f'create database "{pg.database}" owner "{pg.user}"')
    conn.close()


def init_standby(cfg: XRegionConfig, region: RegionConfig, home: Path, progress=print) -> None:
    path = data_dir(home, region)
    if (path / "PG_VERSION").exists():
        return
    progress(f"{region.name}-postgres: pg_basebackup from {cfg.primary.name}")
    prepare_dir(path)
    primary = cfg.primary
    run_pg(
        [
            str(PG_BIN / "pg_basebackup"),
            "-h",
            primary.pg_host,
            "-p",
            str(primary.pg_port),
            "-U",
            SUPERUSER,
            "-D",
            str(path),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
        "pg_basebackup",
    )
    # name the standby so synchronous_standby_names and pg_stat_replication can refer to it
    with open(path / "postgresql.auto.conf", "a") as f:
        f.write(f"cluster_name = '{region.name}'\n")
        f.write(
            f"primary_conninfo = 'host={primary.pg_host} port={primary.pg_port} user={SUPERUSER} "
            f"application_name={region.name}'\n"
        )


def apply_replication_mode(cfg: XRegionConfig, progress=print) -> None:
    """Synchronous mode waits for a standby's flush before a commit returns (RPO 0)."""
    names = ", ".join(f'"{r.name}"' for r in cfg.standbys)
    value = f"ANY 1 ({names})" if cfg.postgres.replication == "sync" and names else ""
    conn = psycopg2.connect(superuser_dsn(cfg.primary))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("alter system set synchronous_standby_names = %s", (value,))
        cur.execute("select pg_reload_conf()")
    conn.close()
    if value:
        progress(f"replication: synchronous ({value})")


def replication_status(cfg: XRegionConfig) -> list[dict]:
    """Per standby as the primary sees it: state, sync state and lag in bytes and seconds."""
    conn = psycopg2.connect(superuser_dsn(cfg.primary))
    with conn.cursor() as cur:
        cur.execute("""select application_name, state, sync_state,
                              pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
                              extract(epoch from coalesce(replay_lag, '0'::interval))
                       from pg_stat_replication""")
        rows = [dict(zip(("standby", "state", "sync_state", "lag_bytes", "lag_seconds"), r)) for r in cur.fetchall()]
    conn.close()
    return rows


def remove(home: Path, region: RegionConfig) -> None:
    shutil.rmtree(data_dir(home, region), ignore_errors=True)
