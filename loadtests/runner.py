"""The drill runner: Locust in separate processes (headless; one, or a master and N workers on
loopback), the fault schedule in this process, then the measurement, the report and the MLflow run.

Locust runs in its own processes because it monkey-patches the interpreter for gevent: the fault
schedule (psycopg2, subprocesses, a database failover that blocks for seconds) must not stall the
users' greenlets, or the drill would measure itself. Every Locust process appends each request to
its own CSV in the run directory; this process merges them.

Bounds: the load lasts ``duration`` seconds (Locust's ``-t``), stops early after ``max_requests``
requests, and the Locust processes are killed if they outlive ``duration + 60`` seconds.
Everything binds and connects to the regions file's loopback endpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from xregion import events
from xregion.config import XRegionConfig, load_config
from xregion.home import xregion_home

from . import metrics as M
from . import objectives as O
from .requestlog import ack_files, read_acks, read_requests, request_files, write_merged
from .scenarios import SCENARIOS, Ctx, DrillError, Scenario, good_versions

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DRILLS_EXPERIMENT = "drills"


# --- the front door --------------------------------------------------------------------------


def probe_serving(cfg: XRegionConfig, user_id: int = 1, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        resp = requests.post(
            f"{cfg.serving.frontend_url}/invocations",
            timeout=timeout,
            json={"dataframe_records": [{"user_id": user_id, "k": 5}]},
        )
    except requests.RequestException as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if resp.status_code != 200:
        return False, f"HTTP {resp.status_code}: {resp.text[:200]}"
    try:
        preds = resp.json()["predictions"]
    except (ValueError, KeyError):
        return False, f"not a predictions payload: {resp.text[:200]}"
    return bool(preds), f"{len(preds)} predictions"


def wait_serving(cfg: XRegionConfig, timeout: float = 90.0, consecutive: int = 5) -> tuple[bool, str]:
    """Until the front door answers ``consecutive`` scoring requests in a row (or the timeout)."""
    deadline = time.monotonic() + timeout
    streak, detail = 0, "not tried"
    while time.monotonic() < deadline:
        ok, detail = probe_serving(cfg, 1 + streak)
        streak = streak + 1 if ok else 0
        if streak >= consecutive:
            return True, detail
        time.sleep(0.2 if ok else 0.5)
    return False, detail


def known_user_ids(cfg: XRegionConfig, run_dir: Path, progress: Callable[[str], None]) -> str:
    """A file of the production model's known user ids (from its towers artifact), for the Zipf draw."""
    import numpy as np
    from xregion.plugins import registry_client

    try:
        cl = registry_client.client(cfg, cfg.primary.mlflow_url)
        mv = registry_client.production_version(cl, cfg, cfg.registry.model_name)
        if mv is None:
            raise DrillError("no production version")
        import mlflow.artifacts

        source = cl.get_model_version_download_uri(cfg.registry.model_name, mv.version)
        with tempfile.TemporaryDirectory() as tmp:
            towers = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{source}/artifacts/towers.npz", dst_path=tmp, tracking_uri=cfg.primary.mlflow_url
            )
            ids = np.load(towers)["user_ids"]
        path = run_dir / "user_ids.txt"
        path.write_text("\n".join(str(int(i)) for i in ids) + "\n")
        progress(f"{len(ids)} known users of {cfg.registry.model_name} v{mv.version}")
        return str(path)
    except Exception as exc:  # the mix still works with a plain id range
        progress(f"cannot read the model's known users ({type(exc).__name__}: {exc}); drawing from 1-1000")
        return "1-1000"


