"""Blue/green under load: a good version replaces the old one after its bake window; a version
that fails its requests (5xx, or MLflow's 400 for a crashing model) is switched back at once and
the registry rolled back with the reason."""

from __future__ import annotations

import json
import time

import pytest
from xregion.infra.embedded.supervisor import Supervisor
from xregion.plugins import registry_client
from xregion.plugins.registry_store import TRANSITION_TAG

from xregion import events

from .conftest import Load

pytestmark = pytest.mark.timeout(900)


def serving_versions(home) -> dict[str, str]:
    return {s.name: s.env.get("XREGION_SERVING_VERSION") for s in Supervisor(home).known() if s.component == "serving"}


def test_switch_then_automatic_rollback(serving):
    cl = serving.client()
    with Load(serving.frontend, threads=1, max_s=600) as load:
        # a good version: switch, bake, the old servers stop and the new ones are <region>-serving
        t0 = time.time()
        v2 = serving.new_version(label="v2")
        serving.promote(v2, reason="release v2")
        switch = serving.wait_event("switch", t0, to_version=v2)
        passed = serving.wait_event("bake.passed", t0, version=v2)
        assert passed["errors"] == 0
        assert serving_versions(serving.home) == {"a-serving": v2, "b-serving": v2}
        t1 = time.time()
        load.wait_count(20, t1)
        assert {r[2] for r in load.since(t1)} == {"v2"}
        assert load.failures(since=t0) == [], load.failures(since=t0)[:10]
        assert switch["from_version"] != v2

        # versions that fail their requests: rolled back inside the bake window
        for fail, why in ((True, "error rate"), ("raise", "4xx rate")):
            t2 = time.time()
            bad = serving.new_version(fail=fail, label="bad")
            serving.promote(bad, reason="release bad")
            sw = serving.wait_event("switch", t2, to_version=bad)
            rb = serving.wait_event("rollback", t2, from_version=bad)
            assert rb["to_version"] == v2 and why in rb["reason"] and rb["registry_error"] is None, rb
            assert rb["switched_back_at"] >= sw["switched_at"]
            # judged inside the bake window: it never passed
            assert not [e for e in events.read(serving.home, kind="bake.passed", since=t2) if e["version"] == bad]
            mv2, mvb = cl.get_model_version(serving.model, v2), cl.get_model_version(serving.model, bad)
            assert mv2.current_stage == "Production" and serving.cfg.registry.production_alias in mv2.aliases
            assert mvb.current_stage == "Archived" and not mvb.aliases
            back = [json.loads(v) for k, v in sorted(mv2.tags.items()) if k.startswith(TRANSITION_TAG)][-2:]
            assert any(why in t["reason"] and t["who"] == "xregion-router" for t in back), back
            t3 = time.time()
            load.wait_count(20, t3)
            assert load.failures(since=t3) == [] and {r[2] for r in load.since(t3)} == {"v2"}
            assert set(serving_versions(serving.home)) == {"a-serving", "b-serving"}  # the -next servers stopped
    # nobody re-deploys the rolled-back version: production is v2 and stays so
    time.sleep(2)
    assert serving_versions(serving.home) == {"a-serving": v2, "b-serving": v2}


def test_a_version_that_fails_its_own_input_example_never_takes_traffic(serving):
    """The smoke test before a switch: the new servers answer the version's serving input example
    or the switch is abandoned and the registry rolled back; clients see nothing of it."""
    cl = serving.client()
    current = registry_client.production_version(cl, serving.cfg, serving.model)
    with Load(serving.frontend, threads=1, max_s=600) as load:
        t0 = time.time()
        bad = serving.new_version(fail=True, label="bad-example", example=True)
        serving.promote(bad, reason="release a broken version")
        failed = serving.wait_event("switch.failed", t0, version=bad)
        rb = serving.wait_event("rollback", t0, from_version=bad)
        assert "smoke test" in rb["reason"] and "HTTP 500" in failed["error"], (failed, rb)
        assert rb.get("to_version") == str(current.version) and rb.get("switched_at") is None, rb
        switches = [e for e in events.read(serving.home, kind="switch", since=t0) if e["kind"] == "switch"]
        assert all(e["to_version"] != bad for e in switches), switches
        mv = cl.get_model_version(serving.model, str(current.version))
        assert mv.current_stage == "Production" and serving.cfg.registry.production_alias in mv.aliases
        load.wait_count(10, time.time())
        assert load.failures(since=t0) == [], load.failures(since=t0)[:10]
