"""Helpers of the DR tests: a populated MLflow, artifacts copied to every region, counts read back."""

from __future__ import annotations

import time
from pathlib import Path

from xregion.config import XRegionConfig
from xregion.store import RegionStore, stores


def populate(cfg: XRegionConfig, tmp: Path, tag: str = "dr") -> dict:
    """Experiments, runs with params/metrics/tags/artifacts, a registered model with versions, a stage
    and an alias, all through region a's MLflow server; every artifact object then in every region."""
    from mlflow import MlflowClient

    client = MlflowClient(cfg.primary.mlflow_url, registry_uri=cfg.primary.mlflow_url)
    exp = client.create_experiment(f"{tag}-{time.time_ns()}")
    runs = []
    for i in range(3):
        run = client.create_run(exp, tags={"purpose": tag})
        rid = run.info.run_id
        client.log_param(rid, "alpha", str(i / 10))
        for step in range(5):
            client.log_metric(rid, "loss", 1.0 / (step + 1 + i), step=step)
        f = tmp / f"notes-{i}.txt"
        f.write_text(f"run {i} of {tag}")
        client.log_artifact(rid, str(f))
        client.set_terminated(rid)
        runs.append(rid)
    replicate_all(cfg)  # before promotion: the registry gate wants every artifact in every region
    name = f"{tag}-model-{time.time_ns()}"
    client.create_registered_model(name)
    versions = [
        client.create_model_version(name, client.get_run(rid).info.artifact_uri, run_id=rid) for rid in runs[:2]
    ]
    client.transition_model_version_stage(name, versions[0].version, "Production")
    client.set_registered_model_alias(name, "champion", versions[1].version)
    return {"experiment": exp, "runs": runs, "model": name, "versions": [v.version for v in versions]}


def replicate_all(cfg: XRegionConfig) -> int:
    """Copy every artifact object of any region to the regions that lack it (the test's stand-in for
    the replicator, so these tests do not depend on the artifact plugin)."""
    prefix = cfg.artifacts.prefix + "/"
    st = stores(cfg)
    listing = {n: {o.key for o in s.list(prefix)} for n, s in st.items()}
    copied = 0
    for src_name, keys in listing.items():
        for key in keys:
            data = None
            for dst_name, dst in st.items():
                if key not in listing[dst_name]:
                    data = data if data is not None else st[src_name].get_bytes(key)
                    dst.put_bytes(key, data)
                    listing[dst_name].add(key)
                    copied += 1
    return copied


def region_store(cfg: XRegionConfig, name: str) -> RegionStore:
    return RegionStore(cfg.region(name))


class MetricLogger:
    """Logs one metric per step through an MLflow server in a loop (a thread), remembering every
    acknowledged step; failures (the database is gone) are counted and the loop goes on."""

    def __init__(self, url: str, max_steps: int = 20000, max_seconds: float = 300.0):
        import threading

        from mlflow import MlflowClient

        self.client = MlflowClient(url)
        exp = self.client.create_experiment(f"dr-load-{time.time_ns()}")
        self.run_id = self.client.create_run(exp).info.run_id
        self.acked: list[tuple[int, float]] = []  # (step, time acknowledged)
        self.sent: dict[int, float] = {}  # step -> time the request was sent
        self.failures = 0
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        t0 = time.monotonic()
        for step in range(self.max_steps):
            if self._stop.is_set() or time.monotonic() - t0 > self.max_seconds:
                return
            self.sent[step] = time.time()
            try:
                self.client.log_metric(self.run_id, "load", float(step), step=step)
                self.acked.append((step, time.time()))
            except Exception:
                self.failures += 1
                time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_acks(self, n: int, after: float = 0.0, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = sum(1 for _, t in self.acked if t > after)
            if got >= n:
                return got
            time.sleep(0.05)
        return sum(1 for _, t in self.acked if t > after)

    def first_ack_sent_after(self, t: float) -> float | None:
        """When the first write *sent* after ``t`` was acknowledged (the client's view of recovery)."""
        return min((ts for s, ts in self.acked if self.sent.get(s, 0) > t), default=None)

    def missing(self, url: str) -> list[int]:
        """Acknowledged steps that the database (read through ``url``) does not have."""
        from mlflow import MlflowClient

        present = {m.step for m in MlflowClient(url).get_metric_history(self.run_id, "load")}
        return sorted(s for s, _ in self.acked if s not in present)


def quick_http(monkeypatch) -> None:
    """No client-side retries: the loop itself retries, and acknowledgements stay exact."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
