"""What a supervised process inherits: everything but the MLflow client identity of its starter."""

from __future__ import annotations

from xregion.infra.embedded.service import Service


def test_a_service_acts_as_the_account_it_is_given_never_as_whoever_started_it(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "the-operators-password")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "the-operators-token")
    monkeypatch.setenv("XREGION_SOMETHING_ELSE", "inherited")
    anonymous = Service(name="a-replicator", region="a", component="replicator", argv=["true"])
    env = anonymous.resolved_env()
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"} & set(env)
    assert env["XREGION_SOMETHING_ELSE"] == "inherited"

    monkeypatch.setenv("ROUTER_PASSWORD", "the-routers-password")
    router = Service(
        name="router",
        region="global",
        component="router",
        argv=["true"],
        env={"MLFLOW_TRACKING_USERNAME": "mlflow-xregion-router"},
        secret_env={"MLFLOW_TRACKING_PASSWORD": "env:ROUTER_PASSWORD"},
    )
    env = router.resolved_env()
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (
        "mlflow-xregion-router",
        "the-routers-password",
    )
