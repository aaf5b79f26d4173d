"""`xregion dr verify` on the shared session stack: a deleted object and an orphan are reported
and make it exit non-zero; repaired, they are gone from the report. Plus small unit checks."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.dr.helpers import populate
from tests.stacks import XREGION
from xregion.dr import nodes
from xregion.dr.verify import _under
from xregion.infra.embedded.scratch import make_home
from xregion.store import RegionStore

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


def verify_json(stack) -> tuple[int, dict]:
    res = subprocess.run(
        [XREGION, "dr", "verify", "--json"],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return res.returncode, json.loads(res.stdout)


def test_verify_reports_a_deleted_object_and_an_orphan(stack, tmp_path):
    cfg = stack.cfg
    info = populate(cfg, tmp_path, tag="verify")
    a, b = RegionStore(cfg.region("a")), RegionStore(cfg.region("b"))
    ours = sorted(o.key for o in a.list(cfg.artifacts.prefix + "/") if any(r in o.key for r in info["runs"]))
    assert len(ours) == 3
    _, report = verify_json(stack)
    problem_keys = {m["key"] for m in report["missing"]} | {o["key"] for o in report["orphans"]}
    assert not problem_keys & set(ours)  # healthy before the damage (other tests may leave their own)

    victim = ours[0]
    data = b.get_bytes(victim)
    b.delete(victim)
    orphan = f"{cfg.artifacts.prefix}/{info['experiment']}/no-such-run/artifacts/stray.bin"
    a.put_bytes(orphan, b"nobody references me")
    try:
        rc, report = verify_json(stack)
        assert rc == 1 and report["ok"] is False
        missing = [m for m in report["missing"] if m["key"] == victim]
        assert missing == [{"key": victim, "region": "b", "owner": missing[0]["owner"]}]
        assert missing[0]["owner"].startswith(("run ", "model version ", "logged model "))
        assert {"key": orphan, "regions": ["a"]} in report["orphans"]
        assert report["replication"][0]["standby"] == "b"
        table = subprocess.run(
            [XREGION, "dr", "verify"], env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=300
        )
        assert table.returncode == 1 and "orphan" in table.stdout and "missing" in table.stdout
    finally:
        b.put_bytes(victim, data)
        a.delete(orphan)
    _, report = verify_json(stack)
    problem_keys = {m["key"] for m in report["missing"]} | {o["key"] for o in report["orphans"]}
    assert victim not in problem_keys and orphan not in problem_keys


def test_under_matches_whole_path_segments():
    keys = sorted(["p/1/r1/artifacts/x", "p/1/r1/artifacts/y/z", "p/1/r10/artifacts/x", "p/1/r1"])
    assert _under(keys, "p/1/r1/artifacts") == ["p/1/r1/artifacts/x", "p/1/r1/artifacts/y/z"]
    assert _under(keys, "p/1/r1") == ["p/1/r1", "p/1/r1/artifacts/x", "p/1/r1/artifacts/y/z"]


def test_effective_config_follows_patroni(stack):
    """The roles of today come from Patroni's leader (no state file); without Patroni, the file's."""
    from xregion.config import load_config
    from xregion.infra.embedded.scratch import scratch_config as write_config
    from xregion.topology import effective_config, leader

    assert leader(stack.cfg) == nodes.current_primary(stack.cfg)
    eff = effective_config(stack.cfg)
    assert eff.primary.name == leader(stack.cfg)
    assert eff.database_uri().index(eff.primary.postgres) < min(
        eff.database_uri().index(r.postgres) for r in eff.standbys
    )
    alone = load_config(write_config(make_home()))  # nobody listens on its Patroni ports
    assert leader(alone) is None and effective_config(alone).primary.name == "a"
