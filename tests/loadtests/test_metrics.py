"""RTO, availability, latency and RPO on hand-made request logs with known answers."""

from __future__ import annotations

import pytest

from xregion.loadtests import metrics as M
from xregion.loadtests.requestlog import Request, read_requests, write_merged

T0 = 1_000_000.0  # an arbitrary epoch second


def log(rate: float, start: float, end: float, fail=lambda t: False, kind="serving", latency=lambda t: 5.0):
    """Requests at a steady rate (per second) in [start, end) relative to T0; ``fail(t)`` picks the failures."""
    out, n = [], 0
    while True:
        t = start + n / rate
        if t >= end - 1e-9:
            return out
        out.append(
            Request(
                ts=T0 + t,
                kind=kind,
                name=f"{kind}: x",
                ok=not fail(t),
                latency_ms=latency(t),
                error="boom" if fail(t) else "",
            )
        )
        n += 1


def test_availability_and_failed_count():
    reqs = log(10, 0, 10, fail=lambda t: 3.0 <= t < 3.5)  # 100 requests, 5 failures
    assert len(reqs) == 100
    assert M.failed(reqs) == 5
    assert M.availability(reqs) == pytest.approx(0.95)
    assert M.availability([]) is None


def test_no_failure_gives_rto_zero():
    reqs = log(10, 0, 40)
    assert M.rto(reqs, fault_ts=T0 + 10, phase_end=T0 + 30) == 0.0


def test_failure_burst_rto_is_first_request_after_last_bad_window():
    # 10 rps; everything started in [10, 12) fails: last failure at 11.9; from 12.0 on all succeed
    reqs = log(10, 0, 40, fail=lambda t: 10 <= t < 12)
    assert M.rto(reqs, fault_ts=T0 + 10, phase_end=T0 + 30) == pytest.approx(2.0)


def test_failures_that_start_late_still_count_from_the_fault():
    # the fault at 10, failures only in [13, 14): a window starting at the fault is good, but the
    # service does not stay good; recovery is at 14.0, so RTO = 4.0 (not 0)
    reqs = log(10, 0, 40, fail=lambda t: 13 <= t < 14)
    assert M.rto(reqs, fault_ts=T0 + 10, phase_end=T0 + 30) == pytest.approx(4.0)


def test_never_recovers_gives_none():
    reqs = log(10, 0, 40, fail=lambda t: t >= 10)
    assert M.rto(reqs, fault_ts=T0 + 10, phase_end=T0 + 40) is None


def test_recovery_needs_a_whole_good_window_inside_the_phase():
    # back at 27.0 but the phase ends at 30: no 5 s window of evidence after the last failure
    reqs = log(10, 0, 40, fail=lambda t: 10 <= t < 27)
    assert M.rto(reqs, fault_ts=T0 + 10, phase_end=T0 + 30) is None
    # with the phase ending at 32.0, the window [27.0, 32.0) fits exactly (boundary included)
    assert M.rto(reqs, fault_ts=T0 + 10, phase_end=T0 + 32) == pytest.approx(17.0)


def test_phase_shorter_than_a_window_gives_none():
    reqs = log(10, 0, 40)
    assert M.rto(reqs, fault_ts=T0 + 10, phase_end=T0 + 14.9) is None


def test_threshold_boundary_99_percent_is_good_98_is_not():
    # 20 rps: exactly 100 requests per 5 s window
    one = log(20, 0, 60, fail=lambda t: abs(t - 20.0) < 1e-6)
    ws = M.windows(one, fault_ts=T0 + 18, phase_end=T0 + 40)
    assert all(w["requests"] == 100 for w in ws)
    assert all(w["good"] for w in ws)  # 99/100 at worst
    assert M.rto(one, fault_ts=T0 + 18, phase_end=T0 + 40) == 0.0

    two = log(20, 0, 60, fail=lambda t: abs(t - 20.0) < 1e-6 or abs(t - 20.05) < 1e-6)
    ws = {round(w["start"] - T0, 3): w for w in M.windows(two, fault_ts=T0 + 18, phase_end=T0 + 40)}
    assert not ws[18.0]["good"] and ws[18.0]["ok"] == 98  # both failures: 98 %
    assert ws[20.1]["good"]  # neither
    # the last window holding both failures starts at 20.0; the next candidate (20.1) opens with
    # the request at 20.1
    assert M.rto(two, fault_ts=T0 + 18, phase_end=T0 + 40) == pytest.approx(2.1)


