"""End-to-end drills on the session stack with a trained, promoted model behind the front door.

* region-outage with failover (both regions in the front door) meets its objectives;
* the same kind of fault with failover disabled (only region a in the front door) fails them,
  through the CLI (exit code 1, JSON summary): the instrument can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]

SMALL_DATA = dict(n_users=150, n_items=80, mean_interactions=20)


@pytest.fixture(scope="module")
def model(stack):
    """A small recommender trained through region a's MLflow server, registered and in production."""
    import mlflow

    from xregion.recsys_model.train import run_training

    old = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        res = run_training(
            epochs=3,
            tracking_uri=stack.cfg.primary.mlflow_url,
            model_name=stack.cfg.registry.model_name,
            experiment="recsys",
            seed=11,
            promote_to_production=True,
            synthetic_kwargs=SMALL_DATA,
            progress=False,
        )
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            mlflow.set_tracking_uri(None)
        else:
            mlflow.set_tracking_uri(old)
    return res.version


def _serve(stack, regions):
    from xregion.infra.serving.control import start_serving, stop_serving

    stop_serving(stack.home)  # nothing left over from another module
    start_serving(stack.cfg, stack.home, progress=lambda m: None, regions=regions)


@pytest.fixture
def serving_both(stack, model):
    from xregion.infra.serving.control import stop_serving

    _serve(stack, None)
    yield
    stop_serving(stack.home)


@pytest.fixture
def serving_a_only(stack, model):
    from xregion.infra.serving.control import stop_serving

    _serve(stack, ["a"])
    yield
    stop_serving(stack.home)


def test_region_outage_drill_meets_its_objectives(stack, serving_both, tmp_path):
    from mlflow.tracking import MlflowClient

    from xregion.infra.embedded.stack import status
    from xregion.loadtests.runner import run_drill

    out = tmp_path / "drill"
    s = run_drill(
        "region-outage", duration=40, users=6, cfg=stack.cfg, home=stack.home, out_dir=out, progress=lambda m: None
    )
    verdict = {k: s.get(k) for k in ("objectives", "gated", "by_kind", "rto_s", "errors", "steps")}
    assert s["objectives_met"], json.dumps(verdict, indent=1, default=str)
    # the fault really happened, to the real processes, and traffic kept flowing
    fault = next(st for st in s["steps"] if st["label"] == "fault")
    assert sorted(fault["result"]["killed"]) == ["a-mlflow", "a-s3", "a-serving"]
    assert any(e["kind"] == "fault.kill" and e.get("service") == "a-serving" for e in s["events"])
    assert s["gated"]["requests"] > 200 and s["gated"]["failed"] == 0
    # scientists wrote through the outage, and nothing acknowledged was lost
    assert s["rpo"]["artifacts"]["acknowledged"] > 0 and s["rpo"]["artifacts"]["missing"] == 0
    assert s["rpo"]["metrics"]["acknowledged"] > 0
    # report, raw log and summary, also as a run of the drills experiment
    for name in ("report.html", "requests.csv", "summary.json", "timeline.png"):
        assert (out / name).stat().st_size > 0
    cl = MlflowClient(tracking_uri=s["mlflow"]["tracking_uri"])
    run = cl.get_run(s["mlflow"]["run_id"])
    assert run.data.metrics["availability"] == s["gated"]["availability"]
    assert run.data.metrics["rto_s"] == s["rto_s"]
    assert {a.path for a in cl.list_artifacts(run.info.run_id)} >= {"report.html", "requests.csv", "summary.json"}
    # the drill left the platform healthy
    assert all(r["healthy"] for r in status(stack.cfg, stack.home)), status(stack.cfg, stack.home)


def test_without_failover_the_same_fault_fails_the_objectives(stack, serving_a_only, tmp_path):
    out = tmp_path / "drill"
    env = {**os.environ, **stack.env()}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "xregion"),
            "drill",
            "model-server-crash",
            "--duration",
            "30",
            "--users",
            "5",
            "--out",
            str(out),
            "--no-mlflow",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    s = json.loads(proc.stdout)
    assert s["objectives_met"] is False
    met = {o["objective"]: o["met"] for o in s["objectives"]}
    assert met["availability"] is False and met["rto_s"] is False
    assert s["gated"]["failed"] > 0 and s["gated"]["availability"] < 0.999
    assert s["rto_s"] is None  # nothing served region a's traffic until it was restarted
    assert all(e["error"].startswith("CatchResponseError: HTTP 5") or "Error" in e["error"] for e in s["errors"])
    assert (out / "report.html").exists()
    assert (out / "summary.json").exists()
