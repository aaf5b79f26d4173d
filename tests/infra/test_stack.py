"""`xregion up | status | down | fault` on real processes: moto S3, an etcd member and a Patroni-run
Postgres node per region (plus the witness's etcd member), and an MLflow server per region.

The stack's own state lives in a home inside a 0700 directory, as a clone in a private directory
would be: as root the postgres user cannot reach it, so the data must live elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from xregion.infra.embedded import postgres
from xregion.infra.embedded import stack as embedded
from xregion.infra.embedded.scratch import make_home
from xregion.infra.embedded.supervisor import PortInUse, Supervisor

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]
XREGION = str(Path(sys.executable).parent / "xregion")


@pytest.fixture(scope="module")
def own_stack(private_stack):
    return private_stack


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([XREGION, *args], env=env, capture_output=True, text=True, timeout=300)


def status(env) -> dict[str, dict]:
    return {r["service"]: r for r in json.loads(cli(env, "status", "--json").stdout)}


def test_up_starts_every_component_healthy(own_stack):
    home, cfg, env = own_stack
    result = cli(env, "up")
    assert result.returncode == 0, result.stderr
    rows = status(env)
    assert set(rows) == {f"{r}-{c}" for r in "ab" for c in ("s3", "etcd", "patroni", "mlflow")} | {
        "witness-etcd",
        "a-replicator",  # pays what the shared ledger owes
    }
    assert all(r["healthy"] and r["state"] == "running" for r in rows.values()), rows
    assert rows["a-patroni"]["detail"].startswith("primary")
    assert rows["b-patroni"]["detail"].startswith("replica")
    assert (home / "run" / "a-mlflow.json").exists() and (home / "logs" / "a-mlflow.log").exists()


def test_data_lives_outside_a_private_home(own_stack):
    """As root the postgres user cannot reach a home inside a 0700 directory: the data directories
    live in /var/lib/xregion/<hash of XREGION_HOME>, 0700 and owned by postgres."""
    home, cfg, _ = own_stack
    root = postgres.data_root(home)
    if os.geteuid() == 0:
        assert str(root).startswith("/var/lib/xregion/")
        st = root.stat()
        assert st.st_uid == postgres.postgres_owner()[0] and st.st_mode & 0o777 == 0o700
    assert (postgres.node_dir(home, "a") / "PG_VERSION").exists()
    assert (root / "XREGION_HOME").read_text().strip() == str(home.resolve())


def test_postgres_is_the_child_of_its_patroni(own_stack):
    """The node's process tree holds Patroni and its postmaster: a fault on it hits both."""
    home, cfg, _ = own_stack
    sup = Supervisor(home)
    proc = sup.process("a-patroni")
    tree = sup.tree(proc.pid, proc.create_time())
    postmasters = [p for p in tree if p.name() == "postgres" and "-D" in p.cmdline()]
    assert postmasters and str(postgres.node_dir(home, "a")) in " ".join(postmasters[0].cmdline())


def test_no_service_inherits_the_administrators_credentials(own_stack):
    """`up` creates the MLflow accounts as the administrator, with the client credentials in its
    own environment for the while: a service spawned meanwhile would act as the administrator (the
    replicator has no MLflow account of its own to override them). The check is on this stack's
    administrator password, and on the identity of whoever ran `up` (under the suite, this process
    holds the session stack's administrator credentials)."""
    from xregion.infra.embedded import auth

    home, cfg, _ = own_stack
    _, admin_password = auth.credentials(home, "admin", cfg)
    callers_password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    sup = Supervisor(home)
    for svc in sup.known():
        leader = sup.process(svc.name)
        for proc in sup.tree(leader.pid, leader.create_time()):
            client_password = proc.environ().get("MLFLOW_TRACKING_PASSWORD")
            assert client_password != admin_password, f"{svc.name} (pid {proc.pid}) acts as this stack's admin"
            if callers_password:
                assert client_password != callers_password, f"{svc.name} (pid {proc.pid}) acts as its caller"


