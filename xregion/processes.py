"""Who a process is across hosts (host, pid, start time), and whether it is known to be gone."""

from __future__ import annotations

import os
import socket

import psutil


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
