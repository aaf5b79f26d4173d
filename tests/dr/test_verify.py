"""`xregion dr verify` on the shared session stack: a deleted object and an orphan are reported
and make it exit non-zero; repaired, they are gone from the report. Plus small unit checks."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.dr.conftest import XREGION
from tests.dr.helpers import populate
from xregion.dr import nodes
from xregion.dr.verify import _under
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


def test_effective_config_follows_the_state_file(tmp_path):
    from xregion.config import load_config
    from xregion.infra.embedded.scratch import scratch_config as write_config

    cfg = load_config(write_config(tmp_path))
    assert nodes.effective_config(cfg, tmp_path).primary.name == "a"
    nodes.save_state(tmp_path, primary="b", fenced=["a"])
    eff = nodes.effective_config(cfg, tmp_path)
    assert eff.primary.name == "b" and [r.name for r in eff.standbys] == ["a"]
    assert eff.database_uri().index(eff.region("b").postgres) < eff.database_uri().index(eff.region("a").postgres)
    assert nodes.lsn_int("1/0") == 1 << 32 and nodes.lsn_int("0/3216440") == 0x3216440
