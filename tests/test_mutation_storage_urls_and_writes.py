"""Gaps a second mutation audit of pipeline/storage.py found, and the bugs it met: a password of the input's or the
output's URL printed when the config is refused, an archive's member URL without its chain read as the working
directory; how a rate limit or an untyped timeout is judged, what RetriesExhausted keeps of the storage's error, the
options and URIs each store gets, the clean-up of temporaries, and the reasons written down."""

from __future__ import annotations

import errno

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from pipeline import storage
from tests.test_mutation_storage import _Listing, no_waiting  # noqa: F401 - a fixture, used by name


def test_an_input_and_output_under_two_accounts_are_refused_without_their_passwords() -> None:
    # BUG (fixed here): the problem quoted each password the two URLs held ("password 'pw-in' and 'pw-out'"), printed
    # on stderr by a dry run and by the run itself, where CI logs and schedulers keep it
    from pipeline.config import JobConfig
    from pipeline.errors import JobError

    config = JobConfig(input="ftp://alice:pw-in-1@a.example/in", output="ftp://bob:pw-out-2@b.example:2121/out")
    with pytest.raises(JobError) as refused:
        config.check()
    said = str(refused.value)
    assert "pw-in-1" not in said and "pw-out-2" not in said, said
    assert "--input and --output name different servers (host 'a.example' and 'b.example')" in said
    assert "(username 'alice' and 'bob')" in said and "(password '***' and '***')" in said


def test_a_refused_url_chain_or_web_output_is_printed_without_its_password(capsys) -> None:
    # BUG (fixed here): a location refused before any work was printed whole, its password with it; the CLI hides the
    # credentials of the config's URIs only once the config is made
    from pipeline.cli import main

    assert main(["--input", "simplecache::ftp://etl:in-s3cr3t@files.example/in",
                 "--output", "https://etl:out-s3cr3t@web.example/out?X-Amz-Signature=sig-s3cr3t", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "got the fsspec URL chain 'simplecache::ftp://etl:***@files.example/in'" in err, err
    assert "got the web address 'https://etl:***@web.example/out?X-Amz-Signature=***'" in err, err
    assert "s3cr3t" not in err, err


@pytest.mark.parametrize(("name", "uri"), [
    ("input", "zip:///data/images.zip"), ("input", "tar://shard.tar"), ("output", "zip:///data/clean.zip")])
def test_an_archives_member_url_without_its_chain_is_refused_before_any_work(tmp_path, name: str, uri: str) -> None:
    # BUG (fixed here): 'zip:///data/images.zip' names no archive to fsspec's zip file system, which opened the working
    # directory as the archive: the run stopped with "cannot list input ...: Is a directory: '/home/me'", a folder the
    # user never named (an --output said "cannot reach the server of output ...; is it up?")
    from pipeline.config import JobConfig
    from pipeline.errors import JobError
    from pipeline.sources import discover

    locations = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), name: uri}
    with pytest.raises(JobError, match=rf"--{name} must be the storage's own URI \(s3://\.\.\., a path\)") as refused:
        JobConfig(**locations).check()
    assert str(tmp_path) not in str(refused.value).replace(locations["input" if name == "output" else "output"], "")
    if name == "input":
        with pytest.raises(ValueError, match="URL chain, which is not supported"):
            discover(uri)


def _answered(status: int, message: str) -> aiohttp.ClientResponseError:
    """A web server's error answer as fsspec's HTTP file system raises it (aiohttp's raise_for_status)."""
    url = URL("https://example.com/in/a.png")
    request = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(request, (), status=status, message=message)


@pytest.mark.parametrize("status", [429, 503, 504])
def test_a_web_server_that_limits_or_times_out_is_retried(status: int) -> None:
    # a web input's server answering 429 Too Many Requests or a gateway timeout: the answer decides, and it says retry
    assert storage.is_transient(_answered(status, "")) is True
    assert storage.is_transient(_answered(404 if status != 404 else 410, "Not Found")) is False


class HdfsError(OSError):
    """A backend's own OSError class (pyarrow's HDFS and others raise such): no errno, or an errno its message gives."""


def test_a_backends_os_error_that_timed_out_or_lost_its_connection_is_transient() -> None:
    assert storage.is_transient(HdfsError("Failed to read block: Read timed out")) is True  # no errno: its words
    assert storage.is_transient(HdfsError(errno.ECONNRESET, "Connection reset by peer")) is True  # its errno
    assert storage.is_transient(HdfsError("Failed to open /data/in/timeout.png: no such file")) is False


