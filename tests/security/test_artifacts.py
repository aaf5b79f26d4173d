"""Security issue 14: promoted artifacts are immutable.

While a model version is in production (stage or alias), nobody can overwrite or delete its
artifacts through any region's MLflow artifact proxy (HTTP 409) nor through a direct xregion://
repository; the bytes stay the same in every region. Once the version leaves production they can
be deleted again. A repository's root, the bucket's root and the artifact store's root are never
deleted whole, and xregion's own ``_xregion/`` namespace (the protection markers) cannot be
written or deleted through the artifact API at all."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from tests.registry.helpers import client, log_tiny, unique
from tests.stacks import mlflow_http
from xregion.plugins import gate, registry_client
from xregion.store import RegionStore
from xregion.uris import key_prefix

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]
API = "/api/2.0/mlflow-artifacts/artifacts/"


def version_prefix(cl, cfg, name: str, version: str) -> str:
    location = cl.get_model_version_download_uri(name, version)
    if location.startswith("models:/m-"):  # an MLflow 3 logged model: its own artifact location
        location = cl.get_logged_model(location.removeprefix("models:/").split("/")[0]).artifact_location
    return key_prefix(location, cfg)


def contents(stack, prefix: str) -> dict[str, dict[str, str]]:
    """Per region, every object under ``prefix`` and the hash of its bytes."""
    out = {}
    for r in stack.cfg.regions:
        store = RegionStore(r)
        out[r.name] = {o.key: hashlib.sha256(store.get_bytes(o.key)).hexdigest() for o in store.list(prefix + "/")}
    return out


def proxied(stack, key: str) -> str:
    """The artifact proxy's path of an object key (relative to the artifacts destination)."""
    return key.removeprefix(stack.cfg.artifacts.prefix + "/")


def servers(stack) -> list[str]:
    return [r.mlflow_url for r in stack.cfg.regions]


@pytest.fixture(scope="module")
def promoted(stack):
    """A tiny model version in production (stage and alias), and its artifacts' prefix."""
    cfg = stack.cfg
    url = cfg.region("a").mlflow_url
    cl = client(url)
    name = unique("immutable")
    version = log_tiny(url, name, label="v1")
    registry_client.promote(cl, cfg, name, version, reason="security test")
    return cl, name, version, version_prefix(cl, cfg, name, version)


def test_deletes_and_overwrites_of_a_production_version_are_refused_in_every_region(stack, promoted):
    cl, name, version, prefix = promoted
    before = contents(stack, prefix)
    assert before["a"] and before["a"] == before["b"]
    mlmodel = next(k for k in before["a"] if k.endswith("/MLmodel"))
    parent = prefix.rsplit("/", 1)[0]  # deleting a directory above the version would delete it too
    for url in servers(stack):
        for key in (mlmodel, next(iter(before["a"]))):
            resp = mlflow_http().put(url + API + proxied(stack, key), data=b"tampered", timeout=60)
            assert resp.status_code == 409, resp.text
            assert resp.json()["error_code"] == "RESOURCE_CONFLICT" and "immutable" in resp.json()["message"]
        resp = mlflow_http().put(url + API + proxied(stack, prefix + "/new-file.txt"), data=b"added", timeout=60)
        assert resp.status_code == 409, resp.text  # nothing is added to a promoted version either
        for key in (mlmodel, prefix, parent):
            resp = mlflow_http().delete(url + API + proxied(stack, key), timeout=60)
            assert resp.status_code == 409, (key, resp.text)
            assert resp.json()["error_code"] == "RESOURCE_CONFLICT"
    assert contents(stack, prefix) == before  # the same bytes in every region
    # a client writing xregion:// directly is refused the same way
    direct = get_artifact_repository(f"xregion:///{prefix}")
    with pytest.raises(MlflowException) as err:
        direct.delete_artifacts("MLmodel")
    assert err.value.error_code == "RESOURCE_CONFLICT"
    # reads keep working
    assert (
        mlflow_http().get(stack.cfg.region("b").mlflow_url + API + proxied(stack, mlmodel), timeout=60).status_code
        == 200
    )


def test_an_object_beside_a_protected_prefix_is_fine(stack, promoted):
    _, _, _, prefix = promoted
    beside = proxied(stack, prefix + "-notes/readme.txt")
    for url in servers(stack):
        assert mlflow_http().put(url + API + beside, data=b"notes", timeout=60).status_code == 200
        assert mlflow_http().delete(url + API + beside, timeout=60).status_code == 200


