"""What a drill measures, computed from the per-request log. Pure: no I/O, no clock.

Definitions (README.md, "What is measured", is the reference and says the same):

* availability = successful requests / all requests (None when there were none);
* failed = the number of requests that did not succeed;
* RTO (recovery time objective, as measured): requests are placed by the time they *started*.
  Let ``t_f`` be the fault injection, ``t_end`` the end of the fault phase (the next scheduled
  action, e.g. bringing the region back, or the end of the load), ``W`` the window (5 s),
  ``q`` the success threshold (0.99) and ``delta`` the resolution (0.1 s). The candidate windows
  are ``[s, s + W)`` for ``s = t_f + k * delta`` (k = 0, 1, ...) with ``s + W <= t_end``. A window
  is *good* when at least one request started in it and ``successes >= q * requests``. If every
  candidate window is good, ``RTO = 0``. Otherwise let ``s*`` be the candidate just after the
  last bad one (from ``s*`` on every window is good: the service stays good for the rest of the
  phase); ``RTO = t* - t_f`` where ``t*`` is the start of the first request at or after ``s*``
  (the first good window's start, snapped to the request that opens it, so that a silent gap
  before it does not count as service). A bad (or empty) last candidate window gives
  ``RTO = None`` (not recovered within the phase: the objective fails); so does a phase
  shorter than ``W`` (nothing can be concluded). A window with no request is bad: silence
  (clients hung on a frozen server) is not service.
* latency percentiles are over successful requests only (linear interpolation between
  closest ranks); "steady" = requests started between the end of the warm-up and the fault,
  "failover" = requests started from the fault to the end of the recovery window
  (``t_f + RTO + W``), or to ``t_end`` when there was no recovery.
* RPO = acknowledged writes that cannot be read back afterwards.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence

from xregion.stats import percentile

from .requestlog import Request

WINDOW_S = 5.0
THRESHOLD = 0.99
RESOLUTION_S = 0.1


def availability(reqs: Sequence[Request]) -> float | None:
    if not reqs:
        return None
    return sum(1 for r in reqs if r.ok) / len(reqs)


def failed(reqs: Iterable[Request]) -> int:
    return sum(1 for r in reqs if not r.ok)


def between(reqs: Iterable[Request], start: float | None = None, end: float | None = None) -> list[Request]:
    """Requests that started in [start, end)."""
    return [r for r in reqs if (start is None or r.ts >= start) and (end is None or r.ts < end)]


def of_kind(reqs: Iterable[Request], kind: str | None) -> list[Request]:
    return list(reqs) if kind is None else [r for r in reqs if r.kind == kind]


def latency(reqs: Iterable[Request]) -> dict:
    """p50/p95/p99 and count of the successful requests' latencies, in ms."""
    vals = [r.latency_ms for r in reqs if r.ok]
    return {
        "n": len(vals),
        "p50_ms": percentile(vals, 50),
        "p95_ms": percentile(vals, 95),
        "p99_ms": percentile(vals, 99),
    }


def windows(
    reqs: Sequence[Request],
    fault_ts: float,
    phase_end: float,
    window: float = WINDOW_S,
    threshold: float = THRESHOLD,
    resolution: float = RESOLUTION_S,
) -> list[dict]:
    """Every candidate window of the RTO definition: start, requests, successes, good."""
    starts = sorted(r.ts for r in reqs)
    oks = [0]
    for r in sorted(reqs, key=lambda r: r.ts):
        oks.append(oks[-1] + (1 if r.ok else 0))
    out = []
    k = 0
    eps = 1e-9
    while True:
        s = fault_ts + k * resolution
        if s + window > phase_end + eps:
            break
        i, j = bisect_left(starts, s - eps), bisect_left(starts, s + window - eps)
        n, ok = j - i, oks[j] - oks[i]
        out.append({"start": s, "requests": n, "ok": ok, "good": n > 0 and ok >= threshold * n - eps})
        k += 1
    return out


