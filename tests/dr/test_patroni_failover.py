"""Patroni runs the database (synchronous mode, the embedded default): the loss of the primary's
node is survived with no command and no acknowledged write lost; the old primary comes back as a
replica that refuses writes; commanded failover and switchover go through Patroni's REST API; the
loss of the only standby does not stop writes (synchronous_mode, not strict).

Own stack (destructive). Figures (detection, promotion, command times) are printed, not asserted.
"""

from __future__ import annotations

import json
import time

import psutil
import psycopg2
import pytest

from tests.dr.helpers import MetricLogger, quick_http
from tests.stacks import mlflow_http, xr, xr_json
from xregion.dr.nodes import streams_by_its_own_word, view
from xregion.infra.embedded import patroni, postgres
from xregion.infra.embedded.supervisor import Supervisor

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what} not within {timeout:.0f}s")


def node_processes(st, region: str) -> list[psutil.Process]:
    """Live Patroni and Postgres processes that work on ``region``'s data directory or config."""
    marks = (str(postgres.node_dir(st.home, region)), str(patroni.config_path(st.home, region)))
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(m in cmd for m in marks):
                out.append(p)
        except psutil.Error:
            continue
    return out


def direct_write(st, region: str) -> str:
    """A write straight to one node's port, bypassing the multi-host URI: 'accepted' or why not."""
    try:
        with postgres.connection(st.cfg, st.home, st.cfg.region(region), "dr", "postgres") as conn:
            with conn.cursor() as cur:
                cur.execute("create temporary table probe (x int)")
        return "accepted"
    except psycopg2.errors.ReadOnlySqlTransaction:
        return "read-only"


def test_primary_loss_is_survived_without_a_command(sync_stack, monkeypatch):
    st = sync_stack
    quick_http(monkeypatch)
    sup = Supervisor(st.home)
    assert view(st.cfg).leader == "a" and view(st.cfg).sync_standbys == ["b"]
    with MetricLogger(st.cfg.region("b").mlflow_url) as logger:
        assert logger.wait_acks(30) >= 30, f"no load before the fault ({logger.failures} failures)"
        node = next(s for s in sup.known() if s.name == "a-patroni")
        assert sup.fault("kill", [node]) == ["a-patroni"]
        t_kill = time.time()
        # kill -9 of the node is the host's loss: Patroni and its Postgres are gone, nothing left
        assert node_processes(st, "a") == []
        leader = wait_for(lambda: view(st.cfg).leader == "b" and time.time(), 90, "b taking the leader lock")
        assert logger.wait_acks(20, after=t_kill, timeout=120) >= 20, f"no writes after ({logger.failures} failures)"
        first = logger.first_ack_sent_after(t_kill)
    lost = logger.missing(st.cfg.region("b").mlflow_url)
    print(
        "\nPatroni failover figures:",
        json.dumps(
            {
                "lock_taken_s": round(leader - t_kill, 3),
                "first_write_s": round(first - t_kill, 3),
                "acked": len(logger.acked),
                "lost": len(lost),
            }
        ),
    )
    assert lost == []  # synchronous mode: Patroni promotes only the synchronous standby


def test_old_primary_rejoins_as_a_replica_that_refuses_writes(sync_stack):
    st = sync_stack
    rejoined, res = xr_json(st, "dr", "rejoin", "a")
    assert rejoined["primary"] == "b" and rejoined["method"] in ("pg_rewind", "follow", "reinitialize"), res.stderr
    v = view(st.cfg)
    assert v.member("a").state == "streaming" and v.member("a").role in ("replica", "sync_standby")
    assert direct_write(st, "a") == "read-only"
    assert direct_write(st, "b") == "accepted"
    status, _ = xr_json(st, "dr", "status")
    assert status["leader"] == "b" and {m["name"]: m["state"] for m in status["members"]} == {
        "a": "streaming",
        "b": "running",
    }
    assert all(e["healthy"] for e in status["etcd"].values())


