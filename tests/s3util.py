"""A local S3 for tests: moto's threaded server on a free port, with the buckets a test needs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto_server(port: int) -> Any:
    """Start moto's threaded server on `port` holding no bucket.

    moto keeps its buckets in module-level state of the test process, not in the server, so a server started after
    another test's would otherwise still hold that test's buckets and objects (the same bucket name in two tests
    then shares one output)."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"),
                           timeout=30).close()
    return server


@contextmanager
def moto_s3(*buckets: str, key: str = "testing-key",
            secret: str = "testing-secret-value") -> Iterator[tuple[Any, dict[str, Any]]]:
    """(a boto3 client, the job's storage options) for a moto S3 server holding `buckets`, stopped on exit."""
    import boto3

    port = free_port()
    server = start_moto_server(port)
    try:
        options = {"key": key, "secret": secret,
                   "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}
        client = boto3.client("s3", aws_access_key_id=key, aws_secret_access_key=secret, **options["client_kwargs"])
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield client, options
    finally:
        server.stop()


def without_aws_credentials(monkeypatch, tmp_path: Path) -> None:
    """No AWS credentials anywhere botocore looks: environment, shared files (pointed at files that do not exist),
    container and web-identity variables, and the EC2 instance role."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask
