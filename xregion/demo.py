"""`xregion demo`: the whole lifecycle on the embedded two-region platform, end to end.

up -> a scientist trains and registers -> replicated in every region -> a release manager promotes
through the gate -> served in every region behind the front door -> the front door's capacity ->
a region-outage drill at half of it -> one summary. Each step says what it does and how long it
took; a failing step stops the demo with the failing component's log tail and a non-zero exit.
The platform is left running. TensorFlow's and MLflow's own chatter goes to XREGION_HOME/logs.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from xregion.cli.output import native_output_to
from xregion.errors import XRegionError
from xregion.home import environment

console = Console(stderr=True)
out = Console()  # a step that loads TensorFlow sends file descriptor 2 to its log meanwhile


class DemoFailed(XRegionError, RuntimeError):
    pass


class Steps:
    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.monotonic()
        self.timings: dict[str, float] = {}

    def __call__(self, title: str):
        steps = self

        class _Step:
            def __enter__(self):
                steps.n += 1
                console.rule(f"[bold]{steps.n}/{steps.total} {title}")
                self.t = time.monotonic()

            def __exit__(self, exc_type, exc, tb):
                took = time.monotonic() - self.t
                steps.timings[title] = round(took, 1)
                if exc is None:
                    console.print(f"[green]done[/green] in {took:.1f}s (total {time.monotonic() - steps.t0:.0f}s)")
                return False

        return _Step()


@dataclass
class DemoOptions:
    data: str | None = None  # ml-100k, a MovieLens/RecBole file or directory; None: synthetic
    epochs: int | None = None
    synthetic: dict | None = None
    drill_seconds: float = 60
    load: float | None = 0.5  # the drill's serving load as a share of the measured capacity
    users: int | None = None  # by hand instead of ``load``
    capacity_step_s: float = 8.0
    verbose: bool = False
    progress: object = field(default=None, repr=False)


def wait_replicated(cfg, model_uri_or_location: str, timeout: float = 120.0) -> float:
    """Seconds until every object of the model verifies in every region (the gate's own check)."""
    from xregion.plugins.gate import check_replicated

    t = time.monotonic()
    while True:
        prefix, count, problems = check_replicated(cfg, model_uri_or_location)
        if count and not problems:
            return time.monotonic() - t
        if time.monotonic() - t > timeout:
            raise DemoFailed(
                f"model artifacts under {prefix} not in every region after {timeout:.0f}s: "
                f"{problems[:5]} — run `xregion replicate resync`"
            )
        time.sleep(0.2)


def serving_latency(url: str, user_ids: list[int], n: int = 200) -> dict:
    """Sequential scoring requests through the front door: p50 / p99 in ms."""
    from xregion.stats import percentile

    lat = []
    for i in range(n):
        body = json.dumps({"dataframe_records": [{"user_id": int(user_ids[i % len(user_ids)]), "k": 10}]}).encode()
        req = urllib.request.Request(
            f"{url}/invocations", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
        lat.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2), "requests": n}


def _train(cfg, home: Path, o: DemoOptions) -> object:
    """As the scientist: train, evaluate, log and register (TensorFlow's start-up lines to the log)."""
    from xregion.infra.embedded import auth
    from xregion.recsys_model.train import run_training

    with (
        environment(**auth.client_env(home, "scientist", cfg)),
        native_output_to(home / "logs" / "train.log", o.verbose),
    ):
        return run_training(
            data_path=o.data,
            epochs=o.epochs,
            tracking_uri=cfg.primary.mlflow_url,
            model_name=cfg.registry.model_name,
            synthetic_kwargs=o.synthetic,
        )


def _model_figures(res) -> dict:
    keep = ("hr_at_10", "ndcg_at_10", "pop_hr_at_10", "pop_ndcg_at_10")
    return {
        "data": res.data_description.get("name"),
        "version": res.version,
        "run_id": res.run_id,
        "train_s": round(res.train_seconds, 1),
        **{k: round(v, 4) for k, v in res.metrics.items() if k.startswith(keep)},
    }


def _promote(cfg, home: Path, version: str) -> dict:
    """As the release manager, through the gate."""
    from xregion.infra.embedded import auth
    from xregion.plugins import registry_client

    with environment(**auth.client_env(home, "release-manager", cfg)):
        cl = registry_client.client(cfg, cfg.primary.mlflow_url)
        return registry_client.promote(cl, cfg, cfg.registry.model_name, version, reason="xregion demo")


def _capacity(cfg, home: Path, o: DemoOptions, progress) -> dict | None:
    from xregion.infra.embedded import auth
    from xregion.loadtests import capacity

    if o.load is None:
        return None
    cap = capacity.cached(home)
    if cap is None:
        cap = capacity.measure(cfg, home, step_s=o.capacity_step_s, progress=progress)
        with environment(**auth.client_env(home, "scientist", cfg)):
            capacity.log_to_mlflow(cfg, cap)
    return {
        "max_rps": cap.max_rps,
        "objective_p99_ms": cap.objective_p99_ms,
        "plot": cap.plot,
        "measured_at": cap.measured_at,
    }


