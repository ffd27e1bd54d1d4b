"""A URL scheme written with capitals ('S3://bucket/x', as a shell history or a spreadsheet of paths has them): fsspec
knows its schemes in lower case only, and the run said "Protocol not known: S3". The run refuses it before any work,
saying the URI as it must be written; the other tools, through `storage_path`, say the same."""

from __future__ import annotations

import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.storage import scheme_case_problem, storage_path


@pytest.mark.parametrize(("uri", "written"), [("S3://bucket/images", "s3://bucket/images"),
                                              ("File:///data/in", "file:///data/in"),
                                              ("GCS://b/x.tar", "gcs://b/x.tar")])
def test_a_capitalised_scheme_is_refused_with_the_uri_as_it_must_be_written(uri, written) -> None:
    assert scheme_case_problem(uri) == f"the URL scheme {uri.split(':')[0]!r} must be written in lower case: {written}"
    with pytest.raises(ValueError, match="must be written in lower case"):
        storage_path(uri, {})


@pytest.mark.parametrize("uri", ["s3://bucket/images", "/data/S3://odd", "relative/Folder", "C:/Users/me/in",
                                 "memory://x", "s3a://b/x"])
def test_other_uris_are_left_alone(uri) -> None:
    assert scheme_case_problem(uri) is None


def test_the_run_refuses_it_before_any_work_without_the_password(capsys) -> None:
    with pytest.raises(JobError) as refused:
        JobConfig(input="FTP://me:hunter2@files.example.com/in", output="S3://bucket/out").check()
    said = str(refused.value)
    assert "--input: the URL scheme 'FTP' must be written in lower case: ftp://me:***@files.example.com/in" in said
    assert "--output: the URL scheme 'S3' must be written in lower case: s3://bucket/out" in said
    assert "hunter2" not in said
    assert cli.main(["--input", "S3://bucket/in", "--output", "out"]) == 2
    assert "--input: the URL scheme 'S3' must be written in lower case: s3://bucket/in" in capsys.readouterr().err
