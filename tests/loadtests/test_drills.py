"""A drill on the session stack with a trained, promoted model behind the front door: a model
server's crash with failover disabled (only region a in the front door) fails the objectives,
through the CLI (exit code 1, JSON summary): the instrument can fail. The same kind of fault with
failover meets them: that is the demo's drill (tests/test_demo.py).
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
def serving_a_only(stack, model):
    from xregion.infra.serving.control import stop_serving

    _serve(stack, ["a"])
    yield
    stop_serving(stack.home)


def test_without_failover_the_same_fault_fails_the_objectives(stack, serving_a_only, tmp_path):
    out = tmp_path / "drill"
    env = {**os.environ, **stack.env()}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "xregion"),
            "drill",
            "model-server-crash",
            "--duration",
            "20",  # the fault from t=6 s to t=15 s: nearly two 5 s windows with nobody serving a's share
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
