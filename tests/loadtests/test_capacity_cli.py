"""`xregion bench capacity --json`: stdout carries the figures alone. Archiving the run in MLflow
prints the run's links on stdout (MLflow's client does), which came before the JSON and broke it.
The measurement and the archive are stand-ins here; the command line's own handling is real."""

from __future__ import annotations

import json
from types import SimpleNamespace

from typer.testing import CliRunner

from xregion.cli import common
from xregion.cli import drill as drill_cli
from xregion.loadtests import capacity, preflight


def test_the_json_on_stdout_is_not_preceded_by_mlflow_run_links(monkeypatch):
    figures = {"max_rps": 252.8, "objective_p99_ms": 50.0}

    def archived(cfg, cap):  # what MLflow's client does when a run ends
        print("🏃 View run capacity at: http://127.0.0.1:5101/#/experiments/2/runs/r1")
        return "r1"

    monkeypatch.setattr(common, "config_or_exit", lambda: SimpleNamespace(serving=None))
    monkeypatch.setattr(common, "act_as", lambda role, cfg: None)
    monkeypatch.setattr(preflight, "wait_serving", lambda cfg, **kw: (True, "200"))
    monkeypatch.setattr(capacity, "measure", lambda cfg, home, **kw: SimpleNamespace(as_dict=lambda: dict(figures)))
    monkeypatch.setattr(capacity, "log_to_mlflow", archived)

    result = CliRunner().invoke(drill_cli.bench_app, ["--json"])  # its one command

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {**figures, "mlflow_run_id": "r1"}
    assert "View run" in result.stderr  # the links are not lost: they go with the progress
