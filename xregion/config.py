"""The one regions file every component reads.

Loaded from ``XREGION_CONFIG`` (default: the embedded stack's ``infra/embedded/regions.yaml``)
and validated once, so that plugins, router, dr and loadtests never re-parse it or hard-code
a port. Secrets never live here: a region names the environment variables that hold them.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from xregion.errors import XRegionError

from .ha_config import EtcdMember, PatroniConfig, Strict, WitnessConfig, check_host_port, split_host_port

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_CONFIG = REPO_ROOT / "infra" / "embedded" / "regions.yaml"


class ConfigError(XRegionError, ValueError):
    """The regions file is missing, unreadable or invalid; the message says where and what to fix."""


_Strict = Strict


def _check_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL with a host, got {value!r}")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError as exc:
        raise ValueError(f"{what} has an invalid port: {value!r}") from exc
    return value.rstrip("/")


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


class S3Config(_Strict):
    endpoint_url: str
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")
    access_key_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    secret_key_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    region_name: str = "us-east-1"

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v, "s3.endpoint_url")

    def credentials(self, region: str) -> tuple[str, str]:
        """Read the credentials from the named environment variables."""
        missing = [n for n in (self.access_key_env, self.secret_key_env) if not os.environ.get(n)]
        if missing:
            raise ConfigError(
                f"region {region!r}: environment variable(s) {', '.join(missing)} (named by "
                f"s3.access_key_env / s3.secret_key_env in the regions file) are not set; "
                f"export them, or list them in the file's env_file"
            )
        return os.environ[self.access_key_env], os.environ[self.secret_key_env]


class RegionConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    role: Literal["primary", "standby"]
    s3: S3Config
    postgres: str = Field(description="host:port of this region's Postgres node")
    mlflow_url: str
    serving_url: str
    etcd: EtcdMember | None = Field(default=None, description="this region's etcd member (Patroni's DCS)")
    patroni: str | None = Field(default=None, description="host:port of this region's Patroni REST API")

    @field_validator("mlflow_url", "serving_url")
    @classmethod
    def _urls(cls, v: str, info) -> str:
        return _check_url(v, info.field_name)

    @field_validator("postgres")
    @classmethod
    def _pg(cls, v: str) -> str:
        return check_host_port(v, "postgres")

    @field_validator("patroni")
    @classmethod
    def _patroni(cls, v: str | None) -> str | None:
        return None if v is None else check_host_port(v, "patroni")

    @property
    def patroni_url(self) -> str | None:
        """Base URL of this region's Patroni REST API (GET /cluster, /primary, POST /failover...)."""
        return f"http://{self.patroni}" if self.patroni else None

    @property
    def pg_host(self) -> str:
        return self.postgres.rpartition(":")[0]

    @property
    def pg_port(self) -> int:
        return int(self.postgres.rpartition(":")[2])

    def endpoints(self) -> dict[str, tuple[str, int]]:
        """Every (host, port) this region listens on, by component."""
        out = {
            "s3": _host_port(self.s3.endpoint_url),
            "postgres": (self.pg_host, self.pg_port),
            "mlflow": _host_port(self.mlflow_url),
            "serving": _host_port(self.serving_url),
        }
        if self.etcd:
            out["etcd.client"] = split_host_port(self.etcd.client)
            out["etcd.peer"] = split_host_port(self.etcd.peer)
        if self.patroni:
            out["patroni"] = split_host_port(self.patroni)
        return out


class PostgresConfig(_Strict):
    database: str = "mlflow"
    user: str = "mlflow"
    password_env: str | None = Field(default=None, description="env var holding the password, if any")
    replication: Literal["async", "sync"] = "async"


class ArtifactsConfig(_Strict):
    mode: Literal["sync", "async"] = "sync"
    local_region: str | None = Field(default=None, description="region to read from first")
    prefix: str = "mlartifacts"
    ledger: str | None = Field(
        default=None, description="the shared replication ledger (SQLite path; relative to this file)"
    )


class ServingConfig(_Strict):
    frontend_url: str = "http://127.0.0.1:5300"
    haproxy_stats_url: str = "http://127.0.0.1:5301"

    @field_validator("frontend_url", "haproxy_stats_url")
    @classmethod
    def _urls(cls, v: str, info) -> str:
        return _check_url(v, info.field_name)


class RegistryConfig(_Strict):
    model_name: str = "recsys"
    production_alias: str = "champion"
    production_stage: str = "Production"


