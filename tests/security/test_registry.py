"""The promotion gate, tried as an attacker would: production can only ever hold a version whose
artifacts verify in every region, and what serves cannot be deleted from under it."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from tests.registry.helpers import client, log_tiny, unique
from tests.stacks import mlflow_http
from xregion.plugins import registry_client
from xregion.store import RegionStore
from xregion.uris import key_prefix

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def promoted(stack):
    url = stack.cfg.region("a").mlflow_url
    name = unique("guard")
    v1, v2 = log_tiny(url, name, label="v1"), log_tiny(url, name, label="v2")
    cl = client(url)
    registry_client.promote(cl, stack.cfg, name, v1, reason="first")
    return cl, name, v1, v2


def test_a_source_outside_the_artifacts_prefix_is_refused(stack):
    """A version pointing at the database backups (or any other bucket path) would be served, and
    its objects downloadable through get-artifact: refused with 400 on every region's server."""
    name = unique("source")
    cl = client(stack.cfg.region("a").mlflow_url)
    cl.create_registered_model(name)
    for r in stack.cfg.regions:
        for source in ("xregion:///xregion-backups/latest", "s3://xregion-a/anything", "file:///etc"):
            resp = mlflow_http().post(
                f"{r.mlflow_url}/api/2.0/mlflow/model-versions/create",
                timeout=60,
                json={"name": name, "source": source},
            )
            # MLflow's own check refuses a local path first; ours refuses every other place
            why = "Invalid model version source" if source.startswith("file:") else "not under the replicated"
            assert resp.status_code == 400 and why in resp.text, resp.text
    assert cl.search_model_versions(f"name='{name}'") == []


def test_the_serving_version_cannot_be_deleted(stack):
    cl, name, v1, _ = promoted(stack)
    with pytest.raises(MlflowException, match="in production") as err:
        cl.delete_model_version(name, v1)
    assert err.value.get_http_status_code() == 409
    with pytest.raises(MlflowException, match="in production"):
        cl.delete_registered_model(name)
    assert cl.get_model_version(name, v1).current_stage == "Production"


def test_removing_the_alias_cannot_fall_back_to_an_unverified_version(stack):
    """Without @champion, serving follows the newest Production version: that one must verify too."""
    cfg = stack.cfg
    cl, name, v1, v2 = promoted(stack)
    # v2 is put in the production stage while it verifies, then one of its objects goes missing
    registry_client.promote(cl, cfg, name, v2, stage=cfg.registry.production_stage, reason="stage only")
    registry_client.promote(cl, cfg, name, v1, alias=cfg.registry.production_alias, reason="alias back on v1")
    prefix = key_prefix(cl.get_model_version_download_uri(name, v2), cfg)
    victim = next(o.key for o in RegionStore(cfg.region("b")).list(prefix + "/") if o.key.endswith("MLmodel"))
    RegionStore(cfg.region("b")).delete(victim)
    with pytest.raises(MlflowException, match="refused") as err:
        cl.delete_registered_model_alias(name, cfg.registry.production_alias)
    assert err.value.get_http_status_code() == 409 and victim in err.value.message
    assert cl.get_registered_model(name).aliases.get(cfg.registry.production_alias) == v1
