"""A process killed -9 inside a temporary directory leaves it behind (its clean-up never runs):
the next process of the host that makes one of the same kind removes it, and only the ones of
processes that are gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from xregion import processes

HOLD = """
import sys, time
from xregion.processes import owned_tempdir
with owned_tempdir(sys.argv[1]) as tmp:
    (tmp / "object").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(60)
"""


def holder(prefix: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, prefix], stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_copy_leaves_nothing_in_tmp_once_another_copy_starts():
    prefix = f"xregion-test-copy-{time.time_ns()}-"
    killed, left = holder(prefix)
    alive, kept = holder(prefix)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert (left / "object").exists()  # what a kill -9 leaves behind
        with processes.owned_tempdir(prefix) as mine:
            assert mine.exists() and mine.name.startswith(f"{prefix}{os.getpid()}-")
            assert not left.exists()  # its process is gone
            assert (kept / "object").exists()  # its process still copies
        assert not mine.exists()
    finally:
        alive.kill()
        alive.wait()
    assert processes.remove_orphans(prefix) == [kept]
