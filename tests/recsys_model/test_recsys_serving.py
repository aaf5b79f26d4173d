"""The registered pyfunc behind a real `mlflow models serve` process, by stage and by alias."""

from __future__ import annotations

import os

import psutil
import pytest

from xregion.infra.serving.model_server import ModelServer

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def servers(trained, tmp_path_factory):
    """One server per registry path: models:/recsys/Production and models:/recsys@champion."""
    logs = tmp_path_factory.mktemp("serve-logs")
    prod = ModelServer("models:/recsys/Production", trained.tracking_uri, log_path=str(logs / "prod.log"))
    champ = ModelServer("models:/recsys@champion", trained.tracking_uri, log_path=str(logs / "champ.log"))
    try:
        prod.start()
        champ.start()
        prod.wait_ready()
        champ.wait_ready()
        yield {"production": prod, "champion": champ}
        pids = {s: [s.pid] + [c.pid for c in psutil.Process(s.pid).children(recursive=True)] for s in (prod, champ)}
    finally:
        prod.stop()
        champ.stop()
    for s in (prod, champ):
        # every process of the server is gone (uvicorn too), not just the leader; a zombie left
        # to a non-reaping init does not count
        assert s.sup.state(s.service.name) == "stopped"
        assert [p for p in pids[s] if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []


@pytest.mark.parametrize("which", ["production", "champion"])
def test_top_k_over_http(servers, trained, which):
    users = [int(u) for u in trained.split.user_ids[:3]]
    status, body = servers[which].post(
        {"dataframe_split": {"columns": ["user_id", "k"], "data": [[users[0], 5], [users[1], 2], [users[2], 10]]}}
    )
    assert status == 200, body
    preds = body["predictions"]
    assert [p["user_id"] for p in preds] == [users[0]] * 5 + [users[1]] * 2 + [users[2]] * 10
    assert [p["rank"] for p in preds[:5]] == [1, 2, 3, 4, 5]
    assert all(p["source"] == "model" for p in preds)
    assert all(isinstance(p["item_id"], int) and isinstance(p["score"], float) for p in preds)
    # the HTTP answer is the in-process answer
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(trained.tracking_uri)
    mlflow.set_registry_uri(trained.tracking_uri)
    local = mlflow.pyfunc.load_model("models:/recsys@champion").predict(
        pd.DataFrame({"user_id": users, "k": [5, 2, 10]})
    )
    assert [p["item_id"] for p in preds] == local["item_id"].tolist()


def test_other_payload_shapes_and_default_k(servers, trained):
    s = servers["production"]
    u = int(trained.split.user_ids[4])
    status, body = s.post({"dataframe_records": [{"user_id": u}]})
    assert status == 200 and len(body["predictions"]) == 10
    status, body2 = s.post({"inputs": {"user_id": [u], "k": [10]}})
    assert status == 200 and body2["predictions"] == body["predictions"]
    # a row without k gets the default, a row with k gets its own
    status, body = s.post({"dataframe_records": [{"user_id": u, "k": 2}, {"user_id": u}]})
    assert status == 200 and len(body["predictions"]) == 12


def test_unknown_user_over_http(servers):
    status, body = servers["champion"].post({"dataframe_records": [{"user_id": 987654321, "k": 4}]})
    assert status == 200, body
    preds = body["predictions"]
    assert len(preds) == 4 and all(p["source"] == "popularity" for p in preds)
    assert all(p["user_id"] == 987654321 for p in preds)


@pytest.mark.parametrize(
    "payload,needle",
    [
        ({"dataframe_records": [{"user": 1}]}, "user_id"),
        ({"dataframe_records": [{"user_id": "abc"}]}, "must hold integers"),
        ({"dataframe_records": [{"user_id": 1.5}]}, "must hold integers"),
        ({"dataframe_records": [{"user_id": None}]}, "null"),
        ({"dataframe_records": [{"user_id": True}]}, "must hold integers"),
        ({"dataframe_records": [{"user_id": 1, "k": 3}, {"user_id": 2, "k": True}]}, "got boolean True at row 1"),
        ({"inputs": {"user_id": [1, True]}}, "got boolean True at row 1"),
        ({"dataframe_records": [{"user_id": 1e30}]}, "outside the signed 64-bit integer range"),
        ({"dataframe_records": [{"user_id": 2**70}]}, "outside the signed 64-bit integer range"),
        ({"inputs": {"user_id": [2**70]}}, "outside the signed 64-bit integer range"),
        ({"inputs": {"user_id": [-(2**63) - 1]}}, "outside the signed 64-bit integer range"),
        ({"dataframe_records": [{"user_id": 1, "k": 2**64}]}, "outside the signed 64-bit integer range"),
        ({"dataframe_records": [{"user_id": u} for u in range(1001)]}, "at most 1000 rows per request"),
        ({"dataframe_records": [{"user_id": 1, "k": 0}]}, "between 1 and 1000"),
        ({"dataframe_records": [{"user_id": 1, "k": "many"}]}, "must hold integers"),
        ({"dataframe_records": [{"user_id": [1, 2]}]}, "must hold integers"),
        ({"no_such_key": []}, ""),
        (b"this is not json", "JSON"),
    ],
)
def test_malformed_input_is_400_with_a_message(servers, payload, needle):
    status, body = servers["production"].post(payload)
    assert status == 400, body
    assert isinstance(body, dict) and body.get("message")
    assert needle in body["message"]


def test_servers_use_the_local_venv():
    # the serving subprocess must find uvicorn: its PATH starts with the interpreter's bin dir
    from xregion.infra.serving.model_server import VENV_BIN

    assert os.path.exists(os.path.join(VENV_BIN, "uvicorn"))


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["user_id", "k"], "data": []}},
        {"dataframe_split": {"columns": ["user_id"], "data": []}},
        {"dataframe_records": []},
        {"inputs": {"user_id": []}},
        {"inputs": {"user_id": [], "k": []}},
    ],
)
def test_a_request_without_rows_gets_one_answer(servers, payload):
    """One documented answer for every way of sending nothing: 400 saying what to send."""
    status, body = servers["production"].post(payload)
    assert status == 400, body
    assert "request has no rows with a 'user_id'" in body["message"]


