"""The drill runner: Locust load (``load.py``), the scenario's fault schedule in this process, then the
measurement, the report and the MLflow run.

Bounds: the load lasts ``duration`` seconds (Locust's ``-t``), stops early after ``max_requests``
requests, and the Locust processes are stopped if they outlive ``duration + 60`` seconds.
Everything binds and connects to the regions file's loopback endpoints.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xregion import events
from xregion.config import XRegionConfig, load_config
from xregion.home import xregion_home

from . import metrics as M
from . import objectives as O
from .load import LoadSpec, LocustLoad
from .preflight import known_user_ids, wait_serving
from .requestlog import ack_files, read_acks, read_requests, request_files, write_merged
from .scenarios import SCENARIOS, Ctx, DrillError, Scenario, good_versions
from .schedule import Schedule, default_schedule, run_step

log = logging.getLogger(__name__)


@dataclass
class DrillOptions:
    """What an operator chose (``xregion drill`` options); None means the scenario's default."""

    duration: float = 60.0
    users: int = 8
    workers: int = 0
    spawn_rate: float | None = None
    fault_at: float | None = None
    restore_at: float | None = None
    objectives_file: str | Path | None = None
    out_dir: Path | None = None
    max_requests: int | None = None
    scientists: int | None = None
    release_managers: int | None = None
    serving_rate: float = 2.0
    scientist_rate: float = 2.0
    timeout: float = 5.0
    seed: int = 0
    to_mlflow: bool = True
    load: float | None = None  # serving load as a share of the measured capacity (users and rate follow)
    capacity_rps: float | None = None  # the capacity it was a share of


@dataclass
class DrillRun:
    """A drill being run: the scenario, resolved options, context and what happened so far."""

    sc: Scenario
    opts: DrillOptions
    ctx: Ctx
    out_dir: Path
    n_sci: int
    n_rm: int
    fault_at: float | None
    restore_at: float | None
    objectives: dict
    steps: list[dict] = field(default_factory=list)
    t0: float = 0.0
    t_end: float = 0.0
    codes: list = field(default_factory=list)


# --- the drill -----------------------------------------------------------------------------------
def plan(scenario: str, opts: DrillOptions, cfg: XRegionConfig, home: Path, progress) -> DrillRun:
    """Check the options against the scenario and the platform; nothing is started yet."""
    from xregion.infra.embedded.supervisor import Supervisor

    if scenario not in SCENARIOS:
        raise DrillError(f"unknown scenario {scenario!r}; scenarios: {', '.join(SCENARIOS)}")
    sc = SCENARIOS[scenario]
    if not 0 < opts.duration <= 3600:
        raise DrillError("--duration must be between 1 and 3600 seconds")
    n_sci = sc.scientists if opts.scientists is None else opts.scientists
    n_rm = sc.release_managers if opts.release_managers is None else opts.release_managers
    others = n_sci + n_rm + sc.readers
    if opts.load is None and opts.users < others + (1 if sc.gate == "serving" else 0):
        raise DrillError(
            f"--users {opts.users} is too few for {n_sci} scientist(s), {n_rm} release manager(s), "
            f"{sc.readers} reader(s) and the serving users"
        )
    fault_at, restore_at = default_schedule(opts.duration, sc, opts.fault_at, opts.restore_at)
    if opts.load is not None:
        _size_load(opts, sc, cfg, home, others, progress)
    if opts.max_requests is None:
        rate = max(opts.serving_rate, opts.scientist_rate)
        opts.max_requests = int(min(5_000_000, max(1000, opts.users * rate * opts.duration * 3)))
    out_dir = Path(opts.out_dir) if opts.out_dir else home / "drills" / f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario}"
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)
    ctx = Ctx(cfg=cfg, home=home, sup=Supervisor(home), progress=progress, run_dir=out_dir / "raw")
    ok, detail = wait_serving(cfg, timeout=30, consecutive=3)  # the platform must be healthy to be measured
    if not ok:
        raise DrillError(
            f"the serving front door {cfg.serving.frontend_url} does not answer scoring requests "
            f"({detail}); start serving first (`xregion router start`)"
        )
    return DrillRun(sc, opts, ctx, out_dir, n_sci, n_rm, fault_at, restore_at, O.load(opts.objectives_file, scenario))


def _size_load(opts: DrillOptions, sc: Scenario, cfg: XRegionConfig, home: Path, others: int, progress) -> None:
    """Serving users and their rate for ``opts.load`` times the platform's measured capacity."""
    from . import capacity

    if not 0 < opts.load <= 1.5:
        raise DrillError("--load is a share of the measured capacity: between 0 and 1.5 (e.g. 0.5)")
    cap = capacity.for_drill(cfg, home, progress)
    rps = opts.load * cap.max_rps
    users, rate = capacity.split_rate(rps, opts.workers)
    opts.users, opts.serving_rate = users + others, rate
    opts.capacity_rps = cap.max_rps
    progress(
        f"load {opts.load:.0%} of the measured capacity ({cap.max_rps:.0f}/s): {rps:.0f} requests/s from "
        f"{users} serving users"
    )


