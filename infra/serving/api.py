"""The router's HTTP API on loopback: /healthz (open); /metrics, /status, and for model-server agents
/desired and /report (bearer token).

The token is a 0600 file in XREGION_HOME/secrets; a Prometheus scrape sends it as
``Authorization: Bearer <token>`` (Prometheus' ``authorization`` setting does exactly that).
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class RouterMetrics:
    """What the router exports; one registry per router (tests run several in one process)."""

    def __init__(self) -> None:
        reg = self.registry = CollectorRegistry()
        labels = ["backend", "server"]
        self.requests = Gauge("xregion_serving_requests", "HTTP requests seen by HAProxy", labels, registry=reg)
        self.errors = Gauge("xregion_serving_errors", "5xx responses seen by HAProxy", labels, registry=reg)
        self.up = Gauge("xregion_serving_server_up", "1 when HAProxy's health checks say UP", labels, registry=reg)
        self.latency = Gauge(
            "xregion_serving_latency_ms",
            "HAProxy total request time over the last 60 s",
            ["backend", "quantile"],
            registry=reg,
        )
        self.version = Gauge("xregion_serving_version", "Version serving in each region", ["region"], registry=reg)
        self.events = Counter("xregion_router_events", "Serving events", ["kind"], registry=reg)
        self.event_ts = Gauge(
            "xregion_router_last_event_timestamp_seconds", "Time of the last event", ["kind"], registry=reg
        )


Handler = Callable[[dict], tuple[int, dict]]  # query parameters or JSON body -> (status, JSON answer)


def serve_api(
    port: int, token: str, metrics: RouterMetrics, routes: dict[tuple[str, str], Handler], host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    """Start the API in a thread; the caller shuts it down. ``routes`` maps (method, path) to a handler."""

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._handle("GET")

        def do_POST(self):  # noqa: N802
            self._handle("POST")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                return self._send(200, b"ok\n", "text/plain")
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return self._send(401, b"the router API needs Authorization: Bearer <its token>\n", "text/plain")
            if (method, url.path) == ("GET", "/metrics"):
                return self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            handler = routes.get((method, url.path))
            if handler is None:
                return self._send(404, b"not found\n", "text/plain")
            try:
                args = dict(parse_qsl(url.query))
                if method == "POST":
                    args.update(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}"))
            except ValueError as err:
                return self._send(400, f"bad request: {err}\n".encode(), "text/plain")
            code, answer = handler(args)
            self._send(code, json.dumps(answer, default=str).encode(), "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Api)
    threading.Thread(target=server.serve_forever, name="router-api", daemon=True).start()
    return server
