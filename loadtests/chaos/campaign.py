"""The seeded fault campaign: trials of concurrent clients under injected faults, each checked
against its history once everything is healed and the ledger drained.

One embedded stack serves every trial of a campaign (its own temporary XREGION_HOME and free
ports, never the operator's stack); each trial writes under its own key prefix and registers its
own model. Trial ``i`` of a campaign with seed ``S`` has seed ``S + i``: its clients' operations
and its faults follow from that seed alone, so ``--trials 1 --seed S+i`` replays it (the
interleaving in time is the machine's, as with any real fault injection).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from xregion.config import load_config
from xregion.home import environment
from xregion.infra.embedded import auth
from xregion.infra.embedded import stack as embedded
from xregion.infra.embedded.scratch import make_home
from xregion.infra.embedded.scratch import scratch_config as write_config
from xregion.infra.embedded.supervisor import Service, Supervisor
from xregion.net import free_ports
from xregion.plugins.replication import Replicator
from xregion.store import stores

from . import checker, workload
from .faults import Injector, heal, plan_faults
from .forkserver import ForkServer
from .history import Op, read_history
from .invariants import client_ledger, drain, gate_violations, log_mentions, observe, stranded, verify_prefix
from .report import CampaignResult

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]  # (trial number from 1, trials, phase)


@dataclass
class Settings:
    trials: int = 20
    seed: int = 1
    mode: str = "async"  # sync | async | both (half of the trials in each mode, on the same seeds)
    duration: float = 3.0  # seconds of a trial over which its faults fall
    clients: int = 4  # one of them registers and promotes
    ops: int = 10  # operations per artifact client
    keys: int = 3
    max_faults: int = 4
    client_timeout: float = 90.0  # a client still running then is killed (its operation indeterminate)
    # a healthy ledger drains in a second or two; a writer killed mid-write on another host would
    # hold its key's converges back until its write mark expires (outbox.WRITE_SECONDS, 20 s)
    drain_timeout: float = 35.0
    # where direct clients keep what they owe: "own" (their working directory: no XREGION_HOME, as
    # the README's direct clients run) or "platform" (the platform's XREGION_HOME, as on its host)
    client_ledger: str = "own"
    extra_env: dict[str, str] = field(default_factory=dict)  # for the client processes (tests)
    keep: bool = False  # keep the campaign's XREGION_HOME (logs, histories) for a post-mortem
    stacks: int = 1  # embedded stacks the trials are spread over, one worker process each (parallel.py)
    out: Path | None = None  # append each trial's result here as a JSON line, as soon as it is known


@dataclass
class TrialResult:
    seed: int
    mode: str
    operations: int
    acknowledged: dict[str, int]
    faults: list[dict]
    counts: dict[str, int]
    anomalies: list[dict]
    gate: list[dict]
    verify: list[dict]
    healed: list[str]
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent in each phase
    owed: list[str] = field(default_factory=list)  # what the ledger still owed after the drain

    @property
    def failed(self) -> bool:
        return any(self.counts.values())


class _Phases:
    """Times the phases of a trial and reports each one as it starts."""

    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress
        self.start, self.wall = time.monotonic(), time.time()
        self.phases: dict[str, float] = {}
        self._last = (self.start, "setup")

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.phases[self._last[1]] = round(now - self._last[0], 2)
        self._last = (now, name)
        self.progress(name)

    def total(self) -> float:
        return time.monotonic() - self.start


class ChaosStack:
    """The campaign's own embedded stack, its replicator service and its client fork server."""

    def __init__(self, settings: Settings, mode: str, progress: Callable[[str], None] | None = None):
        self.settings, self.mode, self.note = settings, mode, progress or (lambda m: None)
        self.run_id = uuid.uuid4().hex[:8]

    def __enter__(self) -> ChaosStack:
        self.home = make_home("xregion-chaos-")
        # no ledger named in the regions file: with `--client-ledger own` each direct client keeps
        # its own (the README's client on another host); the platform's services use XREGION_HOME's
        self.cfg = load_config(write_config(self.home, artifacts={"mode": self.mode, "ledger": None}))
        self.sup = Supervisor(self.home)
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.note(f"starting the campaign's stack in {self.home}")
        embedded.up(self.cfg, self.home, progress=self.note)
        (clients,) = free_ports(1)
        everything = embedded.services(self.cfg, self.home)
        self.services: dict[str, Service] = {s.name: s for s in everything if s.component in ("s3", "mlflow")}
        self.services["replicator"] = next(s for s in everything if s.component == "replicator")  # up's own
        # the campaign's clients and checker act as the administrator of its own stack
        admin = auth.client_env(self.home, "admin", self.cfg)
        self._as_admin = environment(**admin)
        self._as_admin.__enter__()
        env = {**embedded.child_env(self.cfg, self.cfg.primary, self.home), **admin, **self.settings.extra_env}
        self.forks = ForkServer(self.sup, clients, self.cfg.primary.name, env)
        self.note("starting the client fork server (imports MLflow once)")
        self.forks.start()
        from mlflow import MlflowClient

        self.stores = stores(self.cfg)  # read directly by the checker; boto3 clients are slow to make
        self.registry = MlflowClient(self.cfg.primary.mlflow_url, registry_uri=self.cfg.primary.mlflow_url)

    def __exit__(self, *exc) -> None:
        if getattr(self, "_as_admin", None):
            self._as_admin.__exit__(None, None, None)
        embedded.down(self.home, progress=lambda m: None, purge=not self.settings.keep)
        if not self.settings.keep:
            shutil.rmtree(self.home, ignore_errors=True)

    def set_mode(self, mode: str) -> None:
        """Sync or async replication for the servers' proxied writes (clients get it per trial)."""
        if mode == self.mode:
            return
        for r in self.cfg.regions:
            svc = embedded.mlflow_service(self.cfg, r, self.home)
            svc.env["XREGION_ARTIFACT_MODE"] = mode
            self.sup.stop(svc.name)
            self.sup.start(svc, progress=self.note)
            self.services[svc.name] = svc
        self.mode = mode

    # --- one trial -------------------------------------------------------------------------------
    def trial(self, seed: int, mode: str, progress: Callable[[str], None]) -> TrialResult:
        clock = _Phases(progress)
        self.set_mode(mode)
        s = self.settings
        ctx = workload.TrialContext(
            seed=seed,
            prefix=f"chaos/{self.run_id}/{mode}/t{seed}",
            artifacts_prefix=self.cfg.artifacts.prefix,
            mlflow_urls={r.name: r.mlflow_url for r in self.cfg.regions},
            model=f"chaos-{self.run_id}-{mode}-t{seed}",
            mode=mode,
        )
        tdir = self.home / "trials" / f"{mode}-t{seed}"
        tdir.mkdir(parents=True)
        anchor = self._setup(ctx)
        plans = workload.plan_clients(seed, [r.name for r in self.cfg.regions], s.clients, s.ops, s.keys)
        clock("workload")
        start_ns, injector, clients = self._workload(ctx, plans, plan_faults(seed, s.duration, s.max_faults), tdir)
        clock("heal")
        healed = heal(self.sup, list(self.services.values()))
        if any(i.applied and i.fault.target.endswith("-s3") for i in injector.injected):
            self.stores = stores(self.cfg)  # pooled connections to a restarted store would cost a retry each
        clock("drain")
        prefix = f"{ctx.artifacts_prefix}/{ctx.prefix}/"
        still_owed = self._pay_client_host(prefix) + drain(self.home, prefix, s.drain_timeout)
        clock("check")
        ops = [anchor, *read_history([h for _, h in clients], start_ns)]
        keys = sorted({o.key for p in plans for o in p.ops if o.f in ("put", "delete", "read")} | {anchor.key})
        result = self._check(ctx, ops, keys, still_owed, tdir, clock.wall)
        for svc, _ in clients:
            self.sup.stop(svc.name)
        clock("done")
        result.faults = [i.as_dict() | {"described": i.describe()} for i in injector.injected]
        result.healed, result.seconds, result.phases = healed, clock.total(), clock.phases
        return result

    @property
    def client_state(self) -> Path:
        return self.home / "client-host"

    def _pay_client_host(self, prefix: str) -> list[str]:
        """With ``own`` client ledgers: what killed clients left owed in the client host's ledger is
        paid as the next xregion process on that host pays it (``shared_replicator``); returns what
        is still owed there under ``prefix``."""
        if self.settings.client_ledger == "platform":
            return []
        path = client_ledger(self.client_state)
        if not path.exists():
            return []
        rep = Replicator(self.cfg, path)
        try:
            rep.reset_health()
            rep.outbox.release()
            rep.wait_drained(self.settings.drain_timeout)
            return [
                f"{i.op} {i.key} to {i.region} (client host's ledger)"
                for i in rep.outbox.items()
                if i.key.startswith(prefix)
            ]
        finally:
            rep.close()

    def _check(
        self, ctx, ops: list[Op], keys: list[str], still_owed: list[str], tdir: Path, since: float
    ) -> TrialResult:
        """Every invariant on what the regions hold now, and the evidence for each anomaly."""
        anomalies = checker.check(ops, observe(self.stores, ctx, keys))
        diffs = verify_prefix(self.stores, f"{ctx.artifacts_prefix}/{ctx.prefix}")
        gate = gate_violations(self.cfg, self.stores, self.registry, ctx)
        owed_by_clients = stranded(client_ledger(self.client_state))
        for a in anomalies:  # for a post-mortem: who still owes the key, what the logs say of it
            full = f"{ctx.artifacts_prefix}/{ctx.prefix}/{a.key}"
            a.evidence = owed_by_clients.get(full, []) + log_mentions(self.home, full, since)
        return TrialResult(
            seed=ctx.seed,
            mode=ctx.mode,
            operations=len(ops) - 1,  # the anchor is the set-up's, not a client's
            acknowledged={
                **checker.acknowledged(ops[1:]),
                "stranded_in_client_ledgers": sum(map(len, owed_by_clients.values())),
            },
            faults=[],
            counts={
                **checker.counts(anomalies),
                "gate_violations": len(gate),
                "verify_differences": len(diffs),
                "still_owed": len(still_owed),
            },
            anomalies=[a.as_dict() for a in anomalies],
            gate=gate,
            verify=[d.as_dict() for d in diffs],
            healed=[],
            seconds=0.0,
            owed=still_owed,
        )

    def _setup(self, ctx: workload.TrialContext) -> Op:
        """The trial's registered model, and the anchor object every version's group holds."""
        from mlflow import MlflowClient

        from xregion.store import stores

        url = self.cfg.primary.mlflow_url
        MlflowClient(url, registry_uri=url).create_registered_model(ctx.model)
        data = workload.value_for(ctx, "setup", 0, 256)
        t0 = time.monotonic()
        for store in stores(self.cfg).values():  # written in every region before the trial, not under test
            info = store.put_bytes(f"{ctx.artifacts_prefix}/{ctx.prefix}/{workload.ANCHOR}", data)
        return Op("setup", 0, "put", workload.ANCHOR, info.sha256, t0 - 1e6, t0 - 1e6, "ok", via="setup")

    def _workload(self, ctx, plans, schedule, tdir: Path):
        """Fork the clients, inject the faults, wait for the clients; kill any that hang."""
        env = {
            **self.settings.extra_env,
            "XREGION_ARTIFACT_MODE": ctx.mode,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        }
        if self.settings.client_ledger == "platform":
            env["XREGION_HOME"] = str(self.home)
        else:  # one client host: its user's state directory holds the clients' own ledger
            env["XDG_STATE_HOME"] = str(self.client_state)
        clients: list[tuple[Service, Path]] = []
        start_ns, t0 = time.monotonic_ns(), time.monotonic()
        for plan in plans:
            history = tdir / f"{plan.name}.jsonl"
            pid = self.forks.fork(
                plan.as_dict(), ctx.as_dict(), history, tdir / plan.name, {**env, "XREGION_LOCAL_REGION": plan.region}
            )
            svc = self.forks.client_service(f"{ctx.mode}-t{ctx.seed}-{plan.name}", plan.region)
            try:
                self.sup.adopt(svc, pid)
            except psutil.NoSuchProcess:
                pass  # it already finished
            clients.append((svc, history))
        injector = Injector(self.sup, self.services, lambda: clients)
        injector.start(schedule, t0)
        deadline = t0 + self.settings.client_timeout
        while any(self.sup.process(svc.name) for svc, _ in clients) and time.monotonic() < deadline:
            time.sleep(0.05)
        for svc, _ in clients:
            self.sup.stop(svc.name, timeout=2)  # one still running hangs: it is killed, its operation unknown
        injector.join()
        return start_ns, injector, clients


