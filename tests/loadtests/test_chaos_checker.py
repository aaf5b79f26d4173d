"""The chaos campaign's checker on hand-made histories (each anomaly it must find, and the
indeterminate writes it must allow), its history files, and the seeded plans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from xregion.loadtests.chaos import checker
from xregion.loadtests.chaos.faults import plan_faults
from xregion.loadtests.chaos.history import NEVER, HistoryWriter, Op, read_history
from xregion.loadtests.chaos.workload import TrialContext, plan_clients, value_for


def op(f: str, value, invoked: float, completed: float | None, type_: str = "ok", key: str = "k", p: str = "c0"):
    return Op(p, int(invoked * 1000), f, key, value, invoked, NEVER if completed is None else completed, type_)


def put(value, t0, t1=None, p="c0"):
    """Acknowledged at t1, or indeterminate (t1 None)."""
    return op("put", value, t0, t1, "ok" if t1 is not None else "info", p=p)


def delete(t0, t1=None, p="c0"):
    return op("delete", None, t0, t1, "ok" if t1 is not None else "info", p=p)


def test_the_newest_acknowledged_put_is_the_only_allowed_state():
    ops = [put("v1", 0, 1), put("v2", 2, 3)]
    assert checker.candidates(ops) == {"v2"}
    assert checker.judge(ops, {"a": "v2", "b": "v2"}).kinds == []
    assert checker.judge(ops, {"a": "v2", "b": None}).kinds == ["diverged", "lost"]
    assert checker.judge(ops, {"a": "v2", "b": "v1"}).kinds == ["diverged", "stale"]
    assert checker.judge(ops, {"a": "v1", "b": "v1"}).kinds == ["stale"]
    assert checker.judge(ops, {"a": "zz", "b": "zz"}).kinds == ["stale"]  # bytes no write produced


def test_concurrent_writes_may_each_win_but_regions_must_agree():
    ops = [put("v1", 0, 2, p="c0"), put("v2", 1, 3, p="c1")]
    assert checker.candidates(ops) == {"v1", "v2"}
    assert checker.judge(ops, {"a": "v1", "b": "v1"}).kinds == []
    assert checker.judge(ops, {"a": "v2", "b": "v2"}).kinds == []
    assert checker.judge(ops, {"a": "v1", "b": "v2"}).kinds == ["diverged"]


def test_an_acknowledged_delete_must_not_be_undone():
    ops = [put("v1", 0, 1), delete(2, 3)]
    assert checker.candidates(ops) == {None}
    assert checker.judge(ops, {"a": None, "b": None}).kinds == []
    assert checker.judge(ops, {"a": None, "b": "v1"}).kinds == ["diverged", "resurrected"]
    # a later write of the key makes it visible again, legitimately
    assert checker.judge([*ops, put("v2", 4, 5)], {"a": "v2", "b": "v2"}).kinds == []


def test_indeterminate_writes_may_or_may_not_be_visible():
    killed = put("v2", 2)  # its client died in the middle: may land at any time, or never
    ops = [put("v1", 0, 1), killed]
    assert checker.candidates(ops) == {"v1", "v2"}
    assert checker.judge(ops, {"a": "v2", "b": "v2"}).kinds == []
    assert checker.judge(ops, {"a": "v1", "b": "v1"}).kinds == []
    # a later acknowledged write does not rule it out: it may land after that write too
    assert checker.candidates([*ops, put("v3", 5, 6)]) == {"v2", "v3"}
    # an indeterminate delete may leave the key absent, where an acknowledged put alone may not
    assert checker.judge([put("v1", 0, 1), delete(2)], {"a": None, "b": None}).kinds == []
    assert checker.judge([put("v1", 0, 1)], {"a": None, "b": None}).kinds == ["lost"]


def test_failed_reads_do_not_count_and_unwritten_keys_stay_absent():
    ops = [op("read", None, 0, 1, "fail")]
    assert checker.candidates(ops) == {None}
    assert checker.judge(ops, {"a": None, "b": None}).kinds == []
    assert checker.judge([put("v1", 0)], {"a": None, "b": None}).kinds == []


def test_check_reports_the_offending_keys_with_their_history():
    ops = [put("v1", 0, 1), delete(2, 3), op("read", "v1", 4, 5, key="k"), op("put", "w", 0, 1, key="other")]
    observed = {"k": {"a": None, "b": "v1"}, "other": {"a": "w", "b": "w"}}
    anomalies = checker.check(ops, observed)
    assert [(a.key, a.kinds) for a in anomalies] == [("k", ["diverged", "resurrected"])]
    assert len(anomalies[0].history) == 3 and "delete k" in anomalies[0].history[1]
    assert checker.counts(anomalies) == {"lost": 0, "resurrected": 1, "stale": 0, "diverged": 1}


def test_history_joins_completions_and_a_killed_client_leaves_its_write_indeterminate(tmp_path):
    path = tmp_path / "c0.jsonl"
    script = f"""
import sys, time
from pathlib import Path
from xregion.loadtests.chaos.history import HistoryWriter
h = HistoryWriter(Path({str(path)!r}), "c0", "direct:a")
n = h.invoke("put", "k", "v1"); h.complete(n, "ok")
n = h.invoke("read", "k"); h.complete(n, "ok", "v1")
h.invoke("put", "k", "v2")
print("writing", flush=True)
time.sleep(60)
"""
    start = time.monotonic_ns()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)  # dies in the middle of its second put
    proc.wait()
    ops = read_history([path], start)
    assert [(o.f, o.value, o.type) for o in ops] == [("put", "v1", "ok"), ("read", "v1", "ok"), ("put", "v2", "info")]
    assert ops[2].completed == NEVER and ops[0].completed < ops[1].invoked
    w = HistoryWriter(tmp_path / "torn.jsonl", "c1", "proxy:b")
    w.invoke("delete", "k")
    w.close()
    with open(tmp_path / "torn.jsonl", "a") as f:
        f.write('{"type": "ok", "ind')  # a line cut short by a kill
    assert [(o.f, o.type) for o in read_history([tmp_path / "torn.jsonl"], start)] == [("delete", "info")]
    assert json.loads(path.read_text().splitlines()[0])["process"] == "c0"


def test_plans_follow_from_the_seed_alone():
    a, b = plan_clients(7, ["a", "b"]), plan_clients(7, ["a", "b"])
    assert a == b and plan_clients(8, ["a", "b"]) != a
    assert plan_faults(7, 3.0) == plan_faults(7, 3.0) and plan_faults(7, 3.0) != plan_faults(9, 3.0)
    assert [p.door for p in a][-1] == "registry" and {p.door for p in a[:-1]} <= {"direct", "proxy"}
    keys = {o.key for p in a[:-1] for o in p.ops}
    assert len(keys) <= 3  # a few hot keys: the races need them
    for seed in range(30):  # never two faults at once on one target
        faults = plan_faults(seed, 3.0)
        for f in faults:
            assert not [g for g in faults if g is not f and g.target == f.target and f.at <= g.at <= f.at + f.hold]
    ctx = TrialContext(7, "p", "mlartifacts", {}, "m", "async")
    assert value_for(ctx, "c0", 3, 100) == value_for(ctx, "c0", 3, 100) != value_for(ctx, "c1", 3, 100)
    assert len(value_for(ctx, "c0", 3, 100)) == 100
