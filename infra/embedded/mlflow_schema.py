"""MLflow's schema for a new stack's databases: migrated once per MLflow version, then restored.

On empty databases the first MLflow server runs every migration of MLflow (about seventy) and of
its auth app before it answers, and the other servers have to wait for it: two servers migrating
one database at once race. Instead, a new stack's empty databases get their schema before any
server starts. It is restored (``pg_restore``, one transaction per database) from a dump of
databases migrated by MLflow's own code, made once per MLflow version and kept in the user's
cache. The key holds MLflow's version, the contents of its migration scripts and the Postgres
major version, so an upgrade makes a new dump. Every server then finds its schema current, and
they all start together.

The dump holds what the migrations make and nothing else: no experiment, no user, no secret.
MLflow adds the default experiment and the administrator when its servers start, as it always
does; both tolerate two servers starting at once.

When anything is unusual (a database that already has tables, a dump that does not restore,
MLflow's migration code moved), ``prepare`` says the schema is not ready, and ``up`` starts the
leader's server first, which migrates as MLflow does on its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import psycopg2

from xregion.config import RegionConfig, XRegionConfig
from xregion.home import user_cache_dir

from .postgres import AUTH_DATABASE, PG_BIN, PostgresError, child_env, connection, conninfo, pg_restore, role_names

log = logging.getLogger(__name__)

MIGRATIONS = ("store/db_migrations/versions", "server/auth/db/migrations/versions")


def databases(cfg: XRegionConfig) -> tuple[str, str]:
    """The tracking and registry database, and the auth app's."""
    return cfg.postgres.database, AUTH_DATABASE


def cache_key() -> str:
    """MLflow's version, a digest of its migration scripts, and the Postgres major version."""
    spec = importlib.util.find_spec("mlflow")  # finds the files without importing MLflow (seconds)
    root = Path(spec.origin).parent
    digest = hashlib.sha256()
    for folder in MIGRATIONS:
        for script in sorted((root / folder).glob("*.py")):
            digest.update(script.name.encode())
            digest.update(script.read_bytes())
    return f"mlflow-{version('mlflow')}-pg{PG_BIN.parent.name}-{digest.hexdigest()[:16]}"


def cache_dir() -> Path:
    return user_cache_dir() / "mlflow-schema" / cache_key()


def _tables(cfg: XRegionConfig, home: Path, leader: RegionConfig, db: str) -> int:
    with connection(cfg, home, leader, role="mlflow", dbname=db) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from information_schema.tables where table_schema = 'public'")
        return cur.fetchone()[0]


def _run(argv: list[str], env: dict[str, str], what: str, timeout: float = 300) -> None:
    res = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")


def prepare(cfg: XRegionConfig, home: Path, leader: RegionConfig) -> str | None:
    """Give empty databases MLflow's schema; returns how (``restored`` from the cache, ``migrated``
    and dumped into it, or ``present`` already), or None when the leader's server must migrate first."""
    try:
        tables = {db: _tables(cfg, home, leader, db) for db in databases(cfg)}
        if all(tables.values()):
            return "present"  # a stack started before: nothing to do, every server may start
        if any(tables.values()):
            log.warning("MLflow's databases are partly made (%s): the leader's server completes them", tables)
            return None
        cached = cache_dir()
        if all((cached / f"{db}.dump").is_file() for db in databases(cfg)):
            for db in databases(cfg):
                restore(cfg, home, leader, db, cached / f"{db}.dump")
            return "restored"
        _migrate(cfg, home)
        _dump(cfg, home, leader, cached)
        return "migrated"
    except (OSError, RuntimeError, subprocess.SubprocessError, psycopg2.Error) as err:
        log.warning("MLflow's schema was not prepared in advance (%s): the leader's server migrates first", err)
        return None


def restore(cfg: XRegionConfig, home: Path, node: RegionConfig, db: str, dump: Path) -> None:
    """The dump into ``db``, its objects owned by the MLflow role (one transaction: see pg_restore)."""
    try:
        pg_restore(home, node, db, dump, role=role_names(cfg)["mlflow"])
    except PostgresError as err:
        raise RuntimeError(f"restoring MLflow's schema into {db} failed: {err}") from err


def _migrate(cfg: XRegionConfig, home: Path) -> None:
    # in a child: importing MLflow costs seconds and memory this process does not otherwise need
    argv = [sys.executable, "-m", __name__, cfg.database_uri(), cfg.database_uri(database=AUTH_DATABASE)]
    _run(argv, child_env(home, "mlflow"), "MLflow's migrations", timeout=600)


# a dump takes seconds: a scratch folder older than this was left by a process killed mid-dump
ABANDONED_AFTER_S = 3600


def remove_abandoned_dumps(parent: Path) -> list[Path]:
    """Scratch folders of dumps whose process died (kill -9) before renaming them; returns them."""
    now = time.time()
    gone = []
    for scratch in parent.glob(".partial-*"):
        try:
            if now - scratch.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(scratch)
                gone.append(scratch)
        except OSError:  # another process removed it, or renamed it into place, meanwhile
            continue
    return gone


def _dump(cfg: XRegionConfig, home: Path, leader: RegionConfig, cached: Path) -> None:
    cached.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_dumps(cached.parent)
    # made whole in a scratch folder, then renamed: a kill -9 leaves no half dump behind
    scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=cached.parent))
    try:
        for db in databases(cfg):
            argv = [str(PG_BIN / "pg_dump"), "--format=custom", "--no-owner", "--no-privileges"]
            argv += ["--file", str(scratch / f"{db}.dump")]
            argv += ["--dbname", conninfo(cfg, home, leader, role="mlflow", dbname=db, timeout=10)]
            _run(argv, child_env(home, "mlflow"), f"dumping MLflow's schema of {db}")
        try:
            scratch.rename(cached)
        except OSError:  # another stack made it meanwhile: theirs is the same
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def migrate(tracking_uri: str, auth_uri: str) -> None:
    """Run MLflow's migrations on empty databases, as its servers would on their first start."""
    import sqlalchemy
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(tracking_uri)
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    AuthStore().init_db(auth_uri)


if __name__ == "__main__":
    migrate(*sys.argv[1:3])
