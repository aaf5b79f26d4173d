"""Train the two-tower recommender, evaluate it against popularity, log and register it in MLflow.

Run ``python -m xregion.recsys_model.train --help`` (or ``xregion train``).
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import evaluate as ev
from .data import Interactions, Split, leave_one_out, load_movielens
from .synthetic import generate

PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
DEFAULT_MODEL_NAME = "recsys"
DEFAULT_EXPERIMENT = "recsys"


@dataclass
class TrainResult:
    run_id: str
    model_uri: str  # models:/<model id> of the pyfunc
    registered_name: str | None
    version: str | None
    metrics: dict
    train_seconds: float
    towers_path: str
    keras_model: object = field(repr=False, default=None)
    split: Split | None = field(repr=False, default=None)


def load_data(path: str | None, seed: int = 42, synthetic_kwargs: dict | None = None) -> Interactions:
    if path:
        return load_movielens(path)
    return generate(seed=seed, **(synthetic_kwargs or {}))


def write_towers(towers, split: Split, path: str) -> str:
    """Save everything the pyfunc needs: tower outputs, seen items (all data), popularity."""
    indptr, indices = ev.seen_csr(split.all_users, split.all_items, split.n_users)
    pop = np.bincount(split.all_items, minlength=split.n_items)
    np.savez(
        path,
        user_ids=towers.user_ids,
        item_ids=towers.item_ids,
        user_vectors=towers.user_vectors,
        item_vectors=towers.item_vectors,
        item_bias=towers.item_bias,
        seen_indptr=indptr,
        seen_indices=indices,
        popularity=pop,
    )
    return path


def signature():
    """Input columns ``user_id`` (required) and ``k`` (optional), typed ``Any`` on purpose.

    With ``long`` columns MLflow's scoring server would cast the payload before the model sees
    it, silently truncating ``1.5`` to ``1`` and rejecting a ``k`` missing from some rows. The
    pyfunc validates both columns itself (integers, no nulls, 1 <= k <= 1000) and answers
    malformed input with INVALID_PARAMETER_VALUE, i.e. HTTP 400.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "user_id"), ColSpec(AnyType(), "k", required=False)]),
        outputs=Schema(
            [
                ColSpec("long", "user_id"),
                ColSpec("long", "rank"),
                ColSpec("long", "item_id"),
                ColSpec("double", "score"),
                ColSpec("string", "source"),
            ]
        ),
    )


def pip_requirements() -> list[str]:
    import mlflow

    return [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


def log_pyfunc(towers_path: str, example_users, registered_name: str | None = None):
    """Log the top-k pyfunc (code + towers artifact) in the active run; returns ModelInfo."""

    example = pd.DataFrame(
        {
            "user_id": np.asarray(example_users[:2], dtype=np.int64),
            "k": np.array([10, 5], dtype=np.int64)[: len(example_users[:2])],
        }
    )
    with warnings.catch_warnings():
        # MLflow suggests type hints (they would change the serving payload contract) and
        # warns that integer columns cannot hold NaN (intended: ids are required integers).
        warnings.filterwarnings("ignore", message=".*type hints.*")
        warnings.filterwarnings("ignore", message=".*integer column.*")
        return _log_pyfunc(towers_path, example, registered_name)


def _log_pyfunc(towers_path, example, registered_name):
    import mlflow

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={"towers": towers_path},
        signature=signature(),
        input_example=example,
        pip_requirements=pip_requirements(),
        registered_model_name=registered_name,
    )


def promote(name: str, version: str, alias: str = "champion") -> None:
    """Put ``version`` in the Production stage (archiving others) and point ``@champion`` at it."""
    import warnings

    from mlflow import MlflowClient

    client = MlflowClient()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, version, "Production", archive_existing_versions=True)
    client.set_registered_model_alias(name, alias, version)


def _log_dataset(data: Interactions, desc: dict) -> None:
    import mlflow

    mlflow.log_dict(desc, "dataset/description.json")
    mlflow.set_tags(
        {
            "dataset.name": desc["name"],
            "dataset.source": desc["source"],
            "dataset.digest": desc["digest"],
            "dataset.format": desc["format"],
        }
    )
    try:
        ds = mlflow.data.from_pandas(
            data.df, name=desc["name"], source=data.source if data.fmt != "synthetic" else None
        )
        mlflow.log_input(ds, context="training")
    except Exception as e:  # the description above is the record of truth; this is a bonus
        mlflow.set_tag("dataset.log_input_error", str(e)[:500])


