"""The three personas as Locust users.

* ``ServingUser``: recommendations through the serving front door (``POST /invocations``) with one
  user id drawn with a Zipf-like skew from the model's known users (a few unknown ids for the
  cold-start path) and ``k`` varied (5/10/20).
* ``ScientistUser``: logs runs through MLflow's REST API (create run, log metrics, upload small
  artifacts, finish run); each operation tries the regions' servers in write order and is timed as
  one request with Locust's ``request.measure``; every acknowledged write is recorded for RPO.
* ``ReleaseManagerUser``: promotes and rolls back the registered model at a low rate (stage +
  alias, through the MLflow REST API, so the server-side registry gate applies).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from bisect import bisect_left
from itertools import accumulate
from pathlib import Path

import gevent
from locust import FastHttpUser, User, constant, constant_throughput, task

from xregion.loadtests.locust_hooks import _config, account, acks
from xregion.loadtests.requestlog import Ack
from xregion.mlflow_rest import MlflowRest, Unavailable

# --- request mix -------------------------------------------------------------------------------


def _known_users(spec: str) -> list[int]:
    if "-" in spec and not Path(spec).exists():
        a, b = spec.split("-", 1)
        return list(range(int(a), int(b) + 1))
    return [int(line) for line in Path(spec).read_text().split() if line.strip()]


class ZipfUsers:
    """Draws user ids with P(rank r) ~ 1 / r**s over a seeded shuffle of the known ids, plus a small
    share of ids the model has never seen."""

    def __init__(self, ids: list[int], s: float, unknown: float, rng: random.Random):
        self.ids = list(ids)
        rng.shuffle(self.ids)
        self.cum = list(accumulate(1.0 / (r**s) for r in range(1, len(self.ids) + 1)))
        self.unknown = unknown
        self.unknown_base = max(self.ids) + 1_000_000
        self.rng = rng

    def draw(self) -> int:
        if self.rng.random() < self.unknown:
            return self.unknown_base + self.rng.randrange(1000)
        x = self.rng.random() * self.cum[-1]
        return self.ids[min(bisect_left(self.cum, x), len(self.ids) - 1)]


_users_cache: dict[str, list[int]] = {}


class ServingUser(FastHttpUser):
    """Recommendation traffic through the serving front door (geventhttpclient: a load generator that
    costs a fraction of the CPU of requests', so that capacity runs measure the platform, not Locust)."""

    weight = 1
    wait_time = constant_throughput(2.0)
    ks = (5, 10, 20)
    k_weights = (0.3, 0.5, 0.2)

    def on_start(self):
        opts = self.environment.parsed_options
        spec = opts.xr_user_ids if opts else "1-1000"
        if spec not in _users_cache:
            _users_cache[spec] = _known_users(spec)
        seed = (opts.xr_seed if opts else 0) * 1_000_003 + id(self) % 1_000_003
        self.rng = random.Random(seed)
        self.users = ZipfUsers(
            _users_cache[spec],
            opts.xr_zipf if opts else 1.1,
            opts.xr_unknown_users if opts else 0.01,
            random.Random(opts.xr_seed if opts else 0),
        )
        self.users.rng = self.rng  # one popularity order for every user, its own draws

    @task
    def recommend(self):
        uid, k = self.users.draw(), self.rng.choices(self.ks, self.k_weights)[0]
        if self._score(uid, k, first=True) == "cut":
            self._score(uid, k, first=False)

    def _score(self, uid: int, k: int, first: bool) -> str:
        """One scoring request: "ok", "failed", or "cut" when the answer was cut short after its
        headers (its server died while it answered: the front door had already passed the headers
        on, so neither HAProxy nor the router can retry it). Scoring is idempotent, and a caller
        retries that once, as an HTTP client with a retry policy does: the cut answer is logged
        under kind "retried" (shown in the report beside "serving"), the retry as itself."""
        with self.client.post(
            "/invocations",
            json={"dataframe_records": [{"user_id": uid, "k": k}]},
            name="serving: invocations",
            catch_response=True,
        ) as resp:
            cut = resp.request_meta.get("exception")  # reading the body failed
            if first and resp.status_code == 200 and cut is not None:
                resp.request_meta["name"] = "retried: invocations cut short"
                resp.failure(f"answer cut short after its headers ({type(cut).__name__}): retried")
                return "cut"
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:120]}")
                return "failed"
            try:
                preds = resp.json()["predictions"]
            except (ValueError, KeyError, TypeError):
                resp.failure(f"not a predictions payload: {resp.text[:120]}")
                return "failed"
            if not preds or len(preds) > k or any(p.get("user_id") != uid for p in preds):
                resp.failure(f"wrong answer for user {uid}, k={k}: {len(preds)} rows")
                return "failed"
            return "ok"