def test_markers_are_read_at_every_call_never_cached(stack, tmp_path):
    """A promotion writes its marker before it verifies: a write racing it must see the marker."""
    prefix = f"{stack.cfg.artifacts.prefix}/race/{uuid.uuid4().hex}"
    path = proxied(stack, prefix + "/model.bin")
    url = stack.cfg.region("b").mlflow_url
    assert mlflow_http().put(url + API + path, data=b"first", timeout=60).status_code == 200
    model = unique("race")
    gate.protect(stack.cfg, model, "1", prefix)
    try:
        assert mlflow_http().put(url + API + path, data=b"second", timeout=60).status_code == 409
        assert mlflow_http().delete(url + API + path, timeout=60).status_code == 409
    finally:
        gate.unprotect(stack.cfg, model, "1")
    assert mlflow_http().delete(url + API + path, timeout=60).status_code == 200


def test_roots_are_never_deleted_whole(stack):
    for url in servers(stack):
        resp = mlflow_http().delete(url + API + "%2E", timeout=60)  # the artifact destination's root
        assert resp.status_code == 400, resp.text
        assert "root" in resp.json()["message"]
    for uri, path in [
        ("xregion:///", None),  # the bucket's root
        ("xregion:///", "."),
        ("xregion:///", stack.cfg.artifacts.prefix),  # the whole artifact store, from the bucket's root
        (f"xregion:///{stack.cfg.artifacts.prefix}", None),  # a repository's root
        (f"xregion:///{stack.cfg.artifacts.prefix}/some/run", ""),
    ]:
        with pytest.raises(MlflowException) as err:
            get_artifact_repository(uri).delete_artifacts(path)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "root" in err.value.message, (uri, path)
    assert RegionStore(stack.cfg.region("a")).stat  # the stack still answers (nothing was deleted)


def test_the_marker_namespace_cannot_be_written_or_deleted_through_the_artifact_api(stack, promoted, tmp_path):
    _, name, version, prefix = promoted
    marker = gate.marker_key(name, version)
    for r in stack.cfg.regions:
        assert RegionStore(r).get_bytes(marker).decode() == prefix
    root = get_artifact_repository("xregion:///")
    with pytest.raises(MlflowException) as err:
        root.delete_artifacts(marker)
    assert err.value.error_code == "PERMISSION_DENIED" and "_xregion/" in err.value.message
    with pytest.raises(MlflowException) as err:
        root.delete_artifacts("_xregion")
    assert err.value.error_code == "PERMISSION_DENIED"
    f = tmp_path / version
    f.write_text("some/other/prefix")
    with pytest.raises(MlflowException) as err:
        root.log_artifact(str(f), f"_xregion/protected/{name}")
    assert err.value.error_code == "PERMISSION_DENIED"
    for url in servers(stack):
        http = mlflow_http()
        for method in (http.put, http.delete):
            resp = method(url + API + f"_xregion/protected/{name}/{version}", timeout=60)
            assert resp.status_code == 403, resp.text
    for r in stack.cfg.regions:  # every marker is still there, unchanged
        assert RegionStore(r).get_bytes(marker).decode() == prefix


def test_delete_works_again_once_the_version_left_production(stack, promoted):  # last: v1 leaves production
    cl, name, v1, prefix = promoted
    cfg = stack.cfg
    url = cfg.region("a").mlflow_url
    v2 = log_tiny(url, name, label="v2")
    registry_client.promote(cl, cfg, name, v2, reason="v2 replaces v1")  # v1 archived, the alias moves
    mv = cl.get_model_version(name, v1)
    assert mv.current_stage == "Archived" and not mv.aliases
    keys = contents(stack, prefix)["a"]
    resp = mlflow_http().delete(cfg.region("b").mlflow_url + API + proxied(stack, prefix), timeout=60)
    assert resp.status_code == 200, resp.text
    assert contents(stack, prefix) == {r.name: {} for r in cfg.regions} and keys
    # v2 is production now: protected
    p2 = version_prefix(cl, cfg, name, v2)
    assert mlflow_http().delete(url + API + proxied(stack, p2), timeout=60).status_code == 409
