"""``xregion://`` in each place MLflow uses a repository: behind `mlflow server --artifacts-destination`
(proxied), as an experiment's artifact location (clients write directly), for log_model and for
`mlflow models serve -m models:/NAME/Production` in another region."""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from xregion.infra.embedded import auth
from xregion.infra.embedded import stack as embedded
from xregion.infra.embedded.supervisor import Service
from xregion.net import free_port
from xregion.plugins.replication import Replicator
from xregion.plugins.verify import resync
from xregion.store import RegionStore
from xregion.uris import key_prefix

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input[["x"]] * 2


def keys_in(stack, region: str, prefix: str) -> set[str]:
    return {o.key for o in RegionStore(stack.cfg.region(region)).list(prefix)}


def test_proxied_artifacts_replicate_and_survive_the_loss_of_region_a_store(stack, tmp_path):
    a, b = stack.cfg.region("a"), stack.cfg.region("b")
    client_a = MlflowClient(a.mlflow_url)
    run = client_a.create_run(client_a.create_experiment(f"proxied-{uuid.uuid4().hex}"))
    (tmp_path / "report.txt").write_text("replicated")
    client_a.log_artifact(run.info.run_id, str(tmp_path / "report.txt"), "reports")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    rel = run.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
    key = f"{stack.cfg.artifacts.prefix}/{rel}/reports/report.txt"
    assert key in keys_in(stack, "a", key) and key in keys_in(stack, "b", key)

    sup_a_s3 = embedded.select(stack.cfg, stack.home, stack.sup, "a", "s3")
    stack.sup.fault("kill", sup_a_s3)
    try:  # region b's server reads its own region: losing a's store loses nothing
        out = MlflowClient(b.mlflow_url).download_artifacts(run.info.run_id, "reports/report.txt", str(tmp_path))
        assert Path(out).read_text() == "replicated"
    finally:
        stack.sup.fault("restart", sup_a_s3)
        assert resync(Replicator(stack.cfg, tmp_path / "heal.sqlite")).still_owed == 0


def test_clients_write_directly_to_an_xregion_artifact_location(stack, tmp_path):
    a = stack.cfg.region("a")
    mlflow.set_tracking_uri(a.mlflow_url)
    root = f"direct/{uuid.uuid4().hex}"
    exp = MlflowClient(a.mlflow_url).create_experiment(
        f"direct-{uuid.uuid4().hex}", artifact_location=f"xregion:///{root}"
    )
    with mlflow.start_run(experiment_id=exp) as run:
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "one.txt").write_text("1")
        (tmp_path / "d" / "two.txt").write_text("2")
        mlflow.log_artifacts(str(tmp_path / "d"), "files")
    # MLflow writes URIs without an authority in the short form; both mean the same keys
    assert run.info.artifact_uri == f"xregion:/{root}/{run.info.run_id}/artifacts"
    assert key_prefix(run.info.artifact_uri, stack.cfg) == key_prefix(
        f"xregion:///{root}/{run.info.run_id}/artifacts", stack.cfg
    )
    expected = {f"{root}/{run.info.run_id}/artifacts/files/{n}" for n in ("one.txt", "two.txt")}
    assert keys_in(stack, "a", root) == expected == keys_in(stack, "b", root)
    listed = MlflowClient(stack.cfg.region("b").mlflow_url).list_artifacts(run.info.run_id, "files")
    assert sorted(f.path for f in listed) == ["files/one.txt", "files/two.txt"]


def test_log_model_in_a_and_serve_production_from_region_b(stack, tmp_path):
    a, b = stack.cfg.region("a"), stack.cfg.region("b")
    name = f"doubler-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(a.mlflow_url)
    mlflow.set_registry_uri(a.mlflow_url)
    mlflow.set_experiment(f"models-{uuid.uuid4().hex}")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Doubler(), registered_model_name=name, input_example=pd.DataFrame({"x": [1.0]})
        )
    client = MlflowClient(a.mlflow_url, registry_uri=a.mlflow_url)
    version = client.get_latest_versions(name)[0].version
    client.transition_model_version_stage(name, version, "Production")

    loaded = mlflow.pyfunc.load_model(info.model_uri)  # through a's server
    assert loaded.predict(pd.DataFrame({"x": [2.0]}))["x"].tolist() == [4.0]

    port = free_port()
    serving, password = auth.service_env(stack.home, "serving", stack.cfg)
    svc = Service(
        name=f"test-serve-{uuid.uuid4().hex[:6]}",
        region="b",
        component="serving",
        argv=[
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{name}/Production",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        listen=("127.0.0.1", port),
        health={"type": "http", "url": f"http://127.0.0.1:{port}/ping"},
        env={**embedded.child_env(stack.cfg, b, stack.home), **serving, "MLFLOW_TRACKING_URI": b.mlflow_url},
        secret_env=password,  # it loads the model as the serving account, never as this test's admin
        start_timeout=180,
    )
    try:
        stack.sup.start(svc)  # inside: a server that fails to start is not left in the stack's records
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            method="POST",
            data=json.dumps({"dataframe_records": [{"x": 5.0}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["predictions"] == [{"x": 10.0}]
    finally:
        stack.sup.stop(svc.name)
