"""MLflow's artifact-repository behaviours against ``xregion://``, on the real two-region stack."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from xregion.store import RegionStore, sha256_file

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


@pytest.fixture
def repo(stack):
    root = f"tests/{uuid.uuid4().hex}"
    return get_artifact_repository(f"xregion:///{root}"), root


def copies(stack, key):
    """The (size, content sha256) of the object in every region."""
    out = {}
    for r in stack.cfg.regions:
        store = RegionStore(r)
        info = store.stat(key)
        out[r.name] = None if info is None else (info.size, hashlib.sha256(store.get_bytes(key)).hexdigest())
    return out


def test_plugin_is_found_by_entry_point(repo):
    from xregion.plugins.artifact_repo import XRegionArtifactRepository

    assert isinstance(repo[0], XRegionArtifactRepository)


def test_log_artifact_lands_in_every_region(stack, repo, tmp_path):
    r, root = repo
    f = tmp_path / "model.txt"
    f.write_text("weights")
    r.log_artifact(str(f))
    r.log_artifact(str(f), "sub/dir")
    digest = hashlib.sha256(b"weights").hexdigest()
    for key in (f"{root}/model.txt", f"{root}/sub/dir/model.txt"):
        assert copies(stack, key) == {"a": (7, digest), "b": (7, digest)}


def test_nested_log_artifacts_list_and_download(stack, repo, tmp_path):
    r, root = repo
    src = tmp_path / "src"
    (src / "deep" / "er").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "deep" / "mid.txt").write_text("mid")
    (src / "deep" / "er" / "leaf.txt").write_text("leaf")
    (src / "empty.bin").write_bytes(b"")
    (src / "deep" / "naïve name é.txt").write_text("unicode")
    r.log_artifacts(str(src), "bundle")

    assert [(f.path, f.is_dir) for f in r.list_artifacts()] == [("bundle", True)]
    listed = {(f.path, f.is_dir, f.file_size) for f in r.list_artifacts("bundle")}
    assert listed == {("bundle/deep", True, None), ("bundle/top.txt", False, 3), ("bundle/empty.bin", False, 0)}
    nested = {f.path for f in r.list_artifacts("bundle/deep")}
    assert nested == {"bundle/deep/er", "bundle/deep/mid.txt", "bundle/deep/naïve name é.txt"}
    assert r.list_artifacts("bundle/top.txt") == []  # MLflow convention: a file lists as empty

    for d in ("one", "tree"):
        (tmp_path / d).mkdir()
    one = Path(r.download_artifacts("bundle/deep/er/leaf.txt", str(tmp_path / "one")))
    assert one.read_text() == "leaf"
    tree = Path(r.download_artifacts("bundle", str(tmp_path / "tree")))
    got = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert got == ["deep/er/leaf.txt", "deep/mid.txt", "deep/naïve name é.txt", "empty.bin", "top.txt"]
    assert (tree / "empty.bin").read_bytes() == b""
    assert copies(stack, f"{root}/bundle/deep/naïve name é.txt")["b"][0] == len("unicode")


def test_delete_reaches_every_region(stack, repo, tmp_path):
    r, root = repo
    (tmp_path / "x").mkdir()
    for name in ("keep.txt", "gone.txt"):
        (tmp_path / "x" / name).write_text(name)
    (tmp_path / "gone.txt2").write_text("prefix sibling")
    r.log_artifacts(str(tmp_path / "x"), "d")
    r.log_artifact(str(tmp_path / "gone.txt2"), "d")
    r.delete_artifacts("d/gone.txt")
    assert copies(stack, f"{root}/d/gone.txt") == {"a": None, "b": None}
    assert copies(stack, f"{root}/d/gone.txt2")["b"] is not None  # a sibling with the same prefix stays
    r.delete_artifacts("d")
    assert r.list_artifacts() == []
    for reg in stack.cfg.regions:
        assert list(RegionStore(reg).list(root)) == []


def test_64_mib_file_streams_through_multipart(stack, repo, tmp_path, monkeypatch):
    monkeypatch.setenv("XREGION_MULTIPART_THRESHOLD_MIB", "16")  # above it: 8 MiB parts (default 64: one request)
    r, root = repo
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    digest = sha256_file(big)
    r.log_artifact(str(big))
    for reg in stack.cfg.regions:
        info = RegionStore(reg).stat(f"{root}/big.bin")
        assert info.size == 64 << 20 and info.sha256 == digest
        assert "-" in info.etag  # a multipart ETag: the file was never sent as one body
    out = Path(r.download_artifacts("big.bin", str(tmp_path)))
    assert sha256_file(out) == digest


def test_bad_uri_is_refused_with_a_clear_error(stack):
    with pytest.raises(MlflowException, match="no host"):
        get_artifact_repository("xregion://bucket/path")


def test_missing_artifact_is_resource_does_not_exist(repo, tmp_path):
    r, _ = repo
    with pytest.raises(MlflowException) as exc:
        r.download_artifacts("nope.txt", str(tmp_path))
    assert "nope.txt" in str(exc.value)
