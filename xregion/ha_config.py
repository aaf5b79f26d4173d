"""The regions file's keys for the database's high availability: each region's etcd member, the
witness (a third etcd member in neither region) and Patroni's timing. Part of ``xregion.config``
(which re-exports these models); kept apart to keep that module readable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be host:port, got {value!r}")
    return value


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


class EtcdMember(Strict):
    """One member of the etcd cluster Patroni keeps the leader lock in (host:port of each listener)."""

    client: str = Field(description="host:port where Patroni and etcdctl reach this member")
    peer: str = Field(description="host:port of the member-to-member (raft) listener")

    @field_validator("client", "peer")
    @classmethod
    def _hp(cls, v: str, info) -> str:
        return check_host_port(v, f"etcd.{info.field_name}")

    @property
    def client_url(self) -> str:
        return f"http://{self.client}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.peer}"


class WitnessConfig(Strict):
    """A third place that runs only an etcd member, so that two data regions keep an etcd quorum
    (and so a Patroni leader) when either of them is lost."""

    name: str = Field(default="witness", pattern=r"^[a-z][a-z0-9-]{0,30}$")
    etcd: EtcdMember


class PatroniConfig(Strict):
    """Patroni's timing (its dynamic configuration in etcd); README.md and dr/README.md say what each costs.

    Detection of a lost primary takes up to ``ttl`` (the leader key's lease must expire),
    promotion then takes about a second; Patroni refuses ``ttl`` < 20 and requires
    ``loop_wait + 2 * retry_timeout <= ttl``.
    """

    scope: str = Field(default="xregion", pattern=r"^[a-z][a-z0-9-]{0,62}$", description="Patroni cluster name")
    ttl: int = Field(default=20, ge=20, description="leader lease (s): the upper bound of failure detection")
    loop_wait: int = Field(default=1, ge=1, description="seconds between two HA cycles (lease refreshes)")
    retry_timeout: int = Field(default=9, ge=3, description="how long etcd and Postgres calls are retried")
    primary_start_timeout: int = Field(
        default=10, ge=0, description="seconds a crashed primary may take to restart before failing over"
    )
    maximum_lag_on_failover: int = Field(
        default=1048576, ge=0, description="bytes a replica may lag and still be promoted (async mode)"
    )
    synchronous_mode_strict: bool = Field(
        default=False, description="sync mode: refuse writes while no synchronous standby is left"
    )

    @model_validator(mode="after")
    def _timing(self) -> PatroniConfig:
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ValueError(
                f"Patroni requires loop_wait + 2 * retry_timeout <= ttl; got {self.loop_wait} + 2 * "
                f"{self.retry_timeout} > {self.ttl}"
            )
        return self
