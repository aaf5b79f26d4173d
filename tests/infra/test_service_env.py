"""What a supervised process inherits: everything but the MLflow client identity of its starter, and
what a quiet command line set for itself only."""

from __future__ import annotations

import subprocess
import sys

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


def test_mlflow_imported_after_a_quiet_command_routed_its_logs_keeps_them_in_the_file(tmp_path):
    """A command that routes its logs to a file, then (in a later step) imports MLflow for the first
    time: MLflow's INFO lines go to the file, not to the terminal (MLflow used to give its loggers a
    stderr handler of its own at import). In a process of its own: it reconfigures logging."""
    script = f"""
import logging, os
from pathlib import Path
from xregion.cli.output import log_to_file
log = log_to_file(Path({str(tmp_path)!r}), "quiet")
import mlflow  # first import, after the routing
logging.getLogger("mlflow.tracking.fluent").info("an MLflow notice")
print(os.environ["MLFLOW_CONFIGURE_LOGGING"], logging.getLogger("mlflow").handlers)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["false", "[]"] and "an MLflow notice" not in run.stderr, (run.stdout, run.stderr)
    assert "an MLflow notice" in (tmp_path / "logs" / "quiet.log").read_text()


def test_a_server_logs_as_it_would_whatever_quiet_command_started_it(monkeypatch):
    """What a quiet command sets for itself only is not passed on: an MLflow server keeps MLflow's
    own logging set-up, or its INFO lines would reach no log."""
    monkeypatch.setenv("MLFLOW_CONFIGURE_LOGGING", "false")
    server = Service(name="a-mlflow", region="a", component="mlflow", argv=["true"])
    assert "MLFLOW_CONFIGURE_LOGGING" not in server.resolved_env()
