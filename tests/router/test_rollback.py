"""Blue/green under load: a good version replaces the old one after its bake window; a version that
fails under traffic (5xx, MLflow's 400 for a crashing model, or too slow) is switched back at once and
the registry rolled back with the reason; a version that cannot pass its smoke test never takes
traffic; client mistakes never roll a good version back; a restarted HAProxy gets the state back."""

from __future__ import annotations

import json
import time

import pytest
import requests

from xregion import events
from xregion.infra.embedded.supervisor import Supervisor
from xregion.plugins import registry_client
from xregion.plugins.registry_store import TRANSITION_TAG

from .helpers import Load

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def serving_versions(home) -> dict[str, str]:
    return {s.name: s.env.get("XREGION_SERVING_VERSION") for s in Supervisor(home).known() if s.component == "serving"}


def production(serving) -> str:
    return str(registry_client.production_version(serving.client(), serving.cfg, serving.model).version)


def release_good(serving, load, label: str) -> str:
    t0 = time.time()
    v = serving.new_version(label=label)
    serving.promote(v, reason=f"release {label}")
    switch = serving.wait_event("serving.switch", t0, to_version=v)
    passed = serving.wait_event("serving.bake_passed", t0, version=v)
    assert passed["errors"] == 0 and passed["probe_failures"] == 0 and switch["from_version"] != v
    assert serving_versions(serving.home) == {"a-serving": v, "b-serving": v}
    t1 = time.time()
    load.wait_count(20, t1)
    assert {r[2] for r in load.since(t1)} == {label}
    assert load.failures(since=t0) == [], load.failures(since=t0)[:10]
    return v


def serving_now(serving, load) -> tuple[str, str]:
    """The version in production and the label every answer carries now (one version serves)."""
    good, t = production(serving), time.time()
    load.wait_count(20, t)
    labels = {r[2] for r in load.since(t)}
    assert len(labels) == 1 and None not in labels, (good, labels, load.failures(since=t)[:5])
    assert serving_versions(serving.home) == {"a-serving": good, "b-serving": good}
    return good, labels.pop()


@pytest.mark.parametrize(
    "config, why",
    [
        ({"fail": True, "fail_after": 2}, "error rate|probes"),  # 500s once traffic arrives
        ({"fail": "raise", "fail_after": 2}, "probes"),  # MLflow's 400 for a crashing model
        ({"slow_ms": 1500}, "p99 latency|probes"),
    ],  # answers, too slowly
)
def test_a_version_failing_under_traffic_is_rolled_back(serving, config, why):
    cl = serving.client()
    with Load(serving.frontend, threads=1, max_s=600) as load:
        good, label = serving_now(serving, load)  # the version in production is the good one to go back to
        t2 = time.time()
        bad = serving.new_version(label="bad", **config)
        serving.promote(bad, reason="release bad")
        sw = serving.wait_event("serving.switch", t2, to_version=bad)
        rb = serving.wait_event("serving.rollback", t2, from_version=bad)
        assert rb["to_version"] == good and rb["registry_error"] is None, rb
        assert any(w in rb["reason"] for w in why.split("|")), rb["reason"]
        assert rb["switched_back_at"] >= sw["switched_at"]
        assert not [e for e in events.read(serving.home, kind="serving.bake_passed", since=t2) if e["version"] == bad]
        mv_good, mv_bad = cl.get_model_version(serving.model, good), cl.get_model_version(serving.model, bad)
        assert mv_good.current_stage == "Production" and serving.cfg.registry.production_alias in mv_good.aliases
        assert mv_bad.current_stage == "Archived" and not mv_bad.aliases
        back = [json.loads(v) for k, v in sorted(mv_good.tags.items()) if k.startswith(TRANSITION_TAG)][-2:]
        assert any(t["who"] == "xregion-router" for t in back), back
        t3 = time.time()
        load.wait_count(20, t3)
        assert load.failures(since=t3) == [] and {r[2] for r in load.since(t3)} == {label}
        assert set(serving_versions(serving.home)) == {"a-serving", "b-serving"}  # the bad servers stopped
    time.sleep(2)  # nobody re-deploys the rolled-back version
    assert serving_versions(serving.home) == {"a-serving": good, "b-serving": good}


