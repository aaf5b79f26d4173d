"""`xregion drill SCENARIO`: Locust load with a fault schedule, measured, reported and logged to MLflow.

Merged at the top level of the `xregion` CLI. Never imports Locust (which monkey-patches the
interpreter for gevent): Locust runs in its own processes.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from xregion.loadtests.scenarios import SCENARIOS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)

_SCENARIO_HELP = "One of: " + ", ".join(SCENARIOS) + " (loadtests/README.md describes each)."


def _fmt(v, unit: str = "", pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if pct:
        return f"{v * 100:.3f} %"
    return f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}"


@app.command()
def drill(
    scenario: str = typer.Argument(..., help=_SCENARIO_HELP),
    duration: float = typer.Option(60.0, "--duration", help="Seconds of load (Locust -t)."),
    load: float | None = typer.Option(
        None,
        "--load",
        help="Serving load as a share of the capacity measured on this "
        "platform (`xregion bench capacity`; measured first when missing). Default 0.5, "
        "unless --users or --serving-rate set the load by hand.",
    ),
    users: int | None = typer.Option(
        None,
        "--users",
        help="Locust users in all (scientists and release managers "
        "included); with --serving-rate, the load by hand instead of --load.",
    ),
    workers: int = typer.Option(0, "--workers", help="Distributed mode: a Locust master and N worker processes."),
    spawn_rate: float | None = typer.Option(None, help="Users started per second (default: all at once)."),
    fault_at: float | None = typer.Option(None, help="Seconds after the start of the load (default 30 % of it)."),
    restore_at: float | None = typer.Option(None, help="When to bring the region back (default 75 %)."),
    objectives: Path | None = typer.Option(
        None, "--objectives", help="Objectives YAML (default loadtests/objectives.yaml)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Report directory (default XREGION_HOME/drills/<time>-<scenario>)."
    ),
    max_requests: int | None = typer.Option(None, help="Stop the load after this many requests."),
    scientists: int | None = typer.Option(None, help="Scientist users (default per scenario)."),
    release_managers: int | None = typer.Option(None, help="Release manager users (default per scenario)."),
    serving_rate: float | None = typer.Option(None, help="Requests/s per serving user (by hand; default 2)."),
    scientist_rate: float = typer.Option(2.0, help="Operations/s per scientist."),
    timeout: float = typer.Option(5.0, help="Client timeout (s) per request or operation; slower counts as failed."),
    seed: int = typer.Option(0, help="Seed of the request mix."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log the drill as an MLflow run."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Run a drill: load through the front door and MLflow, inject the scenario's faults, measure
    availability, RTO, latency and RPO, write an HTML report and log it to MLflow (experiment
    `drills`). Exit 0 when the objectives are met, 1 when not, 2 when the drill cannot run."""
    from xregion.home import xregion_home
    from xregion.loadtests.load import LoadError
    from xregion.loadtests.objectives import ObjectivesError
    from xregion.loadtests.runner import run_drill
    from xregion.loadtests.scenarios import DrillError

    from .common import act_as, config_or_exit

    cfg = config_or_exit()
    act_as("release-manager", cfg)  # the drill registers and promotes (bad-model) and archives its run

    def progress(msg: str) -> None:
        console.print(f"[dim]{msg}[/dim]")

    try:
        with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links; stdout is for --json
            summary = run_drill(
                scenario,
                duration=duration,
                load=load if load is not None else (None if users or serving_rate else 0.5),
                users=users or 8,
                workers=workers,
                spawn_rate=spawn_rate,
                fault_at=fault_at,
                restore_at=restore_at,
                objectives_file=objectives,
                out_dir=out,
                max_requests=max_requests,
                scientists=scientists,
                release_managers=release_managers,
                serving_rate=serving_rate or 2.0,
                scientist_rate=scientist_rate,
                timeout=timeout,
                seed=seed,
                to_mlflow=not no_mlflow,
                cfg=cfg,
                home=xregion_home(),
                progress=progress,
            )
    except (DrillError, ObjectivesError, LoadError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(brief(summary), indent=2, default=str))
    else:
        show(summary)
    raise typer.Exit(0 if summary["objectives_met"] else 1)


def brief(s: dict) -> dict:
    """The JSON summary printed by --json (the full one is summary.json next to the report)."""
    keys = [
        "scenario",
        "objectives_met",
        "objectives",
        "gate_kind",
        "gated",
        "requests",
        "failed",
        "availability",
        "by_kind",
        "rto_s",
        "restore_rto_s",
        "failed_after_restore",
        "latency_steady",
        "latency_failover",
        "rpo",
        "schedule",
        "fault_ts",
        "recovered_ts",
        "load_start",
        "load_end",
        "users",
        "workers",
        "mix",
        "failed_steps",
        "steps",
        "errors",
        "report",
        "out_dir",
        "mlflow",
        "definition",
        "promoted_ts",
        "switched_to_bad",
        "rollback_after_switch_s",
        "events",
    ]
    return {k: s.get(k) for k in keys if k in s}


