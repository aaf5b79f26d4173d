"""The bake window's judgement: is the new version failing, or are clients merely sending junk?

Only the model's own failures count:
* requests the new version's servers failed (a 5xx they answered, an abort, a timeout), from
  HAProxy's per-request log, once ``min_requests`` requests were seen;
* the p99 of its successful requests against ``max_p99_ms``;
* the router's own probes: the version's serving input example, a request known to be correct,
  sent to each new server every ``probe_interval_s``.
A client's 4xx (bad JSON, a wrong schema, a missing Content-Type, which the front door answers
itself) never counts, so nobody can roll a good version back by sending bad requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xregion.stats import percentile

from .reqlog import Logged
from .state import Policy


@dataclass
class Bake:
    """A version taking traffic inside its bake window."""

    slot: str
    old_slot: str
    version: str
    old_version: str
    switched_at: float
    probes: int = 0
    probe_failures: int = 0
    last_probe: float = 0.0
    probe_errors: list[str] = field(default_factory=list)

    def probed(self, error: str | None, now: float) -> None:
        self.probes += 1
        self.last_probe = now
        if error:
            self.probe_failures += 1
            self.probe_errors.append(error[:300])


@dataclass
class Verdict:
    rollback: str | None  # why the version must go, or None
    passed: bool  # the window ended cleanly
    requests: int
    errors: int
    client_errors: int
    p99_ms: float | None
    probes: int
    probe_failures: int

    def figures(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "p99_ms": self.p99_ms,
            "probes": self.probes,
            "probe_failures": self.probe_failures,
        }


def judge(bake: Bake, logged: list[Logged], policy: Policy, now: float) -> Verdict:
    """The verdict on ``bake`` from the requests HAProxy logged for its colour since the switch."""
    mine = [r for r in logged if r.backend == bake.slot and r.ts >= bake.switched_at]
    errors = sum(1 for r in mine if r.model_failure)
    client_errors = sum(1 for r in mine if 400 <= r.status < 500)
    judged = len(mine) - client_errors  # a request the client got wrong says nothing about the model
    ok_latencies = [r.total_ms for r in mine if 200 <= r.status < 300 and r.total_ms >= 0]
    p99 = percentile(ok_latencies, 99) if len(ok_latencies) >= policy.min_requests else None
    into = f"{now - bake.switched_at:.1f}s into the bake window"
    reason = None
    if bake.probe_failures >= policy.max_probe_failures:
        reason = (
            f"{bake.probe_failures} of {bake.probes} probes with the version's own input example failed "
            f"({bake.probe_errors[-1] if bake.probe_errors else ''}) {into}"
        )
    elif judged >= policy.min_requests and errors / judged > policy.max_error_rate:
        reason = (
            f"error rate {errors / judged:.1%} > {policy.max_error_rate:.1%} ({errors} of {judged} requests) {into}"
        )
    elif p99 is not None and p99 > policy.max_p99_ms:
        reason = f"p99 latency {p99:.0f} ms > {policy.max_p99_ms:.0f} ms over {len(ok_latencies)} requests {into}"
    passed = reason is None and now >= bake.switched_at + policy.bake_s
    return Verdict(reason, passed, judged, errors, client_errors, p99, bake.probes, bake.probe_failures)
