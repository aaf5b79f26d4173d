"""`xregion chaos`: the seeded fault campaign on its own embedded stack."""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .common import console, progress

app = typer.Typer()


class Mode(StrEnum):
    sync = "sync"
    async_ = "async"
    both = "both"


class Ledger(StrEnum):
    own = "own"
    platform = "platform"


def _print_failure(out: Console, failure: dict) -> None:
    out.print(f"\n[red]trial seed {failure['seed']} ({failure['mode']}) broke an invariant[/red]: {failure['counts']}")
    out.print(f"  replay: {failure['replay']}")
    out.print("  faults: " + ("; ".join(failure["faults"]) or "none"))
    for a in failure["anomalies"]:
        held = ", ".join(f"{r}={(v or 'absent')[:12]}" for r, v in a["observed"].items())
        allowed = ", ".join((v or "absent")[:12] for v in a["allowed"])
        out.print(f"  [bold]{a['key']}[/bold]: {'/'.join(a['kinds'])}; regions hold {held}; history allows {allowed}")
        for line in a["history"]:
            out.print(f"    {escape(line)}")
        for line in a.get("evidence", []):
            out.print(f"    [dim]{escape(line)}[/dim]")
    for g in failure["gate"]:
        out.print(f"  version {g['version']} in production with artifacts that do not verify: {g['problems'][:3]}")
    for row in failure.get("still_owed", []):
        out.print(f"  still owed after the drain: {escape(row)}")
    for d in failure["verify"][:10]:
        out.print(f"  verify --deep: {d['key']} in {d['region']}: {d['problem']} ({d['detail']})")


def _print_report(out: Console, report: dict) -> None:
    for failure in report["failures"]:
        _print_failure(out, failure)
    counts = {k: report[k] for k in ("lost", "resurrected", "stale", "diverged", "gate_violations")}
    out.print(
        f"\n{report['trials']} trials, {report['operations']} operations "
        f"({report['acknowledged_puts']} puts and {report['acknowledged_deletes']} deletes acknowledged), "
        f"faults {report['faults']}, {report['wall_seconds']}s"
    )
    out.print(f"invariants: {counts}, verify differences {report['verify_differences']}")
    seeds = ", ".join(f"{f['seed']} ({f['mode']})" for f in report["failing_seeds"])
    out.print(f"[red]failing seeds: {seeds}[/red]" if seeds else "[green]every trial kept every invariant[/green]")


@app.command()
def chaos(
    trials: int = typer.Option(20, help="Trials in all (with --mode both, half in each mode, on the same seeds)."),
    seed: int = typer.Option(1, help="Trial i has seed SEED+i; --trials 1 --seed S replays trial S."),
    mode: Mode = typer.Option(Mode.async_, help="Artifact replication mode of the trials."),
    duration: float = typer.Option(3.0, help="Seconds of each trial over which its faults fall."),
    client_ledger: Ledger = typer.Option(
        Ledger.own, help="Where direct clients record what they owe: their own directory, or the platform's home."
    ),
    keep: bool = typer.Option(False, help="Keep the campaign's XREGION_HOME (histories, logs) afterwards."),
    stacks: int = typer.Option(
        1,
        min=1,
        max=4,
        help="Embedded stacks to spread the trials over, each its own processes and ports (2 on 2 cores).",
    ),
    out: Path | None = typer.Option(None, help="Append every trial's full result to this file (JSON lines)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Concurrent puts, overwrites, deletes, reads and promotions under random kill -9 and SIGSTOP of
    the S3 stores, the replicator, the MLflow servers and clients; every trial checked against its
    history. Runs on its own temporary stack. Exit 1 if any trial broke an invariant."""
    from xregion.loadtests.chaos.campaign import Settings, run_campaign

    logging.basicConfig(level=logging.WARNING)
    settings = Settings(
        trials=trials,
        seed=seed,
        mode=mode.value,
        duration=duration,
        client_ledger=client_ledger.value,
        keep=keep,
        out=out,
        stacks=stacks,
    )
    total = trials
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        campaign = bar.add_task("campaign", total=total)
        current = {}

        def on_phase(n: int, of: int, phase: str) -> None:
            if n not in current:
                current[n] = bar.add_task(f"trial {n}/{of}", total=4)
            steps = {"workload": 0, "heal": 1, "drain": 2, "check": 3, "done": 4}
            bar.update(current[n], completed=steps[phase], description=f"trial {n}/{of}: {phase}")
            if phase == "done":
                bar.remove_task(current[n])
                bar.update(campaign, advance=1)

        result = run_campaign(settings, on_phase, progress)
    report = result.summary()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(Console(), report)
    raise typer.Exit(1 if report["failing_seeds"] else 0)
