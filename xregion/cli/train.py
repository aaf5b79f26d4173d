"""Typer commands: ``app`` (mounted as ``xregion train``) and ``bench_app`` (``xregion bench``)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Train the TensorFlow recommender and register it in MLflow.")
bench_app = typer.Typer(help="Benchmarks (figures, not tests).")


@bench_app.callback()
def _bench() -> None:
    """Benchmarks (figures, not tests)."""


def _progress_bar(console: Console):
    """A rich progress bar and the ``progress(completed, total, description)`` callback feeding it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = bar.add_task("training", total=None)

    def update(completed: int, total: int, description: str) -> None:
        bar.update(task, completed=completed, total=total, description=description)

    return bar, update


def _log_to(console: Console, verbose: bool) -> None:
    """Library messages (data summary, early stopping, fetches) go to the console via logging."""
    from rich.logging import RichHandler

    logger = logging.getLogger("xregion.recsys_model")
    logger.handlers[:] = [RichHandler(console=console, show_path=False, show_time=False)]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


# Every ModelConfig field is an option of `xregion train` and `xregion bench recsys`; None means
# the tuned default of xregion.recsys_model.model.ModelConfig.
MODEL_OPTIONS = {
    "embedding_dim": typer.Option(None, "--embedding-dim", min=1, help="Embedding size (default 64)."),
    "history_length": typer.Option(
        None, "--history-length", min=1, help="Most recent items the user tower reads (default 50)."
    ),
    "user_embedding": typer.Option(
        None, "--user-embedding/--no-user-embedding", help="Add a per-user id embedding (default on)."
    ),
    "history_dropout": typer.Option(
        None, "--history-dropout", min=0.0, max=0.95, help="Drop history items in training (default 0.2)."
    ),
    "target_window": typer.Option(None, "--target-window", min=1, help="Next items predicted per cut (default 10)."),
    "target_decay": typer.Option(
        None, "--target-decay", min=0.0, help="Weight exp(-decay*j) of the j-th next item (default 0.3)."
    ),
    "samples_per_user": typer.Option(
        None, "--samples-per-user", min=1, help="Training cuts per user per epoch (default 16)."
    ),
    "softmax": typer.Option(None, "--softmax", help="sampled (log-q corrected) or full (default sampled)."),
    "negatives": typer.Option(None, "--negatives", min=1, help="Sampled-softmax negatives per batch (default 256)."),
    "l2": typer.Option(None, "--l2", min=0.0, help="L2 regularisation of every table (default 1e-07)."),
    "learning_rate": typer.Option(None, "--learning-rate", min=0.0, help="Adam learning rate (default 0.003)."),
    "lr_schedule": typer.Option(None, "--lr-schedule", help="constant or cosine (default constant)."),
    "batch_size": typer.Option(None, "--batch-size", min=1, help="Examples per step (default 256)."),
    "early_stopping_patience": typer.Option(
        None,
        "--early-stopping-patience",
        min=0,
        help="Choose the epoch count on a validation split carved from training, stopping after this many "
        "epochs without improvement, then retrain on all training data (0 = off; default 0).",
    ),
}


def model_kwargs_of(values: dict) -> dict:
    """The ModelConfig fields given on the command line."""
    return {k: v for k, v in values.items() if k in MODEL_OPTIONS and v is not None}


