"""A running embedded stack for tests: its config, home and supervisor."""

from __future__ import annotations

from pathlib import Path

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
