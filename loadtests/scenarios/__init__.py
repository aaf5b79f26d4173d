"""Drill scenarios, one family per module; each owns its hooks (prepare, inject, restore, finish)."""

from __future__ import annotations

from .base import Ctx, DrillError, Scenario
from .database import DB_PRIMARY_LOSS
from .region import REGION_OUTAGE
from .region_loss import REGION_SCENARIOS
from .release import BAD_MODEL_PROMOTION, good_versions
from .serving import FREEZE, MODEL_SERVER_CRASH

BASELINE = Scenario(
    "baseline",
    "no fault: the steady state of every persona, release managers included",
    gate="serving",
    scientists=1,
    release_managers=1,
)

SCENARIOS: dict[str, Scenario] = {
    **{s.name: s for s in (BASELINE, REGION_OUTAGE, MODEL_SERVER_CRASH, FREEZE, DB_PRIMARY_LOSS, BAD_MODEL_PROMOTION)},
    **REGION_SCENARIOS,
}

__all__ = ["SCENARIOS", "Ctx", "DrillError", "Scenario", "good_versions"]
