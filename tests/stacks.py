"""Running embedded stacks for tests: the session one (its config, home, supervisor and MLflow accounts) and own stacks started through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xregion.config import load_config
from xregion.infra.embedded.scratch import make_home
from xregion.infra.embedded.scratch import scratch_config as write_config


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


# --- own stacks, started through the CLI (the destructive DR and drill tests) ---
XREGION = str(Path(sys.executable).parent / "xregion")


def start_stack(prefix: str, **overrides) -> Stack:
    from xregion.infra.embedded import stack as embedded

    home = make_home(prefix)
    path = write_config(home, **overrides)
    st = Stack(home, path)
    # through the CLI, as an operator would: the processes are then not children of the test
    # process (a kill -9 leaves no zombie behind for the test to reap)
    res = xr(st, "up")
    if res.returncode != 0:
        embedded.down(home, progress=lambda m: None, purge=True)
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"xregion up failed:\n{res.stderr}")
    return st


def stop_stack(st: Stack) -> None:
    from xregion.infra.embedded import stack as embedded

    embedded.down(st.home, progress=lambda m: None, purge=True)  # the data root too (/var/lib/xregion/<hash>)
    shutil.rmtree(st.home, ignore_errors=True)


def xr(st: Stack, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the xregion CLI against a stack."""
    return subprocess.run(
        [XREGION, *args], env={**os.environ, **st.env()}, capture_output=True, text=True, timeout=timeout
    )


def xr_json(st: Stack, *args, ok: bool = True):
    res = xr(st, *args, "--json")
    if ok:
        assert res.returncode == 0, f"xregion {' '.join(args)} exit {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout), res
