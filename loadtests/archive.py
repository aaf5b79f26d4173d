"""A drill's archive: its report, raw request log and summary as a run of the MLflow ``drills`` experiment."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from xregion.config import XRegionConfig

DRILLS_EXPERIMENT = "drills"


def log_to_mlflow(cfg: XRegionConfig, home: Path, out_dir: Path, summary: dict) -> dict:
    """The report, the raw CSV and the summary as a run of the ``drills`` experiment."""
    from mlflow.tracking import MlflowClient

    from xregion.topology import effective_config

    eff = effective_config(cfg, home)
    url = None
    for r in eff.write_order():
        try:
            if requests.get(f"{r.mlflow_url}/health", timeout=3).status_code == 200:
                url = r.mlflow_url
                break
        except requests.RequestException:
            continue
    if url is None:
        return {"error": "no MLflow server answers"}
    cl = MlflowClient(tracking_uri=url)
    exp = cl.get_experiment_by_name(DRILLS_EXPERIMENT)
    exp_id = exp.experiment_id if exp else cl.create_experiment(DRILLS_EXPERIMENT)
    s = summary
    run = cl.create_run(
        exp_id,
        run_name=f"{s['scenario']} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['load_start']))}",
        tags={
            "xregion.drill.scenario": s["scenario"],
            "xregion.drill.objectives_met": str(s["objectives_met"]),
            "xregion.drill.gate": s["gate_kind"],
        },
    )
    rid = run.info.run_id
    params = {
        "scenario": s["scenario"],
        "duration_s": s["duration"],
        "users": s["users"],
        "workers": s["workers"],
        "mix": json.dumps(s["mix"]),
        "fault_at_s": s["schedule"]["fault_at"],
        "restore_at_s": s["schedule"]["restore_at"],
        "objectives": json.dumps(s["objectives_target"]),
    }
    for k, v in params.items():
        cl.log_param(rid, k, str(v))
    mets = {
        "availability": s["gated"]["availability"],
        "availability_all": s["availability"],
        "failed": s["gated"]["failed"],
        "failed_all": s["failed"],
        "requests": s["gated"]["requests"],
        "rto_s": s["rto_s"],
        "p50_ms": s["latency_steady"]["p50_ms"],
        "p95_ms": s["latency_steady"]["p95_ms"],
        "p99_ms": s["latency_steady"]["p99_ms"],
        "failover_p50_ms": s["latency_failover"]["p50_ms"],
        "failover_p95_ms": s["latency_failover"]["p95_ms"],
        "failover_p99_ms": s["latency_failover"]["p99_ms"],
        "objectives_met": 1.0 if s["objectives_met"] else 0.0,
    }
    for kind, v in (s.get("rpo") or {}).items():
        if "missing" in v:
            mets[f"rpo_{kind}"] = v["missing"]
    for k, v in mets.items():
        if v is not None:
            cl.log_metric(rid, k, float(v))
    for name in ("report.html", "requests.csv", "summary.json", "timeline.png"):
        if (out_dir / name).exists():
            cl.log_artifact(rid, str(out_dir / name))
    cl.set_terminated(rid, "FINISHED")
    return {"tracking_uri": url, "experiment_id": exp_id, "run_id": rid}
