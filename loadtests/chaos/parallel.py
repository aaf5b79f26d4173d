"""A campaign spread over several embedded stacks at once, one worker process each.

A trial spends most of its time waiting: for a killed store or MLflow server to restart, for a
frozen one's time-outs, for the ledger to drain. With two stacks, one trial's waits overlap
another's work. Each worker runs its share of the trials in the campaign's order, on a stack of
its own (its own XREGION_HOME, ports and processes), so trials never see each other's faults.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor

Trial = tuple[int, int, str]  # (number in the campaign from 1, seed, mode)


def _worker(settings, part: list[Trial], events, stop) -> None:
    from .campaign import ChaosStack

    with ChaosStack(settings, part[0][2], lambda message: events.put(("note", 0, message))) as chaos:
        events.put(("ready", 0, None))
        for n, seed, mode in part:
            if stop.is_set():  # another stack failed: stop after the trial in progress
                return
            result = chaos.trial(seed, mode, lambda phase, n=n: events.put(("phase", n, phase)))
            events.put(("result", n, result))


def run_on_stacks(
    settings,
    schedule: list[tuple[int, str]],
    stacks: int,
    progress: Callable[[int, str], None],
    note: Callable[[str], None],
    record: Callable[[int, object], None],
) -> list:
    """Run ``schedule`` (seed, mode) on ``stacks`` stacks; ``record(n, result)`` as each trial
    ends, ``progress(n, phase)`` as it moves on. The results, in the schedule's order."""
    numbered = [(n, seed, mode) for n, (seed, mode) in enumerate(schedule, 1)]
    # every stack takes every stacks-th trial: the schedule's sync trials come first, so a stack
    # switches its servers' mode once, as a single stack does
    parts = [p for p in (numbered[i::stacks] for i in range(stacks)) if p]
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, object] = {}
    with ctx.Manager() as manager, ProcessPoolExecutor(len(parts), mp_context=ctx) as pool:
        events, stop = manager.Queue(), manager.Event()
        futures: list[Future] = []
        starting: Future | None = None
        try:
            while parts or any(not f.done() for f in futures) or not events.empty():
                # stacks start one after another: each picks free ports as it starts, and two
                # picking at the same moment could pick the same ones
                if starting is None and parts:
                    starting = pool.submit(_worker, settings, parts.pop(0), events, stop)
                    futures.append(starting)
                try:
                    kind, n, value = events.get(timeout=0.5)
                except queue.Empty:
                    kind = None
                if kind == "ready" or (starting is not None and starting.done()):
                    starting = None  # started (or failed to): the next stack may start
                if kind == "note":
                    note(value)
                elif kind == "phase":
                    progress(n, value)
                elif kind == "result":
                    results[n] = value
                    record(n, value)
                failed = next((f for f in futures if f.done() and f.exception()), None)
                if failed is not None:
                    raise failed.exception()
        except BaseException:  # a failed stack or ^C: the others finish the trial in progress, then stop
            stop.set()
            raise
    return [results[n] for n, _, _ in numbered]
