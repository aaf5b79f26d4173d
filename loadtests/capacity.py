"""`xregion bench capacity`: how many scoring requests per second the front door sustains.

Locust in distributed mode (a master and workers, separate processes as on real hosts) offers a
rate that grows step by step (``growth`` times the last) until the p99 of successful requests
exceeds the objective, a request fails, or the platform stops keeping up (achieved below 85 % of
offered). The maximum sustainable rate is the best achieved rate of a passing step; then the
latency is measured at 25, 50, 75 and 100 % of it. While each step runs, the CPU the model
servers, HAProxy, the router and Locust burn is read from their processes.

The result is cached in ``XREGION_HOME/capacity.json``: drills run at a stated share of it
(``xregion drill SCENARIO --load 0.5``) and measure it first when it is missing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from xregion.config import XRegionConfig
from xregion.infra.embedded.supervisor import Supervisor

from .load import LoadSpec, LocustLoad
from .requestlog import read_requests, request_files

log = logging.getLogger(__name__)
WARMUP_S = 2.0
KEEP_UP = 0.85  # achieved / offered below this: the platform no longer keeps up
CPU_COMPONENTS = ("serving", "haproxy", "router", "locust", "mlflow")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@dataclass
class Step:
    offered_rps: float
    users: int
    achieved_rps: float
    requests: int
    failed: int
    p50_ms: float | None
    p99_ms: float | None
    cpu_cores: dict[str, float]  # CPU seconds per second, by component

    def passes(self, p99_ms: float) -> bool:
        return (
            self.failed == 0
            and self.p99_ms is not None
            and self.p99_ms <= p99_ms
            and self.achieved_rps >= KEEP_UP * self.offered_rps
        )


@dataclass
class Capacity:
    max_rps: float
    objective_p99_ms: float
    workers: int
    ramp: list[Step]
    at_share: dict[str, Step] = field(default_factory=dict)  # "25%" ... "100%"
    measured_at: float = field(default_factory=time.time)
    plot: str | None = None
    report_dir: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Capacity:
        return cls(
            d["max_rps"],
            d["objective_p99_ms"],
            d["workers"],
            [Step(**s) for s in d["ramp"]],
            {k: Step(**s) for k, s in d.get("at_share", {}).items()},
            d.get("measured_at", 0.0),
            d.get("plot"),
            d.get("report_dir"),
        )


def cache_path(home: Path) -> Path:
    return Path(home) / "capacity.json"


def cached(home: Path) -> Capacity | None:
    try:
        return Capacity.from_dict(json.loads(cache_path(home).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cpu(sup: Supervisor) -> dict[str, float]:
    """CPU seconds used so far by every supervised process, summed by component."""
    out: dict[str, float] = {}
    for svc in sup.known():
        if svc.component not in CPU_COMPONENTS:
            continue
        proc = sup.process(svc.name)
        if proc is None:
            continue
        for p in sup.tree(proc.pid, proc.create_time()):
            try:
                t = p.cpu_times()
                out[svc.component] = out.get(svc.component, 0.0) + t.user + t.system
            except psutil.Error:
                continue
    return out


def split_rate(rps: float, workers: int) -> tuple[int, float]:
    """Users and the rate of each: no user asked for more than 25 requests per second, so that a
    user's own round trips never cap the offered rate."""
    users = max(2 * max(workers, 1), math.ceil(rps / 25))
    return users, rps / users


def run_step(cfg: XRegionConfig, home: Path, run_dir: Path, rps: float, seconds: float, workers: int) -> Step:
    from xregion.stats import percentile

    users, rate = split_rate(rps, workers)
    run_dir.mkdir(parents=True, exist_ok=True)
    xr = [
        "--xr-run-dir",
        str(run_dir),
        "--xr-scientists",
        "0",
        "--xr-release-managers",
        "0",
        "--xr-serving-rate",
        f"{rate:.4f}",
        "--xr-timeout",
        "5",
    ]
    env = {"XREGION_HOME": str(home), "XREGION_CONFIG": str(Path(cfg.source).resolve()) if cfg.source else ""}
    load = LocustLoad(
        home, run_dir, LoadSpec(cfg.serving.frontend_url, users, users, seconds, workers, ["ServingUser"], xr, env)
    )
    sup = Supervisor(home)
    load.start()
    try:
        t0 = load.wait_started()
        time.sleep(max(0.0, t0 + WARMUP_S - time.time()))
        before, t_before = _cpu(sup), time.time()
        load.wait(timeout=seconds + 60)
        after, t_after = _cpu(sup), time.time()
    finally:
        load.stop()
    reqs = [r for r in read_requests(request_files(run_dir)) if r.kind == "serving" and r.ts >= t0 + WARMUP_S]
    span = max(1e-6, max((r.ts for r in reqs), default=t0 + seconds) - (t0 + WARMUP_S))
    ok = [r.latency_ms for r in reqs if r.ok]
    cpu = {k: round((after.get(k, 0.0) - before.get(k, 0.0)) / max(1e-6, t_after - t_before), 3) for k in after}
    return Step(
        round(rps, 1),
        users,
        round(len(reqs) / span, 1),
        len(reqs),
        sum(1 for r in reqs if not r.ok),
        percentile(ok, 50),
        percentile(ok, 99),
        cpu,
    )


