"""The embedded stack's Postgres: where its data lives, its roles and their secrets, and the one
way every module connects to a node (``connection()``). Patroni runs the nodes
(``infra/embedded/patroni.py``); nothing here starts or promotes a server.

Roles, each with its own password generated at the first ``xregion up`` (``ensure_secrets``):

==============  ================================================================================
``postgres``    superuser; Patroni only (bootstrap, health, promotion)
``replicator``  streaming replication (Patroni's ``authentication.replication``)
``rewind``      pg_rewind of an old primary (Patroni creates it with the grants it needs)
``mlflow``      the MLflow servers (``postgres.user`` of the regions file): owns the MLflow database
``xregion_dr``  DR tooling (backup, restore, verify): member of the MLflow role, CREATEDB, pg_monitor
==============  ================================================================================

Passwords live in ``XREGION_HOME/secrets`` (0700; files 0600): ``passwords.json`` and one libpq
passfile per client role. Connections name the passfile (``passfile=`` in the conninfo, or
``PGPASSFILE`` in a child's environment), so no password is ever in argv, a log or a pid file,
and a client without the file gets "password authentication failed" (pg_hba: scram-sha-256 only).

As root, the data directories cannot live under XREGION_HOME when a parent directory is closed
to others (a clone inside a 0700 directory): the postgres user could not reach them. They live
in ``/var/lib/xregion/<hash of XREGION_HOME>/`` then, created 0700 for the postgres user and
removed by ``xregion down --purge``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import psycopg2.extensions

from xregion.config import RegionConfig, XRegionConfig
from xregion.errors import XRegionError

log = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("XREGION_PG_BIN", "/usr/lib/postgresql/15/bin"))
AUTH_DATABASE = "mlflow_auth"  # MLflow's auth app keeps its users there (replicated like the registry)
SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
REWIND_USER = "rewind"
DR_USER = "xregion_dr"
ROOT_DATA = Path(os.environ.get("XREGION_DATA_ROOT", "/var/lib/xregion"))
SECRETS_DIR = "secrets"
PASSWORDS = "passwords.json"


class PostgresError(XRegionError, RuntimeError):
    """A database set-up step failed; the message says which and why."""


# --- who runs Postgres, where its data lives ----------------------------------------------------
def run_as_postgres() -> bool:
    """As root, every Postgres program (and Patroni) runs as the postgres user: initdb refuses root."""
    return os.geteuid() == 0


def pg_user_kwargs() -> dict:
    return {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []} if run_as_postgres() else {}


def _owner() -> tuple[int, int] | None:
    if not run_as_postgres():
        return None
    pw = pwd.getpwnam(SUPERUSER)
    return pw.pw_uid, pw.pw_gid


def data_root(home: Path) -> Path:
    """Where Postgres, Patroni and etcd keep their data for the stack whose state is in ``home``."""
    if not run_as_postgres():
        return Path(home) / "db"
    digest = hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:16]
    return ROOT_DATA / digest


def prepare_data_root(home: Path) -> Path:
    """The data root, 0700 and owned by the postgres user (root mode), with a note naming its home."""
    root = data_root(home)
    if run_as_postgres():
        ROOT_DATA.mkdir(mode=0o755, parents=True, exist_ok=True)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = _owner()
    if owner:
        os.chown(root, *owner)
    root.chmod(0o700)
    (root / "XREGION_HOME").write_text(f"{Path(home).resolve()}\n")  # which stack this is, for a person
    return root


def private_dir(path: Path, owner: tuple[int, int] | None = None) -> Path:
    """A 0700 directory, owned by ``owner`` (uid, gid) when given."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owner:
        os.chown(path, *owner)
    path.chmod(0o700)
    return path


def postgres_owner() -> tuple[int, int] | None:
    """(uid, gid) of the postgres user when running as root, else None (files stay ours)."""
    return _owner()


def node_dir(home: Path, region: str) -> Path:
    return data_root(home) / "pg" / region


def remove_data(home: Path) -> list[Path]:
    """Delete the data root and the secrets (``xregion down --purge``); returns what was removed.

    A process still at work in the data root is killed first: one the supervisor lost track of
    (a Patroni starting its replica wrote ``standby.signal`` into the tree being deleted, and left
    an orphaned data root behind in CI)."""
    removed = []
    for path in (data_root(home), Path(home) / SECRETS_DIR):
        if not path.exists():
            continue
        for _ in range(3):
            _kill_processes_in(path)
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                break
        else:
            log.warning("%s could not be removed entirely: delete it by hand", path)
        removed.append(path)
    return removed