def run_demo(cfg, home: Path, o: DemoOptions | None = None) -> dict:
    from xregion.infra.embedded import auth, stack
    from xregion.infra.serving import control as serving
    from xregion.loadtests.runner import run_drill

    o = o or DemoOptions()
    progress = o.progress or (lambda m: console.print(f"[dim]{m}[/dim]"))
    steps, model = Steps(7), cfg.registry.model_name
    s: dict = {"regions": [r.name for r in cfg.regions]}
    with steps("start the platform (S3, Patroni + etcd, MLflow with auth, per region)"):
        s["platform_up_s"] = round(stack.up(cfg, home, progress), 1)
    with steps(f"a scientist trains the recommender and registers it as {model!r}"):
        res = _train(cfg, home, o)
        s["model"] = _model_figures(res)
    with (
        steps("the model's artifacts verify in every region (replication lag)"),
        environment(**auth.client_env(home, "scientist", cfg)),
    ):
        from xregion.plugins import registry_client

        location = (
            registry_client.client(cfg, cfg.primary.mlflow_url)
            .get_logged_model(res.model_uri.removeprefix("models:/"))
            .artifact_location
        )
        s["replication_lag_s"] = round(wait_replicated(cfg, location), 2)
    with steps(f"a release manager promotes version {res.version} through the replication gate"):
        s["promotion"] = _promote(cfg, home, res.version)
    with (
        steps("serve it in every region behind the HAProxy front door"),
        environment(**auth.client_env(home, "serving", cfg)),  # it reads which version is in production
    ):
        serving.stop_serving(home)  # a previous demo's servers follow an older version
        serving.start_serving(cfg, home, progress)
        s["serving_latency"] = serving_latency(cfg.serving.frontend_url, list(range(1, 51)))
    with steps("the front door's capacity (measured once, cached in XREGION_HOME)"):
        s["capacity"] = _capacity(cfg, home, o, progress)
    how = f"at {o.load:.0%} of capacity" if s["capacity"] else f"with {o.users or 8} users"
    with (
        steps(f"region-outage drill {how}: region {cfg.primary.name} killed (-9) mid-way"),
        environment(**auth.client_env(home, "release-manager", cfg)),
    ):
        s["drill"] = run_drill(
            "region-outage",
            duration=o.drill_seconds,
            cfg=cfg,
            home=home,
            progress=progress,
            **({"load": o.load} if s["capacity"] else {"users": o.users or 8}),
        )
    s["step_seconds"], s["total_s"] = steps.timings, round(time.monotonic() - steps.t0, 1)
    return s


def _drill_rows(t: Table, s: dict) -> None:
    d = s["drill"]
    avail, load = d.get("availability"), d.get("load") or {}
    t.add_row("drill objectives", "[green]met[/green]" if d.get("objectives_met") else "[red]NOT met[/red]")
    if s.get("capacity"):
        t.add_row(
            "front door capacity",
            f"{s['capacity']['max_rps']:.0f} requests/s at p99 <= {s['capacity']['objective_p99_ms']:g} ms",
        )
    if load.get("share"):
        t.add_row("drill load", f"{load['share']:.0%} of capacity: {load['serving_rps']:.0f} requests/s")
    t.add_row("availability", f"{avail * 100:.3f}%" if avail is not None else "-")
    t.add_row("RTO", f"{d['rto_s']:.2f} s" if d.get("rto_s") is not None else "not recovered")
    t.add_row("failed requests", f"{d.get('failed', '-')} of {d.get('requests', '-')}")
    rpo = (d.get("rpo") or {}).get("artifacts") or {}
    t.add_row("artifact RPO (acknowledged, missing)", str(rpo.get("missing", "-")))


def print_summary(cfg, s: dict) -> None:
    m, lat = s["model"], s["serving_latency"]
    t = Table(title="mlflow-xregion demo", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    _drill_rows(t, s)
    t.add_row("replication lag (model)", f"{s['replication_lag_s']} s")
    t.add_row("serving latency (front door)", f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")
    t.add_row("recommender data", str(m.get("data") or "synthetic"))
    t.add_row("HR@10 (99 negatives)", f"{m['hr_at_10_sampled']:.3f} vs popularity {m['pop_hr_at_10_sampled']:.3f}")
    t.add_row(
        "NDCG@10 (99 negatives)", f"{m['ndcg_at_10_sampled']:.3f} vs popularity {m['pop_ndcg_at_10_sampled']:.3f}"
    )
    t.add_row("wall time", f"{s['total_s']:.0f} s")
    out.print(t)
    console.print("Where to look:")
    for r in cfg.regions:
        console.print(f"  MLflow UI, region {r.name}: {r.mlflow_url} (users and passwords: XREGION_HOME/secrets)")
    console.print(
        f"  serving front door: {cfg.serving.frontend_url}/invocations   "
        f"HAProxy stats: {cfg.serving.haproxy_stats_url} (user xregion)"
    )
    if s["drill"].get("report"):
        console.print(f"  drill report: {s['drill']['report']}")
    console.print("The platform is still running: `xregion status`; stop it with `xregion down`.")