def test_retries_exhausted_keeps_the_storages_last_error_as_its_cause(no_waiting) -> None:  # noqa: F811
    last = _answered(503, "Service Unavailable")

    def fail() -> None:
        raise last

    with pytest.raises(storage.RetriesExhausted) as caught:
        storage.with_retries(fail, "read https://example.com/in/a.png")
    assert caught.value.__cause__ is last
    assert "read https://example.com/in/a.png: gave up after 6 attempts" in str(caught.value)


def test_a_uri_of_a_store_fsspec_does_not_know_still_makes_a_config() -> None:
    # a mistyped protocol ('s4://') names no server: the config is made, its options as given, and the store's own
    # error says what is wrong where the file system is made, instead of a ValueError out of JobConfig itself
    from pipeline.config import JobConfig

    assert storage.url_connection_options("s4://bucket/in") == {}
    config = JobConfig(input="s4://bucket/in", output="/data/out", storage_options={"anon": True})
    assert config.storage_options == {"anon": True}


def test_only_a_common_stores_name_is_refused_as_an_option_that_is_not_a_mapping() -> None:
    # fsspec also knows words such as 'root', 'data' and 'dir' as protocols; a file system may take such a word as an
    # option of its own, which is not a store's entry
    assert storage.store_entry_problems({"root": "/srv/exports", "data": "x", "dir": "in"}) == []
    assert [p.split(":")[0] for p in storage.store_entry_problems({"root": "/srv", "gs": "true"})] == [
        "storage option gs names a store"]


