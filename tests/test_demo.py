"""The main job in reduced form, through its command line, on its own stack: the summary carries
every figure the demo promises, within the drill's objectives; its region-outage drill (with
failover) faulted the real processes, lost nothing and left its report and MLflow run; and the
terminal shows our progress and results only (third-party chatter goes to the logs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xregion.infra.embedded.scratch import make_home, scratch_config

pytestmark = [pytest.mark.stack, pytest.mark.timeout(1200)]
XREGION = str(Path(sys.executable).parent / "xregion")
NOISE = (
    "oneDNN",
    "absl::InitializeLog",
    "NodeDef mentions",
    "FutureWarning",
    "Add type hints",
    "integer column",
    "cuda",
    "UserWarning",
    "View run",  # MLflow's run links: the drill's, printed on stdout, then sent to stderr by its runner
    "INFO mlflow",  # MLflow's own log handler, installed when a step first imports it
)


@pytest.fixture(scope="module")
def demo_run():
    home = make_home("xregion-demo-")
    env = {**os.environ, "XREGION_CONFIG": str(scratch_config(home)), "XREGION_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_USERNAME", None)
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    try:
        res = subprocess.run(
            [XREGION, "demo", "--epochs", "3", "--drill-seconds", "40", "--users", "6", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1100,
        )
        yield res, home
    finally:
        subprocess.run([XREGION, "down", "--purge"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(home, ignore_errors=True)


def test_reduced_demo_summary_has_every_figure_within_objectives(demo_run):
    res, home = demo_run
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
    drill = s["drill"]
    assert drill["scenario"] == "region-outage" and drill["fault_ts"] is not None
    assert drill["objectives_met"] is True, drill["objectives"]
    assert drill["availability"] >= 0.999 and drill["rto_s"] is not None and drill["rto_s"] <= 5
    assert drill["requests"] > 50 and drill["failed"] <= drill["requests"] * 0.001
    assert drill["rpo"]["artifacts"]["missing"] == 0 and drill["rpo"]["artifacts"]["acknowledged"] > 0
    assert os.path.exists(drill["report"]) and (home / "demo-summary.json").exists()
    assert s["replication_lag_s"] >= 0
    assert s["serving_latency"]["p50_ms"] > 0 and s["serving_latency"]["p99_ms"] >= s["serving_latency"]["p50_ms"]
    m = s["model"]
    assert m["hr_at_10_sampled"] > m["pop_hr_at_10_sampled"]
    assert {"ndcg_at_10_sampled", "pop_ndcg_at_10_sampled"} <= set(m)
    assert s["promotion"]["stage"] == "Production"
    # who did what: the scientist registered, the release manager promoted (MLflow's auth is on)
    events = [json.loads(line) for line in (home / "events.jsonl").read_text().splitlines()]
    promos = [e for e in events if e["kind"] == "registry.promotion" and e["version"] == m["version"]]
    assert promos and {e["who"] for e in promos} == {"release-manager"}, promos


def test_the_demo_drill_faulted_real_processes_lost_nothing_and_left_its_report(demo_run):
    from mlflow.tracking import MlflowClient

    from xregion.config import load_config
    from xregion.home import environment
    from xregion.infra.embedded import auth
    from xregion.infra.embedded.stack import status

    res, home = demo_run
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout[: res.stdout.rindex("}") + 1])["drill"]
    # the fault really happened, to the real processes, and traffic kept flowing through it
    fault = next(st for st in s["steps"] if st["label"] == "fault")
    assert sorted(fault["result"]["killed"]) == ["a-mlflow", "a-s3", "a-serving"]
    assert any(e["kind"] == "fault.kill" and e.get("service") == "a-serving" for e in s["events"])
    assert s["gated"]["requests"] > 200 and s["gated"]["failed"] == 0
    # scientists wrote through the outage, and nothing acknowledged was lost
    assert s["rpo"]["metrics"]["acknowledged"] > 0 and s["rpo"]["metrics"]["missing"] == 0
    # report, raw log and summary, also as a run of the drills experiment
    out = Path(s["report"]).parent
    for name in ("report.html", "requests.csv", "summary.json", "timeline.png"):
        assert (out / name).stat().st_size > 0
    cfg = load_config(home / "regions.yaml")
    with environment(**auth.client_env(home, "release-manager", cfg)):
        cl = MlflowClient(tracking_uri=s["mlflow"]["tracking_uri"])
        run = cl.get_run(s["mlflow"]["run_id"])
        assert run.data.metrics["availability"] == s["gated"]["availability"]
        assert run.data.metrics["rto_s"] == s["rto_s"]
        assert {a.path for a in cl.list_artifacts(run.info.run_id)} >= {"report.html", "requests.csv", "summary.json"}
        # the drill left the platform healthy
        assert all(r["healthy"] for r in status(cfg, home)), status(cfg, home)


def test_the_terminal_shows_no_third_party_noise(demo_run):
    res, home = demo_run
    terminal = res.stderr
    assert "mlflow-xregion demo" in res.stdout and "done in" in terminal
    assert [n for n in NOISE if n in terminal] == [], terminal[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in (home / "logs").glob("*.log"))
    assert "Validating input example" in logs or "mlflow" in logs  # the chatter went somewhere: the logs
