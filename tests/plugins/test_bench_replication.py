"""`xregion bench replication` on the session stack, with a small artifact set: every way is measured
in every round, each on emptied stores and in an order that turns, the async set is fully replicated,
and nothing of the benchmark is left in any region. Timing figures are printed, never asserted."""

from __future__ import annotations

import json

import pytest

from xregion.plugins.bench_replication import run_bench
from xregion.store import stores

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

WAYS = ["a_plain_boto3", "b_xregion_sync", "c_xregion_async", "d_sequential_regions", "e_parallel_plain"]


def test_every_way_takes_every_place_and_leaves_nothing_behind(stack):
    held_before = {n: list(s.list("xregion-bench/")) for n, s in stores(stack.cfg).items()}
    assert held_before == {n: [] for n in held_before}

    r = run_bench(max_mib=1, rounds=5, progress=lambda m: None)
    print("\nbench replication (1 MiB set):", json.dumps(r["ratios"]), json.dumps(r["async_lag_s"]))

    assert r["artifact_set"]["files"] == 5 and r["regions"] == ["a", "b"]
    assert r["order_by_round"][0] == WAYS
    # five rounds: each way once in each place of the order
    for place in range(len(WAYS)):
        assert sorted(order[place] for order in r["order_by_round"]) == WAYS
    assert set(r["seconds"]) == set(WAYS) and all(v > 0 for v in r["seconds"].values())
    assert r["async_lag_s"]["samples"] == 5 * 5  # every async object reached the other region
    assert r["async_fully_replicated_s"] >= r["seconds"]["c_xregion_async"]
    # each way's objects were deleted before the next way ran, so none are left
    assert {n: list(s.list("xregion-bench/")) for n, s in stores(stack.cfg).items()} == held_before