def load_spec(run: DrillRun, versions: list[str], user_ids: str) -> LoadSpec:
    o, cfg = run.opts, run.ctx.cfg
    xr = [
        "--xr-run-dir",
        str(run.ctx.run_dir),
        "--xr-scientists",
        str(run.n_sci),
        "--xr-release-managers",
        str(run.n_rm),
        "--xr-readers",
        str(run.sc.readers),
        "--xr-serving-rate",
        str(o.serving_rate),
        "--xr-scientist-rate",
        str(o.scientist_rate),
        "--xr-release-versions",
        ",".join(versions[:2]),
        "--xr-user-ids",
        user_ids,
        "--xr-timeout",
        str(o.timeout),
        "--xr-max-requests",
        str(o.max_requests),
        "--xr-seed",
        str(o.seed),
    ]
    classes = (
        (["ServingUser"] if o.users > run.n_sci + run.n_rm + run.sc.readers else [])
        + (["ScientistUser"] if run.n_sci else [])
        + (["ReleaseManagerUser"] if run.n_rm else [])
        + (["ReaderUser"] if run.sc.readers else [])
    )
    env = {"XREGION_HOME": str(run.ctx.home)}
    if cfg.source:
        env["XREGION_CONFIG"] = str(Path(cfg.source).resolve())
    return LoadSpec(cfg.serving.frontend_url, o.users, o.spawn_rate or o.users, o.duration, o.workers, classes, xr, env)


def run_load(run: DrillRun) -> None:
    """The load, with the fault schedule running against it; then the scenario's finish."""
    ctx, sc, o = run.ctx, run.sc, run.opts
    versions = good_versions(ctx)
    if sc.prepare:
        run.steps.append(run_step(ctx, "prepare", sc.prepare, time.time()))
        if run.steps[-1]["error"]:
            raise DrillError(f"prepare failed: {run.steps[-1]['error']}")
    load = LocustLoad(
        ctx.home, ctx.run_dir, load_spec(run, versions, known_user_ids(ctx.cfg, ctx.run_dir, ctx.progress))
    )
    steps = [(run.fault_at, "fault", sc.inject)] if sc.inject else []
    if sc.restore and run.restore_at is not None:
        steps.append((run.restore_at, "restore", sc.restore))
    ctx.progress(
        f"drill {sc.name}: {o.users} users for {o.duration:g}s"
        + (f" ({o.workers} workers)" if o.workers else "")
        + (f", fault at t={run.fault_at:g}s" if run.fault_at is not None else "")
        + (f", restore at t={run.restore_at:g}s" if run.restore_at is not None else "")
    )
    schedule = None
    try:
        load.start()
        run.t0 = load.wait_started()
        schedule = Schedule(ctx, run.t0, steps)
        schedule.start()
        run.codes = load.wait(timeout=o.duration + 60)
        schedule.join(timeout=600)
    finally:
        if schedule is not None:
            schedule.stop.set()
        load.stop()
    run.t_end = time.time()
    run.steps += schedule.done
    if sc.finish:
        run.steps.append(run_step(ctx, "finish", sc.finish, run.t0))