def test_silent_gap_is_not_service():
    # clients hang: no request starts in [10, 16); then all succeed. Windows inside the gap are
    # empty (bad); the first good window's first request is at 16.0
    reqs = [r for r in log(10, 0, 40) if not (T0 + 10 <= r.ts < T0 + 16)]
    assert M.rto(reqs, fault_ts=T0 + 10, phase_end=T0 + 30) == pytest.approx(6.0)
    empty = M.windows(reqs, fault_ts=T0 + 10, phase_end=T0 + 30)[0]
    assert empty["requests"] == 0 and not empty["good"]


def test_only_the_gated_kind_counts_for_rto():
    serving = log(10, 0, 40)
    tracking = log(2, 0, 40, kind="tracking", fail=lambda t: t >= 10)
    summary = M.summarize(
        serving + tracking, load_start=T0, load_end=T0 + 40, fault_ts=T0 + 10, phase_end=T0 + 30, gate_kind="serving"
    )
    assert summary["rto_s"] == 0.0
    assert summary["gated"]["availability"] == 1.0
    assert summary["by_kind"]["tracking"]["failed"] == 60
    assert summary["failed"] == 60
    assert summary["availability"] == pytest.approx((400 + 20) / 480)


def test_percentiles_linear_interpolation():
    assert M.percentile([], 50) is None
    assert M.percentile([7.0], 99) == 7.0
    assert M.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert M.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_latency_steady_vs_failover_uses_successes_only():
    # 10 ms before the fault, 100 ms in [10, 12) where every fifth request fails, 10 ms after
    reqs = log(
        10,
        0,
        40,
        fail=lambda t: 10 <= t < 12 and round(t * 10) % 5 == 0,
        latency=lambda t: 100.0 if 10 <= t < 12 else 10.0,
    )
    s = M.summarize(
        reqs, load_start=T0, load_end=T0 + 40, fault_ts=T0 + 10, phase_end=T0 + 30, gate_kind="serving", warmup_s=2
    )
    assert s["latency_steady"]["n"] == 80 and s["latency_steady"]["p99_ms"] == 10.0
    assert s["rto_s"] == pytest.approx(1.6)  # last failure at 11.5; next request 11.6
    assert s["failover_window"] == [pytest.approx(T0 + 10), pytest.approx(T0 + 16.6)]
    fo = s["latency_failover"]
    assert fo["n"] == 66 - 4  # 66 requests in [10, 16.6), 4 failed
    assert fo["p50_ms"] == 10.0 and fo["p99_ms"] == pytest.approx(100.0)
    assert s["failed_in_phase"] == 4


def test_no_fault_scenario_has_no_rto():
    reqs = log(10, 0, 20)
    s = M.summarize(reqs, load_start=T0, load_end=T0 + 20, fault_ts=None, phase_end=None, gate_kind="serving")
    assert s["rto_s"] is None and s["latency_steady"]["n"] == 170


def test_timeline_bins_per_second():
    reqs = log(10, 0, 5, fail=lambda t: 2 <= t < 3, latency=lambda t: 1.0 + t)
    tl = M.timeline(reqs, T0, T0 + 5)
    assert [b["ok"] for b in tl] == [10, 10, 0, 10, 10]
    assert [b["failed"] for b in tl] == [0, 0, 10, 0, 0]
    assert tl[2]["p50_ms"] is None and tl[0]["p50_ms"] == pytest.approx(1.45)


def test_rpo_counts_missing_acknowledged_writes():
    acked = [("m", "r1", "loss", 0), ("m", "r1", "loss", 1), ("a", "r1", "x.txt", 0), ("m", "r1", "loss", 1)]
    present = [("m", "r1", "loss", 0), ("a", "r1", "x.txt", 0), ("m", "r9", "other", 0)]
    r = M.rpo(acked, present)
    assert r["acknowledged"] == 3 and r["missing"] == 1 and r["missing_keys"] == [("m", "r1", "loss", 1)]


def test_request_log_round_trip_and_torn_line(tmp_path):
    reqs = log(10, 0, 1, fail=lambda t: t >= 0.5)
    path = write_merged(reqs, tmp_path / "requests-1.csv")
    with open(path, "a") as f:
        f.write("1000000.9,serving,serving: x,1,3.")  # a torn last line (writer killed)
    back = read_requests(path)
    assert back == reqs
