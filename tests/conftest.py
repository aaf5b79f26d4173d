"""Shared fixtures: a real two-region stack on free loopback ports, in its own XREGION_HOME."""

from __future__ import annotations

import shutil

import pytest

from tests.stacks import Stack
from xregion.infra.embedded.scratch import make_home, scratch_config


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


STACK_FIXTURES = {"stack", "serving"}


def pytest_collection_modifyitems(items):
    """A test that uses a running stack but forgot the `stack` marker would slip into the fast
    subset and start servers there: refuse it at collection."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("stack"):
            raise pytest.UsageError(f"{item.nodeid} uses a running stack: mark its module `pytest.mark.stack`")
