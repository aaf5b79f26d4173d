"""Owed work outlives the process that owed it (issue 13, item 6): a client writing xregion://
directly pays what it owes before it exits, keeps its ledger where config/env say (never its
working directory), and what it cannot pay in time stays in that ledger for a replicator."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from xregion.infra.embedded import stack as embedded
from xregion.plugins.outbox import Outbox
from xregion.store import RegionStore

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]
XREGION = str(Path(sys.executable).parent / "xregion")
CLIENT = """
import sys
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
get_artifact_repository("xregion:///" + sys.argv[1]).log_artifact(sys.argv[2])
print("logged", flush=True)
"""  # and exits at once: nothing but the exit drain can pay region b


def client_env(stack, tmp_path: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XREGION_HOME", "XREGION_LEDGER")}
    return env | {
        "XREGION_CONFIG": str(stack.config_path),
        "XREGION_ARTIFACT_MODE": "async",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        **extra,
    }


# "exiting" is printed by an atexit hook: after threading's exit hooks (the exit drain, and the
# joins of worker threads that a hanging request would stretch), before the interpreter tears its
# modules down (a second or more for MLflow's imports on a busy machine, and not ours to bound)
TIMED = CLIENT.replace(
    'print("logged", flush=True)',
    'import atexit, time; print("logged", time.time(), flush=True)\n'
    'atexit.register(lambda: print("exiting", time.time(), flush=True))',
)
MARGIN = 2.0  # a busy machine; a request to a frozen region waits 10 s here, twice


def run_client(stack, tmp_path: Path, root: str, env: dict, script: str = CLIENT) -> subprocess.CompletedProcess:
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(512 * 1024))
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", script, root, str(f)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def without_a_named_ledger(stack, tmp_path: Path) -> str:
    """The stack's regions file as a user's own copy would be: no ``artifacts.ledger`` key."""
    data = yaml.safe_load(stack.config_path.read_text())
    data.get("artifacts", {}).pop("ledger", None)
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def replicate_until_drained(env: dict, seconds: float) -> subprocess.CompletedProcess:
    """`xregion replicate run --until-drained`: pays the ledger and stops once nothing is owed."""
    argv = [XREGION, "replicate", "run", "--until-drained", "--seconds", str(seconds)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)


def test_a_direct_client_pays_what_it_owes_before_it_exits(stack, tmp_path):
    root = f"exit/{uuid.uuid4().hex}"
    env = client_env(stack, tmp_path, XREGION_CONFIG=without_a_named_ledger(stack, tmp_path))
    done = run_client(stack, tmp_path, root, env)
    assert done.returncode == 0 and "logged" in done.stdout, done.stderr
    assert RegionStore(stack.cfg.region("b")).stat(f"{root}/model.bin") is not None
    assert not (tmp_path / "cwd" / ".xregion").exists()  # never a ledger in whatever cwd the client had
    ledger = tmp_path / "state" / "xregion" / "outbox.sqlite"
    assert ledger.exists() and Outbox(ledger).count() == 0


def test_what_cannot_be_paid_in_time_stays_in_the_shared_ledger_for_a_replicator(stack, tmp_path):
    root = f"exit/{uuid.uuid4().hex}"
    ledger = tmp_path / "shared" / "ledger.sqlite"
    env = client_env(stack, tmp_path, XREGION_LEDGER=str(ledger), XREGION_EXIT_DRAIN_SECONDS="1")
    b = embedded.select(stack.cfg, stack.home, stack.sup, "b", "s3")
    stack.sup.fault("freeze", b)
    try:
        done = run_client(stack, tmp_path, root, env)
        # a replicator told to stop once drained says what it could not pay in time, and fails
        stuck = replicate_until_drained({**env, "XREGION_S3_READ_TIMEOUT": "1"}, 2)
    finally:
        stack.sup.fault("thaw", b)
    assert stuck.returncode == 1 and "1 still owed" in stuck.stderr, stuck.stderr
    assert done.returncode == 0, done.stderr
    assert "still owed in the ledger" in done.stderr and str(ledger) in done.stderr
    assert Outbox(ledger).count() == 1
    replicator = replicate_until_drained(env, 60)
    assert replicator.returncode == 0 and "nothing owed" in replicator.stderr, replicator.stderr
    assert Outbox(ledger).count() == 0
    assert RegionStore(stack.cfg.region("b")).stat(f"{root}/model.bin") is not None


def test_a_frozen_region_cannot_hold_the_exit_drain_past_its_timeout(stack, tmp_path):
    """The drain's timeout bounds the exit even when every request to a region hangs (each would
    wait XREGION_S3_READ_TIMEOUT, twice): what is left stays in the shared ledger."""
    root = f"exit/{uuid.uuid4().hex}"
    ledger = tmp_path / "shared" / "ledger.sqlite"
    bound = 2.0
    env = client_env(
        stack, tmp_path, XREGION_LEDGER=str(ledger), XREGION_EXIT_DRAIN_SECONDS=str(bound), XREGION_S3_READ_TIMEOUT="10"
    )
    b = embedded.select(stack.cfg, stack.home, stack.sup, "b", "s3")
    stack.sup.fault("freeze", b)
    try:
        done = run_client(stack, tmp_path, root, env, TIMED)
        exited = time.time()
    finally:
        stack.sup.fault("thaw", b)
    assert done.returncode == 0, done.stderr
    said = {line.split()[0]: float(line.split()[1]) for line in done.stdout.splitlines() if line.split()}
    took = f"exit work took {said['exiting'] - said['logged']:.1f}s, the process {exited - said['logged']:.1f}s"
    assert said["exiting"] - said["logged"] < bound + MARGIN, took
    assert "still owed in the ledger" in done.stderr
    assert Outbox(ledger).count() == 1
    replicator = replicate_until_drained(env, 60)
    assert replicator.returncode == 0 and "nothing owed" in replicator.stderr, replicator.stderr
    assert Outbox(ledger).count() == 0
    assert RegionStore(stack.cfg.region("b")).stat(f"{root}/model.bin") is not None
