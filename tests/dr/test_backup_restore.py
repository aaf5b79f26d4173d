"""Backup, destroy the stack, restore into a new one: identical tables, ids and artifact hashes."""

from __future__ import annotations

import json
import time

import pytest
from mlflow import MlflowClient

from tests.dr.helpers import populate
from tests.stacks import acting_as, start_stack, stop_stack, xr, xr_json
from xregion.store import RegionStore

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def snapshot(cfg, info) -> dict:
    """What a user sees through MLflow: ids, params, metrics, tags, versions, stages, aliases."""
    c = MlflowClient(cfg.primary.mlflow_url, registry_uri=cfg.primary.mlflow_url)
    runs = {}
    for rid in info["runs"]:
        r = c.get_run(rid)
        runs[rid] = {
            "exp": r.info.experiment_id,
            "params": r.data.params,
            "metrics": r.data.metrics,
            "tags": {k: v for k, v in r.data.tags.items() if k == "purpose"},
            "status": r.info.status,
            "history": [(m.step, m.value) for m in c.get_metric_history(rid, "loss")],
        }
    model = c.get_registered_model(info["model"])
    versions = {
        v: (mv.current_stage, mv.run_id, mv.source)
        for v in info["versions"]
        for mv in [c.get_model_version(info["model"], v)]
    }
    return {
        "experiment": c.get_experiment(info["experiment"]).name,
        "runs": runs,
        "aliases": dict(model.aliases),
        "versions": versions,
    }


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    """A populated stack, backed up (verified, with a local copy), then destroyed."""
    st = start_stack("xregion-dr-bk-")
    acting = acting_as(st)
    acting.__enter__()
    try:
        info = populate(st.cfg, tmp_path_factory.mktemp("art"))
        before = snapshot(st.cfg, info)
        hashes = {
            o.key: RegionStore(st.cfg.region("a")).stat(o.key).sha256
            for o in RegionStore(st.cfg.region("a")).list(st.cfg.artifacts.prefix + "/")
        }
        local = tmp_path_factory.mktemp("backups")
        result, _ = xr_json(
            st, "dr", "backup", "--verify", "--include-artifacts", "--copy-to", str(local), "--retention", "2"
        )
        listed, _ = xr_json(st, "dr", "backups")
        # retention: three more backups, two kept
        for _ in range(2):
            xr_json(st, "dr", "backup", "--retention", "2")
        kept, _ = xr_json(st, "dr", "backups")
    finally:
        acting.__exit__(None, None, None)
        stop_stack(st)  # destroyed: processes, data directories, and the S3 endpoints with their buckets
    return {
        "info": info,
        "before": before,
        "hashes": hashes,
        "backup": result,
        "listed": listed,
        "kept": kept,
        "dir": local / result["id"],
    }


def test_backup_is_in_a_non_primary_region_and_verifies(backed_up):
    b = backed_up["backup"]
    assert b["region"] == "b" and b["prefix"].startswith("xregion-backups/")
    assert b["verify"]["ok"] and b["verify"]["differences"] == []
    assert b["artifact_objects"] == len(backed_up["hashes"]) == 3
    assert [x["id"] for x in backed_up["listed"]] == [b["id"]]
    assert len(backed_up["kept"]) == 2 and b["id"] not in [x["id"] for x in backed_up["kept"]]
    manifest = json.loads((backed_up["dir"] / "manifest.json").read_text())
    assert {o["key"]: o["sha256"] for o in manifest["artifacts"]["objects"]} == backed_up["hashes"]
    assert manifest["database"]["ids"]["runs"]["count"] == 3


def test_restore_into_a_fresh_stack(backed_up, monkeypatch):
    st = start_stack("xregion-dr-restore-")
    for k, v in st.client_env().items():
        monkeypatch.setenv(k, v)
    try:
        t0 = time.monotonic()
        res, proc = xr_json(st, "dr", "restore", str(backed_up["dir"]))
        cli_seconds = time.monotonic() - t0
        assert res["ok"] and res["differences"] == [], proc.stderr
        b = backed_up["backup"]
        print(
            "\nDR figures (backup/restore):",
            json.dumps(
                {
                    "backup_seconds": b["seconds"],
                    "dump_seconds": b["dump_seconds"],
                    "dump_bytes": b["dump_bytes"],
                    "verify_seconds": b["verify"]["seconds"],
                    "restore_seconds": res["seconds"],
                    "restore_db_seconds": res["db_seconds"],
                    "restore_cli_seconds": round(cli_seconds, 3),
                }
            ),
        )
        # every artifact of the manifest, in every region, downloaded and hashed
        assert res["artifacts"]["verified"] == 3 * len(st.cfg.regions) and res["artifacts"]["missing"] == []
        after = snapshot(st.cfg, backed_up["info"])
        assert after == backed_up["before"]  # same ids, params, metrics, tags, versions, stages, aliases
        for name in ("a", "b"):
            store = RegionStore(st.cfg.region(name))
            assert {k: store.stat(k).sha256 for k in backed_up["hashes"]} == backed_up["hashes"]
        # the restored stack is consistent, and takes new writes without id clashes
        c = MlflowClient(st.cfg.primary.mlflow_url, registry_uri=st.cfg.primary.mlflow_url)
        new_exp = c.create_experiment("after-restore")
        assert int(new_exp) > int(backed_up["info"]["experiment"])
        rid = backed_up["info"]["runs"][0]
        mv = c.create_model_version(backed_up["info"]["model"], c.get_run(rid).info.artifact_uri, run_id=rid)
        assert int(mv.version) == len(backed_up["info"]["versions"]) + 1
        verify = xr(st, "dr", "verify", "--json")
        assert verify.returncode == 0, verify.stdout
        # a second restore would replace live data: refused without --force
        again = xr(st, "dr", "restore", str(backed_up["dir"]))
        assert again.returncode == 2 and "--force" in again.stderr
    finally:
        stop_stack(st)
