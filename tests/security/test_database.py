"""Database security of the embedded stack (issue 14, database part), on the session stack:

* a client that bypasses the MLflow server (and so the promotion gate) with a plain
  ``postgresql://`` URI and no credentials is refused by Postgres;
* scram-sha-256 everywhere in pg_hba, never trust; one role per duty;
* passwords only in 0600 files: never in argv, pid-file records, logs or the event log;
* ``postgres.password_env`` passwords are URL-encoded into the URI.
"""

from __future__ import annotations

import json
import stat
import time

import psutil
import psycopg2
import pytest
import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy.engine import make_url

from xregion.config import load_config
from xregion.infra.embedded import patroni, postgres

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


@pytest.fixture
def no_client_credentials(monkeypatch):
    """A client with nothing but the URI: no passfile, no password in its environment."""
    for var in ("PGPASSFILE", "PGPASSWORD", "PGSERVICEFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.pgpass either
    # MLflow retries a failed engine for ~100 s; the outcome is the same after one retry
    monkeypatch.setattr("mlflow.store.db.utils.MAX_RETRY_COUNT", 2)


def _model_with_version(stack) -> tuple[str, str]:
    cl = MlflowClient(stack.cfg.primary.mlflow_url, registry_uri=stack.cfg.primary.mlflow_url)
    name = f"sec-{time.time_ns()}"
    cl.create_registered_model(name)
    exp = cl.create_experiment(f"sec-{time.time_ns()}")
    run = cl.create_run(exp).info
    mv = cl.create_model_version(name, f"{run.artifact_uri}/model", run_id=run.run_id)
    return name, str(mv.version)


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2"])
def test_gate_bypass_with_a_plain_uri_is_refused(stack, no_client_credentials, scheme):
    """Straight to the database, past the MLflow server's gate: refused (``postgresql://`` also
    lacks SQLAlchemy's default driver here; ``+psycopg2`` reaches Postgres, which wants a password)."""
    name, version = _model_with_version(stack)
    a = stack.cfg.region("a")
    bypass = MlflowClient(
        tracking_uri=a.mlflow_url, registry_uri=f"{scheme}://{stack.cfg.postgres.user}@{a.postgres}/mlflow"
    )
    with pytest.raises(Exception) as exc:  # noqa: B017 - whichever layer refuses, the write must not happen
        bypass.set_registered_model_alias(name, "champion", version)
    if scheme.endswith("psycopg2"):
        assert isinstance(exc.value, MlflowException | sqlalchemy.exc.OperationalError), exc.value
        assert "password" in str(exc.value).lower(), exc.value
    # and nothing changed: the alias is not there, read through the MLflow server
    model = MlflowClient(a.mlflow_url, registry_uri=a.mlflow_url).get_registered_model(name)
    assert "champion" not in model.aliases


# each role tried on a database its pg_hba line lets it ask for: the refusal is the password's
ROLE_DATABASES = {
    "mlflow": {"dbname": "mlflow"},
    "postgres": {"dbname": "postgres"},
    "xregion_dr": {"dbname": "mlflow"},
    "rewind": {"dbname": "postgres"},
    "replicator": {"dbname": "replication", "replication": "true"},
}


@pytest.mark.parametrize("role", sorted(ROLE_DATABASES))
def test_no_role_connects_without_its_password(stack, no_client_credentials, role):
    a = stack.cfg.region("a")
    kw = {"host": a.pg_host, "port": a.pg_port, "user": role, "connect_timeout": 3, **ROLE_DATABASES[role]}
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        psycopg2.connect(**kw)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**kw, password="guess")


def test_pg_hba_is_scram_only_on_every_node(stack):
    for r in stack.cfg.regions:
        with postgres.connection(stack.cfg, stack.home, r, "superuser") as conn, conn.cursor() as cur:
            cur.execute("select type, database, user_name, auth_method from pg_hba_file_rules")
            rules = cur.fetchall()
            cur.execute("show password_encryption")
            assert cur.fetchone()[0] == "scram-sha-256"
        assert rules and {m for *_, m in rules} == {"scram-sha-256"}, rules
        assert all(t == "host" for t, *_ in rules)  # no socket (local) line at all


def test_roles_have_one_duty_each(stack):
    with postgres.connection(stack.cfg, stack.home, stack.cfg.primary, "superuser") as conn, conn.cursor() as cur:
        cur.execute(
            "select rolname, rolsuper, rolreplication, rolcreatedb from pg_roles where rolname = any(%s)",
            (["postgres", "replicator", "rewind", "mlflow", "xregion_dr"],),
        )
        roles = {r[0]: r[1:] for r in cur.fetchall()}
    assert roles == {
        "postgres": (True, True, True),
        "replicator": (False, True, False),
        "rewind": (False, False, False),
        "mlflow": (False, False, False),
        "xregion_dr": (False, False, True),
    }
    # the MLflow role cannot reach the postgres database; the DR role is no superuser but can read MLflow's
    with pytest.raises(psycopg2.OperationalError, match="permission denied|not permitted|pg_hba"):
        with postgres.connection(stack.cfg, stack.home, stack.cfg.primary, "mlflow", "postgres"):
            pass
    with postgres.connection(stack.cfg, stack.home, stack.cfg.primary, "dr") as conn, conn.cursor() as cur:
        cur.execute("select count(*) from experiments")
        assert cur.fetchone()[0] >= 0


def test_secrets_only_in_private_files(stack):
    home = stack.home
    d = postgres.secrets_dir(home)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = list(d.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    for r in stack.cfg.regions:
        assert stat.S_IMODE(patroni.config_path(home, r.name).stat().st_mode) == 0o600
    passwords = [p for p in postgres.load_secrets(home).values() if p]
    places = list((home / "run").glob("*.json")) + list((home / "logs").glob("*.log"))
    places += [home / "events.jsonl"] if (home / "events.jsonl").exists() else []
    for path in places:
        text = path.read_text(errors="replace")
        assert not any(p in text for p in passwords), f"a password in {path}"
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        assert not any(p in cmd for p in passwords), f"a password in the argv of pid {proc.pid}"
    # the MLflow servers get the passfile's path, not the password
    rec = json.loads((home / "run" / "a-mlflow.json").read_text())
    assert rec["service"]["env"]["PGPASSFILE"] == str(postgres.pgpass_path(home, "mlflow"))


def test_password_env_is_url_encoded(tmp_path, monkeypatch):
    from xregion.infra.embedded.scratch import scratch_config as write_config

    path = write_config(tmp_path, postgres={"password_env": "XR_TEST_PGPASSWORD"})
    cfg = load_config(path)
    secret = "p@ss:w/rd%?&=#"
    monkeypatch.setenv("XR_TEST_PGPASSWORD", secret)
    for uri in (cfg.database_uri(), cfg.database_read_uri("b")):
        url = make_url(uri)
        assert url.password == secret and url.username == cfg.postgres.user and url.database == "mlflow"
        assert url.query["target_session_attrs"] in ("read-write", "any")
    assert secret not in cfg.database_uri(password="")  # an explicit empty password: none in the URI
