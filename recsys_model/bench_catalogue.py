"""Serving a large catalogue: the ANN index against exact top-k, both behind ``mlflow models serve``.

For each catalogue size (10k, 100k, 1M items, up to ``max_items``) the benchmark

1. trains the two-tower model on the default synthetic data (1000 users, 500 items) and draws
   a catalogue of ``n`` item vectors and biases from a Gaussian fitted to the trained item
   tower (mean and full covariance of ``[v_i, b_i]``): synthetic towers with the geometry of
   real ones, at any size. Users are the trained users; each keeps its seen items (ids < 500);
2. logs two pyfunc models of it with MLflow, ``index="exact"`` and ``index="ann"`` (the
   artifact sizes are reported), and a no-op pyfunc (same payload, constant answer) that
   measures what MLflow's scoring server itself costs;
3. serves each with ``mlflow models serve`` (one uvicorn worker, loopback), measures the load
   time (start to ``/ping`` answering) and the server's resident memory, then sends the same
   single-user requests (k=10) sequentially over one connection: p50 and p99 latency; and
   times the same requests in process (``PyFuncModel.predict``, no HTTP): the model's part;
4. recall@10 of the ANN answers against the exact answers, request by request.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench_serving import ScoringServer, ServerFactory, local_store

log = logging.getLogger(__name__)

SIZES = (10_000, 100_000, 1_000_000)
NOOP_CODE = '''
import mlflow
import pandas as pd


class Noop(mlflow.pyfunc.PythonModel):
    """Answers every request with one constant row: the scoring server's own cost."""

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"user_id": [0], "rank": [1], "item_id": [0], "score": [0.0], "source": ["noop"]})


