"""Hyperparameter search on a validation split carved from training, recorded as nested MLflow runs.

Each trial trains on the training part minus each user's latest training interaction and is
scored on that held-out interaction (NCF protocol, 99 sampled negatives, fixed per search):
the test items are never used. Early stopping (patience ``patience``) picks each trial's epoch
count. The parent run (``tune``) holds the search space, the best configuration and its
validation figures; every trial is a child run with its parameters and metrics, so the
search reads as a tree in the MLflow UI. :func:`tune_and_train` then trains the best
configuration on the whole training part as one more child run, logged and registered like any
``xregion train`` run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import evaluate as ev
from .data import Split, leave_one_out
from .model import ModelConfig
from .sequences import training_sequences, validation_split

log = logging.getLogger(__name__)

SEARCH_SPACE: dict[str, list] = {
    "embedding_dim": [32, 64, 128],
    "history_length": [20, 50, 100],
    "user_embedding": [True, False],
    "history_dropout": [0.0, 0.2, 0.4],
    "target_window": [3, 5, 10, 20],
    "target_decay": [0.05, 0.1, 0.3],
    "samples_per_user": [4, 8, 16],
    "softmax": ["full", "sampled"],
    "learning_rate": [1e-3, 3e-3, 1e-2],
    "lr_schedule": ["constant", "cosine"],
    "l2": [0.0, 1e-7, 1e-6],
}


@dataclass
class Trial:
    config: ModelConfig
    metrics: dict
    best_epoch: int
    seconds: float


@dataclass
class TuneResult:
    best: Trial
    trials: list[Trial] = field(default_factory=list)


def candidate_configs(base: ModelConfig, trials: int, seed: int) -> list[ModelConfig]:
    """The base configuration first, then ``trials - 1`` random draws from the search space."""
    rng = np.random.default_rng(seed)
    out = [base]
    while len(out) < trials:
        draw = {k: v[int(rng.integers(len(v)))] for k, v in SEARCH_SPACE.items()}
        cfg = replace(base, **draw)
        if cfg not in out:
            out.append(cfg)
    return out


def run_trial(val: Split, negs, cfg: ModelConfig, max_epochs: int, patience: int) -> Trial:
    from . import model as M
    from .fit import train

    seq = training_sequences(val)
    probe = replace(cfg, epochs=max_epochs, early_stopping_patience=patience)
    scores: dict[int, dict] = {}

    def validate(keras_model) -> float:
        towers = M.export_towers(keras_model, val.user_ids, val.item_ids, seq)
        r = ev.evaluate(towers.scores, val, protocols=("sampled",), negatives=negs)
        scores[len(scores) + 1] = r
        return r["ndcg_at_10_sampled"]

    t0 = time.perf_counter()
    fitted = train(val, probe, validate=validate)
    best = fitted.best_epoch or fitted.epochs_run
    metrics = {f"val_{k}": v for k, v in scores[best].items()}
    return Trial(config=replace(cfg, epochs=best), metrics=metrics, best_epoch=best, seconds=time.perf_counter() - t0)


def tune(split: Split, base: ModelConfig, trials: int, seed: int = 0, max_epochs: int = 40, patience: int = 4):
    """Search in nested MLflow runs of the active run; returns the best trial (by validation NDCG@10)."""
    import mlflow

    val = validation_split(split)
    negs = ev.sample_negatives(val, 99, seed)
    result: TuneResult | None = None
    for n, cfg in enumerate(candidate_configs(base, trials, seed)):
        with mlflow.start_run(run_name=f"trial-{n:02d}", nested=True):
            trial = run_trial(val, negs, cfg, max_epochs, patience)
            mlflow.log_params({f"model.{k}": v for k, v in trial.config.as_params().items()})
            mlflow.log_metrics({**trial.metrics, "best_epoch": trial.best_epoch, "trial_seconds": trial.seconds})
        log.info("trial %d: %s epochs=%d %s", n, _diff(base, trial.config), trial.best_epoch, trial.metrics)
        if result is None:
            result = TuneResult(best=trial)
        result.trials.append(trial)
        if trial.metrics["val_ndcg_at_10_sampled"] > result.best.metrics["val_ndcg_at_10_sampled"]:
            result.best = trial
    return result


def _diff(base: ModelConfig, cfg: ModelConfig) -> dict:
    return {k: v for k, v in cfg.as_params().items() if base.as_params()[k] != v and k != "epochs"}


def tune_and_train(trials: int, data_path: str | None = None, experiment: str = "recsys", seed: int = 42, **kwargs):
    """A parent ``tune`` run: the search (one child run per trial), then the best configuration
    trained, evaluated on the test items, logged and registered (one more child run)."""
    import mlflow

    from .train import _use_tracking, load_data, model_config, run_training

    _use_tracking(kwargs.get("tracking_uri"))
    split = leave_one_out(load_data(data_path, seed=seed, synthetic_kwargs=kwargs.get("synthetic_kwargs")))
    base = model_config(seed, kwargs.pop("epochs", None), kwargs.pop("model_kwargs", None))
    max_epochs = kwargs.pop("max_epochs", 40)  # per trial, with early stopping
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="tune") as parent:
        mlflow.log_params({"tune.trials": trials, "tune.selection": "validation ndcg_at_10_sampled", "tune.seed": seed})
        mlflow.log_dict(SEARCH_SPACE, "tune/search_space.json")
        found = tune(split, base, trials, seed=seed, max_epochs=max_epochs)
        mlflow.log_params({f"best.{k}": v for k, v in found.best.config.as_params().items()})
        mlflow.log_metrics({f"best_{k}": v for k, v in found.best.metrics.items()})
        res = run_training(
            data_path=data_path,
            experiment=experiment,
            seed=seed,
            model_kwargs={k: v for k, v in found.best.config.as_params().items() if k != "seed"},
            nested=True,
            **kwargs,
        )
        mlflow.set_tag("tune.final_run_id", res.run_id)
    res.tune_run_id = parent.info.run_id
    res.tune = found
    return res
