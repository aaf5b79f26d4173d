"""S3 clients come from one boto3 session per process, and a forked child makes its own.

No stack: a scratch regions file names endpoints nothing listens on, and making a client sends
no request. Why it matters: a fresh session per client cost 140 ms of CPU, and the registry gate
made six of them per promotion (promotions took 3-4.5 s; about 1 s with one session)."""

from __future__ import annotations

import os
import signal
import time

import boto3

from xregion import store
from xregion.config import load_config
from xregion.infra.embedded.scratch import make_home, scratch_config


def _cfg():
    return load_config(scratch_config(make_home()))


def test_every_store_of_a_process_is_made_from_one_boto3_session(monkeypatch):
    made = []
    real = boto3.session.Session

    def counting(*a, **kw):
        made.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(boto3.session, "Session", counting)
    store._forget_session()
    cfg = _cfg()
    for _ in range(3):
        regions = store.stores(cfg)
    assert sorted(regions) == sorted(r.name for r in cfg.regions)
    assert len({id(s.client) for s in regions.values()}) == len(regions)  # a client per region
    assert len(made) == 1


def test_a_child_forked_while_the_session_lock_is_held_still_makes_clients():
    """The fork server forks clients from a process that may be making a client on another
    thread: a lock inherited in its held state would hang the child for ever."""
    cfg = _cfg()
    store.stores(cfg)  # the parent's session exists
    with store._session_lock:
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if it can make every region's client
            try:
                store.stores(cfg)
                os._exit(0)
            except BaseException:
                os._exit(2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung on the session lock its parent held at fork")
