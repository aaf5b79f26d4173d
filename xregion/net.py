"""Small network helpers every layer shares: host:port of a URL, a free loopback port."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; the scheme's default port when the URL names none."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free right now (all held open together, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
