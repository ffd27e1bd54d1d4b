"""Flaky and broken object storage, hostile checkpoints, secrets kept out of everything written."""

from __future__ import annotations

import http.client
import io
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.model import UNetConfig, build_unet
from tests.jobutil import image_bytes, tar_bytes
from tests.reliability.scenario import check

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-VALUE-never-logged"


class FlakyProxy:
    """An HTTP proxy in front of the moto server that fails some requests: every `every`-th request
    gets 503 SlowDown and every (every+1)-th has its connection dropped, for the first `budget` requests.
    Requests signed with access key `deny_key` get 403 InvalidAccessKeyId, as S3 answers a revoked key
    (moto itself does not check credentials)."""

    def __init__(self, upstream_port: int, every: int = 4, budget: int = 400, deny_key: str | None = None):
        self.count = self.failed = self.denied = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send_error(self, status: int, code: str, message: str) -> None:
                payload = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
                self.send_response(status)
                # A HEAD response has no body but announces the size the body would have had.
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.count += 1
                    n = proxy.count
                if deny_key and f"Credential={deny_key}/" in self.headers.get("Authorization", ""):
                    proxy.denied += 1
                    self._send_error(403, "InvalidAccessKeyId", "No such key.")
                    return
                if n <= budget and n % every == 0:
                    proxy.failed += 1
                    self._send_error(503, "SlowDown", "Please reduce your request rate.")
                    return
                if n <= budget and n % (every + 1) == 0:
                    proxy.failed += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD response has no body but announces the object's size.
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # its own port: none found free, then taken
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def moto():
    from tests.s3util import start_moto_server

    server, port = start_moto_server()
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="AKIDTEST",
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    client.create_bucket(Bucket="rel-in")
    client.create_bucket(Bucket="rel-out")
    yield port, client
    server.stop()


def _options(port: int) -> dict:
    return {"key": "AKIDTEST", "secret": SECRET, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}


@pytest.mark.usefixtures("ray_local")
def test_transient_s3_errors_are_retried(moto, tiny_model) -> None:
    port, client = moto
    ids = set()
    for i in range(20):
        client.put_object(Bucket="rel-in", Key=f"flaky/{i:03d}.png", Body=image_bytes(32, 32, i))
        ids.add(f"{i:03d}.png")
    client.put_object(Bucket="rel-in", Key="flaky-model/tiny.pt", Body=Path(tiny_model).read_bytes())
    proxy = FlakyProxy(port)
    try:
        opts = _options(proxy.port)
        summary = run_job(JobConfig(input="s3://rel-in/flaky", output="s3://rel-out/flaky", steps=2, progress=False,
                                    checkpoint="s3://rel-in/flaky-model/tiny.pt", storage_options=opts,
                                    files_per_unit=4, write_batch=4))
    finally:
        proxy.stop()
    assert proxy.failed > 10, "the proxy injected too few faults to prove anything"
    print(f"flaky storage: {proxy.failed} of {proxy.count} requests failed and were retried")
    check("flaky S3 (503 + dropped conns)", "s3://rel-out/flaky", ids, _options(port))
    assert summary["this_run"]["rejected"] == 0


