"""The drill report: a per-second timeline plot (PNG, matplotlib Agg) and one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

from . import metrics as M
from .requestlog import Request

EVENT_COLOURS = {
    "fault": "#c62828",
    "serving.server_down": "#6a1b9a",
    "serving.server_up": "#2e7d32",
    "serving.switch": "#1565c0",
    "serving.rollback": "#ef6c00",
    "registry": "#00838f",
    "drill": "#455a64",
    "db": "#6d4c41",
}


def _colour(kind: str) -> str:
    return EVENT_COLOURS.get(kind) or EVENT_COLOURS.get(kind.split(".", 1)[0], "#757575")


def timeline_png(reqs: list[Request], summary: dict, events: list[dict], path: Path) -> Path:
    """Successes and failures per second (stacked bars), p50/p99 latency of successes (right axis,
    log scale), the fault, the recovery (RTO) and the event log's events as vertical markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0, t1 = summary["load_start"], summary["load_end"]
    tl = M.timeline(reqs, t0, t1, 1.0)
    xs = [b["t"] for b in tl]
    ok = [b["ok"] for b in tl]
    bad = [b["failed"] for b in tl]
    fig, ax = plt.subplots(figsize=(12, 6.4), dpi=100)
    ax.bar(xs, ok, width=1.0, align="edge", color="#81c784", label="successful requests/s")
    ax.bar(xs, bad, width=1.0, align="edge", bottom=ok, color="#e53935", label="failed requests/s")
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("requests per second (by start time)")
    ax.set_xlim(0, max(xs[-1] + 1 if xs else 1, 1))
    ymax = max([o + b for o, b in zip(ok, bad, strict=True)] or [1])
    ax.set_ylim(0, ymax * 1.35 + 1)

    lat = ax.twinx()
    for key, style, label in (("p50_ms", "-", "p50 latency"), ("p99_ms", "--", "p99 latency")):
        if any(b[key] is not None for b in tl):  # NaN breaks the line where a second had no success
            lat.plot(
                [b["t"] + 0.5 for b in tl],
                [float("nan") if b[key] is None else b[key] for b in tl],
                style,
                color="#1a237e",
                linewidth=1.3,
                marker=".",
                markersize=3,
                label=label,
            )
    lat.set_yscale("log")
    lat.set_ylabel("latency of successes, ms (log)")

    fault, rec = summary.get("fault_ts"), summary.get("recovered_ts")
    if fault is not None:
        ax.axvline(fault - t0, color="#c62828", linewidth=2.2, label=f"fault: {summary.get('fault_label', '')}")
        end = rec if rec is not None else summary.get("phase_end") or t1
        ax.axvspan(
            fault - t0,
            end - t0,
            color="#ffcdd2",
            alpha=0.35,
            zorder=0,
            label=f"RTO {summary['rto_s']:.1f} s" if rec is not None else "not recovered in the phase",
        )
    if rec is not None:
        ax.axvline(
            rec - t0,
            color="#2e7d32",
            linewidth=2.0,
            linestyle="--",
            label="recovered (first request of the first good 5 s window)",
        )
    if summary.get("phase_end") is not None and summary.get("phase_end") < t1 - 0.5:
        ax.axvline(
            summary["phase_end"] - t0,
            color="#1565c0",
            linewidth=1.6,
            linestyle=":",
            label=f"restore: {summary.get('restore_label', '')}",
        )
    seen = set()
    for i, e in enumerate(events):
        x = e["ts"] - t0
        if not 0 <= x <= t1 - t0 or e["kind"].startswith("drill."):
            continue
        kind = e["kind"]
        ax.axvline(
            x,
            color=_colour(kind),
            linewidth=0.9,
            linestyle="-.",
            alpha=0.8,
            label=None if kind in seen else f"event: {kind}",
        )
        seen.add(kind)
        ax.text(
            x + 0.2,
            ymax * (1.28 - 0.07 * (i % 4)),
            f"{kind} {e.get('service') or e.get('version') or ''}".strip(),
            fontsize=7,
            color=_colour(kind),
            rotation=0,
            va="top",
        )
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = lat.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    avail = summary["gated"]["availability"]
    avail_s = "n/a" if avail is None else f"{avail * 100:.3f} %"
    rto = summary.get("rto_s")
    rto_s = "n/a" if fault is None else ("not recovered" if rto is None else f"{rto:.2f} s")
    ax.set_title(
        f"drill {summary['scenario']}: availability {avail_s} of {summary['gated']['requests']} "
        f"{summary.get('gate_kind')} requests, {summary['gated']['failed']} failed, RTO {rto_s}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _fmt(v, unit="", pct=False) -> str:
    if v is None:
        return "n/a"
    if pct:
        return f"{v * 100:.3f} %"
    if isinstance(v, float):
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(summary: dict, png: Path, events: list[dict], path: Path) -> Path:
    s = summary
    img = base64.b64encode(Path(png).read_bytes()).decode()
    verdict = "objectives met" if s["objectives_met"] else "objectives NOT met"
    objectives = _table(
        ["objective", "target", "measured", "met", "note"],
        [
            [
                o["objective"],
                _fmt(o["target"], pct=o["objective"] == "availability" and o["target"] is not None),
                _fmt(o["actual"], pct=o["objective"] == "availability" and o["actual"] is not None),
                {True: "<b class=ok>yes</b>", False: "<b class=bad>no</b>", None: "n/a"}[o["met"]],
                html.escape(o["note"]),
            ]
            for o in s["objectives"]
        ],
    )
    ls, lf = s["latency_steady"], s["latency_failover"]
    figures = _table(
        ["figure", "value"],
        [
            ["scenario", html.escape(s["scenario"]) + f" &mdash; {html.escape(s.get('description', ''))}"],
            [
                "load",
                f"{s['load_seconds']:.1f} s, {s['users']} users ({html.escape(json.dumps(s['mix']))}), "
                f"{'distributed: ' + str(s['workers']) + ' workers' if s['workers'] else 'one process'}",
            ],
            ["gated traffic", html.escape(str(s["gate_kind"]))],
            ["requests (gated / all)", f"{s['gated']['requests']} / {s['requests']}"],
            ["failed (gated / all)", f"{s['gated']['failed']} / {s['failed']}"],
            [
                "availability (gated / all)",
                f"{_fmt(s['gated']['availability'], pct=True)} / {_fmt(s['availability'], pct=True)}",
            ],
            [
                "fault",
                "none"
                if s.get("fault_ts") is None
                else f"t = {s['fault_ts'] - s['load_start']:.2f} s: {html.escape(s.get('fault_label', ''))}",
            ],
            [
                "restore",
                "none"
                if s.get("restore_ts") is None
                else f"t = {s['restore_ts'] - s['load_start']:.2f} s: {html.escape(s.get('restore_label', ''))}",
            ],
            [
                "RTO",
                "n/a"
                if s.get("fault_ts") is None
                else ("not recovered within the fault phase" if s["rto_s"] is None else f"{s['rto_s']:.2f} s"),
            ],
            [
                "latency steady p50 / p95 / p99",
                f"{_fmt(ls['p50_ms'], ' ms')} / {_fmt(ls['p95_ms'], ' ms')} / {_fmt(ls['p99_ms'], ' ms')} (n={ls['n']})",
            ],
            [
                "latency during failover p50 / p95 / p99",
                f"{_fmt(lf['p50_ms'], ' ms')} / {_fmt(lf['p95_ms'], ' ms')} / {_fmt(lf['p99_ms'], ' ms')} (n={lf['n']})",
            ],
            *[
                [
                    f"RPO {k}",
                    f"{v['missing']} missing of {v['acknowledged']} acknowledged"
                    if not v.get("error")
                    else html.escape(v["error"]),
                ]
                for k, v in (s.get("rpo") or {}).items()
            ],
        ],
    )
    by_kind = _table(
        ["traffic", "requests", "failed", "availability"],
        [
            [html.escape(k), v["requests"], v["failed"], _fmt(v["availability"], pct=True)]
            for k, v in s["by_kind"].items()
        ],
    )
    errors = (
        _table(
            ["request", "error", "count"],
            [[html.escape(e["name"]), html.escape(e["error"]), e["count"]] for e in s.get("errors", [])],
        )
        if s.get("errors")
        else "<p>none</p>"
    )
    ev_rows = []
    for e in events:
        detail = {k: v for k, v in e.items() if k not in ("ts", "kind")}
        ev_rows.append(
            [
                f"{e['ts'] - s['load_start']:+.2f} s",
                html.escape(e["kind"]),
                html.escape(json.dumps(detail, default=str)[:300]),
            ]
        )
    steps = _table(
        ["t", "step", "result"],
        [
            [f"{st['t']:.2f} s", html.escape(st["label"]), html.escape(json.dumps(st.get("result"), default=str)[:400])]
            for st in s.get("steps", [])
        ],
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>drill {html.escape(s["scenario"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} .ok {{ color: #2e7d32; }} .bad {{ color: #c62828; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>Drill <code>{html.escape(s["scenario"])}</code>: <span class="{"ok" if s["objectives_met"] else "bad"}">{verdict}</span></h1>
<p>{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["load_start"]))}, objectives from
<code>{html.escape(str(s.get("objectives_source", "")))}</code>. RTO: from the fault to the first request of the
first 5 s window (0.1 s steps) with at least 99 % successes after which every window of the fault phase
is as good; see loadtests/README.md.</p>
<h2>Timeline (per second)</h2>
<img alt="timeline" src="data:image/png;base64,{img}">
<h2>Objectives</h2>{objectives}
<h2>Figures</h2>{figures}
<h2>By traffic</h2>{by_kind}
<h2>Drill steps</h2>{steps}
<h2>Event log</h2>{_table(["t", "event", "detail"], ev_rows) if ev_rows else "<p>none</p>"}
<h2>Most frequent errors</h2>{errors}
<p>Raw data: <code>requests.csv</code> (every request: start time, traffic, name, outcome, latency, error) and
<code>summary.json</code>, next to this file and in the MLflow run.</p>
</body></html>
"""
    Path(path).write_text(page)
    return Path(path)
