"""`xregion demo`: the main job on the embedded two-region platform."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer()
console = Console(stderr=True)


def step(title: str):
    console.rule(f"[bold]{title}")
    return time.monotonic()


@app.command()
def demo() -> None:
    """Bring the two regions up, log a run through region a, read it back through region b."""
    from mlflow import MlflowClient

    from xregion.cli import config_or_exit, progress
    from xregion.home import xregion_home
    from xregion.infra import stack

    cfg, home = config_or_exit(), xregion_home()
    t = step("1. start the two-region platform")
    seconds = stack.up(cfg, home, progress)
    console.print(f"platform up in {seconds:.1f}s")

    step("2. log a run through the primary region")
    a, b = cfg.primary, cfg.standbys[0] if cfg.standbys else cfg.primary
    client = MlflowClient(a.mlflow_url)
    exp = client.get_experiment_by_name("xregion-demo") or client.get_experiment(client.create_experiment("xregion-demo"))
    run = client.create_run(exp.experiment_id, run_name="demo")
    client.log_param(run.info.run_id, "regions", ",".join(r.name for r in cfg.regions))
    client.log_metric(run.info.run_id, "demo_metric", 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        note = Path(tmp) / "README.txt"
        note.write_text("logged through region " + a.name)
        client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)

    step(f"3. read it back through region {b.name}")
    got = MlflowClient(b.mlflow_url).get_run(run.info.run_id)
    console.print(f"run {got.info.run_id}: params {got.data.params}, metrics {got.data.metrics}")
    console.print(f"\n[green]done in {time.monotonic() - t:.0f}s.[/green] Where to look:")
    for r in cfg.regions:
        console.print(f"  MLflow UI, region {r.name} ({r.role}): {r.mlflow_url}")
    console.print("  status: `xregion status`    stop everything: `xregion down`")
