"""`xregion up` waits for a leader that accepts writes, not merely one that holds Patroni's lock.

CI saw `xregion up` after `down` fail with "cannot execute ALTER ROLE in a read-only transaction":
a node restarting with its data comes up as a replica, takes the lock, then promotes, and /cluster
calls it leader before its Postgres leaves recovery. Here the session stack's replica (a real
Postgres in recovery) stands in for that node: Patroni's view is made to name it leader first."""

from __future__ import annotations

import psycopg2
import pytest

from xregion.infra.embedded import patroni, postgres

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


def test_a_leader_still_in_recovery_is_waited_for_not_written_to(stack, monkeypatch):
    cfg, home = stack.cfg, stack.home
    leader = patroni.wait_leader(cfg)
    replica = next(r.name for r in cfg.regions if r.name != leader)

    # the mechanism, on real nodes: role bootstrap on a node in recovery fails as CI's `up` did
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        postgres.bootstrap_roles(cfg, home, cfg.region(replica))

    named = []
    answers = iter([replica, replica, replica])

    def view_naming_the_promoting_node(cfg_, timeout=120.0, running=True):
        name = next(answers, leader)
        named.append(name)
        return name

    monkeypatch.setattr(patroni, "wait_leader", view_naming_the_promoting_node)
    assert patroni.wait_writable_leader(cfg, home, timeout=60) == leader
    assert named == [replica, replica, replica, leader]
    postgres.bootstrap_roles(cfg, home, cfg.region(leader))  # idempotent, and writable there


def test_no_writable_leader_is_a_clear_error_naming_the_node(stack, monkeypatch):
    cfg, home = stack.cfg, stack.home
    replica = next(r.name for r in cfg.regions if r.name != patroni.wait_leader(cfg))
    monkeypatch.setattr(patroni, "wait_leader", lambda cfg_, timeout=120.0, running=True: replica)
    with pytest.raises(patroni.PatroniError, match=f"{replica} holds the lock, its Postgres is still in recovery"):
        patroni.wait_writable_leader(cfg, home, timeout=2)