def measure(
    cfg: XRegionConfig,
    home: Path,
    *,
    p99_ms: float = 50.0,
    workers: int = 2,
    step_s: float = 15.0,
    start_rps: float = 50.0,
    growth: float = 1.5,
    max_steps: int = 12,
    progress: Callable[[str], None] = log.info,
) -> Capacity:
    """Ramp until the objective breaks, then measure at 25/50/75/100 % of the best passing rate."""
    out_dir = Path(home) / "capacity" / time.strftime("%Y%m%d-%H%M%S")
    ramp, best, rps = [], None, start_rps
    for i in range(max_steps):
        step = run_step(cfg, home, out_dir / f"ramp-{i:02d}", rps, step_s, workers)
        ramp.append(step)
        progress(
            f"offered {step.offered_rps:.0f}/s: achieved {step.achieved_rps:.0f}/s, p99 {_ms(step.p99_ms)} ms, "
            f"{step.failed} failed"
        )
        if not step.passes(p99_ms):
            break
        best = step if best is None or step.achieved_rps > best.achieved_rps else best
        rps *= growth
    if best is None:
        raise RuntimeError(
            f"even {start_rps:.0f} requests/s break the objective (p99 <= {p99_ms} ms, no failure): "
            f"{ramp[0]}; check `xregion router status`"
        )
    cap = Capacity(best.achieved_rps, p99_ms, workers, ramp, report_dir=str(out_dir))
    for share in (0.25, 0.5, 0.75, 1.0):
        step = run_step(cfg, home, out_dir / f"share-{int(share * 100)}", share * cap.max_rps, step_s, workers)
        cap.at_share[f"{int(share * 100)}%"] = step
        progress(
            f"{share:.0%} of capacity ({step.offered_rps:.0f}/s): p50 {_ms(step.p50_ms)} ms, p99 {_ms(step.p99_ms)} ms"
        )
    cap.plot = str(plot(cap, out_dir / "capacity.png"))
    (out_dir / "capacity.json").write_text(json.dumps(cap.as_dict(), indent=2))
    cache_path(home).write_text(json.dumps(cap.as_dict(), indent=2))
    return cap


def plot(cap: Capacity, path: Path) -> Path:
    """Latency against throughput: the ramp and the shares, with the objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for steps, marker, label in ((cap.ramp, "o", "ramp"), (list(cap.at_share.values()), "s", "25/50/75/100 %")):
        xs = [s.achieved_rps for s in steps]
        ax.plot(xs, [s.p50_ms for s in steps], marker=marker, linestyle="-", label=f"p50 ({label})")
        ax.plot(xs, [s.p99_ms for s in steps], marker=marker, linestyle="--", label=f"p99 ({label})")
    ax.axhline(cap.objective_p99_ms, color="#c62828", linewidth=1, label=f"p99 objective {cap.objective_p99_ms:g} ms")
    ax.axvline(cap.max_rps, color="#2e7d32", linewidth=1, linestyle=":", label=f"capacity {cap.max_rps:.0f}/s")
    ax.set_xlabel("achieved requests per second (front door)")
    ax.set_ylabel("latency of successful requests (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("serving capacity: latency against throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_to_mlflow(cfg: XRegionConfig, cap: Capacity) -> str | None:
    """The figures and the plot as a run of the ``capacity`` experiment; its run id."""
    try:
        import mlflow

        from xregion.plugins.registry_client import server_url

        mlflow.set_tracking_uri(server_url(cfg))
        mlflow.set_experiment("capacity")
        with mlflow.start_run(run_name=f"capacity {time.strftime('%Y-%m-%d %H:%M')}") as run:
            mlflow.log_params({"objective_p99_ms": cap.objective_p99_ms, "workers": cap.workers})
            mlflow.log_metric("max_rps", cap.max_rps)
            for share, s in cap.at_share.items():
                mlflow.log_metrics({f"p50_ms_at_{share[:-1]}": s.p50_ms or 0, f"p99_ms_at_{share[:-1]}": s.p99_ms or 0})
            if cap.plot:
                mlflow.log_artifact(cap.plot)
            return run.info.run_id
    except Exception as err:  # the figures stand without their archive
        log.warning("could not log the capacity run to MLflow: %s", err)
        return None


def for_drill(cfg: XRegionConfig, home: Path, progress: Callable[[str], None] = log.info) -> Capacity:
    """The cached capacity of this platform, measured first when there is none."""
    cap = cached(home)
    if cap is None:
        progress("no measured capacity in XREGION_HOME: measuring it first (xregion bench capacity)")
        cap = measure(cfg, home, progress=progress)
    return cap
