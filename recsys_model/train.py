"""Train the two-tower recommender, evaluate it against popularity, log and register it in MLflow.

The command line is ``xregion train`` (:mod:`xregion.cli.train`); this module is the library:
it logs with :mod:`logging` and reports training progress through callbacks.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import evaluate as ev
from .data import Interactions, Split, leave_one_out, load_movielens
from .datasets import resolve
from .synthetic import generate

log = logging.getLogger(__name__)

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
    data_description: dict = field(default_factory=dict)  # counts, source, digest of the data
    config: dict = field(default_factory=dict)  # the model configuration trained (ModelConfig)
    epochs_trained: int = 0  # after early stopping, if any
    model_bytes: int = 0  # size of the logged towers artifact
    tune_run_id: str | None = None  # the parent run, when trained by tuning.tune_and_train
    tune: object = field(repr=False, default=None)


def load_data(path: str | None, seed: int = 42, synthetic_kwargs: dict | None = None) -> Interactions:
    """A ratings file or directory, a named data set (``ml-100k``, fetched into the cache if
    missing), or, without ``path``, the seeded synthetic data."""
    if path:
        return load_movielens(resolve(path))
    return generate(seed=seed, **(synthetic_kwargs or {}))


def write_towers(towers, split: Split, path: str, index: str = "auto") -> dict:
    """Save everything the pyfunc needs: tower outputs, seen items (all data), popularity, and
    (above the measured catalogue size, or with ``index="ann"``) the ANN index beside it.

    Returns the artifacts to log: ``{"towers": path}`` plus ``"index"`` when one was built."""
    from .ann import build_index, should_index

    indptr, indices = ev.seen_csr(split.all_users, split.all_items, split.n_users)
    pop = np.bincount(split.all_items, minlength=split.n_items)
    artifacts, extra = {"towers": path}, {}
    if should_index(len(towers.item_ids), index):
        artifacts["index"] = str(Path(path).with_name("items.faiss"))
        extra = build_index(towers.item_vectors, towers.item_bias, towers.user_vectors, artifacts["index"])
    np.savez(
        path,
        user_ids=towers.user_ids,
        item_ids=towers.item_ids,
        user_vectors=towers.user_vectors,
        # with an index the item table lives inside it (IVF-Flat keeps full vectors): stored once
        item_vectors=towers.item_vectors if not extra else towers.item_vectors[:0],
        item_bias=towers.item_bias,
        seen_indptr=indptr,
        seen_indices=indices,
        popularity=pop,
        **extra,
    )
    return artifacts


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
        # user_id is required by the model, not by the schema: MLflow's own "missing inputs"
        # answer to {"dataframe_records": []} would differ from the other empty shapes
        inputs=Schema([ColSpec(AnyType(), "user_id", required=False), ColSpec(AnyType(), "k", required=False)]),
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
    from importlib.metadata import version

    import mlflow

    return [
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"faiss-cpu=={version('faiss-cpu')}",  # the ANN index (loaded only when the artifact has one)
    ]


def log_pyfunc(artifacts: dict, example_users, registered_name: str | None = None):
    """Log the top-k pyfunc (code + towers artifact, + index) in the active run; returns ModelInfo."""

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
        return _log_pyfunc(artifacts, example, registered_name)


def _log_pyfunc(artifacts, example, registered_name):
    import mlflow

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts=artifacts,
        signature=signature(),
        input_example=example,
        pip_requirements=pip_requirements(),
        registered_model_name=registered_name,
        # overridable when loading (load_model(model_config=...), MLFLOW_PYFUNC_INFERENCE_CONFIG)
        model_config={"max_rows": 1000, "index": "auto"},
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


def _use_tracking(tracking_uri: str | None) -> None:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        # the registry lives on the same server, whatever an earlier caller set in this process
        # (mlflow.set_registry_uri also leaves MLFLOW_REGISTRY_URI in the environment)
        mlflow.set_registry_uri(tracking_uri)


def model_config(seed: int, epochs: int | None, model_kwargs: dict | None):
    from .model import ModelConfig

    cfg = ModelConfig(seed=seed, **(model_kwargs or {}))
    if epochs is not None:
        cfg.epochs = epochs
    cfg.validate()
    return cfg


def sampled_validator(negatives_seed: int, metric: str = "ndcg_at_10_sampled"):
    """``validate_fn`` for early stopping: the validation split's sampled-negatives metric."""
    from . import model as M
    from .sequences import training_sequences

    def make(val: Split):
        negs = ev.sample_negatives(val, 99, negatives_seed)
        seq = training_sequences(val)

        def score(keras_model) -> float:
            towers = M.export_towers(keras_model, val.user_ids, val.item_ids, seq)
            return ev.evaluate(towers.scores, val, protocols=("sampled",), negatives=negs)[metric]

        return score

    return make


def fit_model(split: Split, cfg, on_epoch=None, on_progress=None):
    """Train (with early stopping on a validation split when ``cfg`` asks for it)."""
    from .fit import fit_with_early_stopping, train

    if cfg.early_stopping_patience:
        res, _ = fit_with_early_stopping(split, cfg, sampled_validator(cfg.seed), on_epoch, on_progress)
        return res
    return train(split, cfg, on_epoch=on_epoch, on_progress=on_progress)


def quality_metrics(score_fn, split: Split, negatives, seed: int) -> dict:
    """Model and popularity under both protocols, on the same negatives; lifts over popularity."""
    metrics = ev.evaluate(score_fn, split, negatives=negatives, seed=seed)
    pop = ev.evaluate(ev.popularity_score_fn(split), split, negatives=negatives, seed=seed)
    metrics.update({f"pop_{k}": v for k, v in pop.items()})
    for p in ("sampled", "full"):
        base = pop[f"hr_at_10_{p}"]
        metrics[f"hr_at_10_{p}_lift_over_pop"] = metrics[f"hr_at_10_{p}"] / base if base else float("inf")
    metrics["n_eval_users"] = float(len(negatives[0]))
    return metrics


