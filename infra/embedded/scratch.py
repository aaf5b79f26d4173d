"""A throw-away embedded platform: its own XREGION_HOME and a regions file on free loopback ports.

Tests, benchmarks and the chaos campaign each run on one of these, so that they never collide
with the platform a user runs on the default ports, nor with each other.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from xregion.config import EMBEDDED_CONFIG
from xregion.net import free_ports


def make_home(prefix: str = "xregion-scratch-") -> Path:
    """A new XREGION_HOME under the system temp directory."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)  # the postgres user must reach its data directory under it
    return home


def scratch_config(home: Path, **overrides) -> Path:
    """The embedded regions file with every port replaced by a free one, written into ``home``.

    ``overrides`` update top-level sections, e.g. ``artifacts={"mode": "async"}``."""
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
    # the stack's one ledger beside its regions file, whoever reads the file: the servers (which
    # have XREGION_HOME) and a test or tool that has only XREGION_CONFIG must share it
    data.setdefault("artifacts", {})["ledger"] = "outbox.sqlite"
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    data["env_file"] = str(EMBEDDED_CONFIG.parent / "embedded.env")
    path = Path(home) / "regions.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
