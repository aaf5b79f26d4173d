"""What the clients of a chaos trial do: a plan derived from the trial's seed, and its execution.

The plan favours the races replication gets wrong: a few small keys that several clients put,
overwrite, delete and read at once, through both doors of the platform:

- ``direct``: the MLflow artifact-repository API on ``xregion:///`` in the client process
  (``get_artifact_repository``), with the regions file and credentials only, as a team whose
  clients write to the stores directly runs it (README): no XREGION_HOME, a local region of its own;
- ``proxy``: the same API on ``mlflow-artifacts://`` through a region's MLflow server, whose own
  replicator writes and repairs;
- ``registry``: registers versions of the trial's model over a key group and promotes them to
  Production and @champion through ``registry_client.promote`` (the server's gate decides).

Every value written is unique to (trial, client, operation), so the bytes a region holds name
the write they came from. The same seed gives the same plan; the interleaving is the machine's.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .history import HistoryWriter

GROUP = "g0"  # the key group the trial's model versions point at
ANCHOR = f"{GROUP}/MLmodel"  # written once before the trial: a version's artifacts are never empty


@dataclass(frozen=True)
class Op:
    f: str  # put | delete | read | register | promote
    key: str = ""
    size: int = 0
    pause: float = 0.0  # think time before the operation, seconds


@dataclass(frozen=True)
class ClientPlan:
    name: str  # c0, c1, ...
    door: str  # direct | proxy | registry
    region: str  # direct: its local region; proxy/registry: the region whose MLflow server it uses
    ops: list[Op] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClientPlan:
        return cls(d["name"], d["door"], d["region"], [Op(**o) for o in d["ops"]])


@dataclass(frozen=True)
class TrialContext:
    """What a client needs to run its plan: where the trial's keys live and how to reach them."""

    seed: int
    prefix: str  # key prefix of the trial under the artifacts prefix, e.g. chaos/<run>/t<seed>
    artifacts_prefix: str  # the regions file's artifacts.prefix (mlartifacts)
    mlflow_urls: dict[str, str]
    model: str
    mode: str

    def as_dict(self) -> dict:
        return asdict(self)


def plan_clients(seed: int, regions: list[str], clients: int = 4, ops: int = 14, keys: int = 3) -> list[ClientPlan]:
    """The clients of a trial and their operations, from the seed alone.

    Artifact clients share ``keys`` small keys: the first in the model's group (so promotions
    race with overwrites of a version's artifacts), the others beside it and hotter. The registry
    client logs the model file itself, registers versions of the group and promotes them."""
    rng = random.Random(f"chaos-plan-{seed}")
    names = [f"{GROUP}/k0"] + [f"g1/k{i}" for i in range(1, keys)]
    weights = [1] + [2] * (keys - 1)
    plans = []
    for c in range(clients - 1):
        door = "direct" if c % 2 == 0 else rng.choice(["direct", "proxy"])
        out = []
        for _ in range(ops):
            f = rng.choices(["put", "delete", "read"], weights=[5, 2, 3])[0]
            size = rng.choice([64, 512, 4096, 40_000]) if f == "put" else 0
            out.append(Op(f, rng.choices(names, weights)[0], size, round(rng.uniform(0, 0.08), 3)))
        plans.append(ClientPlan(f"c{c}", door, rng.choice(regions), out))
    model = f"{GROUP}/model"
    # a promotion moves the stage, the alias or both (each a gate check on the server: seconds)
    targets = ["stage", "alias", "both"]
    registry = [Op("put", model, 4096), Op("register", GROUP, pause=0.1), Op("promote", rng.choice(targets), pause=0.2)]
    if rng.random() < 0.5:
        f = rng.choice(["promote", "put", "register"])
        key = {"promote": rng.choice(targets), "put": model, "register": GROUP}[f]
        registry.append(Op(f, key, 4096 if f == "put" else 0, round(rng.uniform(0.1, 0.3), 3)))
    plans.append(ClientPlan(f"c{clients - 1}", "registry", rng.choice(regions), registry))
    return plans


def value_for(ctx: TrialContext, client: str, index: int, size: int) -> bytes:
    """The unique bytes of one write (deterministic: a replay writes the same bytes)."""
    head = f"{ctx.seed}:{client}:{index}:".encode()
    rng = random.Random(f"{ctx.seed}-{client}-{index}")
    return head + rng.randbytes(max(0, size - len(head)))