def _epoch_logger(split: Split, epoch_negs):
    import mlflow

    from . import model as M
    from .sequences import training_sequences

    seq = training_sequences(split)

    def on_epoch(epoch, logs, keras_model):
        towers = M.export_towers(keras_model, split.user_ids, split.item_ids, seq)
        r = ev.evaluate(towers.scores, split, protocols=("sampled",), negatives=epoch_negs)
        out = {"epoch_" + k: v for k, v in r.items()}
        mlflow.log_metrics({"loss": float(logs["loss"]), "epoch_seconds": logs["epoch_seconds"], **out}, step=epoch)
        return out

    return on_epoch


def _run_params(cfg, data_path: str | None, desc: dict) -> dict:
    return {
        **{f"model.{k}": v for k, v in cfg.as_params().items()},
        "model.type": "two-tower, sequence-aware user tower (recency-pooled history + id embedding)",
        "eval.protocol": "leave-one-out, latest interaction",
        "eval.negatives": 99,
        "eval.k": 10,
        "data.path": data_path or "synthetic",
        **{f"data.{k}": v for k, v in (desc.get("generator") or {}).items()},
    }


def _load_and_split(data_path: str | None, seed: int, synthetic_kwargs: dict | None):
    data = load_data(data_path, seed=seed, synthetic_kwargs=synthetic_kwargs)
    desc = data.describe()
    log.info(
        "data %s: %d interactions, %d users, %d items (%s)",
        desc["name"],
        len(data),
        desc["n_users"],
        desc["n_items"],
        desc["source"],
    )
    split = leave_one_out(data)
    if len(split.test_users) == 0:
        raise ValueError("no user has two interactions; leave-one-out evaluation impossible")
    return data, desc, split


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
    progress: Callable[[int, int, str], None] | bool | None = None,
    index: str = "auto",
    nested: bool = False,
) -> TrainResult:
    """Load data, split leave-one-out, train, evaluate model and popularity, log, register.

    ``progress(completed_steps, total_steps, description)`` is called during training (a bool is
    accepted for compatibility and means no callback); everything else is logged with
    :mod:`logging`. ``model_kwargs`` are :class:`~.model.ModelConfig` fields; ``index`` is the
    serving index policy (``auto``, ``exact`` or ``ann``, see :mod:`.ann`).
    """
    import mlflow

    from . import model as M
    from .sequences import all_sequences, training_sequences

    _use_tracking(tracking_uri)
    on_progress = progress if callable(progress) else None
    data, desc, split = _load_and_split(data_path, seed, synthetic_kwargs)
    negatives = ev.sample_negatives(split, 99, seed, max_users=eval_max_users)
    epoch_negs = ev.sample_negatives(split, 99, seed, max_users=epoch_eval_users)
    cfg = model_config(seed, epochs, model_kwargs)

    mlflow.set_experiment(experiment)
    with mlflow.start_run(nested=nested) as run:
        mlflow.log_params(_run_params(cfg, data_path, desc))
        _log_dataset(data, desc)
        t0 = time.perf_counter()
        fitted = fit_model(split, cfg, on_epoch=_epoch_logger(split, epoch_negs), on_progress=on_progress)
        train_seconds = time.perf_counter() - t0
        eval_towers = M.export_towers(fitted.model, split.user_ids, split.item_ids, training_sequences(split))
        metrics = quality_metrics(eval_towers.scores, split, negatives, seed)
        metrics.update(train_seconds=train_seconds, epochs_trained=float(fitted.epochs_run))
        mlflow.log_metrics(metrics)
        # Served user vectors read each user's whole history (the held-out item too): the
        # weights are the evaluated ones, the input is as of the latest interaction.
        serve_towers = M.export_towers(fitted.model, split.user_ids, split.item_ids, all_sequences(split))
        logged = log_towers_model(serve_towers, split, model_name, index=index)
        if promote_to_production and model_name and logged["version"]:
            promote(model_name, logged["version"])
        mlflow.set_tag("recsys.model_uri", logged["model_uri"])
    return _result(run, logged, metrics, train_seconds, fitted, split, desc, cfg)


def _result(run, logged, metrics, train_seconds, fitted, split, desc, cfg) -> TrainResult:
    return TrainResult(
        run_id=run.info.run_id,
        model_uri=logged["model_uri"],
        registered_name=logged["registered_name"],
        version=logged["version"],
        metrics=metrics,
        train_seconds=train_seconds,
        towers_path=logged["towers_path"],
        keras_model=fitted.model,
        split=split,
        data_description=desc,
        config=cfg.as_params(),
        epochs_trained=fitted.epochs_run,
        model_bytes=logged["bytes"],
    )


def log_towers_model(towers, split: Split, model_name: str | None, index: str = "auto") -> dict:
    """Write the towers artifact (and index), log the pyfunc in the active run, register it."""
    tmp = tempfile.mkdtemp(prefix="recsys-")
    artifacts = write_towers(towers, split, os.path.join(tmp, "towers.npz"), index=index)
    towers_path = artifacts["towers"]
    info = log_pyfunc(artifacts, split.user_ids, registered_name=model_name or None)
    version = str(info.registered_model_version) if model_name and info.registered_model_version else None
    size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    return {
        "model_uri": info.model_uri,
        "registered_name": model_name or None,
        "version": version,
        "towers_path": towers_path,
        "bytes": size,
    }