def test_run_logged_in_a_is_read_back_through_b(own_stack, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from xregion.infra.embedded import auth

    home, cfg, _ = own_stack
    for k, v in auth.client_env(home, "scientist", cfg).items():  # a scientist logs runs
        monkeypatch.setenv(k, v)
    a, b = cfg.region("a"), cfg.region("b")
    client_a = MlflowClient(a.mlflow_url)
    exp = client_a.create_experiment(f"stack-{time.time_ns()}")
    run = client_a.create_run(exp)
    client_a.log_param(run.info.run_id, "alpha", "0.5")
    client_a.log_metric(run.info.run_id, "rmse", 0.25, step=3)
    artifact = tmp_path / "notes.txt"
    artifact.write_text("two regions")
    client_a.log_artifact(run.info.run_id, str(artifact))
    client_a.set_terminated(run.info.run_id)

    got = MlflowClient(b.mlflow_url).get_run(run.info.run_id)
    assert got.data.params == {"alpha": "0.5"} and got.data.metrics == {"rmse": 0.25}
    assert got.info.status == "FINISHED"
    down = client_a.download_artifacts(run.info.run_id, "notes.txt", str(tmp_path / "dl"))
    assert Path(down).read_text() == "two regions"

    # the standby node itself replays the run: streaming replication, not a shared database
    deadline = time.time() + 10
    row = None
    while time.time() < deadline and row is None:
        with postgres.connection(cfg, home, b, "dr") as conn, conn.cursor() as cur:
            cur.execute("select pg_is_in_recovery()")
            assert cur.fetchone()[0] is True
            cur.execute("select key, value from params where run_uuid = %s", (run.info.run_id,))
            row = cur.fetchone()
        time.sleep(0.2)
    assert row == ("alpha", "0.5")


def test_status_reports_a_killed_component_down_and_restart_heals(own_stack):
    home, _, env = own_stack
    pid = status(env)["b-s3"]["pid"]
    assert cli(env, "fault", "kill", "b", "s3").returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    result = cli(env, "status", "--json")
    assert result.returncode == 1
    rows = {r["service"]: r for r in json.loads(result.stdout)}
    assert rows["b-s3"]["state"] == "dead" and rows["b-s3"]["healthy"] is False
    assert rows["a-s3"]["healthy"] is True
    kinds = [e["kind"] for e in map(json.loads, (home / "events.jsonl").read_text().splitlines())]
    assert "fault.kill" in kinds

    assert cli(env, "up").returncode == 0  # up after a crash cleans the stale pid file and restarts
    assert status(env)["b-s3"]["healthy"] is True


def test_freeze_and_thaw(own_stack):
    _, _, env = own_stack
    assert cli(env, "fault", "freeze", "a", "mlflow").returncode == 0
    row = status(env)["a-mlflow"]
    assert row["state"] == "frozen" and row["healthy"] is False
    assert cli(env, "fault", "thaw", "a", "mlflow").returncode == 0
    assert status(env)["a-mlflow"]["healthy"] is True


def test_fault_names_unknown_region(own_stack):
    _, _, env = own_stack
    result = cli(env, "fault", "kill", "zz")
    assert result.returncode != 0 and "no region named 'zz'" in result.stderr


def test_port_taken_is_named(own_stack):
    home, cfg, _ = own_stack
    svc = embedded.s3_service(cfg, cfg.region("a"))
    svc.name = "other-s3"  # same port as the running a-s3, under another name
    with pytest.raises(PortInUse, match=str(svc.listen[1])):
        Supervisor(make_home()).spawn(svc)


def test_down_leaves_no_process_and_is_idempotent(own_stack):
    home, _, env = own_stack
    pids = [r["pid"] for r in status(env).values() if r["pid"]]
    tree = set(pids)
    for pid in pids:
        tree |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    assert cli(env, "down").returncode == 0
    time.sleep(0.5)
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    leftover = [
        p.info for p in psutil.process_iter(["pid", "cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftover == []
    assert not list((home / "run").glob("*.json"))
    again = cli(env, "down")
    assert again.returncode == 0 and "nothing was running" in again.stderr
    root = postgres.data_root(home)
    assert root.exists()  # down keeps the data; --purge removes it and the secrets
    assert cli(env, "down", "--purge").returncode == 0
    assert not root.exists() and not (home / "secrets").exists()
