"""A small pool of daemon worker threads.

Like ``concurrent.futures.ThreadPoolExecutor``, except that the interpreter does not wait for its
threads when it exits: ThreadPoolExecutor's exit hook joins every worker, so one request hanging on
a frozen region would hold the process for the request's whole timeout after its bounded exit
drain said it was done. Work left unfinished at exit is owed in the ledger, which survives.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future

_STOP = object()


class DaemonPool:
    def __init__(self, workers: int, name: str):
        self.workers = workers
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: cannot schedule new work after shutdown")
            if len(self._threads) < self.workers:  # grown lazily, up to ``workers``
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)
        self._queue.put((future, fn, args, kwargs))
        return future

    def map(self, fn: Callable, items: Iterable) -> list:
        futures = [self.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as err:  # handed to whoever waits on the future
                future.set_exception(err)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(_STOP)
        if wait:
            for t in threads:
                if t is not threading.current_thread():
                    t.join()


_shared: DaemonPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> DaemonPool:
    """The process-wide pool that sends multipart parts (every upload bounds its own share)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DaemonPool(64, "xregion-part")
        return _shared
