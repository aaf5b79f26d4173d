"""`xregion down --purge` removes a stack's data even from under a process the supervisor lost."""

from __future__ import annotations

import subprocess
import sys
import time

from xregion.infra.embedded import postgres

# what a Patroni node starting its replica does: (re)create the data directory's standby.signal
REWRITER = """
import os, sys, time
node = sys.argv[1]
while True:
    os.makedirs(node, exist_ok=True)
    open(os.path.join(node, "standby.signal"), "w").close()
    time.sleep(0.001)
"""


def test_purge_kills_a_process_still_writing_in_the_data_root_and_removes_it_all(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    root = postgres.prepare_data_root(home)
    node = root / "pg" / "b"
    node.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", REWRITER, str(node)])
    try:
        time.sleep(0.5)
        assert postgres.data_root(home) in postgres.remove_data(home)
        time.sleep(0.5)  # a survivor would have written its file again by now
        assert not root.exists(), sorted(str(p) for p in root.rglob("*"))
        assert writer.wait(timeout=5) == -9
    finally:
        writer.kill()
        writer.wait()