@pytest.mark.parametrize("example, expect", [(True, "HTTP 500"), (False, "cannot run")])
def test_a_version_that_cannot_pass_its_smoke_test_never_takes_traffic(serving, example, expect):
    """The new servers answer the version's own serving input example, or the switch is abandoned
    and the registry rolled back; a version without an example is blocked, never waved through."""
    cl = serving.client()
    current = production(serving)
    with Load(serving.frontend, threads=1, max_s=600) as load:
        t0 = time.time()
        bad = serving.new_version(fail=True, label="bad-example", example=example)
        serving.promote(bad, reason="release a version that cannot be smoke-tested")
        failed = serving.wait_event("serving.switch_failed", t0, version=bad)
        rb = serving.wait_event("serving.rollback", t0, from_version=bad)
        assert "smoke test" in rb["reason"] and expect in failed["error"], (failed, rb)
        assert rb["to_version"] == current and rb["switched_at"] is None, rb
        assert all(e["to_version"] != bad for e in events.read(serving.home, kind="serving.switch", since=t0))
        mv = cl.get_model_version(serving.model, current)
        assert mv.current_stage == "Production" and serving.cfg.registry.production_alias in mv.aliases
        load.wait_count(10, time.time())
        assert load.failures(since=t0) == [], load.failures(since=t0)[:10]


def test_client_mistakes_during_the_bake_window_never_roll_back(serving):
    """An attacker's junk (no Content-Type, bad JSON, a wrong schema) is the client's 4xx: the new
    version bakes and stays."""
    url = f"{serving.frontend}/invocations"
    junk = [
        dict(data="{not json", headers={"Content-Type": "application/json"}),
        dict(data='{"dataframe_records": [{"user_id": 3}]}'),  # no Content-Type at all
        dict(json={"dataframe_records": [{"user": 3}]}),
        dict(json={"rows": [1]}),
    ]
    t0 = time.time()
    v = serving.new_version(label="baked-under-attack")
    serving.promote(v, reason="release under attack")
    serving.wait_event("serving.switch", t0, to_version=v)
    codes = set()
    while not events.read(serving.home, kind="serving.bake_passed", since=t0):
        for kwargs in junk:
            codes.add(requests.post(url, timeout=30, **kwargs).status_code)
        assert not events.read(serving.home, kind="serving.rollback", since=t0)
        assert time.time() < t0 + 300
    assert codes and all(400 <= c < 500 for c in codes), codes
    assert production(serving) == v


def test_a_restarted_haproxy_serves_the_current_version_within_seconds(serving):
    """After a switch, HAProxy killed and restarted: the router re-applies its state (the serving
    colour and its servers), so the front door answers 200 again at once, not 503."""
    with Load(serving.frontend, threads=1, max_s=600) as load:
        v = release_good(serving, load, f"before-restart-{time.time_ns()}")
    sup = Supervisor(serving.home)
    svc = next(s for s in sup.known() if s.name == "haproxy")
    t0 = time.time()
    sup.fault("kill", [svc])
    sup.fault("restart", [svc])
    ok_at = None
    while ok_at is None and time.time() < t0 + 30:
        r = requests.post(
            f"{serving.frontend}/invocations", json={"dataframe_records": [{"user_id": 3, "k": 10}]}, timeout=10
        )
        ok_at = time.time() if r.status_code == 200 else None
        time.sleep(0.05)
    assert ok_at is not None, "the front door did not serve within 30 s of the restart"
    assert r.json()["predictions"][0]["label"].startswith("before-restart"), r.text
    assert production(serving) == v
