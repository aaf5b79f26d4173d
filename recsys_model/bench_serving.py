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

import contextlib
import http.client
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """``mlflow models serve`` as a supervised service (its own XREGION_HOME-like directory),
    so that it is started, health-checked and stopped like every other process of the platform."""

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str | None = None,
        port: int | None = None,
        log_path: str | None = None,
        startup_timeout: float = 240.0,
    ):
        from xregion.infra.embedded.supervisor import Service, Supervisor

        self.model_uri, self.tracking_uri = model_uri, tracking_uri
        self.port = port or free_port()
        self.home = Path(tempfile.mkdtemp(prefix="mlflow-serve-"))
        self.sup = Supervisor(self.home)
        env = {
            "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),  # serve execs `uvicorn`
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
        if tracking_uri:  # models:/ URIs resolve in this registry, whatever this process inherited
            env["MLFLOW_TRACKING_URI"] = env["MLFLOW_REGISTRY_URI"] = tracking_uri
        self.service = Service(
            name=f"serve-{self.port}",
            region="local",
            component="serving",
            argv=[
                os.path.join(VENV_BIN, "mlflow"),
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            listen=("127.0.0.1", self.port),
            health={"type": "http", "url": f"http://127.0.0.1:{self.port}/ping"},
            env=env,
            start_timeout=startup_timeout,
        )
        self.log_path = log_path or str(self.sup.log(self.service.name))

    @property
    def pid(self) -> int | None:
        proc = self.sup.process(self.service.name)
        return proc.pid if proc else None

    def start(self) -> ModelServer:
        self.sup.spawn(self.service)
        return self

    def wait_ready(self) -> ModelServer:
        from xregion.infra.embedded.supervisor import SupervisorError

        try:
            self.sup.wait_healthy([self.service])
        except SupervisorError as err:
            raise RuntimeError(f"server for {self.model_uri}: {err}") from None
        return self

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.sup.log(self.service.name).read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        self.sup.stop(self.service.name)
        if self.log_path != str(self.sup.log(self.service.name)):
            with contextlib.suppress(OSError):
                Path(self.log_path).write_bytes(self.sup.log(self.service.name).read_bytes())

    def post(self, body, conn: http.client.HTTPConnection | None = None, timeout: float = 30):
        """POST /invocations; returns (status, parsed JSON or text)."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            conn.request("POST", "/invocations", body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, raw.decode("utf-8", "replace")
        finally:
            if own:
                conn.close()

    def __enter__(self) -> ModelServer:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _payloads(kind: str, users: np.ndarray, n: int) -> list[bytes]:
    out = []
    for j in range(n):
        u = int(users[j % len(users)])
        body = {"dataframe_split": {"columns": ["user_id"], "data": [[u]]}} if kind == "ours" else {"inputs": [u]}
        out.append(json.dumps(body).encode())
    return out


def sequential(server: ModelServer, payloads: list[bytes], seconds: float) -> dict:
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


def concurrent(server: ModelServer, payloads: list[bytes], clients: int, seconds: float) -> dict:
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
    server: ModelServer,
    kind: str,
    users: np.ndarray,
    requests: int,
    levels: list[int],
    per_level: int,
    seconds: float,
    say=lambda *_: None,
) -> dict:
    warm = _payloads(kind, users[::-1], 20)
    for p in warm:
        status, body = server.post(p)
        if status != 200:
            raise RuntimeError(f"{kind} server answered {status}: {str(body)[:500]}")
    say(f"{kind}: sequential latency, {requests} requests")
    seq = sequential(server, _payloads(kind, users, requests), seconds)
    conc = []
    for c in levels:
        say(f"{kind}: throughput at concurrency {c}")
        conc.append(concurrent(server, _payloads(kind, users, per_level), c, seconds))
    return {"sequential": seq, "concurrency": conc}


def log_stock_model(keras_model, example_users: np.ndarray):
    """Log the Keras model with the stock ``mlflow.tensorflow`` flavor in the active run."""
    import warnings

    import keras
    import mlflow
    import tensorflow as tf

    example = np.asarray(example_users[:2], dtype=np.int64)
    reqs = [
        f"mlflow=={mlflow.__version__}",
        f"tensorflow-cpu=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"numpy=={np.__version__}",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.tensorflow.log_model(
            keras_model, name="stock_keras", input_example=example, pip_requirements=reqs
        )


def run_bench(
    requests: int = 200,
    levels=(1, 4, 8),
    per_level: int = 400,
    seconds: float = 10.0,
    epochs: int | None = None,
    seed: int = 42,
    console=None,
    workdir: str | None = None,
    synthetic_kwargs: dict | None = None,
) -> dict:
    import platform

    import mlflow

    from .train import run_training

    say = (lambda m: console.print(f"[dim]{m}[/dim]")) if console is not None else (lambda m: None)
    work = Path(workdir or tempfile.mkdtemp(prefix="recsys-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    exp = "recsys-bench"
    if mlflow.get_experiment_by_name(exp) is None:
        mlflow.create_experiment(exp, artifact_location=(work / "artifacts").as_uri())

    res = run_training(
        epochs=epochs,
        tracking_uri=tracking_uri,
        model_name=None,
        experiment=exp,
        seed=seed,
        synthetic_kwargs=synthetic_kwargs,
        console=console,
        progress=console is not None,
    )
    with mlflow.start_run(run_id=res.run_id):
        stock_info = log_stock_model(res.keras_model, res.split.user_ids)
    users = np.random.default_rng(seed).permutation(res.split.user_ids)

    ours = ModelServer(res.model_uri, tracking_uri, log_path=str(work / "serve-ours.log"))
    stock = ModelServer(stock_info.model_uri, tracking_uri, log_path=str(work / "serve-stock.log"))
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
        out["stock"] = measure(stock, "stock", users, requests, list(levels), max(20, per_level // 4), seconds, say)
    finally:
        ours.stop()
        stock.stop()

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


def render_table(result: dict):
    from rich.table import Table

    t = Table(title=f"mlflow models serve, loopback, {result['host']['cpus']} CPUs, 1 worker")
    for c in ("path", "p50 ms", "p99 ms", *[f"rps c={c['clients']}" for c in result["ours"]["concurrency"]], "errors"):
        t.add_column(c, justify="right")
    for name in ("ours", "stock"):
        r = result[name]
        errs = r["sequential"]["errors"] + sum(c["errors"] for c in r["concurrency"])
        t.add_row(
            name,
            f"{r['sequential']['p50_ms']:.2f}",
            f"{r['sequential']['p99_ms']:.2f}",
            *[f"{c['rps']:.0f}" for c in r["concurrency"]],
            str(errs),
        )
    q = result["quality"]
    t.caption = (
        f"stock p50 / ours p50 = {result['ratio_stock_p50_over_ours_p50']:.1f}x; "
        f"HR@10 (99 neg) {q['hr_at_10_sampled']:.3f} vs popularity {q['pop_hr_at_10_sampled']:.3f}"
    )
    return t
