"""The REST client every drill reader and canary uses: a frozen first server costs a share of the
timeout, not all of it. Real HTTP servers in their own processes; the first one is SIGSTOPped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from xregion.mlflow_rest import MlflowRest, Unavailable
from xregion.net import free_port

SERVER = textwrap.dedent(
    """
    import http.server, json, sys

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"served_by": sys.argv[2]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Answer)
    print("ready", flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def two_servers():
    procs, urls = [], []
    try:
        for name in ("a", "b"):
            port = free_port()
            p = subprocess.Popen([sys.executable, "-c", SERVER, str(port), name], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "ready"
            urls.append(f"http://127.0.0.1:{port}")
        yield procs, urls
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait()


def test_a_frozen_first_server_leaves_the_next_one_time_to_answer(two_servers):
    """Regression: the per-endpoint share was accepted and ignored, so a frozen first region took the
    whole budget and the read failed (region-loss drill, reads_availability 0.983 in CI)."""
    procs, urls = two_servers
    rest = MlflowRest(urls, timeout=3.0, per_endpoint=1.0)
    assert rest.call("POST", "/x", json_body={})[0] == {"served_by": "a"}
    os.kill(procs[0].pid, signal.SIGSTOP)  # accepts through the kernel's backlog, never answers
    body, endpoint = rest.call("POST", "/x", json_body={})
    assert (body, endpoint) == ({"served_by": "b"}, urls[1])


def test_without_a_share_the_frozen_server_takes_the_budget_and_the_error_says_so(two_servers):
    procs, urls = two_servers
    os.kill(procs[0].pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        MlflowRest(urls, timeout=1.0).call("POST", "/x", json_body={})
    assert f"{urls[0]}: ReadTimeout" in str(err.value)
    assert time.monotonic() - started >= 1.0  # the one budget, spent on the frozen server
