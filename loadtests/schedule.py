"""A drill's fault schedule: the scenario's steps at their times, in a thread beside the load."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from xregion import events

from . import metrics as M
from .scenarios import Ctx, DrillError, Scenario


class Schedule(threading.Thread):
    """Runs the scenario's steps at their times (seconds after the load started), one after another."""

    def __init__(self, ctx: Ctx, t0: float, steps: list[tuple[float, str, Callable[[Ctx], dict]]]):
        super().__init__(daemon=True, name="drill-schedule")
        self.ctx, self.t0, self.steps = ctx, t0, steps
        self.done: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        for at, label, fn in self.steps:
            wait = self.t0 + at - time.time()
            if wait > 0 and self.stop.wait(wait):
                return
            self.done.append(run_step(self.ctx, label, fn, self.t0))


def run_step(ctx: Ctx, label: str, fn: Callable[[Ctx], dict], t0: float) -> dict:
    start = time.time()
    ctx.progress(f"t={start - t0:6.2f}s  {label}")
    events.record("drill.step", ctx.home, step=label)
    try:
        result, error = fn(ctx), None
    except Exception as exc:  # a failed step is reported in the summary; the drill goes on measuring
        result, error = None, f"{type(exc).__name__}: {exc}"
        ctx.progress(f"step {label} failed: {error}")
    end = time.time()
    return {
        "label": label,
        "t": start - t0,
        "ts_start": start,
        "ts_end": end,
        "seconds": round(end - start, 3),
        "result": result,
        "error": error,
    }


def default_schedule(
    duration: float, scenario: Scenario, fault_at: float | None, restore_at: float | None, window: float = M.WINDOW_S
) -> tuple[float | None, float | None]:
    if scenario.inject is None:
        return None, None
    fault_at = float(fault_at) if fault_at is not None else round(max(5.0, 0.3 * duration), 1)
    if scenario.restore is not None:
        restore_at = float(restore_at) if restore_at is not None else round(0.75 * duration, 1)
    else:
        restore_at = None
    end = restore_at if restore_at is not None else duration
    if fault_at < 0 or end - fault_at < window:
        raise DrillError(
            f"the fault phase (t={fault_at:g}s to t={end:g}s) must last at least one {window:g} s "
            f"window for RTO to be measurable; change --duration, --fault-at or --restore-at"
        )
    if restore_at is not None and restore_at > duration:
        raise DrillError(f"--restore-at {restore_at:g} is after the end of the load ({duration:g} s)")
    return fault_at, restore_at
