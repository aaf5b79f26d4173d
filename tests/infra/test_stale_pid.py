"""How the supervisor knows its processes: a stale pid file never signals the program that now
holds its pid (issue 13, case 7), as the process's create time is compared with the one recorded;
and a process that exited but is not yet reaped counts as gone."""

from __future__ import annotations

import subprocess
from dataclasses import asdict

import psutil

from xregion.infra.embedded.service import Service
from xregion.infra.embedded.supervisor import Supervisor


def stale_record(sup: Supervisor, name: str, pid: int) -> None:
    """What a crash leaves: the service's record, whose pid the kernel has since given to another program."""
    svc = Service(name=name, region="a", component="s3", argv=["/bin/false"])
    rec = {"pid": pid, "create_time": psutil.Process(pid).create_time() - 100.0, "service": asdict(svc)}
    sup.run_dir.mkdir(parents=True, exist_ok=True)
    sup._write_record(name, rec)


def test_stop_fault_and_status_leave_an_unrelated_process_alone(tmp_path):
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)  # its own group, as a daemon's
    try:
        sup = Supervisor(tmp_path)
        stale_record(sup, "a-s3", bystander.pid)
        assert sup.process("a-s3") is None and sup.state("a-s3") == "dead"
        assert sup.leftovers("a-s3") == []
        sup.stop("a-s3")
        assert not sup.pidfile("a-s3").exists()  # the stale record is gone
        stale_record(sup, "a-s3", bystander.pid)
        sup.stop_all()
        assert bystander.poll() is None and psutil.Process(bystander.pid).status() != psutil.STATUS_STOPPED
    finally:
        bystander.kill()
        bystander.wait()


def test_a_stopped_process_left_unreaped_counts_as_gone():
    """A service process is not the supervisor's child: once it exits it stays a zombie until init
    reaps it, which a slow init does seconds later. Stopping waits for the exit, not the reaping."""
    from xregion.infra.embedded.supervisor import wait_gone

    child = subprocess.Popen(["sleep", "60"])
    proc = psutil.Process(child.pid)
    assert wait_gone([proc], 0.2) == [proc]  # alive: still waited for
    child.kill()
    try:
        assert wait_gone([proc], 30) == []
        assert proc.status() == psutil.STATUS_ZOMBIE  # nobody reaped it: not what the wait waited for
    finally:
        child.wait()
