"""The regions file: one validated object, errors a person can act on."""

import pytest
import yaml

from xregion.config import EMBEDDED_CONFIG, ConfigError, load_config, parse_config


@pytest.fixture
def data():
    return yaml.safe_load(EMBEDDED_CONFIG.read_text())


def error_of(data) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "test.yaml")
    return str(exc.value)


def test_embedded_file_is_valid_and_complete():
    cfg = load_config(EMBEDDED_CONFIG)
    assert [r.name for r in cfg.regions] == ["a", "b"]
    assert cfg.primary.name == "a" and [r.name for r in cfg.standbys] == ["b"]
    uri = cfg.database_uri()
    assert uri.startswith("postgresql+psycopg2://")
    assert "host=127.0.0.1:5441&host=127.0.0.1:5442" in uri and "target_session_attrs=read-write" in uri


def test_unknown_key_is_named(data):
    data["regions"][0]["s3"]["endpoint"] = "http://x:1"
    msg = error_of(data)
    assert "regions.0.s3.endpoint" in msg and "unknown key" in msg


def test_unknown_top_level_key(data):
    data["replicaton"] = {}
    assert "replicaton: unknown key" in error_of(data)


def test_duplicate_region_names(data):
    data["regions"][1]["name"] = "a"
    assert "duplicate region name(s): a" in error_of(data)


def test_no_primary(data):
    data["regions"][0]["role"] = "standby"
    assert "exactly one region must have role: primary, found 0" in error_of(data)


def test_two_primaries(data):
    data["regions"][1]["role"] = "primary"
    assert "found 2 (a, b)" in error_of(data)


@pytest.mark.parametrize(
    "field,value",
    [("mlflow_url", "127.0.0.1:5101"), ("serving_url", "ftp://h:1"), ("mlflow_url", "http://127.0.0.1:99999")],
)
def test_malformed_urls(data, field, value):
    data["regions"][0][field] = value
    msg = error_of(data)
    assert f"regions.0.{field}" in msg and value in msg


def test_malformed_s3_endpoint(data):
    data["regions"][1]["s3"]["endpoint_url"] = "not a url"
    assert "regions.1.s3.endpoint_url" in error_of(data)


def test_malformed_postgres_node(data):
    data["regions"][0]["postgres"] = "localhost"
    assert "postgres must be host:port" in error_of(data)


def test_port_clash_across_regions(data):
    data["regions"][1]["mlflow_url"] = data["regions"][0]["mlflow_url"]
    assert "port clash: b.mlflow and a.mlflow both use 127.0.0.1:5101" in error_of(data)


def test_port_clash_between_components(data):
    data["regions"][0]["postgres"] = "127.0.0.1:9102"
    assert "port clash" in error_of(data) and "9102" in error_of(data)


def test_shared_bucket_rejected(data):
    for r in data["regions"]:
        r["s3"]["endpoint_url"] = "https://s3.example.com"
        r["s3"]["bucket"] = "shared"
    assert "each region needs its own store" in error_of(data)


def test_missing_required_key(data):
    del data["regions"][0]["s3"]["bucket"]
    assert "regions.0.s3.bucket: required key is missing" in error_of(data)


def test_not_a_mapping():
    assert "expected a mapping" in error_of(["a"])


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read regions file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_credentials_come_from_named_env_vars(data, monkeypatch):
    cfg = parse_config(data)
    monkeypatch.delenv("XREGION_A_ACCESS_KEY", raising=False)
    with pytest.raises(ConfigError, match="XREGION_A_ACCESS_KEY"):
        cfg.region("a").s3.credentials("a")
    monkeypatch.setenv("XREGION_A_ACCESS_KEY", "k")
    monkeypatch.setenv("XREGION_A_SECRET_KEY", "s")
    assert cfg.region("a").s3.credentials("a") == ("k", "s")


def test_xregion_config_env_var_selects_file(tmp_path, monkeypatch, data):
    data["regions"][0]["name"] = "east"
    data["env_file"] = str(EMBEDDED_CONFIG.parent / "embedded.env")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("XREGION_CONFIG", str(path))
    assert load_config().primary.name == "east"


def test_read_order_prefers_local_region(data, monkeypatch):
    monkeypatch.setenv("XREGION_LOCAL_REGION", "b")
    assert [r.name for r in parse_config(data).read_order()] == ["b", "a"]


def test_a_scratch_stack_has_one_ledger_whoever_reads_its_regions_file(tmp_path, monkeypatch):
    """A process that has only XREGION_CONFIG (a test, a tool) shares the ledger of the stack's
    servers (which have XREGION_HOME): not the user's global one, where other stacks' keys live."""
    from xregion.home import ledger_path
    from xregion.infra.embedded.scratch import scratch_config

    path = scratch_config(tmp_path)
    for var in ("XREGION_HOME", "XREGION_LEDGER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert ledger_path(load_config(path)) == (tmp_path / "outbox.sqlite").resolve()
    monkeypatch.setenv("XREGION_HOME", str(tmp_path))
    assert ledger_path(load_config(path)) == ledger_path(None)
