"""A web server that refuses a request (HTTP 401 or 403: a server behind a login, an expired presigned address).
fsspec's HTTP file system says any failure to look a URL up as FileNotFoundError, and a refused GET as aiohttp's
ClientResponseError, whose status is `.status`: the job said a refused input "does not exist", a refused checkpoint
"not found", and a refused image's reject reason was a FileNotFoundError."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.sources import discover, read_unit
from pipeline.sources.tfrecord_files import features_json_notes
from tests.jobutil import image_bytes
from tests.test_tfrecord_inputs import example, shard
from tests.webutil import QuietHandler, presigned_handler, serving


def _refusing(status: int, *prefixes: str) -> tuple[type, list[str]]:
    """A web server that answers `status` to HEAD and GET of any path starting with one of `prefixes`, and the
    requests it refused (method and path)."""
    refused: list[str] = []

    class Refusing(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            if self.path.startswith(prefixes):
                refused.append(f"{self.command} {self.path}")
                self.send_error(status)
            else:
                super().do_GET()

        do_HEAD = do_GET

    return Refusing, refused


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("given", ["private/", "private/a.png"])
def test_a_web_input_the_server_refuses_is_said_refused_with_what_to_give_not_missing(
        tmp_path: Path, model: str, capsys, status: int, given: str) -> None:
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "a.png").write_bytes(image_bytes(16, 16, 1))
    handler, _ = _refusing(status, "/private/")
    with serving(tmp_path, handler) as url:
        code = cli.main(["--input", url + given, "--output", str(tmp_path / "out"), "--checkpoint", model,
                         "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: cannot list input {url}{given}: ClientResponseError: {status}" in err, err
    assert "(the web server refused the request: give the credentials it asks for as headers, e.g. --storage-option " \
           "http='{\"headers\": {\"Authorization\": \"Bearer ...\"}}', or, for a presigned address, a fresh one" in err
    assert "does not exist" not in err


def test_a_web_input_that_is_not_there_is_still_said_missing(web, tmp_path: Path, model: str, capsys) -> None:
    _, url = web
    for given in ("gone/", "gone.png"):
        code = cli.main(["--input", url + given, "--output", str(tmp_path / "out"), "--checkpoint", model,
                         "--dry-run"])
        err = capsys.readouterr().err
        assert code == 2 and f"error: input {url}{given} does not exist" in err, err


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_web_checkpoint_is_said_refused_at_once_with_what_to_give(tmp_path: Path, capsys,
                                                                            status: int) -> None:
    """Said "checkpoint not found" before. A refusal is asked once (HEAD, then fsspec's GET), never retried."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 1))
    handler, refused = _refusing(status, "/prior.pt", "/missing.pt")
    (tmp_path / "prior.pt").write_bytes(b"weights")
    with serving(tmp_path, handler) as url:
        code = cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint",
                         url + "prior.pt", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot read checkpoint {url}prior.pt: ClientResponseError: {status}" in err, err
    assert "(the web server refused the request: give the credentials it asks for as headers" in err
    assert refused == ["HEAD /prior.pt", "GET /prior.pt"]


def test_a_web_checkpoint_that_is_not_there_is_still_said_not_found(web, tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 1))
    _, url = web
    code = cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint",
                     url + "prior.pt", "--dry-run"])
    assert code == 2 and f"checkpoint not found: {url}prior.pt" in capsys.readouterr().err


def test_a_web_checkpoint_beside_data_on_another_store_gets_the_headers_given_for_its_own_store() -> None:
    """The advice above holds there too: the checkpoint was read with no options at all, its store's own entry
    (`--storage-option https='{"headers": ...}'`) dropped with the data store's options."""
    headers = {"Authorization": "Bearer t"}
    config = JobConfig(input="s3://bucket/in/", output="s3://bucket/out", checkpoint="https://host/prior.pt",
                       storage_options={"key": "k", "secret": "s", "https": {"headers": headers}})
    assert config.checkpoint_storage_options() == {"https": {"headers": headers}}
    assert JobConfig(input="s3://bucket/in/", output="s3://bucket/out", checkpoint="https://host/prior.pt",
                     storage_options={"key": "k"}).checkpoint_storage_options() == {}


def test_a_refused_image_in_a_web_folder_is_a_reject_saying_it_was_refused(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes(16, 16, 1))
    (tmp_path / "b.png").write_bytes(image_bytes(16, 16, 2))
    handler, refused = _refusing(403, "/b.png")
    with serving(tmp_path, handler) as url:
        (unit,) = discover(url, {})
        records = {r["id"]: r for r in read_unit(unit, {}) if r["kind"] != "count"}
    assert records["a.png"]["kind"] == "image"
    assert records["b.png"]["kind"] == "reject"
    assert records["b.png"]["error"].startswith("could not read file: ClientResponseError: 403, message='Forbidden'")
    assert refused == ["HEAD /b.png", "GET /b.png"]  # not retried


TOKENS_AS_LIST = json.dumps({"featuresDict": {"features": {"tokens": {
    "sequence": {"feature": {"tensor": {"shape": {}, "dtype": "int64"}}, "length": "-1"}}}}}).encode()


