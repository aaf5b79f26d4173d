"""Shared fixtures: a real two-region stack on free loopback ports, in its own XREGION_HOME."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.stacks import Stack
from xregion.infra.embedded.scratch import make_home, scratch_config


def orphaned_data_roots() -> set[Path]:
    """Data roots (/var/lib/xregion/<hash>: Postgres, Patroni, etcd) whose stack's home is gone: a
    stack removed without `down --purge`, its databases left on disk for good."""
    from xregion.infra.embedded.postgres import ROOT_DATA

    found = set()
    for marker in ROOT_DATA.glob("*/XREGION_HOME"):
        if not Path(marker.read_text().strip()).exists():
            found.add(marker.parent)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_data_root_left_behind():
    """Every stack a test starts is purged: the suite fails if it orphaned a data root."""
    before = orphaned_data_roots()
    yield
    left = orphaned_data_roots() - before
    assert not left, f"stacks removed without `down --purge` left their data behind: {sorted(map(str, left))}"


@pytest.fixture(scope="session")
def stack():
    """One two-region stack for the session. Tests that fault it must leave it healthy again. This
    process talks to its MLflow servers as the administrator (tests that need another account ask)."""
    from xregion.infra.embedded import stack as embedded

    home = make_home()
    path = scratch_config(home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XREGION_CONFIG", str(path))
        mp.setenv("XREGION_HOME", str(home))
        try:
            embedded.up(Stack(home, path).cfg, home, progress=lambda m: None)
            st = Stack(home, path)
            for k, v in st.client_env().items():
                mp.setenv(k, v)
            yield st
        finally:
            embedded.down(home, progress=lambda m: None, purge=True)
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def serving(stack):
    """Serving on the session stack: a tiny model registered under its own name, promoted, served by a
    model server per region behind HAProxy, with the router following it. Stopped at the end."""
    from tests.registry.helpers import client, log_tiny, unique
    from tests.router.helpers import POLICY, TUNING, Serving
    from tests.stacks import grant
    from xregion.infra.serving import control
    from xregion.plugins import registry_client

    cfg, home = stack.cfg, stack.home
    url = cfg.region("a").mlflow_url
    model = unique("serving")
    v1 = log_tiny(url, model, label="v1")
    grant(stack, "router", model)  # its automatic rollback writes this model's registry entries
    registry_client.promote(client(url), cfg, model, v1, reason="first release", who="test")
    control.start_serving(cfg, home, progress=lambda m: None, policy=POLICY, tuning=TUNING, model=model)
    try:
        yield Serving(cfg, home, model, url, cfg.serving.frontend_url)
    finally:
        control.stop_serving(home)


STACK_FIXTURES = {"stack", "serving"}


def pytest_collection_modifyitems(items):
    """A test that uses a running stack but forgot the `stack` marker would slip into the fast
    subset and start servers there: refuse it at collection."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("stack"):
            raise pytest.UsageError(f"{item.nodeid} uses a running stack: mark its module `pytest.mark.stack`")
