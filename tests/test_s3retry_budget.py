"""S3 retry budget: under sustained throttling or server errors, one read costs a bounded number of requests.

botocore, s3fs and the job's own `with_retries` each retry; stacked with their defaults, one image read under a
sustained 503 SlowDown made hundreds of requests and waited minutes. These tests read through the job's code path
(`sources.read_bytes`, `storage.storage_path`) from a local HTTP server that speaks just enough S3 (HEAD and GET of
objects, path-style) and answers with S3 error documents for as long as it is told to, counting every request."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline import sources, storage

ERRORS = {
    "SlowDown": (503, "Please reduce your request rate."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
}


class FailingS3(ThreadingHTTPServer):
    """An S3 endpoint on 127.0.0.1 that fails the first `failures` requests (None: all of them) with `error` (an S3
    error code, or 'drop': the connection is closed unanswered; with `methods`, only requests of those methods),
    then serves `objects` ({'bucket/key': bytes}); `requests` lists (method, path) of every request received."""

    daemon_threads = True

    def __init__(self, error: str = "SlowDown", failures: int | None = None, methods: set[str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.error, self.failures, self.methods = error, failures, methods
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def options(self, **extra: Any) -> dict[str, Any]:
        """Storage options that point s3fs here; a fresh access key keeps fsspec from reusing another test's client."""
        return {"key": f"test-{uuid.uuid4().hex[:8]}", "secret": "test-secret",
                "client_kwargs": {"endpoint_url": self.url, "region_name": "us-east-1"}, **extra}

    def next_fails(self, method: str, path: str) -> bool:
        with self.lock:
            self.requests.append((method, path))
            failing = self.failures is None or len(self.requests) <= self.failures
            return failing and (self.methods is None or method in self.methods)

    def sent(self, method: str) -> int:
        """How many requests with `method` arrived."""
        return sum(1 for sent, _ in self.requests if sent == method)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 does; every answer has a Content-Length
    server: FailingS3

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), "x-amz-request-id": "test", **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, code: str, status: int, message: str, head: bool) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>test</RequestId></Error>").encode()
        self._answer(status, b"" if head else body, {"Content-Type": "application/xml"}, head)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0].lstrip("/")
        if self.server.next_fails(self.command, path):
            if self.server.error == "drop":  # a dropped connection: no answer at all
                self.close_connection = True
                return
            status, message = ERRORS[self.server.error]
            self._error(self.server.error, status, message, head)
            return
        data = self.server.objects.get(path)
        if data is None:
            self._error("NoSuchKey", 404, "The specified key does not exist.", head)
            return
        headers = {"ETag": '"0123456789abcdef"', "Last-Modified": formatdate(usegmt=True),
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        status, body = 200, data
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._answer(status, body, headers, head)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(head=True)


@pytest.fixture
def s3_server() -> Iterator[Any]:
    """Start a FailingS3 per call (make(error, failures)); all are shut down after the test."""
    servers: list[FailingS3] = []

    def make(error: str = "SlowDown", failures: int | None = None, methods: set[str] | None = None) -> FailingS3:
        server = FailingS3(error, failures, methods)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_waiting(monkeypatch) -> list[int]:
    """Skip the waits of with_retries (recording which it asked for) and of botocore's own retries."""
    from botocore.retries.standard import ExponentialBackoff

    waits: list[int] = []
    monkeypatch.setattr(storage, "backoff", lambda attempt, *a, **k: waits.append(attempt))
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    return waits


BOTO = 3  # botocore's attempts per S3 request that the job sets (the README states 6 x 3 = 18 requests)


@pytest.mark.parametrize(("error", "answer"), [("SlowDown", "HTTP 503"), ("InternalError", "HTTP 500")])
def test_a_read_under_sustained_errors_sends_a_bounded_number_of_requests(s3_server, no_waiting, error: str,
                                                                          answer: str) -> None:
    """Every request fails: 6 attempts of with_retries, each one request that botocore sends at most 3 times.
    s3fs's own retries (5, nested for ranged reads) and botocore's default 5 attempts made it 30 to 156."""
    server = s3_server(error)
    server.objects["bkt/img.png"] = b"image"
    with pytest.raises(storage.RetriesExhausted) as raised:
        sources.read_bytes("s3://bkt/img.png", server.options())
    assert len(server.requests) == 6 * BOTO
    assert no_waiting == [0, 1, 2, 3, 4]
    # The error says what failed, where, how often, and the storage's last answer (a HEAD's has no code).
    message = str(raised.value)
    assert message.startswith("read s3://bkt/img.png: gave up after 6 attempts") and f"last error {answer}" in message
    assert not storage.is_transient(raised.value)  # a retry loop around the read does not multiply it


def test_a_failing_get_after_a_good_head_is_bounded_and_names_the_s3_code(s3_server, no_waiting) -> None:
    """The worst case before: a GET's SlowDown was retried by botocore (5), s3fs's _call_s3 (5) and with_retries (6)."""
    server = s3_server("SlowDown", methods={"GET"})
    server.objects["bkt/img.png"] = b"image"
    with pytest.raises(storage.RetriesExhausted, match=r"last error SlowDown \(HTTP 503\): .*reduce your request rate"):
        sources.read_bytes("s3://bkt/img.png", server.options())
    assert server.sent("GET") == 6 * BOTO and server.sent("HEAD") == 6


def test_dropped_connections_on_get_are_bounded(s3_server, no_waiting) -> None:
    """aiohttp resends an idempotent request once when a reused connection is closed unanswered, so a dropped GET
    may be sent twice per botocore attempt: still at most 6 x 3 x 2 (before: s3fs's nested loops made it 25 x 5)."""
    server = s3_server("drop", methods={"GET"})
    server.objects["bkt/img.png"] = b"image"
    with pytest.raises(storage.RetriesExhausted, match=r"read s3://bkt/img\.png: gave up after 6 attempts .*Connection"):
        sources.read_bytes("s3://bkt/img.png", server.options())
    assert server.sent("HEAD") == 6 and 6 * BOTO <= server.sent("GET") <= 2 * 6 * BOTO


@pytest.mark.parametrize("attempts", [1, 2])
def test_retries_set_in_the_storage_options_are_honoured(s3_server, no_waiting, attempts: int) -> None:
    server = s3_server("SlowDown")
    options = server.options(config_kwargs={"retries": {"mode": "standard", "total_max_attempts": attempts},
                                             "read_timeout": 7})
    with pytest.raises(storage.RetriesExhausted):
        sources.read_bytes("s3://bkt/img.png", options)
    assert len(server.requests) == 6 * attempts
    fs, _ = storage.storage_path("s3://bkt/img.png", options)
    assert fs.config_kwargs == options["config_kwargs"]  # the user's botocore settings, untouched


def test_other_botocore_settings_are_kept_when_the_job_bounds_retries(s3_server) -> None:
    server = s3_server()
    options = server.options(config_kwargs={"read_timeout": 7})
    fs, _ = storage.storage_path("s3://bkt/img.png", options)
    assert fs.config_kwargs == {"read_timeout": 7, "retries": storage.BOTOCORE_RETRIES}
    assert options["config_kwargs"] == {"read_timeout": 7}  # the caller's options are not changed


@pytest.mark.parametrize(("failures", "waits"), [(2, []), (4, [0])])
def test_a_read_succeeds_after_a_few_failures(s3_server, no_waiting, failures: int, waits: list[int]) -> None:
    """Two failures: botocore's third attempt gets the HEAD through. Four: botocore gives up once, with_retries
    tries again after one wait, and the read completes."""
    server = s3_server("SlowDown", failures)
    server.objects["bkt/img.png"] = data = bytes(range(256)) * 40
    assert sources.read_bytes("s3://bkt/img.png", server.options()) == data
    assert len(server.requests) == failures + 2  # then one HEAD and one GET
    assert no_waiting == waits


def test_nested_retry_loops_do_not_multiply(no_waiting) -> None:
    """An operation retried inside another retried one (a tar pass around its open) makes 6 attempts, not 36."""
    calls: list[int] = []

    def slow_down() -> None:
        calls.append(1)
        raise ConnectionResetError(104, "Connection reset by peer")

    with pytest.raises(storage.RetriesExhausted, match=r"open s3://b/s\.tar: gave up after 6 attempts"):
        storage.with_retries(lambda: storage.with_retries(slow_down, "open s3://b/s.tar"), "read s3://b/s.tar")
    assert len(calls) == 6


def test_a_checkpoint_read_under_sustained_errors_is_bounded_too(s3_server, no_waiting) -> None:
    """The checkpoint is read through the same bounded file system as the images (it went through fsspec.open,
    which let s3fs and botocore retry inside each of with_retries' attempts)."""
    from pipeline import checkpoint

    server = s3_server("SlowDown")
    server.objects["bkt/prior.pt"] = b"weights"
    with pytest.raises(checkpoint.CheckpointError, match=r"^cannot read checkpoint s3://bkt/prior.pt: .*gave up after 6 "):
        checkpoint.read_bytes("s3://bkt/prior.pt", server.options())
    assert len(server.requests) == 6 * BOTO


def test_a_checkpoint_is_read_after_a_few_failures(s3_server, no_waiting) -> None:
    from pipeline import checkpoint

    server = s3_server("InternalError", failures=4)
    server.objects["bkt/prior.pt"] = b"weights"
    assert checkpoint.read_bytes("s3://bkt/prior.pt", server.options()) == b"weights"