class XRegionConfig(_Strict):
    version: Literal[1] = 1
    env_file: str | None = Field(default=None, description="dotenv file of credentials, relative to this file")
    regions: list[RegionConfig] = Field(min_length=1)
    postgres: PostgresConfig = PostgresConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    serving: ServingConfig = ServingConfig()
    registry: RegistryConfig = RegistryConfig()
    witness: WitnessConfig | None = None
    patroni: PatroniConfig = PatroniConfig()
    source: str | None = Field(default=None, exclude=True, description="path this config was read from")

    @model_validator(mode="after")
    def _consistent(self) -> XRegionConfig:
        names = [r.name for r in self.regions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate region name(s): {', '.join(dupes)}")
        primaries = [r.name for r in self.regions if r.role == "primary"]
        if len(primaries) != 1:
            raise ValueError(
                f"exactly one region must have role: primary, found {len(primaries)}"
                + (f" ({', '.join(primaries)})" if primaries else "")
            )
        self._check_ha(names)
        if self.artifacts.local_region and self.artifacts.local_region not in names:
            raise ValueError(
                f"artifacts.local_region {self.artifacts.local_region!r} is not a region ({', '.join(names)})"
            )
        seen: dict[tuple[str, int], str] = {}
        listeners = [(f"{r.name}.{c}", hp) for r in self.regions for c, hp in r.endpoints().items()]
        listeners += [
            ("serving.frontend_url", _host_port(self.serving.frontend_url)),
            ("serving.haproxy_stats_url", _host_port(self.serving.haproxy_stats_url)),
        ]
        if self.witness:
            listeners += [
                (f"witness.{self.witness.name}.etcd.client", split_host_port(self.witness.etcd.client)),
                (f"witness.{self.witness.name}.etcd.peer", split_host_port(self.witness.etcd.peer)),
            ]
        for owner, (host, port) in listeners:
            if host not in ("127.0.0.1", "localhost", "::1"):
                continue  # remote endpoints may be shared (one AWS endpoint, many buckets)
            key = ("loopback", port)
            if key in seen:
                raise ValueError(f"port clash: {owner} and {seen[key]} both use {host}:{port}")
            seen[key] = owner
        buckets = [(r.s3.endpoint_url, r.s3.bucket) for r in self.regions]
        if len(set(buckets)) != len(buckets):
            raise ValueError("two regions share one S3 endpoint and bucket: each region needs its own store")
        return self

    def _check_ha(self, names: list[str]) -> None:
        """Patroni + etcd: every region or none; at least three etcd members (a quorum survives one loss)."""
        with_etcd = [r.name for r in self.regions if r.etcd]
        with_patroni = [r.name for r in self.regions if r.patroni]
        if not with_etcd and not with_patroni and not self.witness:
            return
        lacking = [r.name for r in self.regions if not (r.etcd and r.patroni)]
        if lacking:
            raise ValueError(
                f"region(s) {', '.join(lacking)} lack etcd and/or patroni: with Patroni every region needs "
                f"both (regions[].etcd.client/peer and regions[].patroni)"
            )
        if self.witness and self.witness.name in names:
            raise ValueError(f"witness name {self.witness.name!r} is also a region name")
        members = len(self.etcd_members())
        if members < 3:
            raise ValueError(
                f"{members} etcd members: at least three are needed for a quorum to survive the loss of one "
                f"(add a witness: witness.etcd.client/peer)"
            )

    @property
    def ha(self) -> bool:
        """True when the regions file puts the database under Patroni (etcd members and REST ports)."""
        return all(r.etcd and r.patroni for r in self.regions)

    def etcd_members(self) -> list[tuple[str, EtcdMember]]:
        """(member name, member) of every etcd member: one per region that has one, then the witness."""
        out = [(r.name, r.etcd) for r in self.regions if r.etcd]
        if self.witness:
            out.append((self.witness.name, self.witness.etcd))
        return out

    def etcd_hosts(self, first: str | None = None) -> list[str]:
        """Client host:port of every member, ``first``'s own member first (a client prefers its region)."""
        members = self.etcd_members()
        members.sort(key=lambda m: m[0] != first)
        return [m.client for _, m in members]

    # --- lookups -------------------------------------------------------------------------
    @cached_property
    def by_name(self) -> dict[str, RegionConfig]:
        return {r.name: r for r in self.regions}

    def region(self, name: str) -> RegionConfig:
        try:
            return self.by_name[name]
        except KeyError:
            raise ConfigError(f"no region named {name!r}; regions are: {', '.join(self.by_name)}") from None

    @property
    def primary(self) -> RegionConfig:
        return next(r for r in self.regions if r.role == "primary")

    @property
    def standbys(self) -> list[RegionConfig]:
        return [r for r in self.regions if r.role == "standby"]

    def read_order(self) -> list[RegionConfig]:
        """Regions in the order reads try them: the local region first, then the primary, then the rest."""
        first = self.artifacts.local_region or os.environ.get("XREGION_LOCAL_REGION") or self.primary.name
        ordered = [self.region(first)] + [self.primary] + self.regions
        return list({r.name: r for r in ordered}.values())

    def write_order(self) -> list[RegionConfig]:
        """The primary first, then the other regions in file order."""
        return [self.primary] + [r for r in self.regions if r.role != "primary"]

    def database_uri(self, password: str | None = None, database: str | None = None) -> str:
        """SQLAlchemy URI over every region's Postgres node that always finds the read-write one.

        libpq tries the hosts in order and keeps the first that accepts writes, so after a
        standby is promoted the same URI reaches the new primary without reconfiguration.
        Without ``password_env`` the URI carries no password: libpq then reads it from the
        PGPASSFILE of the process (the embedded stack's MLflow servers get one).
        """
        return self._uri(self.write_order(), "read-write", password, database)

    def database_read_uri(self, region: str, password: str | None = None, database: str | None = None) -> str:
        """URI for MLflow's read replica (``--read-replica-backend-store-uri``): ``region``'s own node
        first, whatever its role, then the others: reads go on while no node accepts writes."""
        local = self.region(region)
        return self._uri([local] + [r for r in self.regions if r.name != region], "any", password, database)

    def _uri(self, nodes: list[RegionConfig], attrs: str, password: str | None, database: str | None = None) -> str:
        pg = self.postgres
        if password is None and pg.password_env:
            password = os.environ.get(pg.password_env)
        # a password holds any character: '@', ':', '/' or '%' would break the URI unencoded
        auth = quote(pg.user, safe="") + (f":{quote(password, safe='')}" if password else "")
        hosts = "&".join(f"host={r.postgres}" for r in nodes)
        db = database or pg.database
        return f"postgresql+psycopg2://{auth}@/{db}?{hosts}&target_session_attrs={attrs}&connect_timeout=3"

    def dsn(self, region: str, database: str | None = None) -> str:
        """A libpq DSN for one region's node only, without a password (libpq reads it from the
        process's PGPASSFILE or PGPASSWORD; the embedded stack's roles: infra.embedded.postgres)."""
        r = self.region(region)
        return (
            f"host={r.pg_host} port={r.pg_port} dbname={database or self.postgres.database} "
            f"user={self.postgres.user} connect_timeout=3"
        )

    def with_changes(self, **changes) -> XRegionConfig:
        """A validated copy with top-level fields replaced."""
        data = self.model_dump()
        data.update(changes)
        return XRegionConfig.model_validate({**data, "source": self.source})


def _format_errors(err: ValidationError, path: str) -> str:
    lines = [f"invalid regions file {path}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against the regions file reference in README.md)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<dict>") -> XRegionConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid regions file {source}: expected a mapping at the top level")
    try:
        return XRegionConfig.model_validate({**data, "source": source})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def config_path() -> Path:
    return Path(os.environ.get("XREGION_CONFIG") or EMBEDDED_CONFIG)


def load_config(path: str | os.PathLike | None = None) -> XRegionConfig:
    """Load and validate the regions file, and load its env_file (real environment wins)."""
    p = Path(path) if path else config_path()
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read regions file {p}: {exc.strerror}; set XREGION_CONFIG to a valid file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"regions file {p} is not valid YAML: {exc}") from None
    cfg = parse_config(data, str(p))
    if cfg.env_file:
        load_env_file(p.parent / cfg.env_file)
    return cfg


def load_env_file(path: Path) -> None:
    from dotenv import dotenv_values

    if not path.is_file():
        raise ConfigError(f"env_file {path} named in the regions file does not exist")
    for key, value in dotenv_values(path).items():
        if value is not None:
            os.environ.setdefault(key, value)


def dump_config(cfg: XRegionConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(exclude_none=True), sort_keys=False))
