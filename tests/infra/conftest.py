"""One private stack for the stack-lifecycle modules (test_s3_persistence, test_stack), which restart,
wipe and fault it through the CLI: starting it once saves a stack start and purge per module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xregion.config import load_config
from xregion.infra.embedded.scratch import make_home
from xregion.infra.embedded.scratch import scratch_config as write_config

XREGION = str(Path(sys.executable).parent / "xregion")


@pytest.fixture(scope="package")
def private_stack():
    """(home, config, env) of a stack whose home lies inside a 0700 directory, as a clone in a
    private directory would: as root the postgres user cannot reach it. Not started: the first
    module that uses it runs `xregion up`; it is purged once the package's tests are done."""
    private = make_home("xregion-private-")
    private.chmod(0o700)
    home = private / "clone" / ".xregion"
    home.mkdir(parents=True)
    path = write_config(home)
    env = {**os.environ, "XREGION_CONFIG": str(path), "XREGION_HOME": str(home)}
    yield home, load_config(path), env
    # its data root too (/var/lib/xregion/<hash>): the suite checks that none is left
    subprocess.run([XREGION, "down", "--purge"], env=env, capture_output=True, timeout=300)
    shutil.rmtree(private, ignore_errors=True)
