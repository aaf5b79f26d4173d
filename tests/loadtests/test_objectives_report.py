"""Objectives file, verdicts, schedule validation and the HTML/PNG report, without a stack."""

from __future__ import annotations

import base64
import re

import pytest

from xregion.loadtests import metrics as M
from xregion.loadtests import objectives as O
from xregion.loadtests import report
from xregion.loadtests.requestlog import Request
from xregion.loadtests.scenarios import SCENARIOS, DrillError
from xregion.loadtests.schedule import default_schedule

T0 = 2_000_000.0


def test_default_objectives_are_the_issues():
    o = O.load()
    assert (o["availability"], o["rto_s"], o["rpo_artifacts"], o["rpo_metrics"]) == (0.999, 5.0, 0, None)


def test_objectives_file_overrides_defaults_then_scenario(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("defaults: {availability: 0.99}\nscenarios:\n  freeze: {rto_s: 10}\n")
    assert O.load(f, "freeze")["rto_s"] == 10 and O.load(f, "freeze")["availability"] == 0.99
    assert O.load(f, "region-outage")["rto_s"] == 5.0


@pytest.mark.parametrize(
    "text, msg",
    [
        ("defaults: {availabilty: 0.9}\n", "unknown objective"),
        ("defaults: {availability: 99.9}\n", "fraction"),
        ("defaults: {rto_s: -1}\n", "non-negative"),
        ("defaults: {rto_s: fast}\n", "non-negative"),
        ("objectives: {}\n", "'defaults' and 'scenarios'"),
    ],
)
def test_bad_objectives_files_are_refused(tmp_path, text, msg):
    f = tmp_path / "o.yaml"
    f.write_text(text)
    with pytest.raises(O.ObjectivesError, match=msg):
        O.load(f)


def _summary(**kw):
    s = {
        "gated": {"availability": 0.9995, "requests": 2000, "failed": 1},
        "rto_s": 1.2,
        "fault_ts": T0 + 10,
        "rpo": {"artifacts": {"acknowledged": 10, "missing": 0}, "metrics": {"acknowledged": 50, "missing": 3}},
    }
    s.update(kw)
    return s


def test_check_met_and_not_met():
    o = O.load()
    rows = O.check(o, _summary())
    assert O.met(rows)
    assert {r["objective"]: r["met"] for r in rows} == {
        "availability": True,
        "rto_s": True,
        "rpo_artifacts": True,
        "rpo_metrics": None,
    }
    assert not O.met(O.check(o, _summary(gated={"availability": 0.998, "requests": 1000, "failed": 2})))
    assert not O.met(O.check(o, _summary(rto_s=5.01)))
    assert not O.met(O.check(o, _summary(rto_s=None)))  # never recovered
    assert not O.met(O.check(o, _summary(rpo={"artifacts": {"acknowledged": 10, "missing": 1}})))
    assert not O.met(O.check(o, _summary(gated={"availability": None, "requests": 0, "failed": 0})))
    # no fault: RTO does not apply; no writes: RPO does not apply
    rows = O.check(o, _summary(fault_ts=None, rto_s=None, rpo=None))
    assert O.met(rows) and [r["met"] for r in rows if r["objective"] != "availability"] == [None, None, None]
    # boundaries are inclusive
    assert O.met(O.check(o, _summary(gated={"availability": 0.999, "requests": 1000, "failed": 1}, rto_s=5.0)))


def test_schedule_defaults_and_validation():
    assert default_schedule(40, SCENARIOS["region-outage"], None, None) == (12.0, 30.0)
    assert default_schedule(40, SCENARIOS["db-primary-loss"], None, None) == (12.0, None)
    assert default_schedule(40, SCENARIOS["baseline"], None, None) == (None, None)
    with pytest.raises(DrillError, match="at least one 5 s window"):
        default_schedule(40, SCENARIOS["freeze"], 20, 24)
    with pytest.raises(DrillError, match="after the end"):
        default_schedule(40, SCENARIOS["freeze"], 10, 50)


def test_report_has_the_timeline_and_the_verdict(tmp_path):
    reqs = [
        Request(
            T0 + i / 10,
            "serving",
            "serving: invocations",
            not (100 <= i < 130),
            5.0 + (i % 7),
            "" if not (100 <= i < 130) else "HTTP 503",
        )
        for i in range(400)
    ]
    s = M.summarize(reqs, load_start=T0, load_end=T0 + 40, fault_ts=T0 + 10, phase_end=T0 + 30, gate_kind="serving")
    s.update(
        scenario="model-server-crash",
        description="test",
        duration=40,
        users=4,
        workers=0,
        mix={"serving": 4},
        load_start=T0,
        load_end=T0 + 40,
        fault_ts=T0 + 10,
        fault_label="kill -9 a-serving",
        restore_ts=T0 + 30,
        restore_label="restart",
        phase_end=T0 + 30,
        steps=[],
        errors=M.error_counts(reqs),
        objectives_source="objectives.yaml",
    )
    s["objectives"] = O.check(O.load(), s)
    s["objectives_met"] = O.met(s["objectives"])
    assert s["rto_s"] == pytest.approx(3.0) and not s["objectives_met"]
    evs = [
        {"ts": T0 + 10.0, "kind": "fault.kill", "service": "a-serving"},
        {"ts": T0 + 11.0, "kind": "serving.server_down", "service": "a-serving"},
    ]
    png = report.timeline_png(reqs, s, evs, tmp_path / "timeline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report.html_report(s, png, evs, tmp_path / "report.html").read_text()
    assert "objectives NOT met" in page
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(embedded) == png.read_bytes()
    assert "3.00 s" in page and "fault.kill" in page and "HTTP N" not in page and "HTTP 503" in page
