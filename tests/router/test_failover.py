"""Region loss under continuous requests through HAProxy: kill -9 of region a's model server loses
no request and is recorded as serving.server_down; SIGSTOP is detected within the health-check
budget, and only the requests already on the frozen server fail (they are never replayed: a slow
request must not be retried in every region)."""

from __future__ import annotations

import time

import pytest

from xregion.infra.embedded.supervisor import Supervisor
from xregion.infra.serving import control

from .helpers import POLICY, TUNING, Load

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def service(home, name):
    return next(s for s in Supervisor(home).known() if s.name == name)


def restore(serving, svc, since):
    Supervisor(serving.home).fault("thaw", [svc])
    if Supervisor(serving.home).state(svc.name) != "running":
        Supervisor(serving.home).fault("restart", [svc])
    serving.wait_event("serving.server_up", since, service=svc.name)


def test_kill_9_of_a_region_loses_no_request(serving):
    svc = service(serving.home, "a-serving")
    t0 = time.time()
    with Load(serving.frontend, threads=2) as load:
        load.wait_count(50, t0)
        t_kill = time.time()
        Supervisor(serving.home).fault("kill", [svc])
        ev = serving.wait_event("serving.server_down", t_kill, timeout=60, service="a-serving")
        after = time.time()
        load.wait_count(100, after)  # region b answers what region a would have
    try:
        # a request is retried on region b unless the dying server had already begun its answer: a
        # response cut mid-stream by the kill (at most one per client, at the kill) cannot be replayed
        cut = [f for f in load.failures() if f[1] == "IncompleteRead" and abs(f[0] - t_kill) < 2]
        assert len(cut) <= 2 and [f for f in load.failures() if f not in cut] == [], load.failures()[:10]
        assert len(load.since(t_kill)) >= 100
        # marked down by a health check's refused connection (L4CON), or by the traffic's own (HANA:
        # observe layer4), whichever came first
        assert ev["region"] == "a" and ev["fault"] == "fault.kill"
        assert ev["check_status"].startswith("L4") or ev["check_status"] == "HANA", ev
        assert 0 < ev["detection_s"] < 60
    finally:
        restore(serving, svc, t_kill)
    # region a is back in rotation: both regions answer again
    status = {
        (s["backend"], s["server"]): s["status"] for s in control.serving_status(serving.cfg, serving.home)["servers"]
    }
    assert status[("bk_blue", "a")] == "UP" and status[("bk_blue", "b")] == "UP"


def test_sigstop_is_detected_within_the_health_check_budget(serving):
    svc = service(serving.home, "a-serving")
    # HAProxy's worst case (fall x (inter + check timeout)) plus the router's stats poll, plus a
    # generous slack for two CPU cores shared with other tests: a bound, not a timing threshold
    budget = TUNING.detection_budget_s() + POLICY.stats_interval_s
    slack = 10.0
    t0 = time.time()
    with Load(serving.frontend, threads=2) as load:
        load.wait_count(50, t0)
        t_freeze = time.time()
        Supervisor(serving.home).fault("freeze", [svc])
        try:
            ev = serving.wait_event("serving.server_down", t_freeze, timeout=60, service="a-serving")
            after = time.time()
            load.wait_count(50, after)
        finally:
            restore(serving, svc, t_freeze)
    assert ev["fault"] == "fault.freeze" and ev["check_status"] in ("L7TOUT", "L4TOUT"), ev
    assert ev["detection_s"] <= budget + slack, (ev["detection_s"], budget)
    # only what was on the frozen server when it froze fails, at most one request per client, at
    # the server timeout: a 504 if the server froze before its answer began, or a response cut
    # mid-stream (IncompleteRead) if it froze between the headers and the body, which HAProxy
    # can neither finish nor replay. Every request after HAProxy took it out of rotation succeeds.
    failed = load.failures()
    assert len(failed) <= 2 and all(f[1] in (504, "IncompleteRead") for f in failed), failed
    assert all(f[0] <= ev["detected_at"] + TUNING.server_timeout_ms / 1000 + 1 for f in failed), (failed, ev)
