"""Ports handed to servers: never one a client connection can hold, never one handed out twice."""

from __future__ import annotations

import multiprocessing
import socket

from xregion.net import bindable, ephemeral_range, free_ports


def test_a_port_a_client_holds_blocks_servers_so_servers_get_ports_outside_the_clients_range():
    low, high = ephemeral_range()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        clients = [socket.create_connection(server.getsockname()) for _ in range(50)]
        try:
            held = [c.getsockname()[1] for c in clients]
            # why: a port an open client connection was given cannot be bound by a server, even
            # with SO_REUSEADDR (nor for TIME_WAIT's 60 s after the client closes it)
            assert not any(bindable("127.0.0.1", p) for p in held)
            assert all(low <= p <= high for p in held)
        finally:
            for c in clients:
                c.close()
    ports = free_ports(200)
    assert len(set(ports)) == 200
    assert not [p for p in ports if low <= p <= high], "a server port from the clients' range"
    assert all(bindable("127.0.0.1", p) for p in ports)


def _choose(args) -> list[int]:
    state, n = args
    import os

    os.environ["XDG_STATE_HOME"] = state  # a pool process of its own: the leases under tmp_path
    return free_ports(n)


def test_processes_choosing_ports_at_once_are_never_given_the_same_port(tmp_path, monkeypatch):
    given: list[int] = []
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        for _ in range(3):
            given += [p for ports in pool.map(_choose, [(str(tmp_path), 40)] * 8) for p in ports]
    assert len(given) == len(set(given)), sorted({p for p in given if given.count(p) > 1})
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # a later caller is not given a leased port
    assert not set(free_ports(40)) & set(given)
