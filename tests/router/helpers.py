"""Serving test helpers: the policy and tuning of the tests, the Serving handle and a load generator."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from xregion import events
from xregion.config import XRegionConfig
from xregion.infra.serving.haproxy import Tuning
from xregion.infra.serving.state import Policy
from xregion.plugins import registry_client

from ..registry.helpers import client, log_tiny

BODY = json.dumps({"dataframe_records": [{"user_id": 3, "k": 10}]})
POLICY = Policy(bake_s=8, max_error_rate=0.05, min_requests=10, poll_s=0.5, start_timeout_s=300)
TUNING = Tuning()


@dataclass
class Serving:
    cfg: XRegionConfig
    home: Path
    model: str
    mlflow_url: str
    frontend: str

    def client(self):
        return client(self.mlflow_url)

    def new_version(self, fail=False, label="", example=True, **config) -> str:
        return log_tiny(self.mlflow_url, self.model, fail=fail, label=label, example=example, **config)

    def promote(self, version: str, reason: str = "") -> None:
        registry_client.promote(self.client(), self.cfg, self.model, version, reason=reason, who="test")

    def wait_event(self, kind: str, since: float, timeout: float = 240, **match) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in events.read(self.home, kind=kind, since=since):
                if e["kind"] == kind and all(str(e.get(k)) == str(v) for k, v in match.items()):
                    return e
            time.sleep(0.2)
        tail = events.read(self.home, since=since)[-10:]
        raise AssertionError(f"no {kind} event matching {match} within {timeout}s; recent events: {tail}")


class Load:
    """Continuous scoring requests through the front door from ``threads`` keep-alive clients,
    bounded by ``max_s``; every answer recorded as (time, status, version label)."""

    def __init__(self, url: str, threads: int = 2, max_s: float = 300):
        self.parts = urlsplit(url)
        self.results: list[tuple[float, object, str | None]] = []
        self.lock = threading.Lock()
        self.stop_at = time.time() + max_s
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=60)

    def _run(self):
        conn = None
        while not self.stopped.is_set() and time.time() < self.stop_at:
            label = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.parts.hostname, self.parts.port, timeout=30)
                conn.request("POST", "/invocations", BODY, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                if status == 200:
                    label = json.loads(data)["predictions"][0]["label"]
            except Exception as err:  # a failed request is a result, not a crash of the load
                status, conn = type(err).__name__, None
            with self.lock:
                self.results.append((time.time(), status, label))
            time.sleep(0.005)

    def since(self, t: float) -> list[tuple]:
        with self.lock:
            return [r for r in self.results if r[0] >= t]

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[tuple]:
        with self.lock:
            return [r for r in self.results if since <= r[0] <= until and r[1] != 200]

    def wait_count(self, n: int, since: float, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while len(self.since(since)) < n and time.time() < deadline:
            time.sleep(0.1)
        assert len(self.since(since)) >= n, f"only {len(self.since(since))} answers since {since}"