# --- Locust processes --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoadProcesses:
    """Locust, headless: one local process, or a master and ``workers`` workers on loopback."""

    def __init__(
        self,
        run_dir: Path,
        host: str,
        users: int,
        spawn_rate: float,
        duration: float,
        workers: int,
        xr_args: list[str],
        classes: list[str],
        env: dict[str, str],
    ):
        self.run_dir = run_dir
        self.procs: list[subprocess.Popen] = []
        self.duration = duration
        common = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", *xr_args]
        run = [
            "--headless",
            "--host",
            host,
            "-u",
            str(users),
            "-r",
            str(spawn_rate),
            "-t",
            f"{int(round(duration))}s",
            "--stop-timeout",
            "3",
            "--only-summary",
            "--csv",
            str(run_dir / "locust"),
            *classes,
        ]
        self.env = {**os.environ, **env}
        if workers <= 0:
            self.cmds = [("locust", common + run)]
        else:
            port = _free_port()
            self.cmds = [
                (
                    "locust-master",
                    common
                    + run
                    + [
                        "--master",
                        "--master-bind-host",
                        "127.0.0.1",
                        "--master-bind-port",
                        str(port),
                        "--expect-workers",
                        str(workers),
                        "--expect-workers-max-wait",
                        "60",
                    ],
                )
            ]
            self.cmds += [
                (f"locust-worker-{i}", common + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)])
                for i in range(1, workers + 1)
            ]

    def start(self) -> None:
        for name, cmd in self.cmds:
            log = open(self.run_dir / f"{name}.log", "wb")
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    cwd=str(self.run_dir),
                    start_new_session=True,
                )
            )
            log.close()

    def wait_started(self, timeout: float = 90.0) -> float:
        """Wall time at which the test started (Locust's test_start in the first process that ran it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            marks = sorted(self.run_dir.glob("started-*.json"))
            if marks:
                return min(json.loads(m.read_text())["ts"] for m in marks)
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise DrillError(
                    f"Locust exited before the test started; see {self.run_dir}/locust*.log:\n" + self.tail()
                )
            time.sleep(0.1)
        raise DrillError(f"Locust did not start within {timeout:.0f}s; see {self.run_dir}/locust*.log")

    def wait(self, timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        """Stop every Locust process this runner started (by process group), SIGTERM then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in self.procs if p.poll() is None]
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            for p in alive:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    def tail(self, lines: int = 15) -> str:
        out = []
        for f in sorted(self.run_dir.glob("locust*.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


# --- the schedule ------------------------------------------------------------------------------


class Schedule(threading.Thread):
    """Runs the scenario's steps at their times (seconds after the load started), one after another."""

    def __init__(self, ctx: Ctx, t0: float, steps: list[tuple[float, str, Callable[[Ctx], dict]]]):
        super().__init__(daemon=True, name="drill-schedule")
        self.ctx, self.t0, self.steps = ctx, t0, steps
        self.done: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        for at, label, fn in self.steps:
            wait = self.t0 + at - time.time()
            if wait > 0 and self.stop.wait(wait):
                return
            self.done.append(run_step(self.ctx, label, fn, self.t0))


def run_step(ctx: Ctx, label: str, fn: Callable[[Ctx], dict], t0: float) -> dict:
    start = time.time()
    ctx.progress(f"t={start - t0:6.2f}s  {label}")
    events.record("drill.step", ctx.home, step=label)
    try:
        result, error = fn(ctx), None
    except Exception as exc:  # a failed step is reported in the summary; the drill goes on measuring
        result, error = None, f"{type(exc).__name__}: {exc}"
        ctx.progress(f"[red]step {label} failed: {error}[/red]")
    end = time.time()
    return {
        "label": label,
        "t": start - t0,
        "ts_start": start,
        "ts_end": end,
        "seconds": round(end - start, 3),
        "result": result,
        "error": error,
    }


# --- read-back (RPO) -----------------------------------------------------------------------------


def read_back(cfg: XRegionConfig, acks: list, timeout: float = 10.0) -> dict:
    """Every acknowledged metric value and artifact, read back through the regions' MLflow servers."""
    endpoints = [r.mlflow_url for r in cfg.write_order()]
    session = requests.Session()

    def get(path: str, **params) -> requests.Response | None:
        for ep in endpoints:
            try:
                resp = session.get(ep + path, params=params, timeout=timeout)
            except requests.RequestException:
                continue
            if resp.status_code < 500:
                return resp
        return None

    out: dict = {}
    metric_acks = [(a.run_id, a.key, a.step) for a in acks if a.kind == "metric"]
    if metric_acks:
        present, error = [], None
        for run_id, key in sorted({(r, k) for r, k, _ in metric_acks}):
            resp = get("/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=key)
            if resp is None:
                error = "no MLflow server answered the read-back"
                break
            if resp.status_code == 200:
                present += [(run_id, key, int(m["step"])) for m in resp.json().get("metrics", [])]
        out["metrics"] = {"error": error} if error else M.rpo(metric_acks, present)
    art_acks = [a for a in acks if a.kind == "artifact"]
    if art_acks:
        present, error = [], None
        for a in art_acks:
            resp = get(f"/api/2.0/mlflow-artifacts/artifacts/{a.key}")
            if resp is None:
                error = "no MLflow server answered the read-back"
                break
            if resp.status_code == 200 and hashlib.sha256(resp.content).hexdigest() == a.sha256:
                present.append((a.run_id, a.key))
        out["artifacts"] = {"error": error} if error else M.rpo([(a.run_id, a.key) for a in art_acks], present)
        if not error:
            out["artifacts"]["in_every_region"] = _in_every_region(cfg, art_acks)
    for v in out.values():
        if "missing_keys" in v:
            v["missing_keys"] = [list(k) for k in v["missing_keys"]]
    return out


def _in_every_region(cfg: XRegionConfig, art_acks: list) -> dict:
    """How many acknowledged artifacts each region's bucket holds with the acknowledged hash."""
    from xregion.store import StoreError, stores

    counts = {}
    for name, store in stores(cfg).items():
        n = 0
        try:
            for a in art_acks:
                info = store.stat(f"{cfg.artifacts.prefix}/{a.key}")
                n += info is not None and info.sha256 == a.sha256
            counts[name] = n
        except StoreError as exc:
            counts[name] = f"unreachable: {exc}"
    return counts


# --- MLflow --------------------------------------------------------------------------------------


def log_to_mlflow(cfg: XRegionConfig, home: Path, out_dir: Path, summary: dict) -> dict:
    """The report, the raw CSV and the summary as a run of the ``drills`` experiment."""
    from mlflow.tracking import MlflowClient
    from xregion.topology import effective_config

    eff = effective_config(cfg, home)
    url = None
    for r in eff.write_order():
        try:
            if requests.get(f"{r.mlflow_url}/health", timeout=3).status_code == 200:
                url = r.mlflow_url
                break
        except requests.RequestException:
            continue
    if url is None:
        return {"error": "no MLflow server answers"}
    cl = MlflowClient(tracking_uri=url)
    exp = cl.get_experiment_by_name(DRILLS_EXPERIMENT)
    exp_id = exp.experiment_id if exp else cl.create_experiment(DRILLS_EXPERIMENT)
    s = summary
    run = cl.create_run(
        exp_id,
        run_name=f"{s['scenario']} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['load_start']))}",
        tags={
            "xregion.drill.scenario": s["scenario"],
            "xregion.drill.objectives_met": str(s["objectives_met"]),
            "xregion.drill.gate": s["gate_kind"],
        },
    )
    rid = run.info.run_id
    params = {
        "scenario": s["scenario"],
        "duration_s": s["duration"],
        "users": s["users"],
        "workers": s["workers"],
        "mix": json.dumps(s["mix"]),
        "fault_at_s": s["schedule"]["fault_at"],
        "restore_at_s": s["schedule"]["restore_at"],
        "objectives": json.dumps(s["objectives_target"]),
    }
    for k, v in params.items():
        cl.log_param(rid, k, str(v))
    mets = {
        "availability": s["gated"]["availability"],
        "availability_all": s["availability"],
        "failed": s["gated"]["failed"],
        "failed_all": s["failed"],
        "requests": s["gated"]["requests"],
        "rto_s": s["rto_s"],
        "p50_ms": s["latency_steady"]["p50_ms"],
        "p95_ms": s["latency_steady"]["p95_ms"],
        "p99_ms": s["latency_steady"]["p99_ms"],
        "failover_p50_ms": s["latency_failover"]["p50_ms"],
        "failover_p95_ms": s["latency_failover"]["p95_ms"],
        "failover_p99_ms": s["latency_failover"]["p99_ms"],
        "objectives_met": 1.0 if s["objectives_met"] else 0.0,
    }
    for kind, v in (s.get("rpo") or {}).items():
        if "missing" in v:
            mets[f"rpo_{kind}"] = v["missing"]
    for k, v in mets.items():
        if v is not None:
            cl.log_metric(rid, k, float(v))
    for name in ("report.html", "requests.csv", "summary.json", "timeline.png"):
        if (out_dir / name).exists():
            cl.log_artifact(rid, str(out_dir / name))
    cl.set_terminated(rid, "FINISHED")
    return {"tracking_uri": url, "experiment_id": exp_id, "run_id": rid}


# --- the drill -----------------------------------------------------------------------------------


def default_schedule(
    duration: float, scenario: Scenario, fault_at: float | None, restore_at: float | None, window: float = M.WINDOW_S
) -> tuple[float | None, float | None]:
    if scenario.inject is None:
        return None, None
    fault_at = float(fault_at) if fault_at is not None else round(max(5.0, 0.3 * duration), 1)
    if scenario.restore is not None:
        restore_at = float(restore_at) if restore_at is not None else round(0.75 * duration, 1)
    else:
        restore_at = None
    end = restore_at if restore_at is not None else duration
    if fault_at < 0 or end - fault_at < window:
        raise DrillError(
            f"the fault phase (t={fault_at:g}s to t={end:g}s) must last at least one {window:g} s "
            f"window for RTO to be measurable; change --duration, --fault-at or --restore-at"
        )
    if restore_at is not None and restore_at > duration:
        raise DrillError(f"--restore-at {restore_at:g} is after the end of the load ({duration:g} s)")
    return fault_at, restore_at


def run_drill(
    scenario: str,
    *,
    duration: float = 60.0,
    users: int = 8,
    workers: int = 0,
    spawn_rate: float | None = None,
    fault_at: float | None = None,
    restore_at: float | None = None,
    objectives_file: str | Path | None = None,
    out_dir: Path | None = None,
    max_requests: int | None = None,
    scientists: int | None = None,
    release_managers: int | None = None,
    serving_rate: float = 2.0,
    scientist_rate: float = 2.0,
    timeout: float = 5.0,
    seed: int = 0,
    to_mlflow: bool = True,
    cfg: XRegionConfig | None = None,
    home: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict:
    """Run one drill end to end and return its summary (``objectives_met`` says whether it passed)."""
    from xregion.infra.embedded.supervisor import Supervisor

    if scenario not in SCENARIOS:
        raise DrillError(f"unknown scenario {scenario!r}; scenarios: {', '.join(SCENARIOS)}")
    sc = SCENARIOS[scenario]
    cfg = cfg or load_config()
    home = Path(home or xregion_home())
    if not 0 < duration <= 3600:
        raise DrillError("--duration must be between 1 and 3600 seconds")
    n_sci = sc.scientists if scientists is None else scientists
    n_rm = sc.release_managers if release_managers is None else release_managers
    n_rm += sc.readers  # readers are fixed-count users too; kept apart below (n_rd)
    n_rd = sc.readers
    if users < n_sci + n_rm + (1 if sc.gate == "serving" else 0):
        raise DrillError(
            f"--users {users} is too few for {n_sci} scientist(s), {n_rm} release manager(s) and the serving users"
        )
    fault_at, restore_at = default_schedule(duration, sc, fault_at, restore_at)
    objectives = O.load(objectives_file, scenario)
    if max_requests is None:
        max_requests = int(min(500_000, max(1000, users * max(serving_rate, scientist_rate) * duration * 3)))

    out_dir = Path(out_dir) if out_dir else home / "drills" / f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario}"
    run_dir = out_dir / "raw"
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(cfg=cfg, home=home, sup=Supervisor(home), progress=progress, run_dir=run_dir)

    # preflight: the platform must be healthy before it is measured
    ok, detail = wait_serving(cfg, timeout=30, consecutive=3)
    if not ok:
        raise DrillError(
            f"the serving front door {cfg.serving.frontend_url} does not answer scoring requests "
            f"({detail}); start serving first (`xregion router start`)"
        )
    versions = good_versions(ctx)
    steps_before = []
    if sc.prepare:
        steps_before.append(run_step(ctx, "prepare", sc.prepare, time.time()))
        if steps_before[-1]["error"]:
            raise DrillError(f"prepare failed: {steps_before[-1]['error']}")
    user_ids = known_user_ids(cfg, run_dir, progress)

    xr = [
        "--xr-run-dir",
        str(run_dir),
        "--xr-scientists",
        str(n_sci),
        "--xr-release-managers",
        str(n_rm - n_rd),
        "--xr-readers",
        str(n_rd),
        "--xr-serving-rate",
        str(serving_rate),
        "--xr-scientist-rate",
        str(scientist_rate),
        "--xr-release-versions",
        ",".join(versions[:2]),
        "--xr-user-ids",
        user_ids,
        "--xr-timeout",
        str(timeout),
        "--xr-max-requests",
        str(max_requests),
        "--xr-seed",
        str(seed),
    ]
    classes = (
        (["ServingUser"] if users > n_sci + n_rm else [])
        + (["ScientistUser"] if n_sci else [])
        + (["ReleaseManagerUser"] if n_rm - n_rd else [])
        + (["ReaderUser"] if n_rd else [])
    )
    env = {"XREGION_HOME": str(home)}
    if cfg.source:
        env["XREGION_CONFIG"] = str(Path(cfg.source).resolve())
    load = LoadProcesses(
        run_dir, cfg.serving.frontend_url, users, spawn_rate or users, duration, workers, xr, classes, env
    )
    steps: list[tuple[float, str, Callable]] = []
    if sc.inject:
        steps.append((fault_at, "fault", sc.inject))
    if sc.restore and restore_at is not None:
        steps.append((restore_at, "restore", sc.restore))
    progress(
        f"drill {scenario}: {users} users for {duration:g}s"
        + (f" ({workers} workers)" if workers else "")
        + (f", fault at t={fault_at:g}s" if fault_at is not None else "")
        + (f", restore at t={restore_at:g}s" if restore_at is not None else "")
    )
    schedule = None
    try:
        load.start()
        t0 = load.wait_started()
        schedule = Schedule(ctx, t0, steps)
        schedule.start()
        codes = load.wait(timeout=duration + 60)
        schedule.join(timeout=600)
    finally:
        if schedule is not None:
            schedule.stop.set()
        load.kill()
    t_end = time.time()
    done = list(schedule.done)
    if sc.finish:
        done.append(run_step(ctx, "finish", sc.finish, t0))
    healthy, detail = wait_serving(cfg, timeout=120)
    if not healthy:
        progress(f"[red]the front door does not answer after the drill: {detail}[/red]")

    reqs = read_requests(request_files(run_dir))
    load_end = min(t0 + duration, max((r.ts for r in reqs), default=t0 + duration) + 0.001)
    fault_step = next((s for s in done if s["label"] == "fault"), None)
    restore_step = next((s for s in done if s["label"] == "restore"), None)
    evs = events.read(home, since=t0 - 2)
    evs = [e for e in evs if e["ts"] <= t_end + 600]
    fault_ts = None
    summary_extra: dict = {}
    if fault_step:
        faults = [
            e["ts"]
            for e in evs
            if e["kind"].startswith("fault.")
            and e["kind"] != "fault.thaw"
            and fault_step["ts_start"] - 0.5 <= e["ts"] <= fault_step["ts_end"] + 0.5
        ]
        if scenario == "bad-model-promotion":
            # the fault reaches the clients when the router switches traffic to the bad version,
            # not when the registry is changed (the new servers take a while to start)
            bad = str(ctx.state.get("bad"))
            faults = [
                e["ts"]
                for e in evs
                if e["kind"] == "switch" and str(e.get("to_version")) == bad and e["ts"] >= fault_step["ts_start"]
            ][:1]
            summary_extra["promoted_ts"] = fault_step["ts_end"]
            summary_extra["switched_to_bad"] = bool(faults)
            if not faults:
                faults = [fault_step["ts_end"]]
            rb = [
                e["ts"]
                for e in evs
                if e["kind"] == "rollback" and str(e.get("from_version")) == bad and e["ts"] >= faults[0]
            ]
            summary_extra["rollback_after_switch_s"] = round(rb[0] - faults[0], 3) if rb else None
        fault_ts = min(faults) if faults else fault_step["ts_start"]
    phase_end = restore_step["ts_start"] if restore_step else (load_end if fault_ts is not None else None)
    summary = M.summarize(
        reqs, load_start=t0, load_end=load_end, fault_ts=fault_ts, phase_end=phase_end, gate_kind=sc.gate
    )
    summary.update(
        {
            "scenario": scenario,
            "description": sc.description,
            "duration": duration,
            "users": users,
            "workers": workers,
            "mix": {
                "serving": max(0, users - n_sci - n_rm),
                "scientists": n_sci,
                "release_managers": n_rm - n_rd,
                "readers": n_rd,
            },
            "schedule": {"fault_at": fault_at, "restore_at": restore_at},
            "load_start": t0,
            "load_end": load_end,
            "fault_ts": fault_ts,
            "fault_label": sc.fault_label,
            "restore_ts": restore_step["ts_start"] if restore_step else None,
            "restore_label": sc.restore_label,
            "phase_end": phase_end,
            "steps": steps_before + done,
            "locust_exit_codes": codes,
            "errors": M.error_counts(reqs),
            "serving_healthy_after": healthy,
            "max_requests": max_requests,
            "events": [{k: v for k, v in e.items()} for e in evs if not e["kind"].startswith("drill.step")],
            "out_dir": str(out_dir),
            **summary_extra,
        }
    )
    if restore_step and restore_step["ts_start"] + M.WINDOW_S <= load_end:
        gated = M.of_kind(reqs, sc.gate)
        summary["restore_rto_s"] = M.rto(gated, restore_step["ts_start"], load_end)
        summary["failed_after_restore"] = M.failed(M.between(gated, restore_step["ts_start"], None))
    if sc.rpo:
        acks = read_acks(ack_files(run_dir))
        summary["rpo"] = read_back(cfg, acks) if acks else {}
    # what a scenario measured itself (e.g. scenarios_region: failover breakdown, registry RPO, split brain)
    if ctx.state.get("rpo"):
        summary.setdefault("rpo", {}).update(ctx.state["rpo"])
    summary.update(ctx.state.get("summary", {}))
    failed_steps = [s["label"] for s in summary["steps"] if s["error"]]
    summary["failed_steps"] = failed_steps
    checks = O.check(objectives, summary)
    if failed_steps:
        checks.append(
            {
                "objective": "drill steps",
                "target": "all ran",
                "actual": ", ".join(failed_steps),
                "met": False,
                "note": "a fault or repair step failed; see steps",
            }
        )
    summary["objectives"] = checks
    summary["objectives_target"] = {k: v for k, v in objectives.items() if k != "source"}
    summary["objectives_source"] = objectives["source"]
    summary["objectives_met"] = O.met(checks)

    from . import report

    write_merged(reqs, out_dir / "requests.csv")
    report.timeline_png(reqs, summary, summary["events"], out_dir / "timeline.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    report.html_report(summary, out_dir / "timeline.png", summary["events"], out_dir / "report.html")
    if to_mlflow:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links; stdout is for --json
                summary["mlflow"] = log_to_mlflow(cfg, home, out_dir, summary)
        except Exception as exc:  # the drill's verdict does not depend on its archive
            summary["mlflow"] = {"error": f"{type(exc).__name__}: {exc}"}
            progress(f"[red]could not log the drill to MLflow: {summary['mlflow']['error']}[/red]")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["report"] = str(out_dir / "report.html")
    return summary