S3_OPTIONS = {"key": "AKIA", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://minio:9000"}}


def test_a_checkpoint_on_another_store_than_the_datas_is_read_without_the_datas_options() -> None:
    # a presigned https:// checkpoint beside s3:// data: S3's key and endpoint given to fsspec's HTTP file system
    # stopped it; a checkpoint on the data's store, or beside local data, gets the options as given
    from pipeline.config import JobConfig

    presigned = "https://models.example/prior.pt?X-Amz-Signature=abc"
    config = JobConfig(input="s3://bucket/in", output="s3://bucket/out", checkpoint=presigned, storage_options=S3_OPTIONS)
    assert config.checkpoint_storage_options() == {}
    assert config.checkpoint_storage_options("s3://models/prior.pt") == S3_OPTIONS
    local = JobConfig(input="/data/in", output="/data/out", checkpoint=presigned, storage_options={"timeout": 5})
    assert local.checkpoint_storage_options() == {"timeout": 5}


@pytest.mark.parametrize(("given", "read_with"), [
    # a port the user gave for the data's server is theirs, not the URL's: it stays for the checkpoint's server too
    ({"port": 2200}, {"host": "b", "port": 2200}),
    # a host the user gave (a gateway to the servers) is where every file is read from, with the data's port and account
    ({"host": "gateway"}, {"host": "gateway", "port": 2121, "username": "alice", "password": "pw"}),
])
def test_what_the_user_gave_stays_for_a_checkpoint_on_another_server(tmp_path, given: dict, read_with: dict) -> None:
    from pipeline.config import JobConfig

    config = JobConfig(input="ftp://alice:pw@a:2121/in", output=str(tmp_path / "out"), checkpoint="ftp://b/prior.pt",
                       storage_options=given)
    assert storage.with_own_url_options("ftp://b/prior.pt", config.checkpoint_storage_options()) == read_with


def test_a_local_folder_whose_name_holds_two_colons_is_no_url_chain() -> None:
    # fsspec reads 'runs::v2' as the chain 'runs' :: 'v2'; 'runs' names no file system, so it is a folder's name
    assert storage.is_url_chain("runs::v2/in") is False
    assert storage.is_url_chain("simplecache::s3://bucket/in") is True


class _Listed:
    """What `with_protocol` looks at of a file system: the names it answers to and the options it was made with."""

    def __init__(self, protocol: str | tuple[str, ...], **options: object) -> None:
        self.protocol, self.storage_options = protocol, options


@pytest.mark.parametrize(("fs", "path", "uri"), [
    # HDFS's 'default' host is the cluster's configured name node, no server's name: the URI names none
    (_Listed(("hdfs", "arrow_hdfs"), host="default", port=0), "/data/in/a.png", "hdfs:///data/in/a.png"),
    (_Listed("ftp", host="files.example", port=2121), "/in/a.png", "ftp://files.example:2121/in/a.png"),
    (_Listed("webhdfs", host="nn.example"), "/user/etl/in/a.png", "webhdfs://nn.example/user/etl/in/a.png"),
    # fsspec's HTTP file system lists whole URLs: they are given back as they are
    (_Listed(("http", "https")), "https://example.com/in/a.png", "https://example.com/in/a.png"),
    (_Listed(("s3", "s3a")), "bucket/in/a.png", "s3://bucket/in/a.png"),
])
def test_a_listed_path_is_the_uri_of_its_file(fs: _Listed, path: str, uri: str) -> None:
    assert storage.with_protocol(fs, path) == uri  # type: ignore[arg-type]


def test_stale_temporaries_on_azure_are_dated_by_last_modified_and_a_folder_is_left_alone() -> None:
    # adlfs lists a blob's time as 'last_modified' (a datetime): undated, a killed run's temporaries stayed for ever
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    store = _Listing([
        {"name": "c/out/.tmp-aa-part-1.parquet", "type": "file", "last_modified": now - datetime.timedelta(hours=2)},
        {"name": "c/out/.tmp-bb-part-2.parquet", "type": "file", "last_modified": now - datetime.timedelta(minutes=1)},
        {"name": "c/out/.tmp-cc-run/", "type": "directory", "last_modified": now - datetime.timedelta(days=2)},
    ])
    assert storage.remove_stale_temporaries(store, "c/out") == 1
    assert store.removed == ["c/out/.tmp-aa-part-1.parquet"]


@pytest.mark.parametrize("protocol", ["ftp", "sftp", ("ssh", "sftp")])
def test_a_store_of_one_connection_is_called_from_one_thread(protocol: str | tuple[str, ...]) -> None:
    # paramiko's SFTP channel, as ftplib's connection, may not be shared by threads: each waited for ever
    assert storage.concurrent_calls(_Listed(protocol), 16) == 1
    assert storage.concurrent_calls(_Listed(("s3", "s3a")), 16) == 16


def test_a_local_file_already_there_is_not_created_again_nor_changed(tmp_path) -> None:
    # the output's lease on a local disk: a run that finds another's lease must learn it did not create it
    import fsspec

    fs, path = fsspec.filesystem("file"), str(tmp_path / "_lease.json")
    assert storage.create_if_absent(fs, path, b'{"run": "first"}', "write lease") is True
    assert storage.create_if_absent(fs, path, b'{"run": "second"}', "write lease") is False
    assert (tmp_path / "_lease.json").read_bytes() == b'{"run": "first"}'
    assert [p.name for p in tmp_path.iterdir()] == ["_lease.json"]  # no temporary file left beside it


def test_a_folder_not_made_yet_has_no_temporaries_to_remove(tmp_path) -> None:
    # a new output's first run looks for a killed run's temporaries before the folder exists
    import fsspec

    assert storage.remove_stale_temporaries(fsspec.filesystem("file"), str(tmp_path / "new-output")) == 0


def test_a_reason_is_cut_at_a_word_past_its_middle_and_only_when_too_long() -> None:
    exact = "x" * (storage.REASON_CHARS - 10) + " ten chars"
    assert len(exact) == storage.REASON_CHARS and storage.shortened(exact) == exact
    # a word break in the second half: cut there, its punctuation dropped, marked as cut
    said = storage.shortened("a" * 250 + ", then " + "b" * 100)
    assert said == "a" * 250 + ", then…"
    said = storage.shortened("a" * 250 + "; " + "b" * 100)
    assert said == "a" * 250 + "…"
    # the only break early on: cut inside the long word instead, not after its first few characters
    said = storage.shortened("OSError: " + "c" * 400)
    assert len(said) == storage.REASON_CHARS and said.startswith("OSError: ccc") and said.endswith("c…")


def test_an_error_is_described_in_one_line() -> None:
    # a reject row's reason and a log line: a server's multi-line answer (an HTML page) gives its first line
    assert storage.describe(OSError("503 Service Unavailable\n<html>\n<body>busy</body>")) == (
        "OSError: 503 Service Unavailable")
    assert storage.describe(TimeoutError()) == "TimeoutError: "
