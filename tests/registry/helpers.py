"""Log and register a tiny pyfunc on the stack's MLflow server (no TensorFlow in these tests)."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

TINY = Path(__file__).with_name("tiny_model.py")
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("long", "user_id"), ColSpec("long", "k", required=False)]))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def log_tiny(
    tracking_uri: str, model_name: str, fail: bool | str = False, label: str = "", example: bool = True, **config
) -> str:
    """Log the tiny model in a run and register it as a new version of ``model_name``; return the version.

    ``example`` logs a serving input example (the router's smoke test sends it); ``config`` goes to
    the model (``fail_after``, ``slow_ms``: see tiny_model.py)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("xregion-tests")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(TINY),
            signature=SIGNATURE,
            model_config={"fail": fail, "version_label": label, **config},
            input_example=pd.DataFrame({"user_id": [3], "k": [10]}) if example else None,
            registered_model_name=model_name,
            pip_requirements=["mlflow", "pandas"],
        )
    return str(info.registered_model_version)


def client(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)
