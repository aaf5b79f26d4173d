"""Own stacks for the destructive DR tests (never the shared session stack)."""

from __future__ import annotations

import pytest

from tests.stacks import acting_as, start_stack, stop_stack


@pytest.fixture(scope="module")
def sync_stack():
    st = start_stack("xregion-dr-sync-", postgres={"replication": "sync"})
    with acting_as(st):
        yield st
    stop_stack(st)
