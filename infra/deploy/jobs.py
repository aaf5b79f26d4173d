"""The one-shot jobs a deployment runs in the platform image (``python -m xregion.infra.deploy JOB``),
each idempotent and each reading its passwords from its environment, under the names
``credentials.py`` gives them (the compose env file, or Kubernetes Secrets):

* ``database``: on the database leader, as the superuser, the MLflow and DR roles and the MLflow
  and auth databases (``postgres.create_roles``, what the embedded platform runs at ``xregion up``);
* ``accounts``: through a region's MLflow auth app, as its administrator, the platform's accounts
  and role grants (``auth.create_accounts``, likewise);
* ``buckets``: every region's bucket through the platform's S3 users (for stores without an init
  job of their own, such as AWS S3; the MinIO init jobs create theirs with object lock).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from xregion.config import ConfigError, XRegionConfig

from . import credentials


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set (see .env.example or secrets.env.example)")
    return value


def _retry(what: str, attempt: Callable[[], object], timeout: float, pause: float = 2.0):
    """Call ``attempt`` until it succeeds or ``timeout`` passes (a job may start before the server
    it needs is ready), re-raising the last error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Exception as err:  # whatever the server said, try again until the deadline
            if time.monotonic() >= deadline:
                raise ConfigError(f"{what}: gave up after {timeout:.0f}s: {err}") from err
            time.sleep(pause)


def ensure_buckets(cfg: XRegionConfig) -> list[str]:
    from xregion.store import stores

    made = []
    for name, store in stores(cfg).items():
        store.ensure_bucket()
        made.append(name)
    return made


def leader_conninfo(cfg: XRegionConfig) -> dict:
    """libpq keywords reaching whichever node accepts writes, as the superuser (no password here)."""
    from xregion.infra.embedded.postgres import SUPERUSER

    return {
        "host": ",".join(r.pg_host for r in cfg.write_order()),
        "port": ",".join(str(r.pg_port) for r in cfg.write_order()),
        "dbname": "postgres",
        "user": SUPERUSER,
        "target_session_attrs": "read-write",
        "connect_timeout": 3,
    }


def bootstrap_database(cfg: XRegionConfig, timeout: float = 180.0, connect=None) -> list[str]:
    """``database``: roles and databases on the leader; returns what was created."""
    import psycopg2

    from xregion.infra.embedded.postgres import create_roles

    passwords = {"mlflow": _env(cfg.postgres.password_env), "dr": _env(credentials.DR_PASSWORD)}
    superuser = _env(credentials.SUPERUSER_PASSWORD)
    connect = connect or psycopg2.connect

    def attempt():
        conn = connect(**leader_conninfo(cfg), password=superuser)
        try:
            conn.autocommit = True
            return create_roles(conn, cfg, passwords)
        finally:
            conn.close()

    return _retry("the database leader", attempt, timeout)


def create_accounts(cfg: XRegionConfig, url: str | None = None, timeout: float = 180.0) -> list[str]:
    """``accounts``: the platform's MLflow accounts, as the administrator; returns those created."""
    from xregion.home import environment
    from xregion.infra.embedded import auth

    passwords = {
        credentials.account_username(cfg, role): _env(credentials.account_password(role))
        for role in credentials.ACCOUNT_ROLES
    }
    admin = {"MLFLOW_TRACKING_USERNAME": auth.ADMIN, "MLFLOW_TRACKING_PASSWORD": _env(credentials.ADMIN_PASSWORD)}
    target = url or cfg.primary.mlflow_url
    with environment(**admin):
        return _retry(f"the MLflow server {target}", lambda: auth.create_accounts(cfg, target, passwords), timeout)