def show(s: dict) -> None:
    out = Console()
    table = Table(
        "objective",
        "target",
        "measured",
        "met",
        "note",
        title=f"drill {s['scenario']}: {'[green]objectives met[/green]' if s['objectives_met'] else '[red]objectives NOT met[/red]'}",
    )
    for o in s["objectives"]:
        pct = o["objective"] == "availability"
        table.add_row(
            o["objective"],
            _fmt(o["target"], pct=pct and o["target"] is not None),
            _fmt(o["actual"], pct=pct and o["actual"] is not None),
            {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}[o["met"]],
            o["note"],
        )
    out.print(table)
    ls, lf = s["latency_steady"], s["latency_failover"]
    out.print(
        f"{s['gated']['requests']} {s['gate_kind']} requests, {s['gated']['failed']} failed "
        f"({s['requests']} requests in all, {s['failed']} failed)"
    )
    out.print(
        f"latency p50/p95/p99: steady {_fmt(ls['p50_ms'])}/{_fmt(ls['p95_ms'])}/{_fmt(ls['p99_ms'])} ms, "
        f"failover {_fmt(lf['p50_ms'])}/{_fmt(lf['p95_ms'])}/{_fmt(lf['p99_ms'])} ms"
    )
    for k, v in (s.get("rpo") or {}).items():
        out.print(
            f"RPO {k}: "
            + (v["error"] if v.get("error") else f"{v['missing']} of {v['acknowledged']} acknowledged missing")
        )
    out.print(f"report: {s['report']}")
    if (s.get("mlflow") or {}).get("run_id"):
        out.print(f"MLflow: {s['mlflow']['tracking_uri']} experiment drills, run {s['mlflow']['run_id']}")


bench_app = typer.Typer()


@bench_app.command("capacity")
def bench_capacity(
    p99_ms: float = typer.Option(50.0, help="The latency objective: p99 of successful requests, ms."),
    workers: int = typer.Option(2, help="Locust worker processes (a master and N workers, as on real hosts)."),
    step_s: float = typer.Option(15.0, help="Seconds of load per step."),
    start_rps: float = typer.Option(50.0, help="Requests per second of the first step."),
    growth: float = typer.Option(1.5, help="Each step offers this many times the last."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log the run to MLflow."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON on stdout."),
) -> None:
    """The front door's maximum sustainable requests/s (distributed Locust ramps until the p99 objective
    breaks or requests fail), latency at 25/50/75/100 % of it, and where the CPU goes. Needs a running
    platform with serving (`xregion up`, then `xregion router start` or `xregion demo`)."""
    from xregion.home import xregion_home
    from xregion.loadtests import capacity
    from xregion.loadtests.load import LoadError
    from xregion.loadtests.preflight import wait_serving

    from .common import act_as, config_or_exit

    cfg, home = config_or_exit(), xregion_home()
    act_as("scientist", cfg)  # the capacity run is archived in MLflow
    ok, detail = wait_serving(cfg, timeout=20, consecutive=3)
    if not ok:
        console.print(
            f"[red]the front door {cfg.serving.frontend_url} does not serve ({detail})[/red]: start the "
            "platform and serving first (`xregion up`, then `xregion router start`)"
        )
        raise typer.Exit(2)
    try:
        cap = capacity.measure(
            cfg,
            home,
            p99_ms=p99_ms,
            workers=workers,
            step_s=step_s,
            start_rps=start_rps,
            growth=growth,
            progress=lambda m: console.print(f"[dim]{m}[/dim]"),
        )
    except (LoadError, RuntimeError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    out = cap.as_dict()
    if not no_mlflow:
        with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links; stdout is for --json
            out["mlflow_run_id"] = capacity.log_to_mlflow(cfg, cap)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    table = Table(
        "share",
        "offered/s",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "failed",
        "CPU cores by component",
        title=f"capacity {cap.max_rps:.0f} requests/s at p99 <= {p99_ms:g} ms",
    )
    for share, s in cap.at_share.items():
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(s.cpu_cores.items()))
        table.add_row(
            share,
            f"{s.offered_rps:.0f}",
            f"{s.achieved_rps:.0f}",
            f"{s.p50_ms:.1f}",
            f"{s.p99_ms:.1f}",
            str(s.failed),
            cpu,
        )
    Console().print(table)
    console.print(f"plot: {cap.plot}")