def run_campaign(
    settings: Settings, progress: Progress | None = None, note: Callable[[str], None] | None = None
) -> CampaignResult:
    modes = ["sync", "async"] if settings.mode == "both" else [settings.mode]
    seeds = range(settings.seed, settings.seed + -(-settings.trials // len(modes)))
    schedule = [(seed, mode) for mode in modes for seed in seeds][: settings.trials]
    t0 = time.monotonic()

    def record(n: int, result: TrialResult) -> None:
        if settings.out:
            with open(settings.out, "a") as f:
                f.write(json.dumps(asdict(result), default=str) + "\n")
        log.info("trial %d/%d (seed %d, %s): %s", n, len(schedule), result.seed, result.mode, result.counts)

    def phase(n: int, name: str) -> None:
        if progress:
            progress(n, len(schedule), name)

    if settings.stacks > 1:
        from .parallel import run_on_stacks

        results = run_on_stacks(settings, schedule, settings.stacks, phase, note or (lambda m: None), record)
        return CampaignResult(settings, results, time.monotonic() - t0)
    results = []
    with ChaosStack(settings, modes[0], note) as chaos:
        for n, (seed, mode) in enumerate(schedule, 1):
            results.append(chaos.trial(seed, mode, lambda name, n=n: phase(n, name)))
            record(n, results[-1])
    return CampaignResult(settings, results, time.monotonic() - t0)


__all__ = ["CampaignResult", "ChaosStack", "Settings", "TrialResult", "run_campaign"]
