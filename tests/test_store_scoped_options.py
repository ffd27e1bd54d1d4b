"""Storage options for two stores in one run: a web folder (http, https) read into s3://. One set of options cannot
serve both: S3's endpoint_url reached fsspec's HTTP file system, and the run stopped at listing with "ClientSession
.__init__() got an unexpected keyword argument 'endpoint_url'". Now a key naming a store (s3, https, ...) and holding
a mapping is that store's own options, as in fsspec's options for URL chains, and a web store beside another remote
store gets none of the shared options unless given its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import _config_from_namespace, build_parser
from pipeline.config import JobConfig
from pipeline.job import run_job
from pipeline.redaction import redact
from pipeline.storage import scoped_options, storage_path, with_web_store_scoped
from tests.jobutil import image_bytes, read_output, tar_bytes, tiny_model_file
from tests.s3util import moto_s3
from tests.webutil import QuietHandler, serving

S3 = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://minio:9000"}}


def test_a_store_with_its_own_entry_gets_that_entry_alone_and_the_others_the_shared_options() -> None:
    options = {**S3, "https": {"headers": {"Authorization": "Bearer t"}}}
    assert scoped_options("https", options) == {"headers": {"Authorization": "Bearer t"}}
    assert scoped_options("http", options) == {"headers": {"Authorization": "Bearer t"}}  # one store, two names
    assert scoped_options("s3", options) == S3
    scoped = {"s3": S3, "anon": False}
    assert scoped_options("s3a", scoped) == S3 and scoped_options("gs", scoped) == {"anon": False}
    assert scoped_options("s3", S3) is S3  # without entries of their own: as given
    assert storage_path("https://example.com/a.png", options)[0].kwargs == {"headers": {"Authorization": "Bearer t"}}


def test_a_web_input_beside_a_remote_output_gets_none_of_the_shared_options() -> None:
    assert with_web_store_scoped(["https://example.com/in/", "s3://b/out"], S3) == {**S3, "https": {}}
    assert JobConfig(input="https://example.com/in/", output="s3://b/out", storage_options=S3).storage_options == {
        **S3, "https": {}}
    given = {**S3, "http": {"headers": {"X-Token": "t"}}}  # its own entry, under either name, is kept
    assert with_web_store_scoped(["https://example.com/in/", "s3://b/out"], given) == given
    # a web input with a local output: the options are the web server's, as before
    assert with_web_store_scoped(["https://example.com/in/", "/data/out"], {"headers": {"X": "1"}}) == {
        "headers": {"X": "1"}}


def test_s3_endpoint_and_anon_go_into_the_s3_stores_own_entry_when_it_has_one() -> None:
    def options(*argv: str) -> dict:
        return _config_from_namespace(build_parser().parse_args(["--input", "https://example.com/in/", *argv])
                                      ).storage_options

    argv = ["--output", "s3://b/out", "--s3-endpoint", "http://minio:9000", "--anon"]
    assert options(*argv, "--storage-option", 's3={"key": "k"}') == {
        "s3": {"key": "k", "client_kwargs": {"endpoint_url": "http://minio:9000"}, "anon": True}, "https": {}}
    assert options(*argv) == {"client_kwargs": {"endpoint_url": "http://minio:9000"}, "anon": True, "https": {}}
    assert redact({"s3": {"key": "k", "secret": "s"}}) == {"s3": {"key": "***", "secret": "***"}}


class _TokenHandler(QuietHandler):
    """A web server that answers only requests carrying its token."""

    def _allowed(self) -> bool:
        if self.headers.get("Authorization") == "Bearer web-token":
            return True
        self.send_error(401)
        return False

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if self._allowed():
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if self._allowed():
            super().do_HEAD()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "s.tar").write_bytes(tar_bytes({f"{i:04d}.png": image_bytes(32, 32, i) for i in range(2)}))
    (folder / "a.png").write_bytes(image_bytes(32, 32, 7))
    with serving(folder, _TokenHandler) as url:
        yield folder, url


@pytest.mark.usefixtures("ray_local")
def test_a_web_folder_that_needs_a_token_is_purified_into_s3(web, tmp_path: Path) -> None:
    _, url = web
    with moto_s3("clean") as (_, s3_options):
        options = {**s3_options, "http": {"headers": {"Authorization": "Bearer web-token"}}}
        config = JobConfig(input=url, output="s3://clean/run", storage_options=options,
                           checkpoint=tiny_model_file(tmp_path), steps=1, canvas_size=32, progress=False)
        summary = run_job(config)
        assert summary["status"] == "complete" and summary["this_run"]["purified"] == 3
        data, rejects = read_output("s3://clean/run", s3_options)
        assert sorted(data["id"]) == ["a.png", "s.tar/0000", "s.tar/0001"] and rejects.empty
        assert summary["config"]["storage_options"]["http"]["headers"]["Authorization"] == "***"


def test_a_store_named_option_that_is_not_a_mapping_is_refused_before_any_work(tmp_path: Path) -> None:
    from pipeline.errors import JobError
    from pipeline.plan import plan_job

    config = JobConfig(input=str(tmp_path), output=str(tmp_path / "out"), storage_options={"https": "Bearer t"})
    with pytest.raises(JobError, match="storage option https names a store: give its own options as a mapping"):
        plan_job(config, dry_run=True)


def test_a_store_named_option_that_is_not_a_mapping_is_shown_an_entry_that_store_takes() -> None:
    from pipeline.storage import store_entry_problems

    # the message's example for a web store was '{"anon": true}', which fsspec's HTTP file system passes on to
    # aiohttp: following it failed with "ClientSession._request() got an unexpected keyword argument 'anon'"
    (web,) = store_entry_problems({"https": "Bearer t"})
    assert """e.g. --storage-option https='{"headers": {"Authorization": "Bearer ..."}}' (""" in web, web
    (s3,) = store_entry_problems({"s3": "true"})
    assert """e.g. --storage-option s3='{"anon": true}' (""" in s3, s3
    # and a --config file's form, which YAML reads as the entry it means
    import yaml

    assert s3.endswith("in a --config file: storage_options: {s3: {\"anon\": true}})"), s3
    form = s3.split("in a --config file: ")[1][:-1]
    assert yaml.safe_load(form) == {"storage_options": {"s3": {"anon": True}}}
