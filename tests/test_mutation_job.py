"""Mutation-audit gap in the job's run status: rows that were doubled, not only lost, make a run inconsistent."""

from __future__ import annotations

from pipeline.job import run_status


def test_a_run_whose_output_gained_more_rows_than_it_read_is_inconsistent() -> None:
    assert run_status(read=10, purified=7, rejected=3, rows_before=5, rows_after=15) == "complete"
    assert run_status(read=10, purified=7, rejected=3, rows_before=5, rows_after=16) == "inconsistent"  # one doubled
    assert run_status(read=0, purified=0, rejected=0, rows_before=4, rows_after=5) == "inconsistent"
    assert run_status(read=10, purified=7, rejected=4, rows_before=0, rows_after=11) == "inconsistent"  # overcounted
