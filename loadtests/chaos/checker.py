"""The invariants of a chaos trial, checked against its history once every fault is healed and the
ledger is drained (the final state of a register per key, as Jepsen checks a final read).

For each key, a write (put or delete) may be the last word if no acknowledged write of that key
began after it completed. Acknowledged writes complete when acknowledged; indeterminate ones
never (they may land at any later time, or never), so they stay candidates unless an
acknowledged write followed them. The key's final state in every region must be the value of one
candidate (absent for a delete, absent too when no write was ever acknowledged), and the same
in every region.

- lost: a region lacks the key although a put is the only possible last word;
- resurrected: a region holds bytes of a put although the last acknowledged write was a delete
  and no candidate put could follow it;
- stale: a region holds bytes of a put that an acknowledged write superseded (older bytes
  won), or bytes no recorded write produced;
- diverged: the regions hold different states of the key (replicas that never converged).

Each count is of keys: a key is counted once per kind of anomaly, whatever the regions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .history import NEVER, WRITES, Op

KINDS = ("lost", "resurrected", "stale", "diverged")


@dataclass
class Anomaly:
    key: str
    kinds: list[str]
    observed: dict[str, str | None]  # region -> sha256 held (None: absent)
    allowed: list[str | None]  # final states the history allows
    history: list[str]  # the operations on the key, described, in invocation order
    evidence: list[str] = field(default_factory=list)  # filled by the campaign: ledgers and log lines

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class KeyVerdict:
    allowed: set[str | None]
    last_acked: Op | None
    kinds: list[str] = field(default_factory=list)


def candidates(ops: list[Op]) -> set[str | None]:
    """Final states the history of one key allows (sha256 of a put, None for absent)."""
    writes = [o for o in ops if o.f in WRITES and o.type in ("ok", "info")]
    acked = [o for o in writes if o.acknowledged]
    allowed: set[str | None] = set()
    if not acked:
        allowed.add(None)  # nothing certainly happened: the key may never have been written
    for w in writes:
        if w.completed == NEVER or not any(a.invoked > w.completed for a in acked):
            allowed.add(w.value if w.f == "put" else None)
    return allowed


def judge(ops: list[Op], observed: dict[str, str | None]) -> KeyVerdict:
    """The anomalies of one key, given what each region holds now."""
    allowed = candidates(ops)
    acked = [o for o in ops if o.f in WRITES and o.acknowledged]
    last = max(acked, key=lambda o: o.completed, default=None)
    written = {o.value for o in ops if o.f == "put"}
    verdict = KeyVerdict(allowed, last)
    kinds: set[str] = set()
    for held in observed.values():
        if held in allowed:
            continue
        if held is None:
            kinds.add("lost")
        elif held in written and last is not None and last.f == "delete" and not allowed - {None}:
            kinds.add("resurrected")
        else:
            kinds.add("stale")
    if len(set(observed.values())) > 1:
        kinds.add("diverged")
    verdict.kinds = sorted(kinds)
    return verdict


def check(ops: list[Op], observed: dict[str, dict[str, str | None]]) -> list[Anomaly]:
    """Every key's anomalies. ``observed`` is key -> region -> sha256 held (None: absent)."""
    by_key: dict[str, list[Op]] = {}
    for o in ops:
        if o.key and o.f in (*WRITES, "read"):
            by_key.setdefault(o.key, []).append(o)
    out = []
    for key in sorted(set(by_key) | set(observed)):
        key_ops = by_key.get(key, [])
        held = observed.get(key, {})
        verdict = judge(key_ops, held)
        if verdict.kinds:
            out.append(
                Anomaly(
                    key=key,
                    kinds=verdict.kinds,
                    observed=held,
                    allowed=sorted(verdict.allowed, key=lambda v: (v is not None, v or "")),
                    history=[o.describe() for o in key_ops],
                )
            )
    return out


def counts(anomalies: list[Anomaly]) -> dict[str, int]:
    return {k: sum(1 for a in anomalies if k in a.kinds) for k in KINDS}


def acknowledged(ops: list[Op]) -> dict[str, int]:
    return {
        "puts": sum(1 for o in ops if o.f == "put" and o.acknowledged),
        "deletes": sum(1 for o in ops if o.f == "delete" and o.acknowledged),
        "reads": sum(1 for o in ops if o.f == "read" and o.acknowledged),
        "promotions": sum(1 for o in ops if o.f == "promote" and o.acknowledged),
        "indeterminate": sum(1 for o in ops if o.indeterminate),
    }


__all__ = ["Anomaly", "KINDS", "acknowledged", "candidates", "check", "counts", "judge", "NEVER"]
