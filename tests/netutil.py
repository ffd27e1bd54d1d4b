"""Loopback ports for tests that need a connection refused.

A port found free and closed again ("bind port 0, read it, close") can be taken before the test connects: by the other
xdist worker, by Ray (which opens many), or as an outgoing connection's own port. The test then reaches someone else's
server (a hang, or another error than the refusal it asserts). A port held bound, not listening, for the whole test
cannot be taken, and a connection to it is refused at once. Servers the tests start bind port 0 themselves and read
back the port they got, so that they have no such gap either."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on `host` where every connection is refused (ConnectionRefusedError), for as long as the block runs.

    Bound without SO_REUSEADDR, so that no other socket can bind it meanwhile, even one that sets SO_REUSEADDR (as
    http.server, werkzeug and Ray's servers do), and the kernel does not pick it as an outgoing connection's port; not
    listening, so that the kernel answers each connection with a reset."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind((host, 0))
        yield held.getsockname()[1]
