"""Own stacks for the destructive DR tests (never the shared session stack)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stacks import Stack, acting_as
from xregion.infra.embedded.scratch import make_home
from xregion.infra.embedded.scratch import scratch_config as write_config

XREGION = str(Path(sys.executable).parent / "xregion")


def start_stack(prefix: str, **overrides) -> Stack:
    from xregion.infra.embedded import stack as embedded

    home = make_home(prefix)
    path = write_config(home, **overrides)
    st = Stack(home, path)
    # through the CLI, as an operator would: the processes are then not children of the test
    # process (a kill -9 leaves no zombie behind for the test to reap)
    res = xr(st, "up")
    if res.returncode != 0:
        embedded.down(home, progress=lambda m: None, purge=True)
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"xregion up failed:\n{res.stderr}")
    return st


def stop_stack(st: Stack) -> None:
    from xregion.infra.embedded import stack as embedded

    embedded.down(st.home, progress=lambda m: None, purge=True)  # the data root too (/var/lib/xregion/<hash>)
    shutil.rmtree(st.home, ignore_errors=True)


def xr(st: Stack, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the xregion CLI against a stack."""
    return subprocess.run(
        [XREGION, *args], env={**os.environ, **st.env()}, capture_output=True, text=True, timeout=timeout
    )


def xr_json(st: Stack, *args, ok: bool = True):
    res = xr(st, *args, "--json")
    if ok:
        assert res.returncode == 0, f"xregion {' '.join(args)} exit {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout), res


@pytest.fixture(scope="module")
def sync_stack():
    st = start_stack("xregion-dr-sync-", postgres={"replication": "sync"})
    with acting_as(st):
        yield st
    stop_stack(st)
