"""Client processes for chaos trials, forked from a warm parent.

A client must be a process of its own (a fault kills it -9 in the middle of a write, and a client
that exits takes its threads with it, as a training script does), but importing MLflow costs
seconds. So one supervised parent imports everything once and forks a fresh child per client
and trial: a child is as separate as any process (its own pid, sockets, replicator and threads)
and costs milliseconds. The parent starts no thread before it forks (a fork copies only the
calling thread) and ignores SIGCHLD so that its children are reaped by the kernel.

Protocol, one JSON line each way on a loopback TCP connection: ``{"plan", "ctx", "history",
"workdir", "env"}`` -> ``{"pid"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path

from xregion.infra.embedded.supervisor import Service, Supervisor

# not inherited by clients: a direct client has the regions file and credentials, not the platform's home
PLATFORM_ONLY = ("XREGION_HOME",)


def _child(conn: socket.socket, listener: socket.socket, req: dict) -> None:
    """In the forked child: become the client, run its plan, exit without running parent cleanups."""
    code = 0
    try:
        conn.close()
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for name in PLATFORM_ONLY:
            os.environ.pop(name, None)
        os.environ.update(req.get("env", {}))
        os.makedirs(req["workdir"], exist_ok=True)
        os.chdir(req["workdir"])
        from .workload import run_client

        run_client(req["plan"], req["ctx"], req["history"], req["workdir"])
        from xregion.plugins.replication import drain_before_exit

        drain_before_exit()  # a client that ends (not one killed) exits as any process does: paid up
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # the client's own threads (an async replicator) die with it, as at any exit


def serve(port: int) -> None:
    # everything a client uses, imported once here, before any fork
    import mlflow.store.artifact.artifact_repository_registry  # noqa: F401
    import mlflow.store.artifact.mlflow_artifacts_repo  # noqa: F401
    import mlflow.tracking  # noqa: F401

    from xregion.plugins import artifact_repo, registry_client  # noqa: F401

    from . import workload  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = listener.accept()
        with conn:
            line = conn.makefile().readline()
            if not line.strip():
                continue  # a health check that only connects
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(conn, listener, req)
            conn.sendall((json.dumps({"pid": pid}) + "\n").encode())


class ForkServer:
    """The controller's side: start the parent under the supervisor, fork clients through it."""

    def __init__(self, sup: Supervisor, port: int, region: str, env: dict[str, str]):
        self.sup, self.port = sup, port
        self.service = Service(
            name="chaos-clients",
            region=region,
            component="clients",
            argv=[sys.executable, "-m", "xregion.loadtests.chaos.forkserver", "--port", str(port)],
            listen=("127.0.0.1", port),
            env=env,
            start_timeout=180,
        )

    def start(self) -> None:
        self.sup.start(self.service)

    def fork(self, plan: dict, ctx: dict, history: Path, workdir: Path, env: dict[str, str]) -> int:
        req = {"plan": plan, "ctx": ctx, "history": str(history), "workdir": str(workdir), "env": env}
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            conn.sendall((json.dumps(req) + "\n").encode())
            return json.loads(conn.makefile().readline())["pid"]

    def client_service(self, name: str, region: str) -> Service:
        """How a forked client is known to the supervisor (faults, stop) once adopted."""
        return Service(name=f"chaos-{name}", region=region, component="client", argv=["(forked chaos client)"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fork server of chaos clients")
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args(argv).port)


if __name__ == "__main__":
    main()
