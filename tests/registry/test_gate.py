"""The replication gate inside `mlflow server`: promotion refused while a region lacks a copy,
through the Python client and the REST API of both regions' servers; accepted after resync;
transitions recorded on the version (UI-visible tags) and in the event log; rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from tests.stacks import mlflow_http
from xregion import events
from xregion.plugins import registry_client
from xregion.plugins.registry_store import HISTORY_TAG, TRANSITION_TAG
from xregion.store import RegionStore
from xregion.uris import key_prefix

from .helpers import client, log_tiny, unique

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]
XREGION = str(Path(sys.executable).with_name("xregion"))


def transitions(mv) -> list[dict]:
    return [json.loads(v) for k, v in sorted(mv.tags.items()) if k.startswith(TRANSITION_TAG)]


def test_promotion_refused_until_every_region_holds_every_artifact(stack):
    cfg = stack.cfg
    a, b = cfg.region("a"), cfg.region("b")
    name = unique("gate")
    version = log_tiny(a.mlflow_url, name)
    cl = client(a.mlflow_url)
    prefix = key_prefix(cl.get_model_version_download_uri(name, version), cfg)
    keys = sorted(o.key for o in RegionStore(a).list(prefix + "/"))
    assert any(k.endswith("/MLmodel") for k in keys), keys
    victim = next(k for k in keys if k.endswith("/MLmodel"))
    RegionStore(b).delete(victim)

    # 1. the Python client (REST to region a's server)
    with pytest.raises(MlflowException) as err:
        cl.transition_model_version_stage(name, version, "Production", archive_existing_versions=True)
    msg = err.value.message
    assert "region b" in msg and victim in msg and f"xregion replicate resync --prefix {prefix}" in msg, msg
    assert "region a:" not in msg  # region a holds everything
    with pytest.raises(MlflowException, match="refused"):
        cl.set_registered_model_alias(name, cfg.registry.production_alias, version)

    # 2. the REST API, on both regions' servers (the gate runs inside every server)
    for r in (a, b):
        resp = mlflow_http().post(
            f"{r.mlflow_url}/api/2.0/mlflow/model-versions/transition-stage",
            timeout=60,
            json={"name": name, "version": version, "stage": "Production", "archive_existing_versions": True},
        )
        assert resp.status_code == 409, resp.text
        body = resp.json()
        assert body["error_code"] == "RESOURCE_CONFLICT" and victim in body["message"], body
        resp = mlflow_http().post(
            f"{r.mlflow_url}/api/2.0/mlflow/registered-models/alias",
            timeout=60,
            json={"name": name, "alias": cfg.registry.production_alias, "version": version},
        )
        assert resp.status_code == 409, resp.text

    mv = cl.get_model_version(name, version)
    assert mv.current_stage == "None" and not mv.aliases
    assert not [t for t in transitions(mv) if t["to"] in ("Production", "@champion")]
    refused = events.read(stack.home, kind="registry.gate_refused")
    assert any(e["model"] == name and e["prefix"] == prefix for e in refused)

    # 3. the repair command the refusal names, then the same promotion goes through
    out = subprocess.run(
        [XREGION, "replicate", "resync", "--prefix", prefix],
        capture_output=True,
        text=True,
        env={**os.environ, **stack.env()},
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert RegionStore(b).stat(victim) is not None
    done = registry_client.promote(cl, cfg, name, version, reason="release 1", who="release-manager")
    assert done == {"model": name, "version": version, "stage": "Production", "alias": cfg.registry.production_alias}
    mv = cl.get_model_version(name, version)
    assert mv.current_stage == "Production" and cfg.registry.production_alias in mv.aliases
    recs = transitions(mv)
    stage_rec = next(t for t in recs if t["to"] == "Production")
    # with MLflow's auth on, "who" is the authenticated user (this test runs as admin), not the claim
    assert stage_rec["from"] == "None" and stage_rec["who"] == "admin" and stage_rec["reason"] == "release 1"
    assert stage_rec["when"] and stage_rec["via"].startswith("rest")
    assert any(t["to"] == f"@{cfg.registry.production_alias}" for t in recs)
    assert "xregion.reason" not in mv.tags and "xregion.actor" not in mv.tags  # consumed by the plugin
    promos = [e for e in events.read(stack.home, kind="registry.promotion") if e.get("model") == name]
    assert {e.get("stage") or "@" + e.get("alias") for e in promos} == {
        "Production",
        f"@{cfg.registry.production_alias}",
    }
    assert all(e["objects"] == len(keys) for e in promos)


def test_location_outside_the_replicated_store_is_refused(stack):
    url = stack.cfg.region("a").mlflow_url
    cl = client(url)
    name = unique("gate-outside")
    cl.create_registered_model(name)
    with pytest.raises(MlflowException) as err:  # refused when registered, not only when promoted
        cl.create_model_version(name, "s3://somewhere-else/model", run_id=None)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "not under the replicated artifacts prefix" in err.value.message
    # other stages are not gated
    version = log_tiny(url, name)
    assert cl.transition_model_version_stage(name, version, "Staging").current_stage == "Staging"


def test_rollback_puts_the_previous_version_back_and_archives_the_current(stack):
    cfg = stack.cfg
    url = cfg.region("b").mlflow_url  # any region's server writes (the database URI finds the primary)
    cl = client(url)
    name = unique("rollback")
    v1 = log_tiny(url, name, label="v1")
    v2 = log_tiny(url, name, label="v2")
    registry_client.promote(cl, cfg, name, v1)
    registry_client.promote(cl, cfg, name, v2)
    assert cl.get_model_version(name, v1).current_stage == "Archived"
    assert json.loads(cl.get_registered_model(name).tags[HISTORY_TAG]) == [v1, v2]

    out = subprocess.run(
        [XREGION, "rollback", name, "--reason", "p99 too high", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **stack.env(), "MLFLOW_TRACKING_URI": url},
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    done = json.loads(out.stdout)
    assert (done["from_version"], done["to_version"]) == (v2, v1)
    m1, m2 = cl.get_model_version(name, v1), cl.get_model_version(name, v2)
    assert m1.current_stage == "Production" and cfg.registry.production_alias in m1.aliases
    assert m2.current_stage == "Archived" and not m2.aliases
    back = [t for t in transitions(m1) if t["to"] == "Production"][-1]
    assert back["from"] == "Archived" and "p99 too high" in back["reason"] and f"from version {v2}" in back["reason"]
    assert any("p99 too high" in t["reason"] and t["to"] == "Archived" for t in transitions(m2))
    ev = [e for e in events.read(stack.home, kind="registry.rollback") if e.get("model") == name]
    assert ev and ev[-1]["to_version"] == v1 and "p99 too high" in ev[-1]["reason"]

    # a model with only one production version has nothing to go back to
    lone = unique("lone")
    v = log_tiny(url, lone)
    registry_client.promote(cl, cfg, lone, v)
    with pytest.raises(registry_client.RegistryError, match="no previous production version"):
        registry_client.rollback(cl, cfg, lone, reason="nothing to go back to")
