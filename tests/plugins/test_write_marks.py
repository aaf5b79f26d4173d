"""A write in progress holds its key's converges back (its copies may still land), but a writer
killed -9 in the middle of its write no longer holds anything once it is known to be gone: a
process of this host is checked, one of another host keeps its mark until it expires.
Regression: in the chaos campaign every trial that killed a client mid-write spent about 20 s
(the mark's lifetime) in the drain or in the other clients' exit drains. No stack."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket

from xregion import processes
from xregion.plugins.outbox import Outbox

KEY = "mlartifacts/1/run/artifacts/model.bin"
# never fork the test process: it has threads (TensorFlow's, a replicator's), and a child forked while
# one held SQLite's allocator lock hung for good (in the full suite, 4 of 40 children: 243 s of timeouts)
SPAWN = "spawn"


def _begin_and_wait(path: str, started, stop) -> None:
    Outbox(path).begin_write(KEY)
    started.set()
    stop.wait(60)


def test_the_mark_of_a_writer_killed_mid_write_holds_nothing(tmp_path):
    ledger = str(tmp_path / "ledger.sqlite")
    ctx = multiprocessing.get_context(SPAWN)
    started, stop = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_begin_and_wait, args=(ledger, started, stop))
    writer.start()
    assert started.wait(30)
    outbox = Outbox(ledger)
    assert outbox.writing(KEY)  # alive: its copies may still land
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(30)
    assert not outbox.writing(KEY)  # gone, and known to be: nothing more of it will land


def test_the_mark_of_a_writer_on_another_host_holds_until_it_expires(tmp_path):
    outbox = Outbox(tmp_path / "ledger.sqlite")
    outbox.writer = f"not-{socket.gethostname()}:{os.getpid()}:12.00"  # a writer elsewhere
    gen = outbox.begin_write(KEY)
    assert Outbox(tmp_path / "ledger.sqlite").writing(KEY)
    outbox.end_write(KEY, gen)
    assert not outbox.writing(KEY)


def test_a_pid_reused_by_another_program_is_gone():
    me = processes.identity()
    assert not processes.gone(me)
    host, pid, started = me.rsplit(":", 2)
    assert processes.gone(f"{host}:{pid}:{float(started) - 100:.2f}")  # same pid, another start
    assert not processes.gone(None) and not processes.gone("garbage")


def _lease_and_wait(path: str, leased, stop) -> None:
    leased.put(len(Outbox(path).lease()))
    stop.wait(60)


def test_rows_leased_by_a_worker_killed_on_this_host_are_free_at_once(tmp_path):
    """A client killed -9 while its worker held leases: before, its rows stayed held until the
    lease expired (20 s), and every other client's exit drain waited for them (the campaign's
    seed 92, async: a 26 s trial). A worker on another host keeps its lease until it expires."""
    ledger = str(tmp_path / "ledger.sqlite")
    outbox = Outbox(ledger)
    outbox.owe("put", KEY, "b", gen=1)
    ctx = multiprocessing.get_context(SPAWN)
    leased, stop = ctx.Queue(), ctx.Event()
    worker = ctx.Process(target=_lease_and_wait, args=(ledger, leased, stop))
    worker.start()
    assert leased.get(timeout=30) == 1
    assert outbox.lease() == []  # alive: its lease holds
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(30)
    assert [i.key for i in outbox.lease()] == [KEY]  # gone: free now, 20 s before its lease ends
    elsewhere = Outbox(ledger)
    elsewhere.writer = f"not-{socket.gethostname()}:{os.getpid()}:12.00"  # a worker on another host
    outbox.give_up_leases()
    assert len(elsewhere.lease()) == 1
    assert outbox.lease() == []  # its lease holds until it expires


def _open(path: str, barrier, errors) -> None:
    barrier.wait(30)
    try:
        Outbox(path)
    except Exception as err:  # the race under test
        errors.put(repr(err))


def test_processes_opening_a_new_ledger_at_once_all_succeed(tmp_path):
    """Columns added to the ledger after its first release are added when a process opens it; two
    processes at once both added them, and the second failed with "duplicate column name: holder"
    (make check, two workers importing the artifact plugin)."""
    ctx = multiprocessing.get_context(SPAWN)
    for round_ in range(5):
        path = str(tmp_path / f"ledger-{round_}.sqlite")
        barrier, errors = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(path, barrier, errors)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            p.kill()  # one still running after a minute is stuck: it fails below, and is not left behind
        assert errors.empty(), errors.get()
        assert [p.exitcode for p in procs] == [0] * 8
