"""A throw-away embedded stack: its own XREGION_HOME and a regions file on free loopback ports.

Tests and the chaos campaign start stacks next to one an operator may be running; every port of
theirs is a free one and every file lives in their own home, so they never meet the default stack.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import yaml

from xregion.config import EMBEDDED_CONFIG


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that nothing listens on (all held open until each is chosen)."""
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
    """The embedded regions file with every port replaced by a free one, written into ``home``.

    ``overrides`` update whole sections, e.g. ``artifacts={"mode": "async"}``."""
    data = yaml.safe_load(EMBEDDED_CONFIG.read_text())
    ports = iter(free_ports(4 * len(data["regions"]) + 2))
    for r in data["regions"]:
        r["s3"]["endpoint_url"] = f"http://127.0.0.1:{next(ports)}"
        r["postgres"] = f"127.0.0.1:{next(ports)}"
        r["mlflow_url"] = f"http://127.0.0.1:{next(ports)}"
        r["serving_url"] = f"http://127.0.0.1:{next(ports)}"
    data["serving"] = {
        "frontend_url": f"http://127.0.0.1:{next(ports)}",
        "haproxy_stats_url": f"http://127.0.0.1:{next(ports)}",
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    data["env_file"] = str(EMBEDDED_CONFIG.parent / "embedded.env")
    path = Path(home) / "regions.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_home(prefix: str = "xregion-test-") -> Path:
    # under /tmp and world-searchable: the postgres user must reach its data directory
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    return home