def measure(run: DrillRun) -> dict:
    """The summary: availability, RTO, latency and RPO from the request log and the event log."""
    ctx, sc, o = run.ctx, run.sc, run.opts
    healthy, detail = wait_serving(ctx.cfg, timeout=120)
    if not healthy:
        ctx.progress(f"the front door does not answer after the drill: {detail}")
    reqs = read_requests(request_files(ctx.run_dir))
    load_end = min(run.t0 + o.duration, max((r.ts for r in reqs), default=run.t0 + o.duration) + 0.001)
    fault_step = next((s for s in run.steps if s["label"] == "fault"), None)
    restore_step = next((s for s in run.steps if s["label"] == "restore"), None)
    evs = [e for e in events.read(ctx.home, since=run.t0 - 2) if e["ts"] <= run.t_end + 600]
    fault_ts, extra = _fault_time(run, evs, fault_step)
    phase_end = restore_step["ts_start"] if restore_step else (load_end if fault_ts is not None else None)
    summary = M.summarize(
        reqs, load_start=run.t0, load_end=load_end, fault_ts=fault_ts, phase_end=phase_end, gate_kind=sc.gate
    )
    summary.update(
        {
            "scenario": sc.name,
            "description": sc.description,
            "duration": o.duration,
            "users": o.users,
            "workers": o.workers,
            "mix": {
                "serving": max(0, o.users - run.n_sci - run.n_rm - sc.readers),
                "scientists": run.n_sci,
                "release_managers": run.n_rm,
                "readers": sc.readers,
            },
            "load": {
                "share": o.load,
                "capacity_rps": o.capacity_rps,
                "serving_rps": round(o.serving_rate * max(0, o.users - run.n_sci - run.n_rm - sc.readers), 1),
            },
            "schedule": {"fault_at": run.fault_at, "restore_at": run.restore_at},
            "load_start": run.t0,
            "load_end": load_end,
            "fault_ts": fault_ts,
            "fault_label": sc.fault_label,
            "restore_ts": restore_step["ts_start"] if restore_step else None,
            "restore_label": sc.restore_label,
            "phase_end": phase_end,
            "steps": run.steps,
            "locust_exit_codes": run.codes,
            "errors": M.error_counts(reqs),
            "serving_healthy_after": healthy,
            "max_requests": o.max_requests,
            "out_dir": str(run.out_dir),
            "events": [e for e in evs if not e["kind"].startswith("drill.step")],
            **extra,
        }
    )
    if restore_step and restore_step["ts_start"] + M.WINDOW_S <= load_end:
        gated = M.of_kind(reqs, sc.gate)
        summary["restore_rto_s"] = M.rto(gated, restore_step["ts_start"], load_end)
        summary["failed_after_restore"] = M.failed(M.between(gated, restore_step["ts_start"], None))
    if sc.rpo:
        from .readback import read_back

        acks = read_acks(ack_files(ctx.run_dir))
        summary["rpo"] = read_back(ctx.cfg, acks) if acks else {}
    # what a scenario measured itself (region drills: failover breakdown, registry RPO, split brain)
    if ctx.state.get("rpo"):
        summary.setdefault("rpo", {}).update(ctx.state["rpo"])
    summary.update(ctx.state.get("summary", {}))
    _judge(run, summary)
    write_merged(reqs, run.out_dir / "requests.csv")
    return summary


def _fault_time(run: DrillRun, evs: list[dict], step: dict | None) -> tuple[float | None, dict]:
    """When the fault hit: the scenario's own hook, else the first injected fault of the fault step."""
    if step is None:
        return None, {}
    if run.sc.fault_time:
        return run.sc.fault_time(run.ctx, evs, step)
    faults = [
        e["ts"]
        for e in evs
        if e["kind"].startswith("fault.")
        and e["kind"] != "fault.thaw"
        and step["ts_start"] - 0.5 <= e["ts"] <= step["ts_end"] + 0.5
    ]
    return (min(faults) if faults else step["ts_start"]), {}


def _judge(run: DrillRun, summary: dict) -> None:
    failed_steps = [s["label"] for s in summary["steps"] if s["error"]]
    summary["failed_steps"] = failed_steps
    checks = O.check(run.objectives, summary)
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
    summary["objectives_target"] = {k: v for k, v in run.objectives.items() if k != "source"}
    summary["objectives_source"] = run.objectives["source"]
    summary["objectives_met"] = O.met(checks)


def report(run: DrillRun, summary: dict) -> None:
    """The HTML report and timeline, the summary file, and the MLflow run."""
    from . import report as R

    out = run.out_dir
    reqs = read_requests(request_files(run.ctx.run_dir))
    R.timeline_png(reqs, summary, summary["events"], out / "timeline.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    R.html_report(summary, out / "timeline.png", summary["events"], out / "report.html")
    if run.opts.to_mlflow:
        from .archive import log_to_mlflow

        try:
            # MLflow prints the run's links on stdout: the command line decides where stdout goes
            summary["mlflow"] = log_to_mlflow(run.ctx.cfg, run.ctx.home, out, summary)
        except Exception as exc:  # the drill's verdict does not depend on its archive
            summary["mlflow"] = {"error": f"{type(exc).__name__}: {exc}"}
            run.ctx.progress(f"could not log the drill to MLflow: {summary['mlflow']['error']}")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["report"] = str(out / "report.html")


def run_drill(
    scenario: str,
    *,
    cfg: XRegionConfig | None = None,
    home: Path | None = None,
    progress: Callable[[str], None] = log.info,
    **options,
) -> dict:
    """Run one drill end to end and return its summary (``objectives_met`` says whether it passed)."""
    cfg = cfg or load_config()
    home = Path(home or xregion_home())
    run = plan(scenario, DrillOptions(**options), cfg, home, progress)
    run_load(run)
    summary = measure(run)
    report(run, summary)
    return summary
