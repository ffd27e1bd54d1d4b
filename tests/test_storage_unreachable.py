"""A store that cannot be reached: how long the job keeps trying, and what it says when it gives up.

An Azure endpoint that did not answer made Azure's SDK retry each request for 84 s by itself, under each of the job's
6 attempts: a run over a mistyped account name took 8.5 min to stop. And every store's last word was "the storage is
throttling or unavailable: try again later", also when its host name did not resolve or its port refused."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from pipeline import storage
from tests.netutil import refused_port

AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class _Busy(http.server.BaseHTTPRequestHandler):
    """Answers every request 503 Server Busy, as a throttled or failing Azure endpoint does; counts them."""

    requests: list[str]
    status = 503

    def _busy(self) -> None:
        self.requests.append(self.path)
        body = b"<?xml version='1.0'?><Error><Code>ServerBusy</Code><Message>busy</Message></Error>"
        self.send_response(self.status)
        self.send_header("x-ms-error-code", "ServerBusy")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _busy

    def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
        pass


@pytest.fixture()
def busy_endpoint() -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    handler = type("Busy", (_Busy,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_azures_sdk_tries_a_request_three_times_in_seconds_under_each_of_the_jobs_attempts(busy_endpoint) -> None:
    """Azure's SDK sent 4 requests with waits of 15 + 3^n s (84 s) before one listing failed; as botocore on S3, it
    now gets 3 tries with short waits, and with_retries' 6 attempts own the rest of the budget."""
    pytest.importorskip("adlfs")
    url, requests = busy_endpoint
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={url}/devstoreaccount1;")
    fs = storage.filesystem("abfs", {"connection_string": conn})
    with pytest.raises(Exception) as raised:
        fs.ls("imgs/in")
    assert len(requests) == 3, requests
    assert storage.is_transient(raised.value)  # so the job's own attempts still come on top


def _given_up(monkeypatch, endpoint: str) -> str:
    """The job's last word on listing s3://bucket/in/ at `endpoint`, one attempt, no botocore retries."""
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    fs = storage.filesystem("s3", {"anon": True, "client_kwargs": {"endpoint_url": endpoint},
                                   "config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}})
    with pytest.raises(storage.RetriesExhausted) as raised:
        storage.with_retries(lambda: fs.ls("bucket/in"), "look up s3://bucket/in/", attempts=2)
    return str(raised.value)


def test_a_host_name_that_does_not_resolve_is_said_to_be_one_to_check(monkeypatch) -> None:
    said = _given_up(monkeypatch, "http://no-such-host.invalid:9000")  # .invalid never resolves (RFC 2606)
    assert said.startswith("look up s3://bucket/in/: gave up after 2 attempts")
    assert " s (the host name does not resolve: check the host, endpoint or account name, and DNS); last error" in said, said


def test_a_port_that_refuses_is_said_to_be_one_to_check(monkeypatch) -> None:
    with refused_port() as port:
        said = _given_up(monkeypatch, f"http://127.0.0.1:{port}")
    assert "(nothing accepts connections there: check the host and port); last error" in said, said


def test_a_store_that_keeps_answering_busy_is_still_said_to_be_throttling(monkeypatch, busy_endpoint) -> None:
    url, requests = busy_endpoint
    said = _given_up(monkeypatch, url)
    assert "(the storage is throttling or unavailable: try again later); last error ServerBusy (HTTP 503)" in said, said
    assert len(requests) == 2


@pytest.mark.parametrize("uri", ["{url}/in/", "{url}/in/a.png", "https://no-such-host.invalid/in/",
                                 "http://127.0.0.1:{closed}/in/"])
def test_a_web_input_that_cannot_be_reached_is_not_said_to_be_missing(monkeypatch, busy_endpoint, uri: str) -> None:
    """fsspec's HTTP file system raises FileNotFoundError for any failure of info(), the real one as its cause: a web
    server answering 503, a host that does not resolve and a refused port all made the job say "input ... does not
    exist" at once. Now they are retried, then said as what they are."""
    from pipeline.sources.listing import input_location

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    url, requests = busy_endpoint
    with refused_port() as closed, pytest.raises(storage.RetriesExhausted, match=r"gave up after 6 attempts"):
        uri = uri.format(url=url, closed=closed)
        input_location(uri, {})
    assert len(requests) == (12 if uri.startswith(url) else 0)  # a HEAD and a GET each attempt


def test_a_web_file_the_server_says_is_not_there_is_still_missing(monkeypatch) -> None:
    from pipeline.sources.listing import input_location

    handler = type("Gone", (_Busy,), {"requests": [], "status": 404})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert input_location(f"http://127.0.0.1:{server.server_address[1]}/in/a.png", {}) is None
        assert len(handler.requests) == 2  # asked once (HEAD, then GET), not retried
    finally:
        server.shutdown()
        server.server_close()


def test_gcsfs_retry_tracebacks_stay_off_stderr_unless_the_program_configures_logging() -> None:
    """gcsfs logs a whole traceback each time its own retries of a request run out; with no logging configured (the
    command line), Python's last-resort handler printed 12 of them on stderr before the job's one-line error."""
    import subprocess
    import sys
    from pathlib import Path

    program = """
import logging, sys, fsspec
from pipeline import storage
fsspec.filesystem = lambda protocol, **options: object()  # gcsfs itself need not be installed
storage.filesystem("gs", {})
if sys.argv[1] == "configured":
    logging.basicConfig(stream=sys.stdout)
try:
    raise OSError("503")
except OSError:
    logging.getLogger("gcsfs").exception("_request out of retries on exception: , 503")
"""
    root = str(Path(__file__).resolve().parents[1])
    for how, stdout in (("bare", ""), ("configured", "ERROR:gcsfs:_request out of retries")):
        done = subprocess.run([sys.executable, "-c", program, how], capture_output=True, text=True, cwd=root,
                              env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"}, timeout=120)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.startswith(stdout)


def test_a_missing_azure_container_is_called_a_container(monkeypatch) -> None:
    """Against Azurite, `--output abfs://nosuchcontainer/out/` said "the bucket of output ...": Azure's word is container."""
    from pipeline import output
    from pipeline.errors import JobError

    class Store:
        def __init__(self, protocol: tuple[str, ...]) -> None:
            self.protocol = protocol

        def exists(self, path: str) -> bool:
            return False

    for protocol, word in ((("abfs", "az", "abfss"), "container"), (("s3", "s3a"), "bucket")):
        monkeypatch.setattr(output, "_fs", lambda out, options, p=protocol: (Store(p), "nosuch/out"))
        with pytest.raises(JobError, match=rf"^the {word} of output {protocol[0]}://nosuch/out \(nosuch\) does not exist"):
            output.check_output_location(f"{protocol[0]}://nosuch/out", {})