class _TimedUser(User):
    """A user whose operations are not single HTTP calls: each is timed and reported with Locust's
    ``request.measure`` (so it shows in Locust's statistics and in the request log)."""

    abstract = True

    def timed(self, name: str, fn) -> Exception | None:
        """Run ``fn`` as one measured request; the exception it raised, if any (never re-raised)."""
        with self.environment.events.request.measure("MLFLOW", name) as meta:
            fn()
        return meta["exception"]


class ScientistUser(_TimedUser):
    """Scientists logging runs: create a run, log a metric per step, an artifact every 5th step,
    finish the run after 20 steps. Acknowledged metric values and artifacts are recorded."""

    weight = 0
    fixed_count = 1  # non-zero so that Locust keeps the class; the init listener sets the real count
    wait_time = constant_throughput(2.0)
    steps_per_run = 20

    def on_start(self):
        opts = self.environment.parsed_options
        cfg = _config()
        endpoints = [r.mlflow_url for r in cfg.write_order()]
        timeout = opts.xr_timeout if opts else 3.0
        # each server gets a share of the timeout: a frozen one (accepts, never answers) must not
        # take the whole budget from the next region's server
        self.mlflow = MlflowRest(
            endpoints, timeout, auth=account("scientist"), per_endpoint=max(1.5, timeout / (len(endpoints) + 1))
        )
        self.experiment = opts.xr_experiment if opts else "drill-scientists"
        self.experiment_id = None
        self.run_id = None
        self.artifact_path = None
        self.step = 0

    def _experiment_id(self) -> str:
        try:
            body, _ = self.mlflow.call(
                "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": self.experiment}
            )
            return body["experiment"]["experiment_id"]
        except Unavailable as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
        try:
            body, _ = self.mlflow.call(
                "POST", "/api/2.0/mlflow/experiments/create", json_body={"name": self.experiment}
            )
            return body["experiment_id"]
        except Unavailable as exc:  # another scientist created it meanwhile
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
            body, _ = self.mlflow.call(
                "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": self.experiment}
            )
            return body["experiment"]["experiment_id"]

    def _create_run(self):
        if self.experiment_id is None:
            self.experiment_id = self._experiment_id()
        body, _ = self.mlflow.call(
            "POST",
            "/api/2.0/mlflow/runs/create",
            json_body={
                "experiment_id": self.experiment_id,
                "start_time": int(time.time() * 1000),
                "run_name": f"drill-scientist-{os.getpid()}-{id(self) % 100000}",
                "tags": [{"key": "xregion.drill", "value": "scientist"}],
            },
        )
        info = body["run"]["info"]
        uri = info.get("artifact_uri", "")
        if not uri.startswith("mlflow-artifacts:"):
            raise Unavailable(f"run artifact URI {uri!r} is not proxied (mlflow-artifacts:)")
        self.run_id = info["run_id"]
        self.artifact_path = uri.split(":", 1)[1].lstrip("/")
        self.step = 0

    def _log_metric(self):
        step, value = self.step, round(random.random(), 6)
        _, ep = self.mlflow.call(
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            json_body={
                "run_id": self.run_id,
                "metrics": [{"key": "loss", "value": value, "timestamp": int(time.time() * 1000), "step": step}],
            },
        )
        acks().add(Ack(time.time(), "metric", self.run_id, "loss", step, repr(value), "", ep))

    def _log_artifact(self):
        step = self.step
        content = f"run {self.run_id} step {step} {random.random()}\n".encode() * 16
        name = f"notes/step-{step:04d}.txt"
        _, ep = self.mlflow.call(
            "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{self.artifact_path}/{name}", data=content
        )
        acks().add(
            Ack(
                time.time(),
                "artifact",
                self.run_id,
                f"{self.artifact_path}/{name}",
                step,
                "",
                hashlib.sha256(content).hexdigest(),
                ep,
            )
        )

    def _finish(self):
        self.mlflow.call(
            "POST",
            "/api/2.0/mlflow/runs/update",
            json_body={"run_id": self.run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)},
        )
        self.run_id = None

    @task
    def work(self):
        if self.run_id is None:
            self.timed("tracking: create-run", self._create_run)
            return
        if self.step and self.step % 5 == 0:
            exc = self.timed("tracking: log-artifact", self._log_artifact)
        else:
            exc = self.timed("tracking: log-metric", self._log_metric)
        if exc is None:
            self.step += 1
        if self.step >= self.steps_per_run:
            self.timed("tracking: finish-run", self._finish)


