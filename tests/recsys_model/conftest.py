"""Fixtures for the recommender tests: one small model trained, logged and registered per session
in a throwaway sqlite tracking/registry store (no Postgres, no S3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SMALL_DATA = dict(n_users=150, n_items=80, mean_interactions=20)
SMALL_EPOCHS = 10
SMALL_MODEL = dict(batch_size=64)  # tiny data: smaller batches give enough steps


def make_store(root: Path) -> str:
    """A sqlite tracking/registry URI under ``root``, with the 'recsys' experiment's artifacts there."""
    import mlflow

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name("recsys") is None:
        mlflow.create_experiment("recsys", artifact_location=(root / "artifacts").as_uri())
    return uri


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Train on small synthetic data, register as 'recsys' v1, Production stage and @champion."""
    import mlflow

    from xregion.recsys_model.train import run_training

    root = tmp_path_factory.mktemp("recsys-store")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    uri = make_store(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        res = run_training(
            epochs=SMALL_EPOCHS,
            tracking_uri=uri,
            model_name="recsys",
            experiment="recsys",
            seed=7,
            promote_to_production=True,
            synthetic_kwargs=SMALL_DATA,
            model_kwargs=SMALL_MODEL,
        )
        res.tracking_uri = uri
        yield res
    finally:
        mlflow.set_tracking_uri(old) if old else None
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
