"""`tests.netutil.refused_port`: the port the "nothing answers there" tests connect to stays refused while they run."""

from __future__ import annotations

import errno
import http.server
import socket

import pytest

from tests.netutil import refused_port


def test_a_connection_to_a_refused_port_is_refused() -> None:
    with refused_port() as port, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()


def test_no_server_can_take_a_refused_port_while_the_test_holds_it() -> None:
    # a port bound, read and closed again (how these tests found one before) could be bound by the other xdist worker or
    # Ray before the test connected, which then reached their server; http.server binds with SO_REUSEADDR, as Ray does
    with refused_port() as port:
        with pytest.raises(OSError) as taken:
            http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)
        assert taken.value.errno == errno.EADDRINUSE
        with socket.socket() as other, pytest.raises(OSError) as taken:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
