"""A run refused because another run holds the output's live lease changes nothing, so it must not first say that
it replaces anything: before the fix, an output whose earlier run recorded other settings but wrote no row got the
note "the settings its earlier run recorded ... are replaced by this run's", then the refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.output import JOB_FILE
from pipeline.plan import plan_job
from tests.leaseutil import write_foreign_lease

SAMPLE = str(Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "sample")


def _output_of_a_run_that_wrote_no_row(tmp_path: Path) -> Path:
    """An output holding only the job record of a run with --pool 2 (it stopped before its first batch)."""
    out = tmp_path / "out"
    out.mkdir()
    record = plan_job(JobConfig(input=SAMPLE, output=str(out), pool=2), dry_run=True).job_record
    (out / JOB_FILE).write_text(json.dumps(record))
    return out


def test_a_run_refused_for_a_live_lease_says_only_that(tmp_path, capsys) -> None:
    out = _output_of_a_run_that_wrote_no_row(tmp_path)
    write_foreign_lease(out, behind_s=1.0)  # another machine's run, heartbeat a second ago
    capsys.readouterr()
    with pytest.raises(JobError, match="is in use by another run"):
        plan_job(JobConfig(input=SAMPLE, output=str(out), pool=4), dry_run=True)
    assert "replaced" not in capsys.readouterr().err


@pytest.mark.parametrize("dry_run", [True, False])
def test_without_a_lease_the_settings_of_a_run_that_wrote_no_row_are_replaced_and_said_so(tmp_path, capsys,
                                                                                          dry_run) -> None:
    out = _output_of_a_run_that_wrote_no_row(tmp_path)
    capsys.readouterr()
    assert plan_job(JobConfig(input=SAMPLE, output=str(out), pool=4), dry_run=dry_run).output_state == "resume"
    err = capsys.readouterr().err
    assert "holds no rows yet" in err and "pool 2 (now 4)" in err
    # a dry run writes nothing: it says what the run would do
    assert ("would be replaced by this run's (a dry run changes nothing)" if dry_run else "are replaced by this run's") in err


def test_the_note_names_an_output_without_its_credentials(capsys) -> None:
    # The dry run's own lines name the output with its credentials redacted; this note of the planning printed it as
    # given: "zip-purify: note: ftp://writer:<password>@host/out holds no rows yet ...". fsspec's memory store takes
    # such a URL as a path, so it stands in for an FTP server here.
    import fsspec

    out = "memory://writer:out-pa55word@host/notes-test-out"
    fs = fsspec.filesystem("memory")
    record = plan_job(JobConfig(input=SAMPLE, output=out, pool=2), dry_run=True).job_record
    fs.pipe(f"{fs._strip_protocol(out)}/{JOB_FILE}", json.dumps(record).encode())
    try:
        capsys.readouterr()
        assert plan_job(JobConfig(input=SAMPLE, output=out, pool=4), dry_run=True).output_state == "resume"
        err = capsys.readouterr().err
    finally:
        fs.rm(fs._strip_protocol(out), recursive=True)
    assert "zip-purify: note: memory://writer:***@host/notes-test-out holds no rows yet" in err, err
    assert "out-pa55word" not in err, err
