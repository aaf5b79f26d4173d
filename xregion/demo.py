"""`xregion demo`: the whole lifecycle on the embedded two-region platform, end to end.

up -> train and register -> replicated in every region -> promote through the gate -> serve in
both regions behind the front door -> region-outage drill under Locust -> one summary.
Each step says what it does and how long it took; a failing step stops the demo with the
failing component's log tail and a non-zero exit. The platform is left running.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


class DemoFailed(RuntimeError):
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
                f"model artifacts under {prefix} not in every region after {timeout:.0f}s: {problems[:5]}"
                " — run `xregion replicate resync`"
            )
        time.sleep(0.2)


def serving_latency(url: str, user_ids: list[int], n: int = 200) -> dict:
    """Sequential scoring requests through the front door: p50 / p99 in ms."""
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
    lat.sort()
    return {"p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2), "requests": n}


def run_demo(
    cfg,
    home: Path,
    *,
    data: str | None = None,
    epochs: int | None = None,
    synthetic: dict | None = None,
    drill_seconds: float = 60,
    users: int = 8,
    progress=None,
) -> dict:
    from mlflow import MlflowClient

    from xregion.infra.embedded import stack
    from xregion.infra.serving import control as serving
    from xregion.loadtests.runner import run_drill
    from xregion.plugins import registry_client
    from xregion.recsys_model.train import run_training

    progress = progress or (lambda m: console.print(f"[dim]{m}[/dim]"))
    steps = Steps(6)
    a = cfg.primary
    model = cfg.registry.model_name
    summary: dict = {"regions": [r.name for r in cfg.regions]}

    with steps("start the two-region platform (S3, Postgres primary + standby, MLflow per region)"):
        summary["platform_up_s"] = round(stack.up(cfg, home, progress), 1)

    with steps(f"train the recommender and register it as {model!r} (through region {a.name})"):
        res = run_training(
            data_path=data,
            epochs=epochs,
            tracking_uri=a.mlflow_url,
            model_name=model,
            synthetic_kwargs=synthetic,
        )
        summary["model"] = {
            "data": res.data_description.get("name"),  # e.g. ml-100k with --data ml-100k
            "version": res.version,
            "run_id": res.run_id,
            "train_s": round(res.train_seconds, 1),
            **{
                k: round(v, 4)
                for k, v in res.metrics.items()
                if k.startswith(("hr_at_10", "ndcg_at_10", "pop_hr_at_10", "pop_ndcg_at_10"))
            },
        }

    client = MlflowClient(a.mlflow_url, registry_uri=a.mlflow_url)
    with steps("check the model's artifacts verify in every region (replication lag)"):
        location = client.get_logged_model(res.model_uri.removeprefix("models:/")).artifact_location
        summary["replication_lag_s"] = round(wait_replicated(cfg, location), 2)
        progress(
            f"version {res.version}: every object in {', '.join(summary['regions'])} "
            f"{summary['replication_lag_s']}s after registration"
        )

    with steps(
        f"promote version {res.version} to {cfg.registry.production_stage} and @{cfg.registry.production_alias} "
        "through the replication gate"
    ):
        summary["promotion"] = registry_client.promote(client, cfg, model, res.version, reason="xregion demo")

    with steps("serve it in every region behind the HAProxy front door"):
        serving.stop_serving(home)  # a previous demo's servers follow an older version
        serving.start_serving(cfg, home, progress)
        users_known = list(range(1, 51))
        summary["serving_latency"] = serving_latency(cfg.serving.frontend_url, users_known)

    with steps(f"region-outage drill: Locust for {drill_seconds:.0f}s, all of region {a.name} killed (-9) mid-way"):
        drill = run_drill("region-outage", duration=drill_seconds, users=users, cfg=cfg, home=home, progress=progress)
        summary["drill"] = drill
    summary["step_seconds"] = steps.timings
    summary["total_s"] = round(time.monotonic() - steps.t0, 1)
    return summary


def print_summary(cfg, s: dict) -> None:
    d, m, lat = s["drill"], s["model"], s["serving_latency"]
    t = Table(title="mlflow-xregion demo", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    ok = "[green]met[/green]" if d.get("objectives_met") else "[red]NOT met[/red]"
    avail = d.get("availability")
    t.add_row("drill objectives", ok)
    t.add_row("availability", f"{avail * 100:.3f}%" if avail is not None else "-")
    t.add_row("RTO", f"{d['rto_s']:.2f} s" if d.get("rto_s") is not None else "not recovered")
    t.add_row("failed requests", f"{d.get('failed', '-')} of {d.get('requests', '-')}")
    t.add_row("replication lag (model)", f"{s['replication_lag_s']} s")
    rpo = d.get("rpo", {}).get("artifacts") if isinstance(d.get("rpo"), dict) else None
    t.add_row(
        "artifact RPO (acknowledged, missing)",
        str(rpo.get("missing") if isinstance(rpo, dict) else rpo if rpo is not None else "-"),
    )
    t.add_row("serving latency (front door)", f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")
    t.add_row("recommender data", str(m.get("data") or "synthetic"))
    t.add_row("HR@10 (99 negatives)", f"{m['hr_at_10_sampled']:.3f} vs popularity {m['pop_hr_at_10_sampled']:.3f}")
    t.add_row(
        "NDCG@10 (99 negatives)", f"{m['ndcg_at_10_sampled']:.3f} vs popularity {m['pop_ndcg_at_10_sampled']:.3f}"
    )
    t.add_row("wall time", f"{s['total_s']:.0f} s")
    Console().print(t)
    console.print("Where to look:")
    for r in cfg.regions:
        console.print(f"  MLflow UI, region {r.name} ({r.role}): {r.mlflow_url}")
    console.print(
        f"  serving front door: {cfg.serving.frontend_url}/invocations   HAProxy stats: {cfg.serving.haproxy_stats_url}"
    )
    if d.get("report"):
        console.print(f"  drill report: {d['report']}")
    console.print("The platform is still running: `xregion status`; stop it with `xregion down`.")