mlflow.models.set_model(Noop())
'''


def fitted_catalogue(towers, n_items: int, seed: int):
    """``n_items`` item vectors and biases drawn from a Gaussian fitted to trained ones."""
    from .model import Towers

    x = np.hstack([towers.item_vectors, towers.item_bias[:, None]]).astype(np.float64)
    rng = np.random.default_rng(seed)
    mean, cov = x.mean(axis=0), np.cov(x, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(cov)))
    draws = np.empty((n_items, x.shape[1]), dtype=np.float32)
    for s in range(0, n_items, 100_000):  # bounded temporary memory
        m = min(100_000, n_items - s)
        draws[s : s + m] = mean + rng.standard_normal((m, x.shape[1])) @ chol.T
    return Towers(
        user_ids=towers.user_ids,
        item_ids=np.arange(1, n_items + 1, dtype=np.int64),
        user_vectors=towers.user_vectors,
        item_vectors=np.ascontiguousarray(draws[:, :-1]),
        item_bias=np.ascontiguousarray(draws[:, -1]),
    )


def _catalogue_split(split, n_items: int):
    """The split's seen lists over a catalogue of ``n_items`` (the first 500 ids are the trained ones)."""
    from dataclasses import replace

    return replace(split, item_ids=np.arange(1, n_items + 1, dtype=np.int64))


def _log_models(cat, split, work: Path) -> dict:
    """Log the exact and the ANN pyfunc and the no-op one in one run; their URIs and sizes."""
    import mlflow

    from .train import log_towers_model

    out = {}
    with mlflow.start_run(run_name=f"catalogue-{len(cat.item_ids)}"):
        for policy in ("exact", "ann"):
            t0 = time.perf_counter()
            logged = log_towers_model(cat, split, None, index=policy)
            out[policy] = {**logged, "log_seconds": time.perf_counter() - t0}
        code = work / "noop_model.py"
        code.write_text(NOOP_CODE)
        out["noop"] = {"model_uri": mlflow.pyfunc.log_model(name="noop", python_model=str(code)).model_uri}
    return out


def _server_rss_mb(server) -> float | None:
    try:
        import psutil

        root = psutil.Process(server.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except Exception:  # psutil missing or the process gone: the figure is simply absent
        return None


def _latencies(server: ScoringServer, users: np.ndarray, k: int = 10) -> tuple[list[float], list[list[int]]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    lat, answers = [], []
    try:
        for u in users:
            body = json.dumps({"dataframe_split": {"columns": ["user_id", "k"], "data": [[int(u), k]]}})
            t = time.perf_counter()
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            lat.append((time.perf_counter() - t) * 1000)
            if r.status != 200:
                raise RuntimeError(f"server answered {r.status}: {raw[:300]!r}")
            answers.append([p["item_id"] for p in json.loads(raw)["predictions"]])
    finally:
        conn.close()
    return lat, answers


def _measure(serve: ServerFactory, uri: str, tracking_uri: str, users, log_path: str) -> dict:
    server = serve(uri, tracking_uri, log_path=log_path)
    t0 = time.perf_counter()
    try:
        server.start().wait_ready()
        load_s = time.perf_counter() - t0
        _latencies(server, users[:20])  # warm-up
        lat, answers = _latencies(server, users)
        rss = _server_rss_mb(server)
    finally:
        server.stop()
    return {
        "load_seconds": load_s,
        "server_rss_mb": rss,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "requests": len(lat),
        "answers": answers,
    }


def in_process_p50_ms(model_uri: str, users) -> float:
    """p50 of ``PyFuncModel.predict`` for one user (schema enforcement included, no HTTP):
    the model's own part of a request."""
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    frames = [pd.DataFrame({"user_id": [int(u)], "k": [10]}) for u in users]
    for f in frames[:20]:
        model.predict(f)
    lat = []
    for f in frames:
        t = time.perf_counter()
        model.predict(f)
        lat.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(lat, 50))


def recall_at_k(approx: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(approx, exact, strict=True)]))


def bench_size(serve, base, split, n_items: int, users, tracking_uri: str, work: Path, seed: int) -> dict:
    cat = fitted_catalogue(base, n_items, seed)
    logged = _log_models(cat, _catalogue_split(split, n_items), work)
    res = {"items": n_items}
    for name in ("noop", "exact", "ann"):
        log.info("%d items: serving %s", n_items, name)
        res[name] = _measure(serve, logged[name]["model_uri"], tracking_uri, users, str(work / f"{name}-{n_items}.log"))
        res[name]["in_process_p50_ms"] = in_process_p50_ms(logged[name]["model_uri"], users)
        if name != "noop":
            res[name]["artifact_mb"] = logged[name]["bytes"] / 2**20
            res[name]["log_seconds"] = logged[name]["log_seconds"]
    res["recall_at_10"] = recall_at_k(res["ann"]["answers"], res["exact"]["answers"])
    for name in ("noop", "exact", "ann"):
        res[name].pop("answers")
    return res


def run_bench(serve: ServerFactory, max_items: int = 1_000_000, requests: int = 300, seed: int = 42, workdir=None):
    import mlflow

    from . import model as M
    from .data import leave_one_out
    from .sequences import all_sequences
    from .train import fit_model, load_data, model_config

    work = Path(workdir or tempfile.mkdtemp(prefix="recsys-catalogue-"))
    tracking_uri = local_store(work, "recsys-catalogue")
    mlflow.set_experiment("recsys-catalogue")
    split = leave_one_out(load_data(None, seed=seed))
    fitted = fit_model(split, model_config(seed, None, None))
    base = M.export_towers(fitted.model, split.user_ids, split.item_ids, all_sequences(split))
    users = np.random.default_rng(seed).choice(split.user_ids, size=requests, replace=True)
    sizes = [n for n in SIZES if n <= max_items] or [max_items]
    results = [bench_size(serve, base, split, n, users, tracking_uri, work, seed) for n in sizes]
    return {"host": {"cpus": os.cpu_count()}, "requests_per_server": requests, "sizes": results, "workdir": str(work)}
