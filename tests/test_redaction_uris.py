"""pipeline/redaction.py: a URI's credentials are never written down or printed, whatever characters a password holds
and however the URI is chained (fsspec's 'simplecache::s3://...'). When it is unsure where a password ends, it hides
more, never less."""

from __future__ import annotations

import pytest

from pipeline.redaction import redact_uri, redact_uri_secrets
from tests.netutil import refused_port


@pytest.mark.parametrize("uri, shown, secrets", [
    # a password holding characters a URL parser cuts at: '/' (the path), '#' (the fragment), '?' (the query)
    ("ftp://user:pa/ss@host/path", "ftp://user:***@host/path", ["pa/ss", "ss@"]),
    ("s3://key:se#cret@bucket/x.png", "s3://key:***@bucket/x.png", ["se#cret", "cret@"]),
    ("s3://key:se?cret@bucket/x.png", "s3://key:***@bucket/x.png", ["se?cret", "cret@"]),
    ("ftp://alice:long/secret#pass?word@host/p", "ftp://alice:***@host/p", ["long/", "secret", "pass", "word"]),
    ("ftp://u:p@ss/x@h/y", "ftp://u:***@h/y", ["p@ss", "ss/x"]),
    ("ftp://u:pa::ss@h/x", "ftp://u:***@h/x", ["pa::ss"]),  # '::' not followed by a scheme: no chain
    # fsspec URL chains: each link's credentials
    ("simplecache::s3://user:pw@bucket/x", "simplecache::s3://user:***@bucket/x", ["user:pw"]),
    ("filecache::ftp://u:p@h/x", "filecache::ftp://u:***@h/x", ["u:p@"]),
    ("zip://a.png::ftp://u:pa/ss@h/x.zip", "zip://a.png::ftp://u:***@h/x.zip", ["pa/ss"]),
    ("simplecache::s3://b/x?token=LONG-TOKEN-VALUE", "simplecache::s3://b/x?token=***", ["LONG-TOKEN-VALUE"]),
    ("blockcache::https://h/m.pt?X-Amz-Signature=abc123", "blockcache::https://h/m.pt?X-Amz-Signature=***",
     ["abc123"]),
])
def test_a_password_with_url_characters_or_in_a_chain_is_hidden(uri: str, shown: str, secrets: list[str]) -> None:
    assert redact_uri(uri) == shown
    for secret in secrets:
        assert secret not in redact_uri(uri)


@pytest.mark.parametrize("uri", [
    "s3://bucket/me@home/x.png",  # an '@' in a path, no password before it
    "simplecache::s3://bucket/x.png", "zip://a.png::s3://b/a.zip", "hdfs://nn:8020/data/x.png",
    "S3://bucket/m.pt?versionId=3#part", "ftp://host/a::b.png",
])
def test_a_uri_without_credentials_is_kept_as_typed(uri: str) -> None:
    assert redact_uri(uri) == uri
    assert redact_uri_secrets(f"cannot read {uri}", uri) == f"cannot read {uri}"


def test_unsure_where_a_password_ends_more_is_hidden() -> None:
    # 'ftp://u:pw@h/me@x.png' may be the password 'pw@h/me' for the host 'x.png': the whole of it goes
    assert "pw" not in redact_uri("ftp://u:pw@h/me@x.png")
    assert redact_uri("ftp://u:pw@h/me@x.png").startswith("ftp://u:***@")


@pytest.mark.parametrize("uri, message", [
    # how a parser reads a password holding '/': host 'user', port 'pa', path '/ss@host/path'
    ("ftp://user:pa/ss@host/path", "cannot stat user:pa/ss@host/path (path /ss@host/path)"),
    ("s3://key:se#cret@bucket/x", "no bucket key; stat key:se#cret@bucket/x; fragment cret@bucket/x"),
    # a short password quoted as a path, not as the URI given
    ("ftp://user:pw@host/out/", "exported 3 images to ftp://user:pw@host/out; read user:pw@host/out/manifest.csv"),
    ("simplecache::ftp://u:p4ss@h/x", "FileNotFoundError: ftp://u:p4ss@h/x, as u:p4ss@h/x"),
    ("ftp://alice:a-longer/pass-word@host/p", "login alice with a-longer failed: /pass-word@host/p"),
    ("ftp://alice:p%2Fssw%40rd-long@host/p", "login alice:p/ssw@rd-long failed"),  # quoted decoded
])
def test_an_error_quoting_the_uri_otherwise_keeps_no_password(uri: str, message: str) -> None:
    shown = redact_uri_secrets(message, uri)
    for secret in ("pa/ss", "ss@host", "se#cret", "cret@", "user:pw", "pw@", "p4ss", "a-longer", "pass-word",
                   "p/ssw@rd-long", "p%2Fssw"):
        assert secret not in shown, shown
    assert "***" in shown


@pytest.mark.parametrize("uri", [
    # host:port, then an '@' in the path or query: a URL parser (and the client) reads a port, not a password
    "https://h:8443/a@b", "http://minio:9000/bucket/@scope/pkg.tar", "hdfs://nn:8020/user/me@example.com/x.png",
    "https://[::1]:8443/a@b", "webhdfs://nn.example.com:9870/a@b/c.png", "ftp://files.example.org:2121/me@x.png",
    "simplecache::https://h:8443/a@b", "zip://a.png::https://h:8080/me@x.zip",
])
def test_a_port_before_an_at_sign_in_the_path_is_kept_as_typed(uri: str) -> None:
    _kept_as_typed(uri)