def test_commanded_failover_and_switchover(sync_stack, monkeypatch):
    st = sync_stack
    wait_for(lambda: view(st.cfg).sync_standbys == ["a"], 60, "a as the synchronous standby")
    quick_http(monkeypatch)
    with MetricLogger(st.cfg.region("a").mlflow_url) as logger:
        assert logger.wait_acks(20) >= 20
        fo, _ = xr_json(st, "dr", "failover", "--to", "a")
        assert fo["from"] == "b" and fo["to"] == "a" and fo["ok"], fo
        assert view(st.cfg).leader == "a"
        wait_for(lambda: view(st.cfg).member("b").state == "streaming", 120, "b following a")
        # no wait for b to become the synchronous standby: the command waits for it itself
        sw, _ = xr_json(st, "dr", "switchover", "--to", "b")
        assert sw["from"] == "a" and sw["to"] == "b" and sw["old_primary_following"] and sw["ok"], sw
        t_done = time.time()
        assert logger.wait_acks(20, after=t_done) >= 20
    assert logger.missing(st.cfg.region("a").mlflow_url) == []
    print(
        "\ncommanded figures:",
        json.dumps({k: (fo[k], sw[k]) for k in ("command_seconds", "rto_seconds")}),
    )
    # refused: a failover to the node that already leads
    res = xr(st, "dr", "failover", "--to", "b", "--json")
    assert res.returncode == 2 and "already the primary" in res.stderr


def test_losing_the_only_standby_does_not_stop_writes(sync_stack, monkeypatch):
    """synchronous_mode without strict: Patroni drops the lost standby from synchronous_standby_names,
    so the primary writes on alone (RPO > 0 only if it is lost too before the standby returns)."""
    import requests

    st = sync_stack
    sup = Supervisor(st.home)
    leader = view(st.cfg).leader
    standby = next(r.name for r in st.cfg.regions if r.name != leader)
    node = next(s for s in sup.known() if s.name == f"{standby}-patroni")
    url = st.cfg.region(leader).mlflow_url
    sup.fault("kill", [node])
    try:

        def writes() -> bool:
            try:
                r = mlflow_http().post(
                    f"{url}/api/2.0/mlflow/experiments/create", json={"name": f"alone-{time.time_ns()}"}, timeout=5
                )
                return r.status_code == 200
            except requests.RequestException:
                return False

        wait_for(writes, 60, "a write with the standby lost")
        assert view(st.cfg).sync_standbys == []
    finally:
        sup.start(node)
    wait_for(lambda: view(st.cfg).sync_standbys == [standby], 120, f"{standby} back as the synchronous standby")


def test_rejoin_right_after_a_kill_starts_the_node_instead_of_trusting_its_stale_state(sync_stack):
    """A killed node's member key in etcd (its last state: "streaming") outlives it until the ttl
    expires; `dr rejoin` (and `region restore`) must start the node, not report it already streaming."""
    st = sync_stack
    sup = Supervisor(st.home)
    leader = view(st.cfg).leader
    standby = next(r.name for r in st.cfg.regions if r.name != leader)
    node = next(s for s in sup.known() if s.name == f"{standby}-patroni")
    sup.fault("kill", [node])
    assert view(st.cfg).member(standby).state == "streaming"  # the stale key: the trap is set
    report, _ = xr_json(st, "dr", "verify", ok=False)
    assert not report["ok"] and any(f"standby {standby}" in p for p in report["problems"]), report["problems"]
    rejoined, res = xr_json(st, "dr", "rejoin", standby)
    assert rejoined["method"] != "already streaming", (rejoined, res.stderr[-2000:])
    assert sup.state(node.name) == "running" and streams_by_its_own_word(st.cfg.region(standby))
    wait_for(lambda: view(st.cfg).sync_standbys == [standby], 120, f"{standby} back as the synchronous standby")
