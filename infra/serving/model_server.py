"""``mlflow models serve`` as a supervised service, for benchmarks and tests that need a real
scoring server on a loopback port (the router runs its own serving services, see router.py)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
import tempfile
from pathlib import Path

from xregion.infra.embedded.supervisor import Service, Supervisor, SupervisorError
from xregion.net import free_port

VENV_BIN = str(Path(sys.executable).parent)


class ModelServer:
    """``mlflow models serve`` as a supervised service (its own XREGION_HOME-like directory),
    so that it is started, health-checked and stopped like every other process of the platform."""

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str | None = None,
        port: int | None = None,
        log_path: str | None = None,
        startup_timeout: float = 240.0,
        extra_env: dict | None = None,
    ):
        self.model_uri, self.tracking_uri = model_uri, tracking_uri
        self.port = port or free_port()
        self.home = Path(tempfile.mkdtemp(prefix="mlflow-serve-"))
        self.sup = Supervisor(self.home)
        env = {
            **(extra_env or {}),
            "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),  # serve execs `uvicorn`
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
        if tracking_uri:  # models:/ URIs resolve in this registry, whatever this process inherited
            env["MLFLOW_TRACKING_URI"] = env["MLFLOW_REGISTRY_URI"] = tracking_uri
        self.service = Service(
            name=f"serve-{self.port}",
            region="local",
            component="serving",
            argv=[
                os.path.join(VENV_BIN, "mlflow"),
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            listen=("127.0.0.1", self.port),
            health={"type": "http", "url": f"http://127.0.0.1:{self.port}/ping"},
            env=env,
            start_timeout=startup_timeout,
        )
        self.log_path = log_path or str(self.sup.log(self.service.name))

    @property
    def pid(self) -> int | None:
        proc = self.sup.process(self.service.name)
        return proc.pid if proc else None

    def start(self) -> ModelServer:
        self.sup.spawn(self.service)
        return self

    def wait_ready(self) -> ModelServer:
        try:
            self.sup.wait_healthy([self.service])
        except SupervisorError as err:
            raise RuntimeError(f"server for {self.model_uri}: {err}") from None
        return self

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.sup.log(self.service.name).read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        self.sup.stop(self.service.name)
        if self.log_path != str(self.sup.log(self.service.name)):
            with contextlib.suppress(OSError):
                Path(self.log_path).write_bytes(self.sup.log(self.service.name).read_bytes())

    def post(self, body, conn: http.client.HTTPConnection | None = None, timeout: float = 30):
        """POST /invocations; returns (status, parsed JSON or text)."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            conn.request("POST", "/invocations", body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, raw.decode("utf-8", "replace")
        finally:
            if own:
                conn.close()

    def __enter__(self) -> ModelServer:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
