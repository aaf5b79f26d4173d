"""Synchronous replication (synchronous_standby_names): a kill -9 of the primary under load loses
no acknowledged write; a planned switchover loses nothing either."""

from __future__ import annotations

import json
import time

import psycopg2
import pytest

from tests.dr.conftest import xr_json
from tests.dr.helpers import MetricLogger, quick_http
from tests.dr.test_failover_async import kill_under_load_and_fail_over
from xregion.infra.embedded.postgres import superuser_dsn

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def _sync_names(region) -> str:
    with psycopg2.connect(superuser_dsn(region)) as conn, conn.cursor() as cur:
        cur.execute("show synchronous_standby_names")
        return cur.fetchone()[0]


def test_sync_failover_loses_no_acknowledged_write(sync_stack, monkeypatch):
    st = sync_stack
    assert _sync_names(st.cfg.region("a")) == 'ANY 1 ("b")'
    result, logger, client_rto = kill_under_load_and_fail_over(st, "a", "b", monkeypatch)
    assert result["ok"] and result["replication"] == "sync", result
    lost = logger.missing(st.cfg.region("b").mlflow_url)
    print(
        "\nDR figures (sync):",
        json.dumps(
            {
                "rto_seconds": result["rto_seconds"],
                "command_seconds": result["command_seconds"],
                "database_writable_seconds": result["database_writable_seconds"],
                "client_rto_seconds": round(client_rto, 3),
                "acked": len(logger.acked),
                "lost_acked": len(lost),
                "lag": result["lag"],
            }
        ),
    )
    assert lost == []
    # b has no standby until a rejoins: it must not wait for one
    assert result["synchronous_standby_names"] == "" and _sync_names(st.cfg.region("b")) == ""


def test_rejoin_restores_synchronous_mode_and_switchover_is_lossless(sync_stack, monkeypatch):
    st = sync_stack
    rejoined, _ = xr_json(st, "dr", "rejoin", "a")
    assert rejoined["synchronous_standby_names"] == 'ANY 1 ("a")'
    status, _ = xr_json(st, "dr", "status")
    assert status["replication"][0]["sync_state"] in ("sync", "quorum")

    quick_http(monkeypatch)
    with MetricLogger(st.cfg.region("a").mlflow_url) as logger:
        assert logger.wait_acks(30) >= 30
        result, _ = xr_json(st, "dr", "switchover", "--to", "a")
        t_done = time.time()
        assert logger.wait_acks(20, after=t_done) >= 20
    assert result["from"] == "b" and result["to"] == "a" and result["lost_bytes"] == 0
    assert logger.missing(st.cfg.region("a").mlflow_url) == []
    print(
        "\nDR figures (switchover):", json.dumps({k: result[k] for k in ("write_downtime_seconds", "command_seconds")})
    )
    status, _ = xr_json(st, "dr", "status")
    assert status["primary"] == "a" and status["nodes"]["b"]["role"] == "standby"
    assert status["replication"][0]["state"] == "streaming"


def test_sync_mode_blocks_commits_while_the_only_standby_is_down(sync_stack, monkeypatch):
    """The availability trade-off of synchronous mode: no standby, no acknowledged commit."""
    import requests

    from xregion.infra.embedded import postgres
    from xregion.infra.embedded.supervisor import Supervisor

    st = sync_stack
    sup = Supervisor(st.home)
    b = postgres.service(st.cfg, st.cfg.region("b"), st.home)
    url = st.cfg.region("a").mlflow_url
    sup.stop(b.name)
    try:
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(
                f"{url}/api/2.0/mlflow/experiments/create", json={"name": f"blocked-{time.time_ns()}"}, timeout=4
            )
    finally:
        sup.start(b)
    # the standby back, commits flow again
    r = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": f"flows-{time.time_ns()}"}, timeout=30)
    assert r.status_code == 200, r.text
