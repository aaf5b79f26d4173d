"""Locust plumbing for the drills: the ``--xr-*`` options, the per-request log every Locust process
writes (``<run dir>/requests-<pid>.csv``), the acknowledged-write log (``acks-<pid>.csv``), the start
mark the drill measures its schedule from, and the request bound.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gevent
from locust import constant, constant_throughput, events
from locust.runners import MasterRunner, WorkerRunner

from xregion.loadtests.requestlog import AckWriter, RequestWriter


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
    from xregion.loadtests.personas import ReaderUser, ReleaseManagerUser, ScientistUser, ServingUser

    cfg = _config()
    if not environment.host:
        environment.host = cfg.serving.frontend_url
    ServingUser.host = environment.host
    ServingUser.wait_time = constant_throughput(opts.xr_serving_rate)
    ServingUser.connection_timeout = min(1.0, opts.xr_timeout)  # read when each user's client is made
    ServingUser.network_timeout = opts.xr_timeout
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


def account(role: str) -> tuple[str, str] | None:
    """(user, password) of the embedded platform's account for a persona (XREGION_HOME/secrets), or
    None: a deployment's Locust holds no credentials and runs serving traffic only."""
    from xregion.home import xregion_home
    from xregion.infra.embedded import auth

    env = auth.existing_client_env(xregion_home(), role, _config())
    return (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) if env else None
