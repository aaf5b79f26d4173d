"""Asynchronous replication: kill -9 the primary under load, fail over, fence, rejoin, fail back.

Runs against its own stack (destructive). The acknowledged writes lost by the failover are
measured and printed; they must never exceed what the failover reported as possibly lost.
"""

from __future__ import annotations

import json
import time

import psycopg2
import pytest

from tests.dr.conftest import xr, xr_json
from tests.dr.helpers import MetricLogger, quick_http
from xregion.dr import nodes
from xregion.infra.embedded import postgres
from xregion.infra.embedded.postgres import data_dir, superuser_dsn
from xregion.infra.embedded.supervisor import Supervisor

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]

FIGURES: dict = {}


def kill_under_load_and_fail_over(
    st, old: str, new: str, monkeypatch, standby_behind: bool = False
) -> tuple[dict, MetricLogger, float]:
    """Kill -9 ``old``'s Postgres while a client logs metrics, then `xregion dr failover --to new`.

    ``standby_behind``: the standby is down while the client logs more, so the primary dies
    holding acknowledged commits the standby never received: the asynchronous loss case.
    """
    quick_http(monkeypatch)
    cfg, sup = st.cfg, Supervisor(st.home)
    # the client talks to the MLflow server of the region that survives: it must keep working
    with MetricLogger(cfg.region(new).mlflow_url) as logger:
        assert logger.wait_acks(30) >= 30, f"no load before the fault ({logger.failures} failures)"
        svc = postgres.service(cfg, cfg.region(old), st.home)
        standby = postgres.service(cfg, cfg.region(new), st.home)
        if standby_behind:
            sup.stop(standby.name)
            t_down = time.time()
            assert logger.wait_acks(20, after=t_down) >= 20, "the primary did not take writes alone"
        assert sup.fault("kill", [svc]) == [svc.name]
        t_kill = time.time()  # after the signal (finding the process tree takes a moment)
        if standby_behind:
            sup.start(standby)  # back, with only what it had received before it went down
        result, _ = xr_json(st, "dr", "failover", "--to", new)
        t_done = time.time()
        assert logger.wait_acks(30, after=t_done) >= 30, f"logging did not continue ({logger.failures} failures)"
    return result, logger, logger.first_ack_sent_after(t_kill) - t_kill


def test_failover_async_under_load(async_stack, monkeypatch):
    st = async_stack
    result, logger, client_rto = kill_under_load_and_fail_over(st, "a", "b", monkeypatch)
    assert result["from"] == "a" and result["to"] == "b" and result["ok"], result
    assert result["rto_start"] == "fault" and result["rto_seconds"] is not None
    assert all(m["ok"] for m in result["mlflow"].values()), result["mlflow"]
    lost = logger.missing(st.cfg.region("b").mlflow_url)
    lag = result["lag"]
    assert lag["commits"] is not None and lag["bytes"] is not None, lag  # read from a's WAL on disk
    # every acknowledged write that is lost was counted by the failover's report beforehand
    assert len(lost) <= lag["commits"], (lost, lag)
    FIGURES["async"] = {
        "rto_seconds": result["rto_seconds"],
        "command_seconds": result["command_seconds"],
        "database_writable_seconds": result["database_writable_seconds"],
        "client_rto_seconds": round(client_rto, 3),
        "acked": len(logger.acked),
        "lost_acked": len(lost),
        "lag": lag,
    }
    print("\nDR figures (async):", json.dumps(FIGURES["async"]))
    state = json.loads((st.home / "dr-state.json").read_text())
    assert state["primary"] == "b" and state["fenced"] == ["a"]


def test_old_primary_is_fenced(async_stack):
    """Started again as `xregion up` would, the old primary comes back read-only, never a primary."""
    st = async_stack
    a = st.cfg.region("a")
    assert (data_dir(st.home, a) / "standby.signal").exists()
    sup = Supervisor(st.home)
    sup.start(postgres.service(st.cfg, a, st.home))
    with psycopg2.connect(superuser_dsn(a)) as conn, conn.cursor() as cur:
        cur.execute("select pg_is_in_recovery()")
        assert cur.fetchone()[0] is True
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("create table fenced_write (x int)")
    # and the DR status names b as the primary, a as fenced
    status, _ = xr_json(st, "dr", "status", ok=False)
    assert status["primary"] == "b" and status["nodes"]["a"]["fenced"] is True


def test_rejoin_and_fail_back(async_stack, monkeypatch):
    st = async_stack
    rejoined, res = xr_json(st, "dr", "rejoin", "a")
    # a's WAL ended where b's timeline forked, so it follows b as it is (no rewind needed)
    assert rejoined["primary"] == "b" and rejoined["method"] in ("follow", "pg_rewind", "pg_basebackup"), res.stderr
    status, _ = xr_json(st, "dr", "status")
    assert status["nodes"]["a"]["role"] == "standby" and not status["nodes"]["a"]["fenced"]
    assert [r["state"] for r in status["replication"]] == ["streaming"]

    # a second failover, back to a, with a standby left behind: asynchronous replication loses
    # acknowledged writes, and the failover said how many commits it would lose before promoting
    result, logger, client_rto = kill_under_load_and_fail_over(st, "b", "a", monkeypatch, standby_behind=True)
    assert result["from"] == "b" and result["to"] == "a" and result["ok"], result
    lost = logger.missing(st.cfg.region("a").mlflow_url)
    assert 0 < len(lost) <= result["lag"]["commits"], (lost, result["lag"])
    assert result["lag"]["bytes"] > 0
    FIGURES["async_back"] = {
        "rto_seconds": result["rto_seconds"],
        "command_seconds": result["command_seconds"],
        "database_writable_seconds": result["database_writable_seconds"],
        "client_rto_seconds": round(client_rto, 3),
        "acked": len(logger.acked),
        "lost_acked": len(lost),
        "lag": result["lag"],
        "rejoin_a": rejoined,
    }
    # b holds commits a never had: it cannot simply follow; pg_rewind (the base backup is the fallback)
    again, res = xr_json(st, "dr", "rejoin", "b")
    assert again["primary"] == "a" and again["method"] == "pg_rewind", again["steps"]
    FIGURES["async_back"]["rejoin_b"] = again
    print("\nDR figures (async, fail back):", json.dumps(FIGURES["async_back"]))
    # the rewound b holds none of the lost writes: it is a's copy again
    from mlflow import MlflowClient

    steps = {m.step for m in MlflowClient(st.cfg.region("b").mlflow_url).get_metric_history(logger.run_id, "load")}
    assert not steps & set(lost)
    verify = xr(st, "dr", "verify", "--json")
    report = json.loads(verify.stdout)
    assert report["replication"][0]["state"] == "streaming", report
    assert nodes.load_state(st.home)["fenced"] == []


def test_failover_refuses_a_fenced_or_primary_target(async_stack):
    st = async_stack
    res = xr(st, "dr", "failover", "--to", "a")
    assert res.returncode == 2 and "already the primary" in res.stderr
