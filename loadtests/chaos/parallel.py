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


def _worker(settings, number: int, part: list[Trial], events, stop) -> None:
    from .campaign import ChaosStack

    # the stacks start side by side: each says which it is
    with ChaosStack(
        settings, part[0][2], lambda message: events.put(("note", 0, f"stack {number}: {message}"))
    ) as chaos:
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
    # every stack takes a run of the schedule, whose sync trials come first: a stack switches its
    # servers' mode (a restart of each, about 8 s) at most once, and with a stack per mode never
    size = -(-len(numbered) // stacks)
    parts = [p for p in (numbered[i : i + size] for i in range(0, len(numbered), size)) if p]
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, object] = {}
    with ctx.Manager() as manager, ProcessPoolExecutor(len(parts), mp_context=ctx) as pool:
        events, stop = manager.Queue(), manager.Event()
        # the stacks start at once: their ports are leased (xregion.net.free_ports), so two stacks
        # choosing ports at the same moment do not choose the same ones
        futures: list[Future] = [
            pool.submit(_worker, settings, k, part, events, stop) for k, part in enumerate(parts, 1)
        ]
        try:
            while any(not f.done() for f in futures) or not events.empty():
                try:
                    kind, n, value = events.get(timeout=0.5)
                except queue.Empty:
                    kind = None
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
