"""A local S3 for tests: moto's threaded server on a free port, with the buckets a test needs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3(*buckets: str, key: str = "testing-key",
            secret: str = "testing-secret-value") -> Iterator[tuple[Any, dict[str, Any]]]:
    """(a boto3 client, the job's storage options) for a moto S3 server holding `buckets`, stopped on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {"key": key, "secret": secret,
                   "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}
        client = boto3.client("s3", aws_access_key_id=key, aws_secret_access_key=secret, **options["client_kwargs"])
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield client, options
    finally:
        server.stop()