@pytest.mark.parametrize("there", [True, False])
def test_a_refused_features_json_in_a_web_folder_is_asked_of_its_index_page(tmp_path: Path, there: bool) -> None:
    """A server in front of a bucket (S3's website endpoint, a CDN) may answer 403 for a file that is not there, so a
    refused features.json is not taken as there: the folder's index page says. Linked there, it is refused, and each
    TFRecord file beside it is a reject naming it (it was taken as absent, the files' columns typed otherwise than
    TFDS declares); not linked, it is absent."""
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "s.tfrecord").write_bytes(shard([example(image=image_bytes(16, 16, i), tokens=[i])
                                                         for i in range(2)]))
    if there:
        (tmp_path / "tf" / "features.json").write_bytes(TOKENS_AS_LIST)
    handler, _ = _refusing(403, "/tf/features.json")
    with serving(tmp_path, handler) as url:
        (unit,) = [u for u in discover(url + "tf/", {}) if u.paths[0].endswith(".tfrecord")]
        records = [r for r in read_unit(unit, {}) if r["kind"] != "count"]
        notes = features_json_notes([unit.paths[0]], {})
    if there:
        assert [r["id"] for r in records] == ["s.tfrecord#unreadable"]
        assert f"{url}tf/features.json is there but these credentials may not read it" in records[0]["error"]
        assert len(notes) == 1 and notes[0].startswith(f"{url}tf/features.json is there but these credentials")
    else:
        assert [r["meta"]["tokens"] for r in records] == [0, 1] and notes == []


def test_a_refused_https_address_is_advised_the_entry_of_its_own_scheme(tmp_path: Path, model: str, capsys,
                                                                         monkeypatch, request) -> None:
    """The advice named the first protocol of fsspec's HTTP file system, `http=`, for an https:// input or checkpoint
    too, where docs/job.md shows `https=` (either entry serves both schemes; the user copies what they are shown)."""
    from aiohttp import ClientResponseError, RequestInfo
    from fsspec.implementations.http import HTTPFileSystem
    from yarl import URL

    async def refused(self, url: str, **kwargs) -> dict:  # what fsspec's HEAD, then GET, refused with 403 raises
        raise FileNotFoundError(url) from ClientResponseError(RequestInfo(URL(url), "GET", {}, URL(url)), (),
                                                              status=403, message="Forbidden")

    # fsspec keeps its file systems, each bound to its `_info` when made: none made before is used, none made here kept
    HTTPFileSystem.clear_instance_cache()
    monkeypatch.setattr(HTTPFileSystem, "_info", refused)
    request.addfinalizer(HTTPFileSystem.clear_instance_cache)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 1))
    for given in (["--input", "https://host.example/data/", "--checkpoint", model],
                  ["--input", str(tmp_path / "in"), "--checkpoint", "https://host.example/prior.pt"]):
        assert cli.main([*given, "--output", str(tmp_path / "out"), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert "ClientResponseError: 403" in err and "(the web server refused the request" in err, err
        assert "--storage-option https='{\"headers\": {\"Authorization\": \"Bearer ...\"}}'" in err, err


@pytest.mark.parametrize("credential", ["AKIAEXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request",
                                        "AKIAEXAMPLE/20261207/us-east-1/s3/aws4_request"])
def test_a_presigned_tfrecord_file_gets_no_warning_of_a_features_json_its_signature_cannot_read(
        tmp_path: Path, model: str, capsys, credential: str) -> None:
    """A presigned address grants its one file: S3 refuses any other request, features.json beside it too. Since web
    refusals are told from missing files, that refusal was warned of in every dry run and run (and kept in the
    summary), naming 'features.json' joined to the address with its query, so that a credential holding a '/' (not
    percent-escaped) was printed in part: '...s.tfrecord?X-Amz-Credential=AKIAEXAMPLE/20261207/us-east-1/s3/
    features.json was taken as absent'. Earlier versions took it as absent without a word."""
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "s.tfrecord").write_bytes(shard([example(image=image_bytes(16, 16, i)) for i in range(2)]))
    signed = f"/tf/s.tfrecord?X-Amz-Credential={credential}&X-Amz-Signature=0123abcd"
    asked: list[str] = []

    with serving(tmp_path, presigned_handler(signed, "/tf/s.tfrecord", asked)) as url:
        code = cli.main(["--input", url + signed[1:], "--output", str(tmp_path / "out"), "--checkpoint", model,
                         "--dry-run"])
    said = capsys.readouterr()
    assert code == 0 and "1 TFRecord file (2 records)" in said.out, said
    assert "features.json" not in said.out + said.err and "AKIAEXAMPLE" not in said.out + said.err
    assert not [path for path in asked if "?" in path and path != unquote(signed)]  # no name joined to the query


@pytest.mark.parametrize("given", ["tf/", "tf/s.tfrecord"])
def test_a_refused_features_json_of_a_web_input_given_with_a_password_is_warned_of_without_it(
        tmp_path: Path, model: str, capsys, given: str) -> None:
    """The warning of a refused features.json named it under the input's address as given, password and all
    ('http://bob:...@host/tf/features.json is there but these credentials may not read it'), on the terminal; its
    reject rows, and every other line, show the address as `redact_uri` does."""
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "s.tfrecord").write_bytes(shard([example(image=image_bytes(16, 16, i)) for i in range(2)]))
    if given == "tf/":
        (tmp_path / "tf" / "features.json").write_bytes(TOKENS_AS_LIST)  # listed: there, and refused
    # beside a single file its folder's index page is refused too: the refused file cannot be told from a missing one
    refused = {"/tf/features.json"} | ({"/tf", "/tf/"} if given != "tf/" else set())

    class Refusing(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            if self.path in refused:
                self.send_error(403)
            else:
                super().do_GET()

        do_HEAD = do_GET

    with serving(tmp_path, Refusing) as url:
        signed_in = url.replace("http://", "http://bob:s3cr3tpw@")
        code = cli.main(["--input", signed_in + given, "--output", str(tmp_path / "out"), "--checkpoint", model,
                         "--dry-run"])
    said = capsys.readouterr()
    assert code == 0 and "features.json" in said.out, said
    assert "s3cr3tpw" not in said.out + said.err
    assert "http://bob:***@127.0.0.1" in said.out
