"""Runs Patroni so that its Postgres belongs to it, as on a host: ``python patroni_launcher.py CONFIG``.

Patroni starts the postmaster in a new session through a short-lived intermediate process, so
that the postmaster is re-parented to init and outlives Patroni. Under the embedded stack's
supervisor that would hide Postgres from the service's process tree: a "kill -9 of the region's
database" would leave Postgres serving. This launcher makes itself a child subreaper
(prctl PR_SET_CHILD_SUBREAPER), so the postmaster is re-parented to it instead: killing the
service's tree kills Patroni and Postgres together, as losing the host would. It reaps every
child (no zombie postmaster ever holds a stale lock), forwards signals to Patroni, and when
Patroni exits it stops whatever Patroni left (the service is Patroni and its Postgres, as one).

Standalone on purpose (no xregion import): as root it is copied next to a private copy of
Patroni that the postgres user can read (see patroni_runtime.py).
"""

import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _children() -> list[int]:
    pids = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return pids


def _stop_leftovers(timeout: float = 10.0) -> None:
    """Postgres left running by a Patroni that died: immediate shutdown, then SIGKILL."""
    for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGKILL, 5.0)):
        pids = _children()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _children():
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            time.sleep(0.1)


def _run_patroni(config: str) -> None:
    sys.argv = ["patroni", config]
    code = 0
    try:
        from patroni.__main__ import main as patroni_main

        patroni_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the forked child must never return into the launcher
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: patroni_launcher.py PATRONI_CONFIG", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    pid = os.fork()
    if pid == 0:
        _run_patroni(sys.argv[1])
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    code = 1
    while True:
        try:
            wpid, status = os.wait()  # reaps re-parented postmasters too
        except ChildProcessError:
            break
        if wpid == pid:
            code = os.waitstatus_to_exitcode(status)
            break
    _stop_leftovers()
    return code


if __name__ == "__main__":
    sys.exit(main())
