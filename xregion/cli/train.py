"""Typer commands: ``app`` (mounted as ``xregion train``) and ``bench_app`` (``xregion bench``)."""

from __future__ import annotations

import contextlib
import json
import sys

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Train the TensorFlow recommender and register it in MLflow.")
bench_app = typer.Typer(help="Benchmarks (figures, not tests).")


@bench_app.callback()
def _bench() -> None:
    """Benchmarks (figures, not tests)."""


@app.command("train")
def train(
    data: str | None = typer.Option(
        None,
        "--data",
        help="MovieLens directory or ratings file (u.data, ratings.dat, "
        "ratings.csv). Default: the built-in seeded synthetic data set.",
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Training epochs (default 12)."),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI."
    ),
    model_name: str = typer.Option("recsys", "--model-name", help="Registered model name ('' to skip)."),
    experiment: str = typer.Option("recsys", "--experiment", help="MLflow experiment name."),
    seed: int = typer.Option(42, "--seed", help="Seed for data generation, sampling and training."),
    promote: bool = typer.Option(
        False,
        "--promote/--no-promote",
        help="Move the new version to the Production stage and the @champion alias "
        "(single-region development; the platform promotes through its gate).",
    ),
) -> None:
    """Train, evaluate against popularity (leave-one-out), log and register the model."""
    from xregion.recsys_model.data import DataFormatError
    from xregion.recsys_model.train import run_training

    console = Console(stderr=True)
    try:
        res = run_training(
            data_path=data,
            epochs=epochs,
            tracking_uri=tracking_uri,
            model_name=model_name,
            experiment=experiment,
            seed=seed,
            promote_to_production=promote,
            console=console,
        )
    except DataFormatError as e:
        console.print(f"[red]data error:[/red] {e}")
        raise typer.Exit(2) from None
    m = res.metrics
    t = Table(title="leave-one-out evaluation (k=10)")
    for c in ("protocol", "HR@10 model", "HR@10 popularity", "NDCG@10 model", "NDCG@10 popularity"):
        t.add_column(c)
    for p, label in (("sampled", "99 sampled negatives"), ("full", "full catalogue")):
        t.add_row(
            label,
            f"{m[f'hr_at_10_{p}']:.4f}",
            f"{m[f'pop_hr_at_10_{p}']:.4f}",
            f"{m[f'ndcg_at_10_{p}']:.4f}",
            f"{m[f'pop_ndcg_at_10_{p}']:.4f}",
        )
    console.print(t)
    console.print(f"trained in {res.train_seconds:.1f}s; run {res.run_id}; model {res.model_uri}")
    if res.version:
        console.print(
            f"registered [bold]{res.registered_name}[/bold] version {res.version}"
            + (" -> Production, @champion" if promote else "")
        )


@bench_app.command("serving")
def serving(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON document on stdout."),
    requests: int = typer.Option(200, "--requests", min=20, help="Sequential requests per server."),
    concurrency: str = typer.Option("1,4,8", "--concurrency", help="Concurrency levels."),
    per_level: int = typer.Option(400, "--per-level", min=10, help="Max requests per concurrency level (ours)."),
    seconds: float = typer.Option(10.0, "--seconds", help="Time cap per measurement."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Training epochs."),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Stock mlflow.tensorflow flavor vs our pyfunc, same model, both via `mlflow models serve`."""
    from xregion.recsys_model.bench_serving import render_table, run_bench

    console = Console(stderr=True)
    levels = [int(x) for x in concurrency.split(",") if x.strip()]
    # Keras and MLflow print progress on stdout while the stock model is logged; keep stdout
    # for the JSON document only.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_bench(
            requests=requests,
            levels=levels,
            per_level=per_level,
            seconds=seconds,
            epochs=epochs,
            seed=seed,
            console=console,
        )
    console.print(render_table(result))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
