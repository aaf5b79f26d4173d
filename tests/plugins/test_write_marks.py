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


def _begin_and_wait(path: str, started, stop) -> None:
    Outbox(path).begin_write(KEY)
    started.set()
    stop.wait(60)


def test_the_mark_of_a_writer_killed_mid_write_holds_nothing(tmp_path):
    ledger = str(tmp_path / "ledger.sqlite")
    ctx = multiprocessing.get_context("fork")
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