def _kill_processes_in(root: Path) -> None:
    """SIGKILL every process whose command names ``root``: the stack's Patroni (its configuration),
    postmaster (``-D``) and etcd (``--data-dir``) do; a person's shell that merely stands there does not."""
    import psutil

    from .supervisor import wait_gone

    where = str(root.resolve())
    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        if p.pid != os.getpid() and any(where in arg for arg in p.info["cmdline"] or []):
            found.append(p)
    for p in found:
        log.warning("killing %s (pid %d), still at work in %s, which is being removed", p.info["name"], p.pid, where)
        try:
            p.kill()
        except psutil.Error:
            pass
    wait_gone(found, 5)


# --- secrets -----------------------------------------------------------------------------------
def secrets_dir(home: Path) -> Path:
    return Path(home) / SECRETS_DIR


def role_names(cfg: XRegionConfig) -> dict[str, str]:
    """Logical role -> Postgres role name."""
    return {
        "superuser": SUPERUSER,
        "replication": REPLICATION_USER,
        "rewind": REWIND_USER,
        "mlflow": cfg.postgres.user,
        "dr": DR_USER,
        "patroni_api": "xregion",  # Patroni REST API basic auth for failover/switchover/reinitialize
    }


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write a 0600 file atomically (created 0600: never readable by others, even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    if owner:
        os.chown(tmp, *owner)
    tmp.replace(path)


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def ensure_secrets(cfg: XRegionConfig, home: Path) -> dict[str, str]:
    """Passwords of every role (generated once, kept across restarts) and the client passfiles."""
    d = private_dir(secrets_dir(home))
    path = d / PASSWORDS
    try:
        passwords = json.loads(path.read_text())
    except (OSError, ValueError):
        passwords = {}
    changed = False
    for logical in role_names(cfg):
        if logical not in passwords:
            passwords[logical] = secrets.token_urlsafe(24)
            changed = True
    if changed or not path.exists():
        write_private(path, json.dumps(passwords, indent=1))
    names = role_names(cfg)
    for logical in ("mlflow", "dr", "superuser"):
        line = f"*:*:*:{_pgpass_escape(names[logical])}:{_pgpass_escape(passwords[logical])}\n"
        write_private(pgpass_path(home, logical), line)
    return passwords


def load_secrets(home: Path) -> dict[str, str]:
    try:
        return json.loads((secrets_dir(home) / PASSWORDS).read_text())
    except (OSError, ValueError):
        raise PostgresError(
            f"no database secrets in {secrets_dir(home)}: start the stack with `xregion up` first"
        ) from None


def pgpass_path(home: Path, logical: str) -> Path:
    """The libpq passfile of one client role: ``mlflow`` (MLflow servers), ``dr``, ``superuser``."""
    return secrets_dir(home) / f"{logical}.pgpass"


# --- connections -------------------------------------------------------------------------------
def conninfo(
    cfg: XRegionConfig, home: Path, region: RegionConfig, role: str = "dr", dbname: str | None = None, timeout: int = 3
) -> str:
    """libpq conninfo for one node as one role; the password comes from the role's passfile."""
    user = role_names(cfg)[role]
    db = dbname or ("postgres" if role == "superuser" else cfg.postgres.database)
    return (
        f"host={region.pg_host} port={region.pg_port} dbname={db} user={user} "
        f"passfile={pgpass_path(home, role)} connect_timeout={timeout}"
    )


def child_env(home: Path, role: str = "dr") -> dict[str, str]:
    """Environment for a libpq program (pg_dump, pg_restore): its password through PGPASSFILE."""
    return {"PGPASSFILE": str(pgpass_path(home, role))}


def pg_restore(home: Path, region: RegionConfig, database: str, dump: Path, role: str | None) -> None:
    """Restore a ``pg_dump -Fc`` file into ``database`` as the DR role (objects owned by ``role``
    when given), in one transaction: a restore that fails or is killed half-way leaves nothing."""
    argv = [str(PG_BIN / "pg_restore"), "-h", region.pg_host, "-p", str(region.pg_port), "-U", DR_USER]
    argv += ["-d", database, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    argv += ["--no-password"] + ([f"--role={role}"] if role else [])
    with open(dump, "rb") as f:
        proc = subprocess.run(
            argv, stdin=f, capture_output=True, timeout=3600, env={**os.environ, **child_env(home, "dr")}
        )
    if proc.returncode != 0:
        raise PostgresError(f"pg_restore failed: {proc.stderr.decode(errors='replace')}")


@contextmanager
def connection(
    cfg: XRegionConfig,
    home: Path,
    region: RegionConfig,
    role: str = "dr",
    dbname: str | None = None,
    timeout: int = 3,
    autocommit: bool = True,
) -> Iterator[psycopg2.extensions.connection]:
    """A connection to one node as one role, always closed (rolled back first when not autocommit)."""
    conn = psycopg2.connect(conninfo(cfg, home, region, role, dbname, timeout))
    try:
        conn.autocommit = autocommit
        yield conn
    finally:
        try:
            if not autocommit and not conn.closed:
                conn.rollback()
        finally:
            conn.close()


# --- roles and the MLflow database ---------------------------------------------------------------
def _set_password(cur, conn, role: str, password: str) -> None:
    # the SCRAM verifier is computed here: the clear password never reaches the server (or its log)
    verifier = psycopg2.extensions.encrypt_password(password, role, conn, "scram-sha-256")
    cur.execute(f'alter role "{role}" password %s', (verifier,))


def bootstrap_roles(cfg: XRegionConfig, home: Path, leader: RegionConfig) -> list[str]:
    """The MLflow and DR roles and the MLflow database on the leader (idempotent); returns what was created."""
    with connection(cfg, home, leader, role="superuser") as conn:
        return create_roles(conn, cfg, load_secrets(home))


def create_roles(conn: psycopg2.extensions.connection, cfg: XRegionConfig, passwords: dict[str, str]) -> list[str]:
    """On a superuser connection to the leader (autocommit): the MLflow and DR roles with the
    passwords of ``passwords`` (logical role -> password: ``mlflow``, ``dr``), the MLflow and
    auth databases, CONNECT revoked from PUBLIC. Idempotent; returns what was created. The
    embedded stack and a deployment's one-shot job (``python -m xregion.infra.deploy database``)
    both run this."""
    names = role_names(cfg)
    created = []
    with conn.cursor() as cur:
        for logical, attrs in (("mlflow", "login"), ("dr", "login createdb")):
            role = names[logical]
            cur.execute("select 1 from pg_roles where rolname = %s", (role,))
            if not cur.fetchone():
                cur.execute(f'create role "{role}" {attrs}')
                created.append(f"role {role}")
            _set_password(cur, conn, role, passwords[logical])
        db, owner, dr = cfg.postgres.database, names["mlflow"], names["dr"]
        # DR restores the database (drop, create owned by the MLflow role, pg_restore --role) and
        # reads replication status; it is no superuser
        cur.execute(f'grant "{owner}" to "{dr}"')
        cur.execute(f'grant pg_monitor, pg_signal_backend to "{dr}"')
        for name in (db, AUTH_DATABASE):  # MLflow's, and its auth app's (users, roles, grants)
            cur.execute("select 1 from pg_database where datname = %s", (name,))
            if not cur.fetchone():
                cur.execute(f'create database "{name}" owner "{owner}"')
                created.append(f"database {name}")
            cur.execute(f'revoke connect on database "{name}" from public')
        # pg_rewind reads the source through the postgres database; DR drops and re-creates the
        # MLflow database from there
        cur.execute("revoke connect on database postgres from public")
        cur.execute(f'grant connect on database postgres to "{names["rewind"]}", "{dr}"')
    return created


def hba(cfg: XRegionConfig, networks: tuple[str, ...] = ("127.0.0.1/32", "::1/128")) -> list[str]:
    """pg_hba.conf: scram-sha-256 for every role and every address, never trust; each role reaches
    only the databases it needs. No local (socket) line: the nodes listen on TCP only.
    ``networks``: where clients connect from (loopback here; a deployment's network elsewhere)."""
    names = role_names(cfg)
    db = cfg.postgres.database
    rules = [
        ("replication", names["replication"]),
        ("postgres", f"{names['superuser']},{names['rewind']}"),
        ("all", names["superuser"]),
        (f"{db},{AUTH_DATABASE}", names["mlflow"]),  # the registry and MLflow's auth app's users
        ("all", names["dr"]),
    ]
    lines = []
    for database, user in rules:
        for net in networks:
            lines.append(f"host {database} {user} {net} scram-sha-256")
    return lines