def run_training(
    data_path: str | None = None,
    epochs: int | None = None,
    tracking_uri: str | None = None,
    model_name: str | None = DEFAULT_MODEL_NAME,
    experiment: str = DEFAULT_EXPERIMENT,
    seed: int = 42,
    promote_to_production: bool = False,
    synthetic_kwargs: dict | None = None,
    model_kwargs: dict | None = None,
    eval_max_users: int | None = None,
    epoch_eval_users: int = 1000,
    progress: bool = True,
    console=None,
) -> TrainResult:
    """Load data, split leave-one-out, train, evaluate model and popularity, log, register."""
    import mlflow

    from . import model as M

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        # the registry lives on the same server, whatever an earlier caller set in this process
        # (mlflow.set_registry_uri also leaves MLFLOW_REGISTRY_URI in the environment)
        mlflow.set_registry_uri(tracking_uri)
    say = console.print if console is not None else (lambda *a, **k: None)

    data = load_data(data_path, seed=seed, synthetic_kwargs=synthetic_kwargs)
    desc = data.describe()
    say(
        f"[bold]data[/bold] {desc['name']}: {desc['n_interactions']} interactions, "
        f"{desc['n_users']} users, {desc['n_items']} items ({desc['source']})"
    )
    split = leave_one_out(data)
    if len(split.test_users) == 0:
        raise ValueError("no user has two interactions; leave-one-out evaluation impossible")
    negatives = ev.sample_negatives(split, 99, seed, max_users=eval_max_users)
    epoch_negs = ev.sample_negatives(split, 99, seed, max_users=epoch_eval_users)

    cfg = M.ModelConfig(seed=seed, **(model_kwargs or {}))
    if epochs is not None:
        cfg.epochs = epochs

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_params(
            {
                **{f"model.{k}": v for k, v in cfg.as_params().items()},
                "model.type": "two-tower (full-softmax)",
                "eval.protocol": "leave-one-out, latest interaction",
                "eval.negatives": 99,
                "eval.k": 10,
                "data.path": data_path or "synthetic",
                **{f"data.{k}": v for k, v in (desc.get("generator") or {}).items()},
            }
        )
        _log_dataset(data, desc)

        def on_epoch(epoch, logs, model):
            towers = M.export_towers(model, split.user_ids, split.item_ids)
            r = ev.evaluate(towers.scores, split, protocols=("sampled",), negatives=epoch_negs)
            out = {"epoch_" + k: v for k, v in r.items()}
            mlflow.log_metrics({"loss": float(logs["loss"]), "epoch_seconds": logs["epoch_seconds"], **out}, step=epoch)
            return out

        t0 = time.perf_counter()
        if progress and console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            ) as prog:
                keras_model = M.train(split, cfg, on_epoch=on_epoch, progress=prog)
        else:
            keras_model = M.train(split, cfg, on_epoch=on_epoch)
        train_seconds = time.perf_counter() - t0

        towers = M.export_towers(keras_model, split.user_ids, split.item_ids)
        metrics = ev.evaluate(towers.scores, split, negatives=negatives, seed=seed)
        pop = ev.evaluate(ev.popularity_score_fn(split), split, negatives=negatives, seed=seed)
        metrics.update({f"pop_{k}": v for k, v in pop.items()})
        for p in ("sampled", "full"):
            base = pop[f"hr_at_10_{p}"]
            metrics[f"hr_at_10_{p}_lift_over_pop"] = metrics[f"hr_at_10_{p}"] / base if base else float("inf")
        metrics["train_seconds"] = train_seconds
        metrics["n_eval_users"] = float(len(negatives[0]))
        mlflow.log_metrics(metrics)

        tmp = tempfile.mkdtemp(prefix="recsys-")
        towers_path = write_towers(towers, split, os.path.join(tmp, "towers.npz"))
        info = log_pyfunc(towers_path, split.user_ids, registered_name=model_name or None)
        version = str(info.registered_model_version) if model_name and info.registered_model_version else None
        if promote_to_production and model_name and version:
            promote(model_name, version)
        mlflow.set_tag("recsys.model_uri", info.model_uri)

    return TrainResult(
        run_id=run.info.run_id,
        model_uri=info.model_uri,
        registered_name=model_name or None,
        version=version,
        metrics=metrics,
        train_seconds=train_seconds,
        towers_path=towers_path,
        keras_model=keras_model,
        split=split,
    )


def main() -> None:
    import typer

    from .cli import train as train_cmd

    typer.run(train_cmd)


if __name__ == "__main__":
    main()
