"""A running embedded stack for tests: its config, home, supervisor and MLflow accounts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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

    def credentials(self, role: str = "admin") -> tuple[str, str]:
        """(username, password) of one of the platform's MLflow accounts (infra/embedded/auth.py)."""
        from xregion.infra.embedded import auth

        return auth.credentials(self.home, role, self.cfg)

    def client_env(self, role: str = "admin") -> dict[str, str]:
        user, password = self.credentials(role)
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}

    def env(self, role: str = "admin") -> dict[str, str]:
        """What a subprocess (the xregion CLI) needs to act on this stack as ``role``."""
        return {"XREGION_CONFIG": str(self.config_path), "XREGION_HOME": str(self.home), **self.client_env(role)}


@contextmanager
def acting_as(st: Stack, role: str = "admin") -> Iterator[Stack]:
    """This test process talks to ``st``'s MLflow servers as ``role`` for the duration."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        for k, v in st.client_env(role).items():
            mp.setenv(k, v)
        yield st


def mlflow_http():
    """A requests session that authenticates to MLflow as this process's MLflow client does
    (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), for raw REST calls."""
    import os

    import requests

    session = requests.Session()
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        session.auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    return session


def grant(st: Stack, role: str, model: str, permission: str = "MANAGE") -> None:
    """Give one of the platform's accounts a permission on a test's own registered model (the
    accounts are scoped to the platform's model name, and tests use models of their own)."""
    from mlflow.server.auth.client import AuthServiceClient

    from xregion.home import environment

    user, _ = st.credentials(role)
    with environment(**st.client_env("admin")):
        AuthServiceClient(st.cfg.primary.mlflow_url).grant_user_permission(user, "registered_model", model, permission)