class ReleaseManagerUser(_TimedUser):
    """Release managers: every interval, move the model's Production stage and champion alias to
    the next good version (``promote``), and back (``rollback``)."""

    weight = 0
    fixed_count = 1  # non-zero so that Locust keeps the class; the init listener sets the real count
    wait_time = constant(30.0)

    def on_start(self):
        opts = self.environment.parsed_options
        cfg = _config()
        self.model = cfg.registry.model_name
        self.stage, self.alias = cfg.registry.production_stage, cfg.registry.production_alias
        self.mlflow = MlflowRest(
            [r.mlflow_url for r in cfg.write_order()],
            max(10.0, opts.xr_timeout if opts else 3.0),
            auth=account("release-manager"),
        )
        self.versions = [v for v in (opts.xr_release_versions if opts else "").split(",") if v]
        self.turn = 0
        gevent.sleep(random.random() * 2)  # release managers do not act in lock-step

    def _move(self, version: str):
        self.mlflow.call(
            "POST",
            "/api/2.0/mlflow/model-versions/transition-stage",
            json_body={"name": self.model, "version": version, "stage": self.stage, "archive_existing_versions": True},
        )
        self.mlflow.call(
            "POST",
            "/api/2.0/mlflow/registered-models/alias",
            json_body={"name": self.model, "alias": self.alias, "version": version},
        )

    @task
    def release(self):
        if not self.versions:
            return
        self.turn += 1
        if len(self.versions) == 1 or self.turn % 2 == 1:
            target, name = self.versions[-1 if len(self.versions) == 1 else 0], "release: promote"
        else:
            target, name = self.versions[1], "release: rollback"
        self.timed(name, lambda: self._move(target))


class ReaderUser(_TimedUser):
    """Readers: what the MLflow UI and GET clients do (search experiments and runs, get a run, get the
    registered model), each timed as ``reads: ...``. Endpoints in write order, each with a share of
    the timeout, so that a lost or frozen region's server costs a retry on the next, not the read."""

    weight = 0
    fixed_count = 1  # non-zero so that Locust keeps the class; the init listener sets the real count
    wait_time = constant_throughput(2.0)

    def on_start(self):
        opts = self.environment.parsed_options
        cfg = _config()
        endpoints = [r.mlflow_url for r in cfg.write_order()]
        timeout = opts.xr_timeout if opts else 3.0
        self.mlflow = MlflowRest(
            endpoints, timeout, auth=account("serving"), per_endpoint=max(1.0, timeout / (len(endpoints) + 1))
        )
        self.model = cfg.registry.model_name
        self.experiment_ids: list[str] = []
        self.run_ids: list[str] = []
        self.turn = random.randrange(4)

    def _search(self):
        body, _ = self.mlflow.call("POST", "/api/2.0/mlflow/experiments/search", json_body={"max_results": 20})
        self.experiment_ids = [e["experiment_id"] for e in body.get("experiments", [])]
        if self.experiment_ids:
            body, _ = self.mlflow.call(
                "POST",
                "/api/2.0/mlflow/runs/search",
                json_body={"experiment_ids": self.experiment_ids[:5], "max_results": 20},
            )
            self.run_ids = [r["info"]["run_id"] for r in body.get("runs", [])] or self.run_ids

    def _get_run(self):
        if not self.run_ids:
            return self._search()
        self.mlflow.call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": random.choice(self.run_ids)})

    def _get_model(self):
        self.mlflow.call("GET", "/api/2.0/mlflow/registered-models/get", params={"name": self.model})

    @task
    def read(self):
        self.turn += 1
        kind = self.turn % 4
        if kind == 0:
            self.timed("reads: search", self._search)
        elif kind == 1:
            self.timed("reads: get-model", self._get_model)
        else:
            self.timed("reads: get-run", self._get_run)
