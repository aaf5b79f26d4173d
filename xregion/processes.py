"""Who a process is across hosts (host, pid, start time), whether it is known to be gone, and the
temporary directories it owns (removed after a kill -9 by the next process that makes one)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

_swept: set[str] = set()


def identity(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (this one by default): unique even when a pid is reused."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.2f}"


def gone(ident: str | None) -> bool:
    """True only when ``ident`` names a process of this host that no longer runs (a zombie, or
    a pid since reused by another program, counts as gone). A process of another host, or an
    identity that cannot be read, is not known to be gone: callers then wait for its lease."""
    try:
        host, pid, started = (ident or "").rsplit(":", 2)
        if host != socket.gethostname():
            return False
        proc = psutil.Process(int(pid))
        return abs(proc.create_time() - float(started)) > 0.5 or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except (ValueError, psutil.Error):
        return False


@contextmanager
def owned_tempdir(prefix: str) -> Iterator[Path]:
    """A temporary directory named after this process (``<prefix><pid>-<start>-``). A kill -9 skips
    the clean-up of a ``TemporaryDirectory``, and a replicator killed mid-copy left the object it
    was copying in /tmp for good: the first call per prefix in a process removes the directories
    of this host's processes that are gone."""
    if prefix not in _swept:
        _swept.add(prefix)
        remove_orphans(prefix)
    me = psutil.Process()
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{me.pid}-{me.create_time():.2f}-") as tmp:
        yield Path(tmp)


def remove_orphans(prefix: str) -> list[Path]:
    """Remove the ``owned_tempdir`` directories of ``prefix`` whose process is gone; returns them."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*-*-*"):
        pid, _, rest = path.name[len(prefix) :].partition("-")
        if pid.isdigit() and gone(f"{socket.gethostname()}:{pid}:{rest.partition('-')[0]}"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
