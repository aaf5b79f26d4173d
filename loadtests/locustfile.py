"""Locust users for the platform's three personas, and the per-request log drills need.

* ``ServingUser``: recommendations through the serving front door (``serving.frontend_url``):
  ``POST /invocations`` with one user id drawn with a Zipf-like skew from the model's known users
  (a few unknown ids for the cold-start path) and ``k`` varied (5/10/20).
* ``ScientistUser``: logs runs through MLflow's REST API (create run, log metrics, upload small
  artifacts, finish run). Each operation tries the regions' MLflow servers in write order (a
  client with a list of endpoints) and is timed as one request with Locust's request event, so
  it appears in Locust's statistics as ``tracking: ...``; every acknowledged write is recorded
  for RPO.
* ``ReleaseManagerUser``: promotes and rolls back the registered model at a low rate
  (stage + alias, through the MLflow REST API, so the server-side registry gate applies).

Run by ``xregion drill`` (headless, local or ``--workers N``), or directly:

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 60s [--host FRONT_DOOR]

Options (``--xr-*``, or the ``XR_*`` environment variables) choose the mix, the rates and where
the request log goes; the regions file (``XREGION_CONFIG``) gives every URL.
Every process that runs users appends each request to ``<run dir>/requests-<pid>.csv``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from bisect import bisect_left
from itertools import accumulate
from pathlib import Path

import gevent
import requests
from locust import HttpUser, User, constant, constant_throughput, events, task
from locust.runners import MasterRunner, WorkerRunner
from xregion.loadtests.requestlog import Ack, AckWriter, RequestWriter

# --- options -----------------------------------------------------------------------------------


@events.init_command_line_parser.add_listener
def _options(parser):
    g = parser.add_argument_group("xregion")
    g.add_argument(
        "--xr-run-dir",
        env_var="XR_RUN_DIR",
        default="locust-run",
        help="Directory of the per-request logs (requests-<pid>.csv, acks-<pid>.csv).",
    )
    g.add_argument(
        "--xr-scientists",
        env_var="XR_SCIENTISTS",
        type=int,
        default=1,
        help="Number of ScientistUser (fixed); ServingUser gets the rest of -u.",
    )
    g.add_argument(
        "--xr-readers",
        env_var="XR_READERS",
        type=int,
        default=0,
        help="Number of ReaderUser (fixed): MLflow reads (search, get run, get model), kind 'reads'.",
    )
    g.add_argument(
        "--xr-release-managers",
        env_var="XR_RELEASE_MANAGERS",
        type=int,
        default=0,
        help="Number of ReleaseManagerUser (fixed).",
    )
    g.add_argument(
        "--xr-serving-rate",
        env_var="XR_SERVING_RATE",
        type=float,
        default=2.0,
        help="Requests per second per ServingUser.",
    )
    g.add_argument(
        "--xr-scientist-rate",
        env_var="XR_SCIENTIST_RATE",
        type=float,
        default=2.0,
        help="Operations per second per ScientistUser.",
    )
    g.add_argument(
        "--xr-release-interval",
        env_var="XR_RELEASE_INTERVAL",
        type=float,
        default=30.0,
        help="Seconds between two registry changes of a ReleaseManagerUser.",
    )
    g.add_argument(
        "--xr-release-versions",
        env_var="XR_RELEASE_VERSIONS",
        default="",
        help="Comma-separated good model versions the release managers promote in turn.",
    )
    g.add_argument(
        "--xr-user-ids",
        env_var="XR_USER_IDS",
        default="1-1000",
        help="Known user ids: a file with one id per line, or a range A-B.",
    )
    g.add_argument("--xr-zipf", env_var="XR_ZIPF", type=float, default=1.1, help="Zipf exponent of user popularity.")
    g.add_argument(
        "--xr-unknown-users",
        env_var="XR_UNKNOWN_USERS",
        type=float,
        default=0.01,
        help="Share of requests for users the model does not know (cold start).",
    )
    g.add_argument(
        "--xr-timeout",
        env_var="XR_TIMEOUT",
        type=float,
        default=5.0,
        help="Client timeout (s) of one request or operation; longer counts as a failure.",
    )
    g.add_argument(
        "--xr-max-requests",
        env_var="XR_MAX_REQUESTS",
        type=int,
        default=0,
        help="Stop the whole run after this many requests (0: no bound besides -t).",
    )
    g.add_argument("--xr-seed", env_var="XR_SEED", type=int, default=0, help="Seed of the request mix.")
    g.add_argument(
        "--xr-experiment",
        env_var="XR_EXPERIMENT",
        default="drill-scientists",
        help="MLflow experiment the scientists log to.",
    )


def _config():
    from xregion.config import load_config

    return load_config()


_log: RequestWriter | None = None
_acks: AckWriter | None = None
_opts = None


def _run_dir() -> Path:
    return Path(getattr(_opts, "xr_run_dir", None) or os.environ.get("XR_RUN_DIR") or "locust-run")


def acks() -> AckWriter:
    global _acks
    if _acks is None:
        _acks = AckWriter(_run_dir() / f"acks-{os.getpid()}.csv")
    return _acks


@events.init.add_listener
def _init(environment, **_kw):
    global _log, _opts
    _opts = environment.parsed_options
    opts = _opts
    if opts is None:
        return
    cfg = _config()
    if not environment.host:
        environment.host = cfg.serving.frontend_url
    ServingUser.host = environment.host
    ServingUser.wait_time = constant_throughput(opts.xr_serving_rate)
    ScientistUser.wait_time = constant_throughput(opts.xr_scientist_rate)
    ReleaseManagerUser.wait_time = constant(opts.xr_release_interval)
    # fixed counts for the low-rate personas; the serving users take the rest of -u
    ScientistUser.fixed_count = max(0, opts.xr_scientists)
    ReleaseManagerUser.fixed_count = max(0, opts.xr_release_managers)
    ReaderUser.fixed_count = max(0, opts.xr_readers)
    ReaderUser.wait_time = constant_throughput(opts.xr_scientist_rate)
    # a persona with no users is not run at all (a zero weight would confuse Locust's dispatcher)
    drop = {c for c in (ScientistUser, ReleaseManagerUser, ReaderUser) if not c.fixed_count}
    environment.user_classes = [c for c in environment.user_classes if c not in drop]
    if isinstance(environment.runner, MasterRunner):
        gevent.spawn(_bound_requests, environment)
        return  # the master runs no users and writes no request log
    run_dir = _run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    _log = RequestWriter(run_dir / f"requests-{os.getpid()}.csv")
    gevent.spawn(_flusher)
    if not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_bound_requests, environment)


@events.test_start.add_listener
def _started(environment, **_kw):
    # the drill measures its fault schedule from the first process that starts the test
    if _opts is None:
        return
    d = _run_dir()
    d.mkdir(parents=True, exist_ok=True)
    (d / f"started-{os.getpid()}.json").write_text(json.dumps({"ts": time.time(), "pid": os.getpid()}))


def _flusher():
    while True:
        gevent.sleep(1.0)
        if _log:
            _log.flush()


def _bound_requests(environment):
    limit = getattr(environment.parsed_options, "xr_max_requests", 0) or 0
    if not limit:
        return
    while True:
        gevent.sleep(0.5)
        runner = environment.runner
        if runner is not None and runner.stats.total.num_requests >= limit:
            print(f"xregion: request bound {limit} reached; stopping", flush=True)
            runner.quit()
            return


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception=None, start_time=None, **_kw):
    if _log is None:
        return
    ts = start_time if start_time else time.time() - (response_time or 0) / 1000.0
    kind = name.split(":", 1)[0] if ":" in name else request_type
    error = "" if exception is None else f"{type(exception).__name__}: {exception}"
    _log.add(ts, kind, name, exception is None, float(response_time or 0.0), error.replace("\n", " "))


@events.quitting.add_listener
def _close(**_kw):
    for w in (_log, _acks):
        if w is not None:
            w.close()


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


class ServingUser(HttpUser):
    """Recommendation traffic through the serving front door."""

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
        self.timeout = (min(1.0, opts.xr_timeout), opts.xr_timeout) if opts else (1.0, 3.0)

    @task
    def recommend(self):
        uid, k = self.users.draw(), self.rng.choices(self.ks, self.k_weights)[0]
        with self.client.post(
            "/invocations",
            json={"dataframe_records": [{"user_id": uid, "k": k}]},
            name="serving: invocations",
            timeout=self.timeout,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:120]}")
                return
            try:
                preds = resp.json()["predictions"]
            except (ValueError, KeyError, TypeError):
                resp.failure(f"not a predictions payload: {resp.text[:120]}")
                return
            if not preds or len(preds) > k or any(p.get("user_id") != uid for p in preds):
                resp.failure(f"wrong answer for user {uid}, k={k}: {len(preds)} rows")


# --- MLflow over REST with a list of endpoints -------------------------------------------------


class Unavailable(Exception):
    """No endpoint acknowledged the operation."""


class MlflowRest:
    """MLflow's REST API over the regions' servers in write order: the first that answers 2xx wins."""

    def __init__(self, endpoints: list[str], timeout: float, per_endpoint: float | None = None):
        self.endpoints = endpoints
        self.timeout = timeout
        self.per_endpoint = per_endpoint  # read timeout per endpoint (a frozen server must not take it all)
        self.session = requests.Session()

    def call(self, method: str, path: str, *, json_body=None, data=None, params=None) -> tuple[dict, str]:
        """(response JSON, endpoint). Each endpoint gets one attempt; a 4xx is final (the request is wrong)."""
        deadline = time.monotonic() + self.timeout
        errors = []
        for ep in self.endpoints:
            left = deadline - time.monotonic()
            if left <= 0.05:
                break
            try:
                read = min(left, self.per_endpoint) if self.per_endpoint else left
                resp = self.session.request(
                    method, ep + path, json=json_body, data=data, params=params, timeout=(min(1.0, left), read)
                )
            except requests.RequestException as exc:
                errors.append(f"{ep}: {type(exc).__name__}")
                continue
            if resp.status_code < 300:
                try:
                    return (resp.json() if resp.content else {}), ep
                except ValueError:
                    return {}, ep
            errors.append(f"{ep}: HTTP {resp.status_code} {resp.text[:100]}")
            if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                break
        raise Unavailable("; ".join(errors) or "timed out")


class _TimedUser(User):
    """A user whose operations are not single HTTP calls: each is timed and reported with
    Locust's request event (so it appears in Locust's statistics and in the request log)."""

    abstract = True

    def timed(self, name: str, fn):
        start = time.time()
        t0 = time.perf_counter()
        exc = None
        result = None
        try:
            result = fn()
        except Exception as e:  # reported as a failed request, never raised into Locust
            exc = e
        self.environment.events.request.fire(
            request_type="MLFLOW",
            name=name,
            response_time=(time.perf_counter() - t0) * 1000.0,
            response_length=0,
            exception=exc,
            context={},
            start_time=start,
        )
        return result, exc


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
        self.mlflow = MlflowRest(endpoints, timeout, per_endpoint=max(1.5, timeout / (len(endpoints) + 1)))
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
            _, exc = self.timed("tracking: log-artifact", self._log_artifact)
        else:
            _, exc = self.timed("tracking: log-metric", self._log_metric)
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
        self.mlflow = MlflowRest([r.mlflow_url for r in cfg.write_order()], max(10.0, opts.xr_timeout if opts else 3.0))
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
        self.mlflow = MlflowRest(endpoints, timeout, per_endpoint=max(1.0, timeout / (len(endpoints) + 1)))
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
