"""Shared fixtures: a real two-region stack on free loopback ports, in its own XREGION_HOME."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from xregion.infra.embedded.sandbox import free_ports, make_home, write_config  # noqa: F401 (the tests' helpers)

from xregion.config import load_config


class Stack:
    """A running embedded stack for tests: its config, home and supervisor."""

    def __init__(self, home: Path, config_path: Path):
        from xregion.infra.embedded.supervisor import Supervisor

        self.home = home
        self.config_path = config_path
        self.cfg = load_config(config_path)
        self.sup = Supervisor(home)

    def env(self) -> dict[str, str]:
        return {"XREGION_CONFIG": str(self.config_path), "XREGION_HOME": str(self.home)}


@pytest.fixture(scope="session")
def stack():
    """One two-region stack for the session. Tests that fault it must leave it healthy again."""
    from xregion.infra.embedded import stack as embedded

    home = make_home()
    path = write_config(home)
    old = {k: os.environ.get(k) for k in ("XREGION_CONFIG", "XREGION_HOME")}
    os.environ.update({"XREGION_CONFIG": str(path), "XREGION_HOME": str(home)})
    st = Stack(home, path)
    try:
        embedded.up(st.cfg, home, progress=lambda m: None)
        yield st
    finally:
        embedded.down(home, progress=lambda m: None)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(home, ignore_errors=True)
