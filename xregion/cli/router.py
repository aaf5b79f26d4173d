"""`xregion router start|stop|status|run` and `xregion bench router`."""

from __future__ import annotations

import json
import logging

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer()
router_app = typer.Typer(
    help="Serving: model servers per region behind HAProxy, following the registry.", no_args_is_help=True
)
app.add_typer(router_app, name="router")
bench_app = typer.Typer()
console = Console(stderr=True)


def _cfg():
    from .common import config_or_exit

    return config_or_exit()


def _progress(msg: str) -> None:
    console.print(f"[dim]{msg}[/dim]")


@router_app.command()
def start(
    regions: str = typer.Option(None, "--regions", help="Comma-separated regions in the front door (default: all)."),
) -> None:
    """Serve the production version (only ever a version the gate let into production): model servers,
    HAProxy and the router. Run again, it brings back whatever part is missing."""
    from xregion.home import xregion_home
    from xregion.infra.embedded.supervisor import SupervisorError
    from xregion.infra.serving.control import start_serving
    from xregion.plugins.registry_client import RegistryError

    from .common import act_as

    cfg = _cfg()
    act_as("serving", cfg)  # it reads which version is in production
    try:
        start_serving(cfg, xregion_home(), _progress, [r.strip() for r in regions.split(",")] if regions else None)
    except (SupervisorError, RegistryError, ValueError, FileNotFoundError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"[green]serving[/green] at {cfg.serving.frontend_url}/invocations "
        f"(stats {cfg.serving.haproxy_stats_url}/ and /metrics, user xregion, password in "
        f"XREGION_HOME/secrets/haproxy-stats)"
    )


@router_app.command()
def stop() -> None:
    """Stop the router, HAProxy and every model server."""
    from xregion.home import xregion_home
    from xregion.infra.serving.control import stop_serving

    stopped = stop_serving(xregion_home(), _progress)
    console.print(f"stopped {len(stopped)} service(s)" if stopped else "nothing was serving")


@router_app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Versions per region, HAProxy's view of every server, recent failovers/switches/rollbacks."""
    from xregion.home import xregion_home
    from xregion.infra.serving.control import serving_status

    st = serving_status(_cfg(), xregion_home())
    if as_json:
        print(json.dumps(st, indent=2, default=str))
        return
    if not st["running"]:
        console.print("not serving (xregion router start)")
        raise typer.Exit(1)
    console.print(
        f"model {st['model']}: serving backend {st['active']}, versions {st['versions']}"
        + (f", deploying {st['pending']['version']}" if st.get("pending") else "")
    )
    table = Table("backend", "server", "status", "check", "requests", "5xx", "4xx", "avg ms", "retries", "redispatches")
    for s in st["servers"]:
        table.add_row(
            s["backend"],
            s["server"],
            s["status"],
            s["check"],
            str(s["http_requests"]),
            str(s["errors_5xx"]),
            str(s["errors_4xx"]),
            str(s["avg_response_ms"]),
            str(s["retries"]),
            str(s["redispatches"]),
        )
    Console().print(table)
    for e in st["events"][-8:]:
        console.print(
            f"  {e['ts']:.3f} {e['kind']} "
            + ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "kind") and v is not None)
        )


@router_app.command()
def run(
    duration: float = typer.Option(None, help="Stop after this many seconds (default: run until killed)."),
    external: bool = typer.Option(
        False,
        help="A deployment: model servers are the platform's and their agents ask "
        "this router what to serve (compose, Kubernetes).",
    ),
    regions: str = typer.Option(None, help="With --external: the regions whose model servers it drives."),
    api_host: str = typer.Option("127.0.0.1", help="Where the router API listens (agents must reach it)."),
    api_port: int = typer.Option(5310, help="With --external: the router API port."),
) -> None:
    """The control-plane loop (run as the `router` service by `xregion router start`)."""
    from xregion.home import xregion_home
    from xregion.infra.serving.control import external_state
    from xregion.infra.serving.router import Router

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, home = _cfg(), xregion_home()
    if external:
        names = [r.strip() for r in regions.split(",")] if regions else [r.name for r in cfg.regions]
        external_state(cfg, home, names, api_port)
    Router(cfg, home).run(duration=duration, api_host=api_host)


@router_app.command()
def agent(
    region: str = typer.Option(..., help="The region of this model server."),
    slot: str = typer.Option(..., help="Its colour: bk_blue or bk_green."),
    router_url: str = typer.Option(..., envvar="XREGION_ROUTER_URL", help="The router API, e.g. http://router:5310."),
    port: int = typer.Option(..., help="The port the model server listens on."),
    host: str = typer.Option("0.0.0.0", help="The address the model server listens on."),
) -> None:
    """A deployment's model-server agent: serve exactly the version the router says this colour serves."""
    import os

    from xregion.infra.serving.agent import Agent, AgentConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = os.environ.get("XREGION_ROUTER_TOKEN")
    if not token:
        console.print("[red]XREGION_ROUTER_TOKEN is not set: the agent needs the router API's token[/red]")
        raise typer.Exit(2)
    Agent(AgentConfig(router_url.rstrip("/"), token, region, slot, host, port)).run()


@bench_app.command("router")
def bench_router(
    as_json: bool = typer.Option(False, "--json"),
    requests: int = typer.Option(1000, help="Sequential requests per path (direct, through HAProxy)."),
    keep: bool = typer.Option(False, help="Leave the bench stack running."),
) -> None:
    """Added latency of HAProxy (p50/p99 vs straight to a model server) and failure detection for kill and freeze."""
    import contextlib

    from xregion.home import xregion_home

    from .output import log_to_file

    log = log_to_file(xregion_home(), "bench-router")
    console.print(f"[dim]full logs: {log}[/dim]")
    # MLflow prints its run links and libraries warn on the way: the log, so stdout carries the figures alone
    with open(log, "a") as sink, contextlib.redirect_stdout(sink):
        from xregion.infra.serving.bench import run_bench

        result = run_bench(requests=requests, keep=keep, progress=_progress).as_dict()
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        Console().print_json(json.dumps(result))
