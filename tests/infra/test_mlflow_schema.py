"""A new stack's MLflow schema, restored from the cached dump, is the one MLflow's own servers make.

`xregion up` restores the schema into a new stack's empty databases (infra/embedded/mlflow_schema.py)
so that every MLflow server starts at once. If the dump differed from what MLflow makes, servers
would start on a wrong schema, or refuse to. Compared here on the session stack's cluster: a
database MLflow migrates itself, the way a server does on its first start, against one restored
from the cache."""

from __future__ import annotations

import os
import subprocess

import pytest

from xregion.infra.embedded import mlflow_schema, patroni, postgres

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


def _schema(stack, leader, db: str) -> str:
    """The database's schema and the rows the migrations seed, as pg_dump prints them."""
    argv = [str(postgres.PG_BIN / "pg_dump"), "--no-owner", "--no-privileges", "--exclude-table-data=experiments"]
    argv += ["--dbname", postgres.conninfo(stack.cfg, stack.home, leader, role="superuser", dbname=db)]
    env = {**os.environ, **postgres.child_env(stack.home, "superuser")}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=120).stdout
    # comments, and the \\restrict key pg_dump draws at random for each dump, are no part of it
    return "\n".join(line for line in out.splitlines() if not line.startswith(("--", "\\restrict", "\\unrestrict")))


@pytest.fixture
def scratch_databases(stack):
    cfg, home = stack.cfg, stack.home
    leader = cfg.region(patroni.wait_writable_leader(cfg, home))
    names = ["schema_by_mlflow", "auth_by_mlflow", "schema_restored", "auth_restored", "schema_round", "auth_round"]
    with postgres.connection(cfg, home, leader, role="superuser") as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f'drop database if exists "{name}"')
            cur.execute(f'create database "{name}" owner "{postgres.role_names(cfg)["mlflow"]}"')
    yield leader
    with postgres.connection(cfg, home, leader, role="superuser") as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f'drop database if exists "{name}" with (force)')


def test_the_restored_schema_is_the_one_mlflow_makes_on_a_first_start(stack, scratch_databases, tmp_path):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    cfg, home, leader = stack.cfg, stack.home, scratch_databases
    # the session stack, the first of the run, made the dump (or found it from an earlier run)
    cached = mlflow_schema.cache_dir()
    assert sorted(p.name for p in cached.iterdir()) == sorted(f"{db}.dump" for db in mlflow_schema.databases(cfg))

    def uri(db: str) -> str:
        user, password = postgres.role_names(cfg)["superuser"], postgres.load_secrets(home)["superuser"]
        return f"postgresql+psycopg2://{user}:{password}@{leader.pg_host}:{leader.pg_port}/{db}"

    # what an MLflow server does on its first start against empty databases
    SqlAlchemyStore(uri("schema_by_mlflow"), "mlflow-artifacts:/").engine.dispose()
    AuthStore().init_db(uri("auth_by_mlflow"))
    tracking, auth = mlflow_schema.databases(cfg)
    mlflow_schema.restore(cfg, home, leader, "schema_restored", cached / f"{tracking}.dump")
    mlflow_schema.restore(cfg, home, leader, "auth_restored", cached / f"{auth}.dump")

    # Postgres prints a CHECK constraint read back from a dump in another (equivalent) form than
    # the one the migrations wrote: what MLflow made goes through one dump and restore as well
    for made, round_trip in (("schema_by_mlflow", "schema_round"), ("auth_by_mlflow", "auth_round")):
        dump = tmp_path / f"{made}.dump"
        argv = [str(postgres.PG_BIN / "pg_dump"), "--format=custom", "--file", str(dump), "--dbname"]
        argv.append(postgres.conninfo(cfg, home, leader, role="superuser", dbname=made))
        env = {**os.environ, **postgres.child_env(home, "superuser")}
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)
        mlflow_schema.restore(cfg, home, leader, round_trip, dump)

    made, restored = _schema(stack, leader, "schema_round"), _schema(stack, leader, "schema_restored")
    assert "CREATE TABLE public.model_versions" in made and "COPY public.workspaces" in made
    assert made == restored
    assert _schema(stack, leader, "auth_round") == _schema(stack, leader, "auth_restored")
    # and MLflow takes the restored one as current: no migration, and the store answers
    store = SqlAlchemyStore(uri("schema_restored"), "mlflow-artifacts:/")
    assert [e.name for e in store.search_experiments()] == ["Default"]
    store.engine.dispose()


def test_a_restore_that_fails_leaves_the_database_empty(stack, scratch_databases, tmp_path):
    cfg, home, leader = stack.cfg, stack.home, scratch_databases
    tracking, _ = mlflow_schema.databases(cfg)
    whole = (mlflow_schema.cache_dir() / f"{tracking}.dump").read_bytes()
    torn = tmp_path / "torn.dump"
    torn.write_bytes(whole[: len(whole) * 2 // 3])  # a dump cut short, as by a full disk
    with pytest.raises(RuntimeError, match="restoring MLflow's schema into schema_restored failed"):
        mlflow_schema.restore(cfg, home, leader, "schema_restored", torn)
    with postgres.connection(cfg, home, leader, role="superuser", dbname="schema_restored") as conn:
        with conn.cursor() as cur:
            cur.execute("select count(*) from information_schema.tables where table_schema = 'public'")
            assert cur.fetchone()[0] == 0
