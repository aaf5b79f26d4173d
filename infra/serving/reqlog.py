"""HAProxy's per-request log, received on a unix datagram socket (mode 0600) by the router.

Each line (``log-format`` in haproxy.py) gives backend, server, status, total and response time,
retries and the termination state, from which the bake window tells a model's failures (the
server answered 5xx, aborted or timed out) from a client's mistakes (4xx).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .haproxy import LOG_TAG


@dataclass(frozen=True)
class Logged:
    ts: float
    backend: str
    server: str
    status: int
    total_ms: int
    response_ms: int
    termination: str  # HAProxy's two-letter termination state; "--" is a normal end

    @property
    def model_failure(self) -> bool:
        """The server failed the request (5xx it answered, or it aborted / timed out on it)."""
        return self.status >= 500 and self.termination[:1] not in ("c", "C") and self.server not in ("", "<NOSRV>")


def parse(line: str, now: float) -> Logged | None:
    _, sep, rest = line.partition(LOG_TAG + " ")
    parts = rest.split()
    if not sep or len(parts) < 7:
        return None
    try:
        return Logged(now, parts[0], parts[1], int(parts[2]), int(parts[3]), int(parts[4]), parts[6])
    except ValueError:
        return None


class RequestLog:
    """Receives HAProxy's log lines in a thread and keeps the last ``keep`` of them."""

    def __init__(self, path: Path, keep: int = 200_000):
        self.path = Path(path)
        self.records: deque[Logged] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)  # the socket is born 0600: nobody else can feed the judge fake requests
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="haproxy-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            rec = parse(data.decode(errors="replace"), time.time())
            if rec is not None:
                with self._lock:
                    self.records.append(rec)

    def window(self, backend: str | None = None, since: float = 0.0) -> list[Logged]:
        with self._lock:
            return [r for r in self.records if r.ts >= since and (backend is None or r.backend == backend)]

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.path.unlink(missing_ok=True)
