"""The Locust side without a stack: real Locust processes (local and distributed) against a
scoring stub, checked request by request against what the stub answered."""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from xregion.infra.embedded.scratch import scratch_config as write_config
from xregion.loadtests.load import LoadSpec, LocustLoad
from xregion.loadtests.requestlog import read_requests, request_files

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


class Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.failing = False
        # answers to cut: 200, then the connection closed half-way through the body; one per half
        # second at most, so that the caller's retry right after a cut answer is not cut too
        self.cutting = 0
        self.last_cut = 0.0
        self.lock = threading.Lock()
        self.answers = collections.Counter()  # status -> count
        self.users = collections.Counter()
        self.ks = collections.Counter()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        rec = body["dataframe_records"][0]
        srv: Stub = self.server
        status = 503 if srv.failing else 200
        out = (
            b"down"
            if status == 503
            else json.dumps(
                {
                    "predictions": [
                        {"user_id": rec["user_id"], "rank": i + 1, "item_id": i, "score": 1.0, "source": "model"}
                        for i in range(rec["k"])
                    ]
                }
            ).encode()
        )
        with srv.lock:
            cut = status == 200 and srv.cutting > 0 and time.monotonic() - srv.last_cut > 0.5
            if cut:
                srv.cutting, srv.last_cut = srv.cutting - 1, time.monotonic()
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out[: len(out) // 2] if cut else out)
        self.close_connection = cut  # a server killed while it answered
        with srv.lock:
            srv.answers["cut" if cut else status] += 1
            srv.users[rec["user_id"]] += 1
            srv.ks[rec["k"]] += 1


@pytest.fixture
def stub():
    s = Stub()
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return {"XREGION_CONFIG": str(write_config(home)), "XREGION_HOME": str(home)}


def run(tmp_path, stub, env, *, workers=0, duration=6, users=4, rate=5.0, max_requests=0, fail_window=None):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(i) for i in range(1, 101)))
    xr = [
        "--xr-run-dir",
        str(run_dir),
        "--xr-scientists",
        "0",
        "--xr-release-managers",
        "0",
        "--xr-serving-rate",
        str(rate),
        "--xr-user-ids",
        str(ids),
        "--xr-max-requests",
        str(max_requests),
    ]
    load = LocustLoad(
        env["XREGION_HOME"], run_dir, LoadSpec(stub.url, users, users, duration, workers, ["ServingUser"], xr, env)
    )
    try:
        load.start()
        t0 = load.wait_started()
        if fail_window:
            time.sleep(max(0.0, t0 + fail_window[0] - time.time()))
            stub.failing = True
            time.sleep(fail_window[1] - fail_window[0])
            stub.failing = False
        codes = load.wait(timeout=duration + 60)
    finally:
        load.stop()
    return run_dir, codes


def test_an_answer_cut_short_is_retried_once_and_logged_apart(tmp_path, stub, env):
    """A server that dies while it answers cuts the body after the headers: the caller retries
    once, the cut answer is logged under kind "retried", and the serving kind holds the retries'
    outcomes, so the drills' serving objective counts what callers finally got."""
    stub.cutting = 3
    run_dir, _ = run(tmp_path, stub, env)
    reqs = read_requests(request_files(run_dir))
    retried = [r for r in reqs if r.kind == "retried"]
    assert stub.answers["cut"] == 3 and len(retried) == 3
    assert all(not r.ok and "cut short" in r.error for r in retried)
    assert [r for r in reqs if r.kind == "serving" and not r.ok] == []  # every retry was answered
    assert sum(1 for r in reqs if r.kind == "serving") == stub.answers[200]


def test_every_request_is_logged_with_its_outcome(tmp_path, stub, env):
    run_dir, codes = run(tmp_path, stub, env, fail_window=(2.0, 3.0))
    reqs = read_requests(request_files(run_dir))
    assert len(request_files(run_dir)) == 1
    assert stub.answers[503] > 0
    assert sum(1 for r in reqs if r.ok) == stub.answers[200]
    assert sum(1 for r in reqs if not r.ok) == stub.answers[503]
    assert {r.kind for r in reqs} == {"serving"} and {r.name for r in reqs} == {"serving: invocations"}
    assert all("HTTP 503" in r.error for r in reqs if not r.ok)
    # failures are where the stub failed: started inside the failing second (give or take one request)
    bad = [r.ts for r in reqs if not r.ok]
    assert max(bad) - min(bad) < 2.0
    # Locust's own statistics saw the same requests (its final CSV may miss the ones that ended
    # during the stop timeout; the request log has them)
    import csv

    rows = {r["Name"]: r for r in csv.DictReader(open(run_dir / "locust_stats.csv"))}
    assert int(rows["serving: invocations"]["Failure Count"]) == stub.answers[503]
    assert 0 < int(rows["serving: invocations"]["Request Count"]) <= len(reqs)
    # Zipf-like skew over the 100 known ids, k varied
    top_user, top = stub.users.most_common(1)[0]
    total = sum(stub.users.values())
    assert top / total > 0.08 and len(stub.users) > 10
    assert set(stub.ks) == {5, 10, 20}


def test_distributed_mode_merges_the_workers_logs(tmp_path, stub, env):
    run_dir, codes = run(tmp_path, stub, env, workers=2, duration=6)
    files = request_files(run_dir)
    assert len(files) == 2  # one per worker; the master runs no users
    reqs = read_requests(files)
    assert all(read_requests(f) for f in files)
    assert len(reqs) == stub.answers[200] + stub.answers[503] and stub.answers[200] > 0


def test_request_bound_stops_the_run_early(tmp_path, stub, env):
    # 4 users x 5/s for 40 s would be ~800 requests; the bound stops the run at ~30
    run_dir, codes = run(tmp_path, stub, env, duration=40, max_requests=30)
    reqs = read_requests(request_files(run_dir))
    assert 30 <= len(reqs) < 200
    assert "request bound 30 reached" in (Path(env["XREGION_HOME"]) / "logs" / "locust.log").read_text()
