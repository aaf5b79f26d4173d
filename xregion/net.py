"""Small network helpers every layer shares: host:port of a URL, free loopback ports for servers."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Servers get ports from here, never from the kernel's ephemeral range: any client connection on the
# machine takes its local port from that range, and while it is open (or for 60 s of TIME_WAIT after
# the client closes it) no server can bind that port, SO_REUSEADDR or not. A stack that restarts a
# killed service found its port taken that way in CI. Below 10000 lie the embedded stack's own ports.
POOL_START = 10000
# A handed-out port is leased for this long, so that two processes choosing ports at the same time,
# or one choosing while a stack's service is down for a restart, do not get the same port.
LEASE_SECONDS = 12 * 3600


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; the scheme's default port when the URL names none."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for clients' local ports (Linux ``ip_local_port_range``)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def server_port_pool() -> list[int]:
    """Ports a server may be given: from POOL_START up, outside the ephemeral range."""
    low, high = ephemeral_range()
    return [p for p in range(POOL_START, 65536) if not low <= p <= high]


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (as servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports a server can bind now, outside the ephemeral range, and leased to the
    caller for LEASE_SECONDS so that no other caller on this machine is handed them meanwhile."""
    pool = server_port_pool()
    with _leases() as leases:
        now = time.time()
        for port in [p for p, until in leases.items() if until <= now]:
            del leases[port]
        taken = set(leases)
        if len(pool) - len(taken) < 4 * n:  # nearly all leased: the older half may be handed out again
            taken = set(sorted(taken, key=leases.__getitem__)[len(taken) // 2 :])
        chosen: list[int] = []
        for port in random.sample(pool, len(pool)):
            if port not in taken and bindable(host, port):
                chosen.append(port)
                if len(chosen) == n:
                    break
        else:
            raise OSError(f"fewer than {n} ports on {host} are free outside the ephemeral range")
        leases.update(dict.fromkeys(chosen, now + LEASE_SECONDS))
    return chosen


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def leases_file() -> Path:
    from xregion.home import user_state_dir

    return user_state_dir() / "port-leases.json"


@contextmanager
def _leases() -> Iterator[dict[int, float]]:
    """The machine user's port leases {port: until}, under an exclusive lock, written back whole
    (a new file renamed over the old, so a process killed mid-write leaves the previous leases)."""
    path = leases_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            leases = {int(p): float(t) for p, t in json.loads(path.read_text()).items()}
        except FileNotFoundError:
            leases = {}
        except (OSError, ValueError, AttributeError) as e:
            log.warning("port leases %s unreadable (%s); starting afresh", path, e)
            leases = {}
        yield leases
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(leases))
        os.replace(tmp, path)