# --- execution, in the client process ------------------------------------------------------------
class Client:
    """Runs one plan, recording every operation in the history file."""

    def __init__(self, plan: ClientPlan, ctx: TrialContext, history: Path, workdir: Path):
        self.plan, self.ctx = plan, ctx
        self.history = HistoryWriter(history, plan.name, f"{plan.door}:{plan.region}")
        self.workdir = workdir
        self.repo = None
        self.registry = None
        self.versions: list[str] = []

    def _artifact_repo(self):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if self.plan.door == "direct":  # the registry client logs its model through its server, as a scientist does
            return get_artifact_repository(f"xregion:///{self.ctx.artifacts_prefix}/{self.ctx.prefix}")
        url = self.ctx.mlflow_urls[self.plan.region]
        host = url.split("://", 1)[1]
        return get_artifact_repository(f"mlflow-artifacts://{host}/{self.ctx.prefix}", tracking_uri=url)

    def run(self) -> None:
        for i, op in enumerate(self.plan.ops):
            time.sleep(op.pause)
            if op.f in ("register", "promote"):
                self._registry_op(i, op)
            else:
                self._artifact_op(i, op)
        self.history.close()

    def _artifact_op(self, i: int, op: Op) -> None:
        value = value_for(self.ctx, self.plan.name, i, op.size) if op.f == "put" else None
        digest = hashlib.sha256(value).hexdigest() if value is not None else None
        n = self.history.invoke(op.f, op.key, digest)
        try:
            if self.repo is None:
                self.repo = self._artifact_repo()
            got = self._apply(op, value)
        except Exception as exc:
            if op.f == "read" and _not_found(exc):
                self.history.complete(n, "ok", None)
            else:  # a write that raised may still have landed; a failed read changed nothing
                self.history.complete(n, "fail" if op.f == "read" else "info", error=f"{type(exc).__name__}: {exc}")
            return
        self.history.complete(n, "ok", got)

    def _apply(self, op: Op, value: bytes | None) -> str | None:
        sub, _, name = op.key.rpartition("/")
        if op.f == "put":
            with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
                path = Path(tmp) / name
                path.write_bytes(value)
                self.repo.log_artifact(str(path), sub or None)
            return None
        if op.f == "delete":
            self.repo.delete_artifacts(op.key)
            return None
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            local = self.repo.download_artifacts(op.key, tmp)
            return hashlib.sha256(Path(local).read_bytes()).hexdigest()

    def _registry_op(self, i: int, op: Op) -> None:
        from xregion.config import load_config
        from xregion.plugins import registry_client

        cfg = load_config()
        version = self.versions[-1] if op.f == "promote" and self.versions else None
        if op.f == "promote" and version is None:
            return
        n = self.history.invoke(op.f, "", version)
        try:
            if self.registry is None:
                self.registry = registry_client.client(cfg, self.ctx.mlflow_urls[self.plan.region])
                self._ensure_model()
            if op.f == "register":
                source = f"xregion:///{self.ctx.artifacts_prefix}/{self.ctx.prefix}/{op.key}"
                mv = self.registry.create_model_version(self.ctx.model, source)
                self.versions.append(str(mv.version))
                self.history.complete(n, "ok", str(mv.version))
            else:
                stage = cfg.registry.production_stage if op.key in ("stage", "both") else None
                alias = cfg.registry.production_alias if op.key in ("alias", "both") else None
                registry_client.promote(self.registry, cfg, self.ctx.model, version, stage, alias, "chaos", "chaos")
                self.history.complete(n, "ok", version)
        except Exception as exc:
            refused = "RESOURCE_CONFLICT" in str(exc) or "409" in str(exc)
            self.history.complete(n, "fail" if refused else "info", error=f"{type(exc).__name__}: {exc}")

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.registry.create_registered_model(self.ctx.model)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise


def _not_found(exc: Exception) -> bool:
    text = str(exc)
    return "RESOURCE_DOES_NOT_EXIST" in text or "404" in text or "no good copy" in text or "not found" in text


def run_client(plan: dict, ctx: dict, history: str, workdir: str) -> None:
    """Entry point of a forked client process."""
    os.makedirs(workdir, exist_ok=True)
    Client(ClientPlan.from_dict(plan), TrialContext(**ctx), Path(history), Path(workdir)).run()
