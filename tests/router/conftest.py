"""Serving on the session stack: a tiny model registered under its own name, promoted, served by
a model server per region behind HAProxy, with the router following it. Stopped at the end."""

from __future__ import annotations

import pytest

from xregion.infra.serving import control
from xregion.plugins import registry_client

from ..registry.helpers import client, log_tiny, unique
from .helpers import POLICY, TUNING, Serving


@pytest.fixture(scope="package")
def serving(stack):
    cfg, home = stack.cfg, stack.home
    url = cfg.region("a").mlflow_url
    model = unique("serving")
    v1 = log_tiny(url, model, label="v1")
    registry_client.promote(client(url), cfg, model, v1, reason="first release", who="test")
    control.start_serving(cfg, home, progress=lambda m: None, policy=POLICY, tuning=TUNING, model=model)
    try:
        yield Serving(cfg, home, model, url, cfg.serving.frontend_url)
    finally:
        control.stop_serving(home)
