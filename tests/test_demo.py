"""The main job in reduced form: small data, a short region-outage drill, on its own stack.
The summary must carry every figure the demo promises, within the drill's objectives."""

from __future__ import annotations

import os
import shutil

import pytest

from xregion.config import load_config
from xregion.infra.embedded.scratch import make_home
from xregion.infra.embedded.scratch import scratch_config as write_config

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def demo_stack():
    from xregion.infra.embedded import stack
    from xregion.infra.serving import control as router

    home = make_home("xregion-demo-")
    path = write_config(home)
    old = {k: os.environ.get(k) for k in ("XREGION_CONFIG", "XREGION_HOME")}
    os.environ.update({"XREGION_CONFIG": str(path), "XREGION_HOME": str(home)})
    try:
        yield load_config(path), home
    finally:
        router.stop_serving(home)
        stack.down(home, progress=lambda m: None)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(home, ignore_errors=True)


def test_reduced_demo_summary_has_every_figure_within_objectives(demo_stack):
    from xregion.demo import run_demo

    cfg, home = demo_stack
    s = run_demo(
        cfg,
        home,
        epochs=3,
        synthetic=dict(n_users=200, n_items=100, mean_interactions=25),
        drill_seconds=40,
        users=6,
        progress=lambda m: None,
    )
    drill = s["drill"]
    assert drill["scenario"] == "region-outage" and drill["fault_ts"] is not None
    assert drill["objectives_met"] is True, drill["objectives"]
    assert drill["availability"] >= 0.999 and drill["rto_s"] is not None and drill["rto_s"] <= 5
    assert drill["requests"] > 50 and drill["failed"] <= drill["requests"] * 0.001
    assert drill["rpo"]["artifacts"]["missing"] == 0 and drill["rpo"]["artifacts"]["acknowledged"] > 0
    assert (home / "drills").exists() and drill["report"].endswith("report.html")
    assert os.path.exists(drill["report"])
    assert s["replication_lag_s"] >= 0
    assert s["serving_latency"]["p50_ms"] > 0 and s["serving_latency"]["p99_ms"] >= s["serving_latency"]["p50_ms"]
    m = s["model"]
    assert m["hr_at_10_sampled"] > m["pop_hr_at_10_sampled"]
    assert {"ndcg_at_10_sampled", "pop_ndcg_at_10_sampled"} <= set(m)
    assert s["promotion"]["stage"] == cfg.registry.production_stage
    # the platform is left running for the user to explore
    from xregion.infra.embedded import stack

    assert all(r["healthy"] for r in stack.status(cfg, home) if r["component"] in ("s3", "postgres", "mlflow"))
