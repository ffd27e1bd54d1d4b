"""A local S3 for tests: moto's threaded server on a port of its own, with the buckets a test needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def start_moto_server() -> tuple[Any, int]:
    """Start moto's threaded server holding no bucket: (the server, its port).

    It binds port 0 and the port it got is read back: a port found free and closed before the server bound it could be
    taken meanwhile (by the other xdist worker, or Ray), and werkzeug's bind then fails in moto's thread, where
    `start()` waits for ever for a server that never started.

    moto keeps its buckets in module-level state of the test process, not in the server, so a server started after
    another test's would otherwise still hold that test's buckets and objects (the same bucket name in two tests
    then shares one output)."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"),
                           timeout=30).close()
    return server, port


@contextmanager
def moto_s3(*buckets: str, key: str = "testing-key",
            secret: str = "testing-secret-value") -> Iterator[tuple[Any, dict[str, Any]]]:
    """(a boto3 client, the job's storage options) for a moto S3 server holding `buckets`, stopped on exit."""
    with _moto_s3(*buckets, key=key, secret=secret) as (client, options, _):
        yield client, options


@contextmanager
def _moto_s3(*buckets: str, key: str = "testing-key",
             secret: str = "testing-secret-value") -> Iterator[tuple[Any, dict[str, Any], Any]]:
    import boto3

    server, port = start_moto_server()
    try:
        options = {"key": key, "secret": secret,
                   "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}
        client = boto3.client("s3", aws_access_key_id=key, aws_secret_access_key=secret, **options["client_kwargs"])
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield client, options, server
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


ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message>'
                 b'</Error>')


class GetWithoutList:
    """moto's server as S3 answers credentials granted s3:GetObject and s3:PutObject on `buckets` but not s3:ListBucket:
    a listing, a look at the bucket, and a HEAD or GET of a key that is not there are refused with 403 (S3 will not say
    whether a key exists to one who may not list); a key in `refused` (bucket, key), of any bucket, is refused though
    it is there.

    Wraps the server's WSGI application, so every client of the server gets these answers, a Ray worker's too (a
    monkeypatched s3fs would reach only the test's own process)."""

    def __init__(self, app: Any, buckets: set[str]) -> None:
        self.app, self.buckets, self.refused = app, buckets, set()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ["REQUEST_METHOD"]
        bucket, _, key = environ.get("PATH_INFO", "").lstrip("/").partition("/")
        if method in ("GET", "HEAD") and ((bucket, key) in self.refused or bucket in self.buckets and (
                not key or not self._there(environ))):
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [] if method == "HEAD" else [ACCESS_DENIED]
        return self.app(environ, start_response)

    def _there(self, environ: dict[str, Any]) -> bool:
        status: list[str] = []
        body = self.app({**environ, "REQUEST_METHOD": "HEAD"},
                        lambda s, headers, exc_info=None: status.append(s))
        for _ in body:  # drained: the answer is in the status
            pass
        return status[0].startswith("2")  # 200, or 206 to a GET of a range


@contextmanager
def moto_s3_without_list(*buckets: str, unlisted: tuple[str, ...]) -> Iterator[tuple[Any, dict[str, Any], GetWithoutList]]:
    """As `moto_s3`, the job's credentials allowed to read and write keys of the `unlisted` buckets but not to list them
    (`GetWithoutList`; the boto3 client given is answered so too). Its `refused` set takes keys to refuse though there."""
    with _moto_s3(*buckets) as (client, options, server):
        gate = GetWithoutList(server._server.app, set(unlisted))
        server._server.app = gate
        yield client, options, gate


class RequestLog:
    """Wraps moto's server's WSGI application: each request it answers, as (method, path, query string), in `requests`
    (what a test counts, as S3 bills them: a DELETE each)."""

    def __init__(self, app: Any) -> None:
        self.app, self.requests = app, []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
        return self.app(environ, start_response)


@contextmanager
def moto_s3_logged(*buckets: str) -> Iterator[tuple[Any, dict[str, Any], RequestLog]]:
    """As `moto_s3`, with the server's requests logged (`RequestLog`; the boto3 client's too)."""
    with _moto_s3(*buckets) as (client, options, server):
        log = RequestLog(server._server.app)
        server._server.app = log
        yield client, options, log
