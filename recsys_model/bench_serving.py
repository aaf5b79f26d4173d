"""Serving benchmark: the same trained model behind ``mlflow models serve``, two ways.

* ``stock``: the Keras model logged with ``mlflow.tensorflow.log_model``; its pyfunc wrapper
  calls ``keras_model.predict`` on each request and returns the scores of the whole catalogue
  (input: a list of user ids).
* ``ours``: the top-k pyfunc (:mod:`xregion.recsys_model.pyfunc`); input a ``user_id`` table,
  output the top 10 unseen items.

Both servers run on loopback ports of this machine in the same run, one worker each, and are
measured one after the other (never at the same time): sequential latency over a persistent
HTTP/1.1 connection (p50/p99), then requests per second at a few concurrency levels (one
connection per client thread). Every phase is bounded in requests and seconds; the servers
are killed (process group) at the end, whatever happens.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np


class ScoringServer(Protocol):
    """What the benchmarks need of a running ``mlflow models serve`` (the CLI passes
    ``xregion.infra.serving.model_server.ModelServer``; this library starts no process itself)."""

    port: int

    def start(self) -> ScoringServer: ...
    def wait_ready(self) -> ScoringServer: ...
    def stop(self) -> None: ...
    def post(self, body, conn=None, timeout: float = 30): ...


# (model_uri, tracking_uri, log_path, extra_env) -> a server, not started yet
ServerFactory = Callable[..., ScoringServer]


def _payloads(kind: str, users: np.ndarray, n: int, histories: dict | None = None) -> list[bytes]:
    """Single-user requests; the stock Keras model also needs the user's history input."""
    out = []
    for j in range(n):
        u = int(users[j % len(users)])
        if kind == "ours":
            body = {"dataframe_split": {"columns": ["user_id"], "data": [[u]]}}
        else:
            body = {"inputs": {"user_id": [u], "history": [histories[u]]}}
        out.append(json.dumps(body).encode())
    return out


def sequential(server: ScoringServer, payloads: list[bytes], seconds: float) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    lat, errors = [], 0
    deadline = time.monotonic() + seconds
    try:
        for p in payloads:
            t = time.perf_counter()
            conn.request("POST", "/invocations", body=p, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            lat.append(time.perf_counter() - t)
            errors += r.status != 200
            if time.monotonic() > deadline:
                break
    finally:
        conn.close()
    ms = np.array(lat) * 1000
    return {
        "requests": len(lat),
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def concurrent(server: ScoringServer, payloads: list[bytes], clients: int, seconds: float) -> dict:
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "errors": 0}
    deadline = time.monotonic() + seconds

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if state["next"] >= len(payloads):
                        return
                    p = payloads[state["next"]]
                    state["next"] += 1
                conn.request("POST", "/invocations", body=p, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                with lock:
                    state["done"] += 1
                    state["errors"] += r.status != 200
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 90)
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": state["done"],
        "errors": state["errors"],
        "seconds": wall,
        "rps": state["done"] / wall if wall else 0.0,
    }


def measure(
    server: ScoringServer,
    kind: str,
    users: np.ndarray,
    requests: int,
    levels: list[int],
    per_level: int,
    seconds: float,
    say=lambda *_: None,
    histories: dict | None = None,
) -> dict:
    warm = _payloads(kind, users[::-1], 20, histories)
    for p in warm:
        status, body = server.post(p)
        if status != 200:
            raise RuntimeError(f"{kind} server answered {status}: {str(body)[:500]}")
    say(f"{kind}: sequential latency, {requests} requests")
    seq = sequential(server, _payloads(kind, users, requests, histories), seconds)
    conc = []
    for c in levels:
        say(f"{kind}: throughput at concurrency {c}")
        conc.append(concurrent(server, _payloads(kind, users, per_level, histories), c, seconds))
    return {"sequential": seq, "concurrency": conc}


def log_stock_model(keras_model, example: dict):
    """Log the Keras model with the stock ``mlflow.tensorflow`` flavor in the active run."""
    import warnings

    import keras
    import mlflow
    import tensorflow as tf

    from .model import RecencyPooling

    reqs = [
        f"mlflow=={mlflow.__version__}",
        f"tensorflow-cpu=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"numpy=={np.__version__}",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.tensorflow.log_model(
            keras_model,
            name="stock_keras",
            input_example=example,
            pip_requirements=reqs,
            custom_objects={"RecencyPooling": RecencyPooling},
        )


