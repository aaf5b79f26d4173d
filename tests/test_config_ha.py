"""The regions file's Patroni and etcd keys: validated like every other key, with clear messages."""

import pytest
import yaml

from xregion.config import EMBEDDED_CONFIG, ConfigError, parse_config


@pytest.fixture
def data():
    return yaml.safe_load(EMBEDDED_CONFIG.read_text())


def error_of(data) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "test.yaml")
    return str(exc.value)


def test_embedded_file_runs_patroni_with_a_witness(data):
    cfg = parse_config(data)
    assert cfg.ha and [n for n, _ in cfg.etcd_members()] == ["a", "b", "witness"]
    assert cfg.etcd_hosts(first="b")[0] == cfg.region("b").etcd.client
    assert cfg.region("a").patroni_url.startswith("http://127.0.0.1:")
    p = cfg.patroni
    assert p.loop_wait + 2 * p.retry_timeout <= p.ttl and p.ttl >= 20
    assert cfg.postgres.replication == "sync" and p.synchronous_mode_strict is False


def test_patroni_timing_rule(data):
    data["patroni"]["retry_timeout"] = 10
    assert "loop_wait + 2 * retry_timeout <= ttl" in error_of(data)


def test_ttl_below_patronis_minimum(data):
    data["patroni"]["ttl"] = 10
    assert "patroni.ttl" in error_of(data)


def test_every_region_needs_etcd_and_patroni(data):
    del data["regions"][1]["etcd"]
    msg = error_of(data)
    assert "region(s) b lack etcd" in msg


def test_two_etcd_members_are_not_a_quorum(data):
    del data["witness"]
    assert "2 etcd members: at least three" in error_of(data)


def test_witness_name_must_not_be_a_region(data):
    data["witness"]["name"] = "a"
    assert "witness name 'a' is also a region name" in error_of(data)


def test_port_clash_with_patroni_or_etcd(data):
    data["regions"][1]["patroni"] = data["regions"][0]["postgres"]
    assert "port clash: b.patroni and a.postgres" in error_of(data)
    data = yaml.safe_load(EMBEDDED_CONFIG.read_text())
    data["witness"]["etcd"]["client"] = data["regions"][0]["etcd"]["peer"]
    assert "port clash" in error_of(data) and "witness.witness.etcd.client" in error_of(data)


def test_malformed_host_port(data):
    data["regions"][0]["etcd"]["client"] = "127.0.0.1"
    assert "etcd.client must be host:port" in error_of(data)


def test_without_patroni_keys_the_file_still_loads(data):
    """Deployments that run their database otherwise (Kubernetes: CloudNativePG) omit them."""
    for r in data["regions"]:
        del r["etcd"], r["patroni"]
    del data["witness"]
    cfg = parse_config(data)
    assert not cfg.ha and cfg.etcd_members() == []
