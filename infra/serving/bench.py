"""`xregion bench router`: what the HAProxy front door adds to a request, and how fast it detects failures.

One run on a fresh embedded stack; every figure comes from that run (direct and front-door
requests interleaved, so that the machine's noise hits both alike).
"""

from __future__ import annotations

BENCH_MODEL = """
import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

class TopK(PythonModel):
    def load_context(self, context):
        rng = np.random.default_rng(0)
        self.users, self.items = rng.normal(size=(1000, 32)), rng.normal(size=(500, 32))

    def predict(self, context, model_input, params=None):
        rows = []
        for uid, k in zip(model_input["user_id"], model_input.get("k", pd.Series([10] * len(model_input)))):
            k = int(k) if k == k else 10
            scores = self.items @ self.users[int(uid) % 1000]
            top = np.argpartition(-scores, k)[:k]
            rows += [{"user_id": int(uid), "item_id": int(i), "score": float(scores[i])} for i in top]
        return pd.DataFrame(rows)

mlflow.models.set_model(TopK())
"""


def _bench_config(home):
    import yaml

    from xregion.config import EMBEDDED_CONFIG

    from .router import free_port

    data = yaml.safe_load(EMBEDDED_CONFIG.read_text())
    for r in data["regions"]:
        r["s3"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
        r["postgres"] = f"127.0.0.1:{free_port()}"
        r["mlflow_url"] = f"http://127.0.0.1:{free_port()}"
        r["serving_url"] = f"http://127.0.0.1:{free_port()}"
    data["serving"] = {
        "frontend_url": f"http://127.0.0.1:{free_port()}",
        "haproxy_stats_url": f"http://127.0.0.1:{free_port()}",
    }
    data["env_file"] = str(EMBEDDED_CONFIG.parent / "embedded.env")
    path = home / "regions.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _timed(conn, body: str) -> float:
    import time

    t = time.perf_counter()
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}")
    return (time.perf_counter() - t) * 1000


def _pct(values, q):
    from .router import percentile

    return round(percentile(values, q), 3)


