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
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_CONFIG = REPO_ROOT / "infra" / "embedded" / "regions.yaml"


class ConfigError(ValueError):
    """The regions file is missing, unreadable or invalid; the message says where and what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @field_validator("mlflow_url", "serving_url")
    @classmethod
    def _urls(cls, v: str, info) -> str:
        return _check_url(v, info.field_name)

    @field_validator("postgres")
    @classmethod
    def _pg(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"postgres must be host:port, got {v!r}")
        return v

    @property
    def pg_host(self) -> str:
        return self.postgres.rpartition(":")[0]

    @property
    def pg_port(self) -> int:
        return int(self.postgres.rpartition(":")[2])

    def endpoints(self) -> dict[str, tuple[str, int]]:
        """Every (host, port) this region listens on, by component."""
        return {
            "s3": _host_port(self.s3.endpoint_url),
            "postgres": (self.pg_host, self.pg_port),
            "mlflow": _host_port(self.mlflow_url),
            "serving": _host_port(self.serving_url),
        }


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

    def database_uri(self, password: str | None = None) -> str:
        """SQLAlchemy URI over every region's Postgres node that always finds the read-write one.

        libpq tries the hosts in order and keeps the first that accepts writes, so after a
        standby is promoted the same URI reaches the new primary without reconfiguration.
        """
        pg = self.postgres
        if password is None and pg.password_env:
            password = os.environ.get(pg.password_env)
        auth = pg.user + (f":{password}" if password else "")
        hosts = "&".join(f"host={r.postgres}" for r in self.write_order())
        return f"postgresql+psycopg2://{auth}@/{pg.database}?{hosts}&target_session_attrs=read-write&connect_timeout=3"

    def dsn(self, region: str, database: str | None = None) -> str:
        """A libpq DSN for one region's node only (for health checks, replication status, DR)."""
        r = self.region(region)
        pw = os.environ.get(self.postgres.password_env) if self.postgres.password_env else None
        return (
            f"host={r.pg_host} port={r.pg_port} dbname={database or self.postgres.database} "
            f"user={self.postgres.user} connect_timeout=3" + (f" password={pw}" if pw else "")
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
