"""The serving front door: the one HAProxy configuration renderer, its runtime API and its stats.

Used by the embedded platform and by the compose/Kubernetes generators alike, so the front door
that is tested is the one that is deployed. One frontend speaks the MLflow scoring protocol; two
backends ``bk_blue`` and ``bk_green`` (the colours of a blue/green switch) hold one server per
region, named after the region; which colour serves is one entry of a map file, so a switch is
one runtime-API command (``set map``), atomic for every region at once.

Failover: active health checks (``GET /ping``) every ``inter_ms``, ``fall``/``rise`` to change
state; every region's server is active (round robin). A request is retried and redispatched to
another region only when the connection failed or was closed without any response (a dead or
killed server), never after a 5xx or a response timeout: a slow or crashing request must not be
replayed in every region.

What clients get from the front door itself: 413 for bodies over ``max_body_bytes``, 415 for a
scoring request without a JSON/CSV Content-Type, 404 outside the scoring paths, 405 for a GET of
/invocations. The stats page and its Prometheus exporter need a password
(``XREGION_HAPROXY_STATS_PASSWORD`` in HAProxy's environment); the runtime API is a unix socket of
mode 0600.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xregion.errors import XRegionError

SLOTS = ("bk_blue", "bk_green")
SCORING_PATHS = ("/invocations", "/ping", "/health", "/version")
CONTENT_TYPES = ("application/json", "text/csv", "application/vnd.apache.parquet")  # what MLflow scores
MONITOR_URI = "/haproxy-health"
LOG_TAG = "xrlog"
STATS_USER = "xregion"
STATS_PASSWORD_ENV = "XREGION_HAPROXY_STATS_PASSWORD"


@dataclass
class Tuning:
    """Data-plane timings and limits (stored in the router state; env XREGION_HAPROXY_<NAME> overrides)."""

    inter_ms: int = 200  # health-check interval
    fall: int = 2  # failed checks to mark a server down
    rise: int = 2  # passed checks to mark it up again
    check_timeout_ms: int = 400  # a frozen server's check fails after this (a busy one answers /ping in ms)
    # consecutive connection failures of live traffic that mark a server down at once (HAProxy's
    # ``observe layer4``; 0: health checks only). A killed server refuses connections: traffic takes
    # it out on its next requests instead of after ``fall`` checks, and those requests are retried
    # on another server (retry-on conn-failure). Not layer 7: a request that fails in every region
    # (a poison input) must not mark every region down.
    error_limit: int = 2
    connect_timeout_ms: int = 200  # a connect to a dead host is retried elsewhere after this
    server_timeout_ms: int = 3000  # a request stuck on a frozen server fails after this
    retries: int = 3
    max_body_bytes: int = 65536  # larger scoring requests are refused with 413
    nbthread: int = 1  # one thread: on small hosts HAProxy competes with the model servers for cores

    @classmethod
    def from_env(cls, base: dict | None = None) -> Tuning:
        values = {**asdict(cls()), **(base or {})}
        for name in values:
            env = os.environ.get(f"XREGION_HAPROXY_{name.upper()}")
            if env:
                values[name] = int(env)
        return cls(**values)

    def detection_budget_s(self) -> float:
        """Worst case from a failure to HAProxy marking the server down: ``fall`` checks, each an
        interval plus (for a frozen server) the check timeout."""
        return self.fall * (self.inter_ms + self.check_timeout_ms) / 1000.0


@dataclass
class FrontDoor:
    """Everything the renderer needs, for the embedded platform or a deployment.

    ``servers[slot][region]`` is "host:port", or None for a slot without a server yet (rendered
    disabled, out of rotation until the router fills it)."""

    bind: str  # "127.0.0.1:5300" or ":5300"
    stats_bind: str
    runtime_socket: str  # unix socket path, mode 0600
    log_socket: str  # unix datagram socket the router reads the per-request log from
    map_file: str
    active: str
    servers: dict[str, dict[str, str | None]]
    tuning: Tuning = field(default_factory=Tuning)
    dns: bool = False  # server addresses are DNS names (compose, Kubernetes): resolve at run time
    # a regional front door (Kubernetes): the other regions' front doors, name -> host:port of their
    # peer frontend, are backup servers of both colours; ``peer_bind`` is where this one's listens
    peers: dict[str, str] = field(default_factory=dict)
    peer_bind: str | None = None


def paths(home: Path) -> dict[str, Path]:
    d = Path(home) / "haproxy"
    return {
        "dir": d,
        "cfg": d / "haproxy.cfg",
        "socket": d / "admin.sock",
        "map": d / "active.map",
        "log": d / "log.sock",
    }


def binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if not found:
        raise FileNotFoundError("haproxy is not installed: run infra/setup-system.sh (Debian package haproxy)")
    return found


def _global_and_defaults(fd: FrontDoor) -> list[str]:
    t = fd.tuning
    # bodies up to max_body_bytes must fit one buffer: a request that does not cannot be retried
    bufsize = max(16384, t.max_body_bytes + 16384)
    return [
        "global",
        f"    log {fd.log_socket} len 2048 local0",
        f"    stats socket {fd.runtime_socket} mode 600 level admin",
        "    stats timeout 30s",
        "    maxconn 4096",
        f"    nbthread {t.nbthread}",
        f"    tune.bufsize {bufsize}",
        "",
        "defaults",
        "    mode http",
        "    log global",
        f'    log-format "{LOG_TAG} %b %s %ST %Ta %Tr %rc %tsc"',
        "    option dontlognull",
        "    option http-keep-alive",
        "    http-reuse always",  # idle server connections are shared: no new TCP handshake per request
        f"    timeout connect {t.connect_timeout_ms}ms",
        f"    timeout server {t.server_timeout_ms}ms",
        "    timeout client 30s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout queue 2s",
        f"    timeout check {t.check_timeout_ms}ms",
        f"    retries {t.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        "",
    ]


def _scoring_rules(fd: FrontDoor) -> list[str]:
    t = fd.tuning
    too_big = f'"request body over {t.max_body_bytes} bytes: send fewer rows per request\\n"'
    no_type = f'"scoring requests need a Content-Type: one of {", ".join(CONTENT_TYPES)}\\n"'
    return [
        "    option http-buffer-request",
        f"    acl too_big req.hdr_val(content-length) gt {t.max_body_bytes}",
        f"    acl too_big req.body_size gt {t.max_body_bytes}",
        f"    http-request return status 413 content-type text/plain string {too_big} if too_big",
        f"    acl scoring path {' '.join(SCORING_PATHS)}",
        "    http-request deny deny_status 404 unless scoring",
        "    http-request deny deny_status 405 if { path /invocations } !METH_POST",
        f"    acl typed req.hdr(content-type) -m beg -i {' '.join(CONTENT_TYPES)}",
        f"    http-request return status 415 content-type text/plain string {no_type} if {{ path /invocations }} !typed",
    ]


def _peer_frontend(fd: FrontDoor) -> list[str]:
    """What other regions' front doors reach: this region's servers only. When none of the serving
    colour's is up it answers 503 itself and never hands the request to its own backups, so two
    front doors never send a request back and forth (their health checks see the 503 too)."""
    use = f"str(active),map({fd.map_file},{fd.active})"
    lines = ["frontend fe_peer", f"    bind {fd.peer_bind}", *_scoring_rules(fd)]
    for slot in SLOTS:
        down = " ".join(f"!{{ srv_is_up({slot}/{region}) }}" for region in fd.servers.get(slot, {}))
        lines.append(
            f'    http-request return status 503 content-type text/plain string "no model server up here\\n" '
            f"if {{ {use} -m str {slot} }} {down}"
        )
    return [*lines, f"    use_backend %[{use}]", ""]


def _frontends(fd: FrontDoor) -> list[str]:
    lines = [
        "frontend fe_serving",
        f"    bind {fd.bind}",
        f"    monitor-uri {MONITOR_URI}",
        *_scoring_rules(fd),
        f"    use_backend %[str(active),map({fd.map_file},{fd.active})]",
        "",
    ]
    if fd.peer_bind:
        lines += _peer_frontend(fd)
    return lines + [
        "userlist stats_users",
        f'    user {STATS_USER} insecure-password "${{{STATS_PASSWORD_ENV}}}"',
        "",
        "frontend fe_stats",
        f"    bind {fd.stats_bind}",
        "    http-request auth realm xregion unless { http_auth(stats_users) }",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /",
        "    stats refresh 5s",
        "    stats show-legends",
        "",
    ]


def _backends(fd: FrontDoor, regions: list[str]) -> list[str]:
    t = fd.tuning
    lines = ["resolvers dns", "    parse-resolv-conf", "    hold valid 10s", ""] if fd.dns else []
    resolve = " init-addr last,libc,none resolvers dns" if fd.dns else ""
    observe = f" observe layer4 error-limit {t.error_limit} on-error mark-down" if t.error_limit > 0 else ""
    for slot in SLOTS:
        lines += [
            f"backend {slot}",
            "    balance roundrobin",
            "    option httpchk GET /ping",
            "    http-check expect status 200",
            f"    default-server check inter {t.inter_ms}ms fastinter {t.inter_ms}ms downinter {t.inter_ms}ms "
            f"fall {t.fall} rise {t.rise}{observe}{resolve}",
        ]
        for region in [r for r in regions if r in fd.servers.get(slot, {})]:
            addr = fd.servers[slot][region]
            lines.append(f"    server {region} 127.0.0.1:1 disabled" if addr is None else f"    server {region} {addr}")
        lines += [f"    server peer-{name} {addr} backup" for name, addr in fd.peers.items()]
        lines.append("")
    return lines


def render(fd: FrontDoor, regions: list[str], header: str = "") -> str:
    """The configuration text; ``regions`` orders the servers (the regions file's order)."""
    head = [header.rstrip()] if header else []
    return "\n".join(head + _global_and_defaults(fd) + _frontends(fd) + _backends(fd, regions))


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 (the configuration names the stats user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def embedded_front_door(
    frontend: tuple[str, int],
    stats: tuple[str, int],
    home: Path,
    servers: dict[str, dict[str, str | None]],
    active: str,
    tuning: Tuning,
) -> FrontDoor:
    p = paths(home)
    return FrontDoor(
        bind=f"{frontend[0]}:{frontend[1]}",
        stats_bind=f"{stats[0]}:{stats[1]}",
        runtime_socket=str(p["socket"]),
        log_socket=str(p["log"]),
        map_file=str(p["map"]),
        active=active,
        servers=servers,
        tuning=tuning,
    )


def write(fd: FrontDoor, regions: list[str], cfg_path: Path) -> Path:
    """The configuration file and the map file that says which colour serves."""
    write_private(Path(fd.map_file), f"active {fd.active}\n")
    write_private(
        cfg_path, render(fd, regions, "# GENERATED by xregion.infra.serving.haproxy; the router rewrites it.")
    )
    return cfg_path


def check_config(path: Path) -> None:
    import subprocess

    env = {**os.environ, STATS_PASSWORD_ENV: os.environ.get(STATS_PASSWORD_ENV, "check-only")}
    out = subprocess.run([binary(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, env=env)
    if out.returncode != 0:
        raise ValueError(f"haproxy rejects {path}:\n{out.stdout}{out.stderr}")


class RuntimeAPIError(XRegionError, RuntimeError):
    pass


class RuntimeAPI:
    """HAProxy's runtime API on its unix socket."""

    def __init__(self, address: str, timeout: float = 2.0):
        self.address = address
        self.timeout = timeout

    def command(self, cmd: str) -> str:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.address)
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
        except OSError as err:
            raise RuntimeAPIError(f"HAProxy runtime API {self.address}: {cmd!r}: {err}") from None
        finally:
            s.close()
        return b"".join(chunks).decode(errors="replace")

    def checked(self, cmd: str) -> str:
        out = self.command(cmd).strip()
        words = ("unknown", "error", "no such", "not found", "invalid", "require")
        if out and not out.startswith("Done") and any(w in out.lower() for w in words):
            raise RuntimeAPIError(f"HAProxy refused {cmd!r}: {out}")
        return out

    def stats(self) -> list[dict]:
        """``show stat`` as rows (pxname, svname, status, check_status, lastchg, req_tot, hrsp_5xx, ...)."""
        text = self.command("show stat").lstrip("# ")
        return [dict(r) for r in csv.DictReader(io.StringIO(text)) if r.get("pxname")]

    def process_id(self) -> str:
        """Pid and start time of the running HAProxy: a different answer means it was restarted."""
        info = dict(line.split(": ", 1) for line in self.command("show info").splitlines() if ": " in line)
        return f"{info.get('Pid', '?')}@{info.get('Start_time_sec', info.get('Uptime_sec', '?'))}"

    def active_backend(self, map_file: str) -> str:
        out = self.command(f"show map {map_file}")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "active":
                return parts[2]
        raise RuntimeAPIError(f"no 'active' entry in the map: {out!r}")

    def switch(self, map_file: str, backend: str) -> None:
        """Point the frontend at ``backend``: one atomic map update (and the file, for restarts)."""
        self.checked(f"set map {map_file} active {backend}")
        write_private(Path(map_file), f"active {backend}\n")

    def set_server(self, backend: str, server: str, host: str, port: int) -> None:
        self.checked(f"set server {backend}/{server} addr {host} port {port}")
        self.checked(f"set server {backend}/{server} state ready")
        self.checked(f"enable health {backend}/{server}")

    def disable_server(self, backend: str, server: str) -> None:
        self.checked(f"set server {backend}/{server} state maint")


def int0(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
