"""One supervised process and how to tell that it is healthy: the ``Service`` record (saved as its pid
file), its health check, and the errors the supervisor raises."""

from __future__ import annotations

import os
import signal
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from xregion.errors import XRegionError


class SupervisorError(XRegionError, RuntimeError):
    pass


class PortInUse(SupervisorError):
    pass


class StartFailed(SupervisorError):
    pass


CLIENT_IDENTITY = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# what a quiet command line sets for itself only (xregion/cli/output.py): a server logs as it would
COMMAND_ONLY = ("MLFLOW_CONFIGURE_LOGGING",)


@dataclass
class Service:
    """One supervised process and how to tell that it is healthy."""

    name: str  # unique, e.g. "a-postgres"
    region: str
    component: str  # s3 | postgres | mlflow | serving | haproxy | ...
    argv: list[str]
    listen: tuple[str, int] | None = None
    health: dict = field(default_factory=dict)  # {"type": "http"|"tcp"|"postgres", ...}
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    cwd: str | None = None
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 60.0
    lock_file: str | None = None  # a pid lock the program refuses to start over (Postgres' postmaster.pid)
    data_dir: str | None = None  # the service's own data (an S3 store's objects): what the wipe fault deletes
    # secrets the process gets in its environment, named not valued: VAR -> "env:NAME" (taken from
    # the starting process's environment) or "file:/path" (a 0600 file): the record never holds one
    secret_env: dict[str, str] = field(default_factory=dict)

    def resolved_env(self) -> dict[str, str]:
        """The environment of the process: inherited, the service's own, and its secrets read now.
        An MLflow client identity is never inherited: a service acts as the account it is given, not
        as whoever started the stack (an operator's shell, or `up` while it creates the accounts)."""
        inherited = {k: v for k, v in os.environ.items() if k not in CLIENT_IDENTITY + COMMAND_ONLY}
        env = {**inherited, **self.env}
        for var, ref in self.secret_env.items():
            kind, _, where = ref.partition(":")
            if kind == "env" and os.environ.get(where) is not None:
                env[var] = os.environ[where]
            elif kind == "file":
                env[var] = Path(where).read_text().strip()
            else:
                raise StartFailed(f"{self.name}: secret {var} names {ref!r}, which is not set")
        return env

    @classmethod
    def from_dict(cls, data: dict) -> Service:
        data = dict(data)
        if data.get("listen"):
            data["listen"] = tuple(data["listen"])
        return cls(**data)


def check_health(svc: Service, timeout: float = 2.0) -> tuple[bool, str]:
    """(healthy, detail) from the service's declared check."""
    kind = svc.health.get("type", "tcp")
    try:
        if kind == "http":
            try:
                with urllib.request.urlopen(svc.health["url"], timeout=timeout) as resp:
                    return resp.status < 500, f"HTTP {resp.status}"
            except urllib.error.HTTPError as err:  # 4xx still proves the server answers
                return err.code < 500, f"HTTP {err.code}"
        if kind == "postgres":
            import psycopg2

            with psycopg2.connect(svc.health["dsn"], connect_timeout=max(1, int(timeout))) as conn:
                with conn.cursor() as cur:
                    cur.execute("select pg_is_in_recovery()")
                    standby = cur.fetchone()[0]
            conn.close()
            return True, "standby (in recovery)" if standby else "primary (read-write)"
        host, port = svc.listen or (svc.health["host"], svc.health["port"])
        with socket.create_connection((host, port), timeout=timeout):
            return True, "accepting connections"
    except Exception as exc:  # a health check reports, it never raises
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