def rto(
    reqs: Sequence[Request],
    fault_ts: float,
    phase_end: float,
    window: float = WINDOW_S,
    threshold: float = THRESHOLD,
    resolution: float = RESOLUTION_S,
) -> float | None:
    """Seconds from the fault to the start of the first good window after which every window is good.

    None when the service is not back within the phase (or the phase is shorter than a window).
    """
    ws = windows(reqs, fault_ts, phase_end, window, threshold, resolution)
    if not ws:
        return None
    last_bad = max((i for i, w in enumerate(ws) if not w["good"]), default=-1)
    if last_bad == -1:
        return 0.0
    if last_bad == len(ws) - 1:
        return None
    s = ws[last_bad + 1]["start"]
    first = min(r.ts for r in reqs if r.ts >= s - 1e-9)  # a good window has a request
    return round(first - fault_ts, 6)


def timeline(reqs: Sequence[Request], start: float, end: float, bin_s: float = 1.0) -> list[dict]:
    """Per-bin (default per-second) successes, failures and p50/p99 latency of successes, by start time."""
    nbins = max(1, math.ceil((end - start) / bin_s))
    bins: dict[int, list[Request]] = defaultdict(list)
    for r in reqs:
        if start <= r.ts < end:
            bins[int((r.ts - start) // bin_s)].append(r)
    out = []
    for b in range(nbins):
        rs = bins.get(b, [])
        lat = [r.latency_ms for r in rs if r.ok]
        out.append(
            {
                "t": b * bin_s,
                "ok": sum(1 for r in rs if r.ok),
                "failed": sum(1 for r in rs if not r.ok),
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
            }
        )
    return out


def rpo(acked: Iterable[tuple], present: Iterable[tuple]) -> dict:
    """Acknowledged writes (hashable keys) that are not present afterwards."""
    acked = list(dict.fromkeys(acked))
    have = set(present)
    missing = [a for a in acked if a not in have]
    return {"acknowledged": len(acked), "missing": len(missing), "missing_keys": missing[:50]}


def error_counts(reqs: Iterable[Request], top: int = 10) -> list[dict]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in reqs:
        if not r.ok:
            counts[(r.name, re.sub(r"(?<!HTTP )(?<!\d)\d+", "N", r.error or "unknown")[:160])] += 1
    rows = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [{"name": n, "error": e, "count": c} for (n, e), c in rows]


def summarize(
    reqs: Sequence[Request],
    *,
    load_start: float,
    load_end: float,
    fault_ts: float | None,
    phase_end: float | None,
    gate_kind: str | None,
    warmup_s: float = 3.0,
    window: float = WINDOW_S,
    threshold: float = THRESHOLD,
    resolution: float = RESOLUTION_S,
) -> dict:
    """The drill's figures: overall, per traffic kind, and for the gated kind RTO and latencies."""
    gated = of_kind(reqs, gate_kind)
    out: dict = {
        "requests": len(reqs),
        "failed": failed(reqs),
        "availability": availability(reqs),
        "gate_kind": gate_kind,
        "by_kind": {
            k: {"requests": len(v), "failed": failed(v), "availability": availability(v)}
            for k, v in sorted(_group(reqs).items())
        },
        "gated": {"requests": len(gated), "failed": failed(gated), "availability": availability(gated)},
        "definition": {"window_s": window, "threshold": threshold, "resolution_s": resolution},
        "load_seconds": round(load_end - load_start, 3),
    }
    steady = between(gated, load_start + warmup_s, fault_ts if fault_ts is not None else load_end)
    out["latency_steady"] = latency(steady)
    if fault_ts is None:
        out.update(rto_s=None, recovered_ts=None, latency_failover=latency([]), failover_window=None)
        return out
    end = phase_end if phase_end is not None else load_end
    r = rto(gated, fault_ts, end, window, threshold, resolution)
    fo_end = fault_ts + r + window if r is not None else end
    out.update(
        rto_s=r,
        recovered_ts=fault_ts + r if r is not None else None,
        failover_window=[fault_ts, fo_end],
        latency_failover=latency(between(gated, fault_ts, fo_end)),
        failed_in_phase=failed(between(gated, fault_ts, end)),
        first_failure_after_fault=next((x.ts - fault_ts for x in gated if x.ts >= fault_ts and not x.ok), None),
    )
    return out


def _group(reqs: Iterable[Request]) -> dict[str, list[Request]]:
    g: dict[str, list[Request]] = defaultdict(list)
    for r in reqs:
        g[r.kind].append(r)
    return g
