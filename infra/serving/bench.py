"""`xregion bench router`: what the HAProxy front door adds to a request, and how fast it detects failures.

One run on a scratch embedded platform of its own: a small top-k model is registered, promoted and
served in both regions; direct and front-door requests are interleaved (so the machine's noise hits
both alike) and the added latency is the median of the per-pair differences. Then a model server is
killed (-9) and frozen (SIGSTOP) under load, and the router's ``serving.server_down`` event gives
the detection time.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from xregion import events
from xregion.config import XRegionConfig, load_config
from xregion.home import environment
from xregion.infra.embedded import auth, stack
from xregion.infra.embedded.scratch import make_home, scratch_config
from xregion.infra.embedded.supervisor import Supervisor
from xregion.stats import percentile

from .control import start_serving, stop_serving
from .haproxy import Tuning
from .state import Policy

log = logging.getLogger(__name__)
BODY = '{"dataframe_records": [{"user_id": 3, "k": 10}]}'
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


@dataclass
class Detection:
    detection_s: float | None
    check_status: str | None
    requests: int
    failed_requests: int
    recovered_after_restore_s: float | None


@dataclass
class RouterBench:
    requests: int
    tuning: dict
    detection_budget_s: float
    direct_ms: dict = field(default_factory=dict)
    haproxy_ms: dict = field(default_factory=dict)
    added_ms: dict = field(default_factory=dict)
    target_added_p50_ms: float = 0.5
    faults: dict[str, Detection] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def timed(conn: http.client.HTTPConnection, body: str = BODY) -> float:
    t = time.perf_counter()
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}")
    return (time.perf_counter() - t) * 1000


def _pct(values: list[float], q: float) -> float:
    return round(percentile(values, q), 3)


def register_bench_model(cfg: XRegionConfig, home: Path) -> str:
    """Log, register and promote the bench model (with an input example: the smoke test needs it)."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from xregion.plugins import registry_client

    url = cfg.primary.mlflow_url
    client = registry_client.client(cfg, url)
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
            input_example=pd.DataFrame({"user_id": [3], "k": [10]}),
            registered_model_name=cfg.registry.model_name,
            pip_requirements=["mlflow", "numpy", "pandas"],
        )
    version = str(info.registered_model_version)
    registry_client.promote(client, cfg, cfg.registry.model_name, version, reason="bench")
    return version


def added_latency(cfg: XRegionConfig, requests: int, out: RouterBench) -> None:
    """Pairs of one direct and one front-door request. The direct ones go to every region's model
    server in turn, as HAProxy's round robin sends its own: the difference is then HAProxy's, not
    that of one server against the mix (measured: 0.14 ms against the same server, 0.33 ms against
    the primary's alone while HAProxy alternated)."""
    f = urlsplit(cfg.serving.frontend_url)
    directs = [
        http.client.HTTPConnection(d.hostname, d.port, timeout=30)
        for d in (urlsplit(r.serving_url) for r in cfg.regions)
    ]
    front = http.client.HTTPConnection(f.hostname, f.port, timeout=30)
    for i in range(50):
        timed(directs[i % len(directs)]), timed(front)
    lat_d, lat_f = [], []
    for i in range(requests):  # alternate the order, so neither path always follows the other
        direct = directs[(i // 2) % len(directs)]
        first, second = (direct, front) if i % 2 else (front, direct)
        a, b = timed(first), timed(second)
        lat_d.append(a if first is direct else b)
        lat_f.append(b if first is direct else a)
    for conn in (*directs, front):
        conn.close()
    out.direct_ms = {"p50": _pct(lat_d, 50), "p99": _pct(lat_d, 99)}
    out.haproxy_ms = {"p50": _pct(lat_f, 50), "p99": _pct(lat_f, 99)}
    out.added_ms = {
        "p50": round(out.haproxy_ms["p50"] - out.direct_ms["p50"], 3),
        "p99": round(out.haproxy_ms["p99"] - out.direct_ms["p99"], 3),
        # the median of per-pair differences: less sensitive to a busy machine than p50 - p50
        "median_of_pairs": _pct([fr - di for fr, di in zip(lat_f, lat_d, strict=True)], 50),
    }


class _Load(threading.Thread):
    """Sequential requests through the front door until stopped; every outcome recorded."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.parts, self.results, self.halt = urlsplit(url), [], threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.parts.hostname, self.parts.port, timeout=30)
        while not self.halt.is_set():
            try:
                timed(conn)
                self.results.append(200)
            except Exception as err:  # a failed request is a result
                self.results.append(type(err).__name__)
                conn = http.client.HTTPConnection(self.parts.hostname, self.parts.port, timeout=30)


def _wait_event(home: Path, kind: str, service: str, since: float, timeout: float) -> dict | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [e for e in events.read(home, kind=kind, since=since) if e.get("service") == service]
        if found:
            return found[0]
        time.sleep(0.05)
    return None


def detection(cfg: XRegionConfig, home: Path, action: str, server_timeout_s: float) -> Detection:
    sup = Supervisor(home)
    svc = next(s for s in sup.known() if s.name == f"{cfg.primary.name}-serving")
    load = _Load(cfg.serving.frontend_url)
    load.start()
    time.sleep(1.0)
    t0 = time.time()
    sup.fault(action, [svc])
    ev = _wait_event(home, "serving.server_down", svc.name, t0, 60)
    time.sleep(max(0.0, server_timeout_s + 1 - (time.time() - t0)))
    load.halt.set()
    load.join(timeout=60)
    t_restore = time.time()
    sup.fault("thaw" if action == "freeze" else "restart", [svc])
    rec = _wait_event(home, "serving.server_up", svc.name, t_restore, 120)
    return Detection(
        ev and ev.get("detection_s"),
        ev and ev.get("check_status"),
        len(load.results),
        sum(1 for r in load.results if r != 200),
        rec and round(rec["ts"] - t_restore, 3),
    )


def run_bench(requests: int = 1000, keep: bool = False, progress=log.info) -> RouterBench:
    """One run on a scratch platform: HAProxy's added latency and failure-detection times."""
    home = make_home("xregion-bench-router-")
    path = scratch_config(home)
    tuning, policy = Tuning.from_env(), Policy.from_env()
    out = RouterBench(requests, asdict(tuning), tuning.detection_budget_s())
    with environment(XREGION_CONFIG=str(path), XREGION_HOME=str(home)):  # this process speaks to it only
        cfg = load_config(path)
        try:
            progress(f"bench platform in {home}")
            stack.up(cfg, home, progress=lambda m: None)
            with environment(**auth.client_env(home, "admin", cfg)):  # its own platform, as its administrator
                register_bench_model(cfg, home)
                progress("starting serving")
                start_serving(cfg, home, progress=lambda m: None, policy=policy, tuning=tuning)
            progress(f"latency: {requests} requests each way, interleaved")
            added_latency(cfg, requests, out)
            for action in ("kill", "freeze"):
                progress(f"failure detection: {action}")
                out.faults[action] = detection(cfg, home, action, tuning.server_timeout_ms / 1000)
            return out
        finally:
            if not keep:
                stop_serving(home)
                # purge: its Postgres and etcd data live outside the home (/var/lib/xregion/<hash>)
                stack.down(home, progress=lambda m: None, purge=True)
                shutil.rmtree(home, ignore_errors=True)