def stock_histories(res) -> dict:
    """Each user's history input as the Keras model takes it (whole sequence, most recent first)."""
    from .sequences import all_sequences, history_matrix

    split = res.split
    hist = history_matrix(all_sequences(split), np.arange(split.n_users), None, res.config["history_length"])
    return {int(u): hist[r].tolist() for r, u in enumerate(split.user_ids)}


def local_store(work: Path, experiment: str) -> str:
    """A sqlite tracking/registry store under ``work`` with ``experiment``'s artifacts there."""
    import mlflow

    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(work / "artifacts").as_uri())
    return tracking_uri


def _train_with_stock_model(tracking_uri: str, epochs, seed: int, synthetic_kwargs):
    """Our model trained and logged, plus the same Keras model in the stock flavor (same run)."""
    import mlflow

    from .train import run_training

    res = run_training(
        epochs=epochs,
        tracking_uri=tracking_uri,
        model_name=None,
        experiment="recsys-bench",
        seed=seed,
        synthetic_kwargs=synthetic_kwargs,
    )
    with mlflow.start_run(run_id=res.run_id):
        histories = stock_histories(res)
        first = [int(u) for u in res.split.user_ids[:2]]
        example = {"user_id": np.array(first, np.int64), "history": np.array([histories[u] for u in first], np.int64)}
        stock_info = log_stock_model(res.keras_model, example)
    return res, stock_info, histories


def run_bench(
    serve: ServerFactory,
    requests: int = 200,
    levels=(1, 4, 8),
    per_level: int = 400,
    seconds: float = 10.0,
    epochs: int | None = None,
    seed: int = 42,
    say: Callable[[str], None] = lambda m: None,
    workdir: str | None = None,
    synthetic_kwargs: dict | None = None,
) -> dict:
    work = Path(workdir or tempfile.mkdtemp(prefix="recsys-bench-"))
    tracking_uri = local_store(work, "recsys-bench")
    res, stock_info, histories = _train_with_stock_model(tracking_uri, epochs, seed, synthetic_kwargs)
    users = np.random.default_rng(seed).permutation(res.split.user_ids)
    ours = serve(res.model_uri, tracking_uri, log_path=str(work / "serve-ours.log"))
    stock = serve(stock_info.model_uri, tracking_uri, log_path=str(work / "serve-stock.log"))
    out = {}
    try:
        say("starting both servers (mlflow models serve, loopback)")
        ours.start()
        stock.start()
        t0 = time.perf_counter()
        ours.wait_ready()
        stock.wait_ready()
        say(f"servers ready after {time.perf_counter() - t0:.1f}s")
        out["ours"] = measure(ours, "ours", users, requests, list(levels), per_level, seconds, say)
        # The stock path is ~10x slower: bound its request counts so the run stays short.
        out["stock"] = measure(
            stock, "stock", users, requests, list(levels), max(20, per_level // 4), seconds, say, histories
        )
    finally:
        ours.stop()
        stock.stop()
    return _summary(res, stock_info, out, work)


def _summary(res, stock_info, out: dict, work: Path) -> dict:
    import platform

    import mlflow

    m = res.metrics
    p50o, p50s = out["ours"]["sequential"]["p50_ms"], out["stock"]["sequential"]["p50_ms"]
    return {
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "mlflow": mlflow.__version__,
            "loopback": True,
            "server_workers": 1,
        },
        "models": {"ours": res.model_uri, "stock": stock_info.model_uri, "run_id": res.run_id},
        "ours": out["ours"],
        "stock": out["stock"],
        "ratio_stock_p50_over_ours_p50": p50s / p50o if p50o else None,
        "targets": {
            "ours_p50_le_5ms": p50o <= 5.0,
            "ratio_ge_10x": (p50s / p50o) >= 10.0,
            "hr10_ge_2x_popularity": m["hr_at_10_sampled_lift_over_pop"] >= 2.0,
        },
        "quality": {k: m[k] for k in sorted(m) if k.startswith(("hr_", "ndcg_", "pop_"))},
        "train_seconds": res.train_seconds,
        "workdir": str(work),
    }
