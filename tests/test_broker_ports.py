"""The local broker's port check: only a listener makes a port taken.

A broker stopped a moment before leaves its connections in TIME_WAIT; Kafka (Java binds with
SO_REUSEADDR) starts on such a port, so refusing it would fail a restart for nothing.
"""

from __future__ import annotations

import socket

from pipeline.broker.local import _port_in_use


def _listener() -> tuple[socket.socket, int]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    return srv, srv.getsockname()[1]


def test_a_listening_port_is_in_use() -> None:
    srv, port = _listener()
    with srv:
        assert _port_in_use(port)


def test_a_port_left_in_time_wait_is_free() -> None:
    srv, port = _listener()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = srv.accept()
    accepted.close()  # the listening side closes first, so the TIME_WAIT is on this port
    client.close()
    srv.close()
    assert not _port_in_use(port)