@app.command("train")
def train(
    data: str | None = typer.Option(
        None,
        "--data",
        help="A ratings file or directory (u.data, ratings.dat, ratings.csv, RecBole *.inter), or ml-100k "
        "(RecBole's copy, fetched once into $XREGION_CACHE or ~/.cache/xregion). Default: seeded synthetic data.",
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Training epochs (default 17)."),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: a healthy MLflow server of the platform the regions file names).",
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
    index: str = typer.Option(
        "auto", "--index", help="Serving index: auto (ANN above the measured catalogue size), exact or ann."
    ),
    tune: int = typer.Option(
        0, "--tune", min=0, help="First run this many search trials on the validation split (nested MLflow runs)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every epoch."),
    embedding_dim: int | None = MODEL_OPTIONS["embedding_dim"],
    history_length: int | None = MODEL_OPTIONS["history_length"],
    user_embedding: bool | None = MODEL_OPTIONS["user_embedding"],
    history_dropout: float | None = MODEL_OPTIONS["history_dropout"],
    target_window: int | None = MODEL_OPTIONS["target_window"],
    target_decay: float | None = MODEL_OPTIONS["target_decay"],
    samples_per_user: int | None = MODEL_OPTIONS["samples_per_user"],
    softmax: str | None = MODEL_OPTIONS["softmax"],
    negatives: int | None = MODEL_OPTIONS["negatives"],
    l2: float | None = MODEL_OPTIONS["l2"],
    learning_rate: float | None = MODEL_OPTIONS["learning_rate"],
    lr_schedule: str | None = MODEL_OPTIONS["lr_schedule"],
    batch_size: int | None = MODEL_OPTIONS["batch_size"],
    early_stopping_patience: int | None = MODEL_OPTIONS["early_stopping_patience"],
) -> None:
    """Train, evaluate against popularity (leave-one-out), log and register the model."""
    console = Console(stderr=True)
    _log_to(console, verbose)
    tracking_uri = tracking_uri or _platform_server(console)
    common = dict(
        data_path=data,
        epochs=epochs,
        tracking_uri=tracking_uri,
        model_name=model_name,
        experiment=experiment,
        seed=seed,
        promote_to_production=promote,
        model_kwargs=model_kwargs_of(locals()),
        index=index,
    )
    res = _train_or_tune(console, tune, common)
    _print_training(console, res, promote)


def _platform_server(console: Console) -> str:
    """The rule of every command: a healthy MLflow server of the platform, as a scientist."""
    from xregion.plugins.registry_client import RegistryError, server_url

    from .common import act_as, config_or_exit

    cfg = config_or_exit()
    act_as("scientist", cfg)
    try:
        return server_url(cfg)
    except RegistryError as err:
        console.print(f"[red]{err}[/red]\nStart the platform (`xregion up`) or name a server with --tracking-uri.")
        raise typer.Exit(2) from None


def _train_or_tune(console: Console, trials: int, kwargs: dict):
    """Run training (or the search then training) under a progress bar; data errors exit 2/3."""
    from xregion.recsys_model.data import DataFormatError
    from xregion.recsys_model.datasets import FetchError
    from xregion.recsys_model.train import run_training
    from xregion.recsys_model.tuning import tune_and_train

    bar, update = _progress_bar(console)
    try:
        with bar:
            if trials:
                return tune_and_train(trials=trials, progress=update, **kwargs)
            return run_training(progress=update, **kwargs)
    except (DataFormatError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    except FetchError as e:
        console.print(f"[red]cannot fetch the data set:[/red] {e}")
        raise typer.Exit(3) from None


def _print_training(console: Console, res, promote: bool) -> None:
    m = res.metrics
    t = Table(title=f"leave-one-out evaluation (k=10), {res.data_description.get('name', '')}")
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
    console.print(
        f"trained {res.epochs_trained} epochs in {res.train_seconds:.1f}s; run {res.run_id}; model {res.model_uri} "
        f"({res.model_bytes / 1e6:.1f} MB of towers)"
    )
    if res.version:
        console.print(
            f"registered [bold]{res.registered_name}[/bold] version {res.version}"
            + (" -> Production, @champion" if promote else "")
        )


@bench_app.command("serving")
def serving(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON document on stdout."),
    items: int | None = typer.Option(
        None,
        "--items",
        min=1000,
        help="Catalogue mode: ANN index vs exact top-k at 10k, 100k and 1M items (up to this many), "
        "synthetic towers, through mlflow models serve. Without it: stock mlflow.tensorflow vs our pyfunc.",
    ),
    requests: int = typer.Option(200, "--requests", min=20, help="Sequential requests per server."),
    concurrency: str = typer.Option("1,4,8", "--concurrency", help="Concurrency levels."),
    per_level: int = typer.Option(400, "--per-level", min=10, help="Max requests per concurrency level (ours)."),
    seconds: float = typer.Option(10.0, "--seconds", help="Time cap per measurement."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Training epochs."),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Serving latency through `mlflow models serve`: stock vs ours, or (--items) ANN vs exact."""
    from xregion.infra.serving.model_server import ModelServer

    console = Console(stderr=True)
    _log_to(console, verbose=False)
    # Keras and MLflow print progress on stdout while models are logged; keep stdout for JSON.
    with contextlib.redirect_stdout(sys.stderr):
        if items:
            from xregion.recsys_model.bench_catalogue import run_bench as run_catalogue

            result = run_catalogue(ModelServer, max_items=items, requests=requests, seed=seed)
        else:
            from xregion.recsys_model.bench_serving import run_bench

            levels = [int(x) for x in concurrency.split(",") if x.strip()]
            result = run_bench(
                requests=requests,
                levels=levels,
                per_level=per_level,
                seconds=seconds,
                epochs=epochs,
                seed=seed,
                say=lambda m: console.print(f"[dim]{m}[/dim]"),
                serve=ModelServer,
            )
    console.print(render_catalogue_table(result) if items else render_serving_table(result))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")


def render_catalogue_table(result: dict) -> Table:
    t = Table(title=f"ANN vs exact top-10 through mlflow models serve, {result['host']['cpus']} CPUs, 1 worker")
    for c in ("items", "path", "p50 ms", "p99 ms", "in-process p50", "recall@10", "load s", "RSS MB", "artifact MB"):
        t.add_column(c, justify="right")
    for r in result["sizes"]:
        for name in ("noop", "exact", "ann"):
            m = r[name]
            t.add_row(
                f"{r['items']:,}",
                name,
                f"{m['p50_ms']:.2f}",
                f"{m['p99_ms']:.2f}",
                f"{m['in_process_p50_ms']:.3f}",
                f"{r['recall_at_10']:.4f}" if name == "ann" else "",
                f"{m['load_seconds']:.1f}",
                f"{m['server_rss_mb']:.0f}" if m.get("server_rss_mb") else "-",
                f"{m['artifact_mb']:.1f}" if "artifact_mb" in m else "",
            )
    t.caption = "noop: a pyfunc that returns a constant row, i.e. the scoring server's own cost"
    return t


def render_serving_table(result: dict) -> Table:
    t = Table(title=f"mlflow models serve, loopback, {result['host']['cpus']} CPUs, 1 worker")
    for c in ("path", "p50 ms", "p99 ms", *[f"rps c={c['clients']}" for c in result["ours"]["concurrency"]], "errors"):
        t.add_column(c, justify="right")
    for name in ("ours", "stock"):
        r = result[name]
        errs = r["sequential"]["errors"] + sum(c["errors"] for c in r["concurrency"])
        t.add_row(
            name,
            f"{r['sequential']['p50_ms']:.2f}",
            f"{r['sequential']['p99_ms']:.2f}",
            *[f"{c['rps']:.0f}" for c in r["concurrency"]],
            str(errs),
        )
    q = result["quality"]
    t.caption = (
        f"stock p50 / ours p50 = {result['ratio_stock_p50_over_ours_p50']:.1f}x; "
        f"HR@10 (99 neg) {q['hr_at_10_sampled']:.3f} vs popularity {q['pop_hr_at_10_sampled']:.3f}"
    )
    return t


@bench_app.command("recsys")
def recsys(
    data: str = typer.Option("ml-100k", "--data", help="ml-100k (cached RecBole copy), a ratings file or directory."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON document on stdout."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Training epochs (default: the tuned one)."),
    seed: int = typer.Option(42, "--seed", help="Seed for sampling and training."),
    als_factors: int = typer.Option(32, "--als-factors", min=1, help="ALS peer: factors."),
    als_regularization: float = typer.Option(1.0, "--als-regularization", help="ALS peer: regularisation."),
    als_alpha: float = typer.Option(5.0, "--als-alpha", help="ALS peer: confidence weight of observed pairs."),
    als_iterations: int = typer.Option(15, "--als-iterations", min=1, help="ALS peer: iterations."),
    embedding_dim: int | None = MODEL_OPTIONS["embedding_dim"],
    history_length: int | None = MODEL_OPTIONS["history_length"],
    user_embedding: bool | None = MODEL_OPTIONS["user_embedding"],
    history_dropout: float | None = MODEL_OPTIONS["history_dropout"],
    target_window: int | None = MODEL_OPTIONS["target_window"],
    target_decay: float | None = MODEL_OPTIONS["target_decay"],
    samples_per_user: int | None = MODEL_OPTIONS["samples_per_user"],
    softmax: str | None = MODEL_OPTIONS["softmax"],
    negatives: int | None = MODEL_OPTIONS["negatives"],
    l2: float | None = MODEL_OPTIONS["l2"],
    learning_rate: float | None = MODEL_OPTIONS["learning_rate"],
    lr_schedule: str | None = MODEL_OPTIONS["lr_schedule"],
    batch_size: int | None = MODEL_OPTIONS["batch_size"],
    early_stopping_patience: int | None = MODEL_OPTIONS["early_stopping_patience"],
) -> None:
    """Ours vs popularity vs a tuned implicit ALS, same split and negatives: HR@10, NDCG@10, time, ratios."""
    from xregion.recsys_model.bench_recsys import AlsConfig, run_bench
    from xregion.recsys_model.data import DataFormatError
    from xregion.recsys_model.datasets import FetchError

    console = Console(stderr=True)
    _log_to(console, verbose=False)
    als = AlsConfig(als_factors, als_regularization, als_alpha, als_iterations, seed)
    bar, update = _progress_bar(console)
    try:
        with bar:
            result = run_bench(data, seed, epochs, model_kwargs_of(locals()), als, progress=update)
    except (DataFormatError, FetchError, ValueError, RuntimeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(render_recsys_table(result))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")


def render_recsys_table(result: dict) -> Table:
    d = result["data"]
    t = Table(title=f"{d['name']}: {d['n_users']} users, {d['n_items']} items, {d['n_interactions']} interactions")
    for c in ("model", "HR@10 (99 neg)", "NDCG@10 (99 neg)", "HR@10 (full)", "NDCG@10 (full)", "train s"):
        t.add_column(c, justify="right")
    ratios = result["ratio_to_als"]
    for name in ("ours", "als", "popularity"):
        r = result[name]
        cells = []
        for k in ("hr_at_10_sampled", "ndcg_at_10_sampled", "hr_at_10_full", "ndcg_at_10_full"):
            x = f"{r[k]:.4f}"
            if name in ratios:
                x += f" ({ratios[name][k]:.2f}x)"
            cells.append(x)
        secs = f"{r['train_seconds']:.1f}" if "train_seconds" in r else "-"
        t.add_row(name, *cells, secs)
    t.caption = "ratios are to the ALS peer, same split and negatives"
    return t
