"""The one-shot jobs a deployment runs (``python -m xregion.infra.deploy database|accounts``): their
passwords come from the environment under the names the generator gives, they wait for the server
they need, and they are idempotent. Fakes stand in for Postgres and MLflow's auth app."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg2
import pytest

from xregion.infra.deploy import jobs
from xregion.infra.embedded import postgres

from .helpers import COMPOSE_REGIONS, compose_config

CFG = compose_config()
DB_ENV = {"PATRONI_SUPERUSER_PASSWORD": "su-pw", "PGPASSWORD": "mlflow-pw", "XREGION_DR_PASSWORD": "dr-pw"}
ACCOUNT_ENV = {
    "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-pw",
    "XREGION_MLFLOW_SCIENTIST_PASSWORD": "sci-pw",
    "XREGION_MLFLOW_RELEASE_MANAGER_PASSWORD": "rm-pw",
    "XREGION_MLFLOW_ROUTER_PASSWORD": "router-pw",
    "XREGION_MLFLOW_SERVING_PASSWORD": "serving-pw",
}


class FakeCursor:
    def __init__(self, log: list[str]):
        self.log = log

    def execute(self, sql, args=None):
        self.log.append(sql if args is None else f"{sql} {args}")

    def fetchone(self):
        return None  # nothing exists yet

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeConnection:
    def __init__(self):
        self.sql: list[str] = []
        self.autocommit = False
        self.closed = False

    def cursor(self):
        return FakeCursor(self.sql)

    def close(self):
        self.closed = True


@pytest.fixture
def no_waiting(monkeypatch):
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)


def test_the_database_job_creates_roles_and_databases_on_the_leader(monkeypatch, no_waiting):
    for k, v in DB_ENV.items():
        monkeypatch.setenv(k, v)
    # the SCRAM verifier is computed by libpq on a real connection; here, a visible stand-in
    monkeypatch.setattr(
        postgres.psycopg2.extensions, "encrypt_password", lambda pw, role, conn, alg: f"scram({role}:{pw})"
    )
    conn, calls = FakeConnection(), []

    def connect(**kwargs):
        calls.append(kwargs)
        if len(calls) < 3:  # no leader yet: Patroni is still electing one
            raise psycopg2.OperationalError("no server accepts writes")
        return conn

    created = jobs.bootstrap_database(CFG, timeout=30, connect=connect)
    assert created == ["role mlflow", "role xregion_dr", "database mlflow", "database mlflow_auth"]
    assert calls[-1] == {
        "host": "postgres-a,postgres-b",
        "port": "5432,5432",
        "dbname": "postgres",
        "user": "postgres",
        "target_session_attrs": "read-write",
        "connect_timeout": 3,
        "password": "su-pw",
    }
    assert conn.autocommit and conn.closed
    assert "alter role \"mlflow\" password %s ('scram(mlflow:mlflow-pw)',)" in conn.sql
    assert "alter role \"xregion_dr\" password %s ('scram(xregion_dr:dr-pw)',)" in conn.sql
    assert 'revoke connect on database "mlflow_auth" from public' in conn.sql


def test_a_job_without_its_password_names_the_variable(monkeypatch):
    for k in DB_ENV:
        monkeypatch.delenv(k, raising=False)
    env = {k: v for k, v in os.environ.items() if k not in DB_ENV} | {"XREGION_CONFIG": str(COMPOSE_REGIONS)}
    proc = subprocess.run(
        [sys.executable, "-m", "xregion.infra.deploy", "database"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 2 and "PGPASSWORD" in proc.stderr


class FakeAuthClient:
    users: dict[str, str] = {}
    roles: dict[str, object] = {}
    seen_as: set[tuple[str | None, str | None]] = set()

    def __init__(self, url):
        self.url = url

    def _who(self):
        self.seen_as.add((os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")))

    def list_roles(self, workspace):
        self._who()
        return list(self.roles.values())

    def create_user(self, username, password):
        from mlflow.exceptions import MlflowException

        self._who()
        if username in self.users:
            raise MlflowException(f"user {username} exists", error_code="RESOURCE_ALREADY_EXISTS")
        self.users[username] = password

    def create_role(self, workspace, name, description):
        role = type("Role", (), {"id": len(self.roles) + 1, "name": name})()
        self.roles[name] = role
        return role

    def add_role_permission(self, role_id, resource, name, permission):
        pass

    def assign_role(self, username, role_id):
        pass


def test_the_accounts_job_creates_them_once_as_the_administrator(monkeypatch, no_waiting):
    from mlflow.server.auth import client

    for k, v in ACCOUNT_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setattr(client, "AuthServiceClient", FakeAuthClient)
    from xregion.infra.embedded import auth

    owned = []  # the served model is created by the administrator (its creator would manage it)
    monkeypatch.setattr(
        auth, "_own_the_model", lambda cfg, url: owned.append((os.environ.get("MLFLOW_TRACKING_USERNAME"), url))
    )
    FakeAuthClient.users, FakeAuthClient.roles, FakeAuthClient.seen_as = {}, {}, set()
    created = jobs.create_accounts(CFG)
    assert owned and {who for who, _ in owned} == {"admin"}
    assert sorted(created) == ["release-manager", "scientist", "xregion-router", "xregion-serving"]
    assert FakeAuthClient.users == {
        "scientist": "sci-pw",
        "release-manager": "rm-pw",
        "xregion-router": "router-pw",
        "xregion-serving": "serving-pw",
    }
    assert FakeAuthClient.seen_as == {("admin", "admin-pw")}
    assert set(FakeAuthClient.roles) == {"scientist", "release-manager", "router"}  # serving: read-only default
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ  # the administrator's identity does not leak out
    assert jobs.create_accounts(CFG) == []  # again: nothing new, no error


def test_the_replicators_metrics_listen_where_the_deployment_says(monkeypatch):
    import prometheus_client
    from typer.testing import CliRunner

    from xregion.cli import replicate

    bound = []
    fake = type(
        "Rep",
        (),
        {
            "mode": "sync",
            "outbox": type("O", (), {"path": "/ledger/outbox.sqlite"})(),
            "start": lambda s: None,
            "close": lambda s: None,
        },
    )()
    monkeypatch.setattr(replicate, "_replicator", lambda: fake)
    monkeypatch.setattr(prometheus_client, "start_http_server", lambda port, addr: bound.append((port, addr)))
    args = ["run", "--metrics-port", "9464", "--metrics-host", "0.0.0.0", "--seconds", "0.01"]
    result = CliRunner().invoke(replicate.replicate_app, args)
    assert result.exit_code == 0, result.output
    assert bound == [(9464, "0.0.0.0")]
    CliRunner().invoke(replicate.replicate_app, ["run", "--metrics-port", "9464", "--seconds", "0.01"])
    assert bound[-1] == (9464, "127.0.0.1")  # outside a container it stays on loopback
