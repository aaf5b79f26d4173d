"""The seeded fault campaign (`xregion chaos`): concurrent clients and injected faults against a
real embedded stack, a Jepsen-style history of what was acknowledged, and the invariants checked
against it once everything is healed (history, workload, faults, checker, campaign)."""