def run_bench(requests: int = 1000, keep: bool = False, progress=print) -> dict:
    """One run on a fresh embedded stack: HAProxy's added latency and failure-detection times."""
    import http.client
    import os
    import shutil
    import tempfile
    import threading
    import time
    from pathlib import Path
    from urllib.parse import urlsplit

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from xregion.infra.embedded import stack
    from xregion.infra.embedded.supervisor import Supervisor
    from xregion.plugins import registry_client

    from xregion import events
    from xregion.config import load_config

    from .haproxy import Tuning
    from .router import Policy, start_serving, stop_serving

    home = Path(tempfile.mkdtemp(prefix="xregion-bench-router-"))
    home.chmod(0o755)
    path = _bench_config(home)
    saved = {k: os.environ.get(k) for k in ("XREGION_CONFIG", "XREGION_HOME", "MLFLOW_TRACKING_URI")}
    os.environ.update({"XREGION_CONFIG": str(path), "XREGION_HOME": str(home)})
    cfg = load_config(path)
    tuning, policy = Tuning.from_env(), Policy.from_env()
    out: dict = {"requests": requests, "tuning": tuning.__dict__, "detection_budget_s": tuning.detection_budget_s()}
    try:
        progress(f"bench stack in {home}")
        stack.up(cfg, home, progress=lambda m: None)
        url = cfg.primary.mlflow_url
        os.environ["MLFLOW_TRACKING_URI"] = url
        mlflow.set_tracking_uri(url)
        mlflow.set_experiment("bench-router")
        src = home / "bench_model.py"
        src.write_text(BENCH_MODEL)
        sig = ModelSignature(inputs=Schema([ColSpec("long", "user_id"), ColSpec("long", "k", required=False)]))
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(src),
                signature=sig,
                registered_model_name=cfg.registry.model_name,
                pip_requirements=["mlflow", "numpy", "pandas"],
            )
        version = str(info.registered_model_version)
        registry_client.promote(registry_client.client(cfg, url), cfg, cfg.registry.model_name, version, reason="bench")
        progress("starting serving")
        start_serving(cfg, home, progress=lambda m: None, policy=policy, tuning=tuning)

        body = '{"dataframe_records": [{"user_id": 3, "k": 10}]}'
        d, f = urlsplit(cfg.primary.serving_url), urlsplit(cfg.serving.frontend_url)
        direct = http.client.HTTPConnection(d.hostname, d.port, timeout=30)
        front = http.client.HTTPConnection(f.hostname, f.port, timeout=30)
        for _ in range(50):
            _timed(direct, body), _timed(front, body)
        progress(f"latency: {requests} requests each, interleaved")
        lat_d, lat_f = [], []
        for i in range(requests):  # alternate the order, so neither path always follows the other
            if i % 2:
                lat_d.append(_timed(direct, body))
                lat_f.append(_timed(front, body))
            else:
                lat_f.append(_timed(front, body))
                lat_d.append(_timed(direct, body))
        direct.close()
        front.close()
        out["direct_ms"] = {"p50": _pct(lat_d, 50), "p99": _pct(lat_d, 99)}
        out["haproxy_ms"] = {"p50": _pct(lat_f, 50), "p99": _pct(lat_f, 99)}
        out["added_ms"] = {
            "p50": round(out["haproxy_ms"]["p50"] - out["direct_ms"]["p50"], 3),
            "p99": round(out["haproxy_ms"]["p99"] - out["direct_ms"]["p99"], 3),
        }
        # the median of per-pair differences: less sensitive to a busy machine than p50 - p50
        out["added_ms"]["median_of_pairs"] = _pct([fr - di for fr, di in zip(lat_f, lat_d)], 50)
        out["target_added_p50_ms"] = 0.5
        out["load_average"] = os.getloadavg()[0]

        sup = Supervisor(home)
        svc = next(s for s in sup.known() if s.name == f"{cfg.primary.name}-serving")
        for action in ("kill", "freeze"):
            progress(f"failure detection: {action}")
            results: list = []
            stop = threading.Event()

            def load():
                conn = http.client.HTTPConnection(f.hostname, f.port, timeout=30)
                while not stop.is_set():
                    try:
                        _timed(conn, body)
                        results.append(200)
                    except Exception as err:
                        results.append(type(err).__name__)
                        conn = http.client.HTTPConnection(f.hostname, f.port, timeout=30)

            thread = threading.Thread(target=load, daemon=True)
            thread.start()
            time.sleep(1.0)
            t0 = time.time()
            sup.fault(action, [svc])
            ev = None
            while ev is None and time.time() < t0 + 60:
                ev = next(
                    (e for e in events.read(home, kind="failover", since=t0) if e.get("service") == svc.name), None
                )
                time.sleep(0.05)
            time.sleep(max(0.0, tuning.server_timeout_ms / 1000 + 1 - (time.time() - t0)))
            stop.set()
            thread.join(timeout=60)
            t_restore = time.time()
            if action == "freeze":
                sup.fault("thaw", [svc])
            else:
                sup.fault("restart", [svc])
            rec = None
            while rec is None and time.time() < t_restore + 120:
                rec = next(
                    (e for e in events.read(home, kind="recovery", since=t_restore) if e.get("service") == svc.name),
                    None,
                )
                time.sleep(0.05)
            out[action] = {
                "detection_s": ev and ev.get("detection_s"),
                "check_status": ev and ev.get("check_status"),
                "requests": len(results),
                "failed_requests": sum(1 for r in results if r != 200),
                "recovered_after_restore_s": rec and round(rec["ts"] - t_restore, 3),
            }
        return out
    finally:
        if not keep:
            stop_serving(home)
            stack.down(home, progress=lambda m: None)
            shutil.rmtree(home, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
