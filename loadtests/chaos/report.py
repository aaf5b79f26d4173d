"""The campaign's report: totals, faults by kind, every invariant's count, and each failing
trial's replay command and minimal history."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import checker

if TYPE_CHECKING:
    from .campaign import Settings, TrialResult


@dataclass
class CampaignResult:
    settings: Settings
    trials: list[TrialResult]
    seconds: float

    def summary(self) -> dict:
        """The JSON report: totals, faults by kind, the invariants' counts, the failing seeds."""
        total: Counter = Counter()
        acked: Counter = Counter()
        faults: Counter = Counter()
        for t in self.trials:
            total.update(t.counts)
            acked.update(t.acknowledged)
            faults.update(f["kind"] for f in t.faults if f["applied"])
        failing = [t for t in self.trials if t.failed]
        return {
            "trials": len(self.trials),
            "seed": self.settings.seed,
            "stacks": self.settings.stacks,
            "client_ledger": self.settings.client_ledger,
            "modes": sorted({t.mode for t in self.trials}),
            "operations": sum(t.operations for t in self.trials),
            "acknowledged_puts": acked["puts"],
            "acknowledged_deletes": acked["deletes"],
            "acknowledged_reads": acked["reads"],
            "promotions": acked["promotions"],
            "indeterminate": acked["indeterminate"],
            "stranded_in_client_ledgers": acked["stranded_in_client_ledgers"],
            "faults": dict(sorted(faults.items())),
            **{k: total[k] for k in (*checker.KINDS, "gate_violations", "verify_differences", "still_owed")},
            "trial_seconds": {
                "mean": round(sum(t.seconds for t in self.trials) / max(1, len(self.trials)), 1),
                "max": round(max((t.seconds for t in self.trials), default=0), 1),
                "phases_mean": _mean_phases(self.trials),
            },
            "failing_seeds": [{"seed": t.seed, "mode": t.mode, "counts": t.counts} for t in failing],
            "failures": [_failure(t) for t in failing],
            "wall_seconds": round(self.seconds, 1),
        }


def _mean_phases(trials: list[TrialResult]) -> dict[str, float]:
    total: Counter = Counter()
    for t in trials:
        total.update(t.phases)
    return {k: round(v / max(1, len(trials)), 2) for k, v in total.items()}


def _failure(t: TrialResult) -> dict:
    return {
        "seed": t.seed,
        "mode": t.mode,
        "replay": f"xregion chaos --trials 1 --seed {t.seed} --mode {t.mode}",
        "counts": t.counts,
        "faults": [f["described"] for f in sorted(t.faults, key=lambda f: f["at"])],
        "anomalies": t.anomalies,
        "gate": t.gate,
        "verify": t.verify[:20],
        "still_owed": t.owed[:20],
    }
