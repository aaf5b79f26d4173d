"""The drills that prove the database survives a region: region-loss (kill -9 of the primary's
whole region) and region-partition (SIGSTOP, then thaw), from `xregion up` with a trained model
behind the front door, on a stack of their own (they kill the primary's region).

Asserted: every component of the region was faulted; no acknowledged write lost (metrics,
artifacts, registry); MLflow reads and the front door kept working through the loss; the old
primary acknowledged no write after it came back, rejoined as a streaming replica (Patroni, no
command) and its bucket was resynced. RTO figures are printed, not asserted (benchmarks).
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.stacks import acting_as, start_stack, stop_stack

pytestmark = [pytest.mark.stack, pytest.mark.timeout(1800)]
SMALL_DATA = dict(n_users=150, n_items=80, mean_interactions=20)


@pytest.fixture(scope="module")
def served():
    import mlflow

    from xregion.infra.serving.control import start_serving, stop_serving
    from xregion.recsys_model.train import run_training

    st = start_stack("xregion-region-drills-")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    acting = acting_as(st)
    acting.__enter__()
    try:
        run_training(
            epochs=2,
            tracking_uri=st.cfg.primary.mlflow_url,
            model_name=st.cfg.registry.model_name,
            experiment="recsys",
            seed=5,
            promote_to_production=True,
            synthetic_kwargs=SMALL_DATA,
            progress=False,
        )
        start_serving(st.cfg, st.home, progress=lambda m: None)
        yield st
    finally:
        mlflow.set_tracking_uri(old)
        stop_serving(st.home)
        acting.__exit__(None, None, None)
        stop_stack(st)


def objectives_without_timing(tmp_path, scenario: str):
    """The scenario's objectives with rto_s reported only: times are benchmarks, not test verdicts."""
    from xregion.loadtests.objectives import DEFAULT_FILE

    data = yaml.safe_load(DEFAULT_FILE.read_text())
    data["scenarios"][scenario]["rto_s"] = None
    path = tmp_path / "objectives.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def drill(st, tmp_path, scenario: str) -> dict:
    from xregion.loadtests.runner import run_drill

    s = run_drill(
        scenario,
        # a 40 s fault phase, as Patroni's ttl (20 s) plus election needs with room on a slow machine
        # (RTO was 20 s for the loss, 25 s for the partition); after the restore, 15 s for the old
        # primary to come back read-only under the split-brain probe (it did within a few seconds)
        duration=65,
        fault_at=10,
        restore_at=50,
        users=7,
        cfg=st.cfg,
        home=st.home,
        out_dir=tmp_path / scenario,
        objectives_file=objectives_without_timing(tmp_path, scenario),
        to_mlflow=False,
        progress=lambda m: None,
    )
    figures = {k: s.get(k) for k in ("rto_s", "by_kind", "rpo", "split_brain")} | {"region": s.get("region")}
    print(f"\n{scenario} figures:", json.dumps(figures, default=str))
    return s


def check_common(s: dict, action: str) -> None:
    verdict = {k: s.get(k) for k in ("objectives", "failed_steps", "errors", "steps")}
    assert s["objectives_met"], json.dumps(verdict, indent=1, default=str)
    fault = next(x for x in s["steps"] if x["label"] == "fault")
    lost = s["region"]["lost"]
    assert sorted(fault["result"][action]) == sorted(
        f"{lost}-{c}" for c in ("patroni", "etcd", "mlflow", "s3", "serving")
    )
    for kind in ("metrics", "artifacts", "registry"):
        assert s["rpo"][kind]["acknowledged"] > 0 and s["rpo"][kind]["missing"] == 0, s["rpo"][kind]
    assert s["split_brain"]["attempts"] > 0 and s["split_brain"]["accepted"] == 0, s["split_brain"]
    assert s["split_brain"]["outcomes"].get("read-only", 0) > 0  # it did come back, as a replica
    rejoin = s["region"]["rejoin"]
    assert rejoin["streaming"] and rejoin["leader"] != lost, rejoin
    assert s["region"]["resync"]["still_owed"] == 0
    assert s["region"]["failover"]["new_leader"] not in (None, lost)


def test_region_loss_drill(served, tmp_path):
    s = drill(served, tmp_path, "region-loss")
    check_common(s, "killed")
    assert s["by_kind"]["reads"]["failed"] == 0 and s["by_kind"]["serving"]["failed"] == 0
    assert s["rto_s"] is not None  # writes came back within the fault phase (the time is a figure)


def test_region_partition_drill(served, tmp_path):
    s = drill(served, tmp_path, "region-partition")
    check_common(s, "frozen")