@pytest.mark.usefixtures("ray_local")
def test_permanent_storage_errors_stop_early(moto, tiny_model, tmp_path) -> None:
    port, client = moto
    opts = _options(port)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(32, 32, 0))
    with pytest.raises(JobError, match="(not found|does not exist)"):
        run_job(JobConfig(input="s3://no-such-bucket/x", output=str(tmp_path / "o1"), checkpoint=tiny_model,
                          progress=False, storage_options=opts))
    with pytest.raises(JobError, match="output s3://missing-out-bucket/run"):
        run_job(JobConfig(input=str(tmp_path / "in"), output="s3://missing-out-bucket/run", checkpoint=tiny_model,
                          progress=False, storage_options=opts))
    client.put_object(Bucket="rel-in", Key="x/a.png", Body=image_bytes(32, 32, 0))
    proxy = FlakyProxy(port, budget=0, deny_key="AKIDREVOKED")
    try:
        bad = {**_options(proxy.port), "key": "AKIDREVOKED", "secret": "wrong-secret"}
        with pytest.raises(JobError, match="s3://rel-in/x") as err:
            run_job(JobConfig(input="s3://rel-in/x", output=str(tmp_path / "o2"), checkpoint=tiny_model, progress=False,
                              storage_options=bad))
    finally:
        proxy.stop()
    assert proxy.denied >= 1, "the request never reached the denying proxy"
    assert proxy.denied < 10, f"a permanent 403 was retried {proxy.denied} times"
    assert "not found" not in str(err.value), "a credentials error was reported as a missing input"
    assert "wrong-secret" not in str(err.value) and SECRET not in str(err.value)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs/purify.py"), "--no-progress", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_hostile_and_wrong_checkpoints_refused_before_reading_data(tmp_path, tiny_model, capsys) -> None:
    """Refused while the run is planned, before Ray starts: the job's command line in this process (a process of its own
    for each checkpoint cost seconds of imports and checked nothing more; the marker tells code run here too)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(32, 32, 0))
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "hostile.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1), "x": RunsCode()}, buf)
    hostile.write_bytes(buf.getvalue())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(tiny_model).read_bytes()[:5000])
    other_arch = tmp_path / "other.pt"
    torch.save(build_unet(UNetConfig(image_size=32, num_channels=32, channel_mult="1,2,2")).state_dict(), other_arch)
    cases = {
        "hostile pickle": (["--checkpoint", str(hostile)], "refused"),
        "truncated": (["--checkpoint", str(truncated)], "truncated or corrupt"),
        "other architecture": (["--checkpoint", str(other_arch), "--preset", "cifar10_prior_small"], "mismatch"),
        "sha256 pin mismatch": (["--checkpoint", tiny_model, "--checkpoint-sha256", "0" * 64], "pinned; refusing"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        code = cli.main(["--no-progress", "--input", str(tmp_path / "in"), "--output", str(out), *args])
        said = capsys.readouterr()
        assert code == 2, (name, said.out[-2000:], said.err[-2000:])
        assert message in said.err, (name, said.err)
        assert not (out / "data").exists() and not (out / "_summary.json").exists(), name
    assert not marker.exists(), "the hostile checkpoint ran code"


def test_secrets_never_written_or_logged(moto, tmp_path, tiny_model, joined_ray_env) -> None:
    """The job's command line in a process of its own, all it prints and writes searched for the secret: joined to the
    session's Ray (`joined_ray_env`), as a job submitted to a cluster is, which prints Ray Data's log lines and its
    workers' as well (a Ray of its own cost the run ~15 s of CPU more and printed less)."""
    port, client = moto
    client.put_object(Bucket="rel-in", Key="sec/a.png", Body=image_bytes(32, 32, 0))
    client.put_object(Bucket="rel-in", Key="sec/bad.png", Body=b"nope")
    client.put_object(Bucket="rel-in", Key="sec/s.tar", Body=tar_bytes({"x.png": b"broken"}))
    proc = _cli(["--input", "s3://rel-in/sec", "--output", "s3://rel-out/sec", "--checkpoint", tiny_model, "--steps", "2",
                 "--s3-endpoint", f"http://127.0.0.1:{port}", "--storage-option", "key=AKIDTEST",
                 "--storage-option", f"secret={SECRET}"], joined_ray_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    everything = proc.stdout + proc.stderr
    for key in client.list_objects_v2(Bucket="rel-out", Prefix="sec/")["Contents"]:
        everything += client.get_object(Bucket="rel-out", Key=key["Key"])["Body"].read().decode("latin-1")
    assert SECRET not in everything
    assert "***" in client.get_object(Bucket="rel-out", Key="sec/_summary.json")["Body"].read().decode()

