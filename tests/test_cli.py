"""The command line's edges: help that says how to begin, and a concern's error as a message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from xregion.cli import main as cli_main
from xregion.dr.nodes import DRError

XREGION = str(Path(sys.executable).parent / "xregion")


def test_no_subcommand_prints_where_to_start_and_the_regions_file(tmp_path):
    cfg = tmp_path / "regions.yaml"
    res = subprocess.run(
        [XREGION],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "XREGION_CONFIG": str(cfg), "COLUMNS": "300"},
    )
    out = res.stdout + res.stderr
    assert "Start here" in out and "xregion up" in out and "xregion demo" in out and "xregion status" in out
    assert f"Regions file in use: {cfg}" in out


def test_a_concerns_error_is_a_message_and_exit_1_not_a_traceback(monkeypatch, capsys):
    app = typer.Typer()

    @app.command()
    def fail() -> None:
        raise DRError("no database leader: check `xregion dr status`")

    @app.command()
    def other() -> None:  # two commands keep typer from running `fail` as the root
        pass

    monkeypatch.setattr(cli_main, "app", app)
    monkeypatch.setattr(cli_main, "mount", lambda argv: None)
    monkeypatch.setattr(sys, "argv", ["xregion", "fail"])
    with pytest.raises(SystemExit) as exit_:
        cli_main.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "DRError: no database leader" in err and "Traceback" not in err
