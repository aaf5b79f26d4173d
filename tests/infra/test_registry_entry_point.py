"""The embedded MLflow servers never start without the gated registry store (issue 14: it was dropped silently)."""

from __future__ import annotations

import importlib.metadata

import pytest

from xregion.config import load_config
from xregion.infra.embedded.scratch import scratch_config
from xregion.infra.embedded.stack import registry_store_uri
from xregion.infra.embedded.supervisor import SupervisorError


def test_the_gated_registry_is_on_every_server_command_line(tmp_path):
    args = registry_store_uri(load_config(scratch_config(tmp_path)))
    assert args[0] == "--registry-store-uri" and args[1].startswith("xregion+postgresql")


def test_a_missing_entry_point_stops_the_start_instead_of_dropping_the_gate(tmp_path, monkeypatch):
    cfg = load_config(scratch_config(tmp_path))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    with pytest.raises(SupervisorError, match="gated registry store .* is not installed"):
        registry_store_uri(cfg)