def test_the_row_limit_is_inclusive_and_configurable(servers, trained):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    u = int(trained.split.user_ids[0])
    status, body = servers["production"].post({"dataframe_records": [{"user_id": u, "k": 1}] * 1000})
    assert status == 200 and len(body["predictions"]) == 1000
    mlflow.set_tracking_uri(trained.tracking_uri)
    small = mlflow.pyfunc.load_model("models:/recsys@champion", model_config={"max_rows": 3})
    assert len(small.predict(pd.DataFrame({"user_id": [u] * 3, "k": [1] * 3}))) == 3
    with pytest.raises(MlflowException, match="request has 4 rows; at most 3 rows"):
        small.predict(pd.DataFrame({"user_id": [u] * 4}))


def test_a_server_can_raise_or_lower_the_row_limit(trained, tmp_path):
    """MLflow's own inference-config variable reaches the model's max_rows through `mlflow models serve`."""
    u = int(trained.split.user_ids[0])
    env = {"MLFLOW_PYFUNC_INFERENCE_CONFIG": '{"max_rows": 2}'}
    with ModelServer(
        "models:/recsys@champion", trained.tracking_uri, log_path=str(tmp_path / "s.log"), extra_env=env
    ) as s:
        status, body = s.post({"dataframe_records": [{"user_id": u, "k": 1}] * 2})
        assert status == 200 and len(body["predictions"]) == 2
        status, body = s.post({"dataframe_records": [{"user_id": u, "k": 1}] * 3})
        assert status == 400 and "at most 2 rows per request" in body["message"]