def _kept_as_typed(uri: str) -> None:
    assert redact_uri(uri) == uri
    assert redact_uri_secrets(f"cannot read {uri}", uri) == f"cannot read {uri}"


@pytest.mark.parametrize("uri, shown, secrets", [
    # a password with a port after it: only the password goes, the port and the path with its '@' stay
    ("https://u:pw-longer@h:8443/me@x.png", "https://u:***@h:8443/me@x.png", ["pw-longer"]),
    ("simplecache::ftp://u:p@ss@h:21/a@b", "simplecache::ftp://u:***@h:21/a@b", ["p@ss"]),
    # what only looks like a port: the whole of what may be a password goes
    ("s3://key:1234/secret@bucket/x.png", "s3://key:***@bucket/x.png", ["1234/secret"]),  # no port in a bucket
    ("gs://key:1234/secret@bucket/x.png", "gs://key:***@bucket/x.png", ["1234/secret"]),
    ("simplecache::s3://key:80/secret@bucket/x", "simplecache::s3://key:***@bucket/x", ["80/secret"]),
    ("ftp://user:0123/secret@h/p", "ftp://user:***@h/p", ["0123/secret"]),  # a leading zero
    ("ftp://user:99999/secret@h/p", "ftp://user:***@h/p", ["99999/secret"]),  # over 65535
    ("ftp://my_user:1234/secret@h/p", "ftp://my_user:***@h/p", ["1234/secret"]),  # '_': no host name
    ("https://user:1234/secret@host:8080/p", "https://user:***@host:8080/p", ["1234/secret"]),  # a port after '@'
])
def test_a_port_is_told_from_a_password_holding_a_slash(uri: str, shown: str, secrets: list[str]) -> None:
    assert redact_uri(uri) == shown
    for secret in secrets:
        assert secret not in redact_uri(uri)
        assert secret not in redact_uri_secrets(f"cannot open {uri}", uri)


@pytest.mark.parametrize("uri", [
    # a member of an archive whose name holds '@' (or ':'): a name inside the archive, no user or password
    "zip://me@x.png::s3://bucket/a.zip", "tar://scans/a@2x.png::s3://bucket/a.tar", "ZIP://u:v@w.png::file:///d/a.zip",
    "zip://me@x.png::simplecache::s3://bucket/a.zip", "zip://me@x.png::/data/a.zip",
])
def test_an_archive_member_name_with_an_at_sign_is_kept(uri: str) -> None:
    _kept_as_typed(uri)


@pytest.mark.parametrize("uri, shown, secrets", [
    # the archive's own link still has its password hidden, whatever the member's name holds
    ("zip://me@x.png::s3://key:se/cret-long@bucket/a.zip", "zip://me@x.png::s3://key:***@bucket/a.zip", ["se/cret-long"]),
    ("tar://a@b.png::ftp://u:pw-longer@h/a.tar", "tar://a@b.png::ftp://u:***@h/a.tar", ["pw-longer"]),
    # a zip link with no archive after it is no member's name: read as any other link, its password hidden
    ("zip://user:pw-longer@host/a.png", "zip://user:***@host/a.png", ["pw-longer"]),
    ("zip://user:pw-longer@host/a.png::", "zip://user:***@host/a.png::", ["pw-longer"]),
])
def test_an_archive_links_password_is_hidden_beside_a_member_with_an_at_sign(uri: str, shown: str,
                                                                              secrets: list[str]) -> None:
    assert redact_uri(uri) == shown
    for secret in secrets:
        assert secret not in redact_uri(uri)
        assert secret not in redact_uri_secrets(f"failed: {uri} ({secret})", uri)


def test_run_jobs_errors_name_no_credential_of_the_runs_uris(tmp_path) -> None:
    """run_job's and plan_job's JobErrors quote the run's URIs; the command line redacted them as it printed them, but a
    program that called run_job and logged the error logged a presigned URL's signature or an FTP password with it."""
    from pipeline.config import JobConfig
    from pipeline.errors import JobError
    from pipeline.job import run_job
    from pipeline.plan import plan_job
    from tests.jobutil import png_inputs, tiny_model_file

    (tmp_path / "in").mkdir()
    png_inputs(tmp_path / "in", 1)
    model = tiny_model_file(tmp_path)
    signed = "https://h.example/out?X-Amz-Signature=abcdef0123456789abcdef"
    with pytest.raises(JobError) as err:
        run_job(JobConfig(input=str(tmp_path / "in"), output=signed, checkpoint=model, steps=1, progress=False))
    assert "abcdef0123456789abcdef" not in str(err.value) and "X-Amz-Signature=***" in str(err.value), err.value
    with refused_port() as port, pytest.raises(JobError) as err:  # a port nothing listens on
        ftp = f"ftp://user:hunter2secret@127.0.0.1:{port}/out"
        run_job(JobConfig(input=str(tmp_path / "in"), output=ftp, checkpoint=model, steps=1, progress=False))
    # an FTP server that does not answer is named as the output's (it was '[Errno 111] Connection refused' alone)
    assert str(err.value).startswith(f"cannot reach the server of output {ftp.replace('hunter2secret', '***')}: "
                                     "ConnectionRefusedError"), err.value
    assert "hunter2secret" not in str(err.value)
    with pytest.raises(JobError) as err:  # the dry run's planning too
        plan_job(JobConfig(input=str(tmp_path / "in"), output=signed, checkpoint=model, steps=1), dry_run=True)
    assert "abcdef0123456789abcdef" not in str(err.value) and "X-Amz-Signature=***" in str(err.value), err.value
