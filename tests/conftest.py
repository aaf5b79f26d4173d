"""Shared fixtures: a real two-region stack on free loopback ports, in its own XREGION_HOME."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import yaml

from xregion.config import EMBEDDED_CONFIG, load_config


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def write_config(home: Path, **overrides) -> Path:
    """The embedded regions file with every port replaced by a free one, written into ``home``."""
    data = yaml.safe_load(EMBEDDED_CONFIG.read_text())
    ports = iter(free_ports(7 * len(data["regions"]) + 4))
    for r in data["regions"]:
        r["s3"]["endpoint_url"] = f"http://127.0.0.1:{next(ports)}"
        r["postgres"] = f"127.0.0.1:{next(ports)}"
        r["mlflow_url"] = f"http://127.0.0.1:{next(ports)}"
        r["serving_url"] = f"http://127.0.0.1:{next(ports)}"
        if "patroni" in r:  # Patroni's REST API and the region's etcd member
            r["patroni"] = f"127.0.0.1:{next(ports)}"
            r["etcd"] = {"client": f"127.0.0.1:{next(ports)}", "peer": f"127.0.0.1:{next(ports)}"}
    if data.get("witness"):
        data["witness"]["etcd"] = {"client": f"127.0.0.1:{next(ports)}", "peer": f"127.0.0.1:{next(ports)}"}
    data["serving"] = {
        "frontend_url": f"http://127.0.0.1:{next(ports)}",
        "haproxy_stats_url": f"http://127.0.0.1:{next(ports)}",
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    data["env_file"] = str(EMBEDDED_CONFIG.parent / "embedded.env")
    path = home / "regions.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_home(prefix: str = "xregion-test-") -> Path:
    # under /tmp and world-searchable: the postgres user must reach its data directory
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    return home


class Stack:
    """A running embedded stack for tests: its config, home and supervisor."""

    def __init__(self, home: Path, config_path: Path):
        from xregion.infra.embedded.supervisor import Supervisor

        self.home = home
        self.config_path = config_path
        self.cfg = load_config(config_path)
        self.sup = Supervisor(home)

    def env(self) -> dict[str, str]:
        return {"XREGION_CONFIG": str(self.config_path), "XREGION_HOME": str(self.home)}


@pytest.fixture(scope="session")
def stack():
    """One two-region stack for the session. Tests that fault it must leave it healthy again."""
    from xregion.infra.embedded import stack as embedded

    home = make_home()
    path = write_config(home)
    old = {k: os.environ.get(k) for k in ("XREGION_CONFIG", "XREGION_HOME")}
    os.environ.update({"XREGION_CONFIG": str(path), "XREGION_HOME": str(home)})
    st = Stack(home, path)
    try:
        embedded.up(st.cfg, home, progress=lambda m: None)
        yield st
    finally:
        embedded.down(home, progress=lambda m: None, purge=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(home, ignore_errors=True)
