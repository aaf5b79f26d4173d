"""`xregion chaos` on real stacks: a twenty-trial campaign through the command line keeps every
invariant, and a replicator that forgets what it owes is caught (the campaign can fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xregion.loadtests.chaos.campaign import CampaignResult, ChaosStack, Settings
from xregion.loadtests.chaos.forkserver import ForkServer
from xregion.net import free_ports

pytestmark = [pytest.mark.stack, pytest.mark.timeout(1500)]
XREGION = str(Path(sys.executable).parent / "xregion")
COUNTS = ("lost", "resurrected", "stale", "diverged", "gate_violations", "verify_differences", "still_owed")
SETTINGS = Settings(trials=2, seed=5000, mode="async", duration=2.5)


@pytest.fixture(scope="module")
def chaos():
    with ChaosStack(SETTINGS, "async") as stack:
        yield stack


def campaign(stack: ChaosStack, seeds: range, modes: tuple[str, ...]) -> dict:
    trials = [stack.trial(seed, mode, lambda phase: None) for mode in modes for seed in seeds]
    return CampaignResult(stack.settings, trials, 0.0).summary()


SABOTAGE = """
# a replicator that forgets to owe region b the puts it did not write there: the acknowledged
# write's ledger entry (Outbox.end_write) and any later owe skip b
from xregion.plugins import outbox
_end, _owe = outbox.Outbox.end_write, outbox.Outbox.owe
def end_write(self, key, gen, state=None, tree=False, owe=(), source=None, regions=()):
    if state is not None and state.op == "put":
        owe, regions = [o for o in owe if o[0] != "b"], [r for r in regions if r != "b"]
    return _end(self, key, gen, state, tree=tree, owe=owe, source=source, regions=regions)
def owe(self, op, key, region, **kw):
    if op == "put" and region == "b":
        return None
    return _owe(self, op, key, region, **kw)
outbox.Outbox.end_write, outbox.Outbox.owe = end_write, owe
"""


def test_a_replicator_that_forgets_what_it_owes_is_caught(chaos, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SABOTAGE)
    env = {**chaos.forks.service.env, "PYTHONPATH": str(tmp_path)}
    honest = chaos.forks
    sabotaged = ForkServer(chaos.sup, free_ports(1)[0], chaos.cfg.primary.name, env)
    sabotaged.service.name = "chaos-clients-sabotaged"
    sabotaged.start()
    chaos.forks = sabotaged
    try:
        report = campaign(chaos, range(5000, 5002), ("async",))
    finally:
        chaos.forks = honest
        chaos.sup.stop(sabotaged.service.name)
    assert report["lost"] >= 1 and report["diverged"] >= 1 and report["verify_differences"] >= 1
    assert {f["seed"] for f in report["failing_seeds"]} <= {5000, 5001} and report["failing_seeds"]
    failure = report["failures"][0]
    assert failure["replay"] == f"xregion chaos --trials 1 --seed {failure['seed']} --mode async"
    lost = [a for a in failure["anomalies"] if "lost" in a["kinds"]]
    assert lost and any(a["observed"]["b"] is None for a in lost)
    assert all(any(" put " in line and "-> ok" in line for line in a["history"]) for a in lost)


def test_twenty_trials_under_faults_keep_every_invariant(tmp_path):
    """Through the command line, on two stacks of its own at once (each in a worker process): seeds
    1000-1009 in each mode."""
    env = {k: v for k, v in os.environ.items() if k not in ("XREGION_CONFIG", "XREGION_HOME")}
    res = subprocess.run(
        [
            XREGION,
            "chaos",
            "--trials",
            "20",
            "--seed",
            "1000",
            "--mode",
            "both",
            "--duration",
            "2.5",
            "--stacks",
            "2",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )
    report = json.loads(res.stdout)
    assert report["trials"] == 20 and report["modes"] == ["async", "sync"] and report["stacks"] == 2
    # the campaign did real work under real faults
    assert report["acknowledged_puts"] >= 100 and report["acknowledged_deletes"] >= 20
    assert {"kill:s3", "freeze:s3", "kill:client"} <= set(report["faults"])
    assert sum(report["faults"].values()) >= 20
    seeds = json.dumps(report["failing_seeds"])  # the replay commands and histories are in report["failures"]
    assert {k: report[k] for k in COUNTS} == dict.fromkeys(COUNTS, 0), seeds + json.dumps(report["failures"])[:8000]
    assert report["failing_seeds"] == [] and res.returncode == 0, res.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # its stacks lived in their own temporary homes, now gone
    # the terminal carries the campaign's progress, not libraries' warnings from its stack workers
    assert "Warning" not in res.stderr, res.stderr[-3000:]
