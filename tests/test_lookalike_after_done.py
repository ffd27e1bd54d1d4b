"""A tar member added beside one purified in an earlier run under the same id vanished without a word.

A member whose name is not UTF-8 (latin-1 b'caf\\xe9.png') has the id 's.tar/caf\\xe9' (`sources.text_name`), and so
has one literally named 'caf\\xe9.png'. Within one run the two are one reject naming both. But when an earlier run had
purified the first, and the second was appended to the shard later, the next run found the id done and skipped both:
the new image was neither purified nor rejected, and the run said `complete` (reproduced: run 2 read 0, purified 0,
rejected 0, skipped 2; the output held 2 purified, 0 rejected, for a shard of 3 images). It is now a reject of its own
id, 's.tar#lookalike/caf\\xe9', naming both members; the purified row stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass

import pytest

from pipeline.job import run_job
from pipeline.ledger import container_ids
from pipeline.sources import discover, read_unit
from tests.changeutil import SavedRun, replace
from tests.jobutil import image_bytes, read_output, small_job_argv, small_job_config, tar_bytes

PURIFIED = "s.tar/caf\\xe9"  # the id both members give
LOOKALIKE = "s.tar#lookalike/caf\\xe9"
LATIN1, LITERAL = image_bytes(8, 8, 1), image_bytes(8, 8, 3)


def _shard(root, *extra: str, literal: str | None = "caf\\xe9.png") -> None:
    """s.tar: latin-1 'café.png' and ok.png; the member literally named 'caf\\xe9.png' (or, renamed, `literal`);
    `extra` members appended."""
    members = {"café.png": LATIN1, "ok.png": image_bytes(8, 8, 2)}
    if literal:
        members[literal] = LITERAL
    members.update({name: image_bytes(8, 8, 10 + i) for i, name in enumerate(extra)})
    root.mkdir(exist_ok=True)
    replace(root / "s.tar", tar_bytes(members, encoding="latin-1"))  # GNU format: the name stays latin-1 bytes


def _output(out) -> tuple[dict, dict]:
    """data/ and rejects/ by id, each id once across both (data/ never holds one twice)."""
    data, rejects = read_output(str(out))
    assert data["id"].is_unique and rejects["id"].is_unique and not set(data["id"]) & set(rejects["id"])
    return data.set_index("id").to_dict("index"), rejects.set_index("id").to_dict("index")


def _cli(tmp_path, model, *flags: str) -> int:
    from pipeline.cli import main

    return main(small_job_argv(tmp_path, model, *flags))


def _summary(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "_summary.json").read_text())


@dataclass
class _TwoRuns:
    saved: SavedRun
    printed: str  # what the CLI printed of run 2
    second: dict  # run 2's summary


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, model, ray_local) -> _TwoRuns:
    """Run 1 purifies the shard without the literal member; it is appended; run 2 (the CLI, --incremental) over it. Made
    once for the module: each test restores the folder as run 2 left it (`saved.restore()`) and goes on from there."""
    folder = tmp_path_factory.mktemp("lookalike")
    root = folder / "in"
    _shard(root, literal=None)
    first = run_job(small_job_config(folder, model))
    assert first["status"] == "complete" and first["output_totals"]["purified"] == 2
    _shard(root)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert _cli(folder, model, "--incremental") == 0
    return _TwoRuns(SavedRun(folder), printed.getvalue(), _summary(folder))


# --- the read task ---

def test_read_unit_rejects_the_member_beside_a_purified_twin_under_an_id_of_its_own(tmp_path) -> None:
    _shard(tmp_path)
    (unit,) = discover(str(tmp_path))
    *records, count = read_unit(unit, skip_ids={PURIFIED, "s.tar/ok"}, purified_ids={PURIFIED})
    (reject,) = records
    assert (reject["kind"], reject["id"], reject["stage"]) == ("reject", LOOKALIKE, "read")
    assert "b'caf\\xe9.png'" in reject["error"] and "b'caf\\\\xe9.png'" in reject["error"]  # both, by their bytes
    assert "purified one of them" in reject["error"] and "--retry-rejects" in reject["error"]
    assert count["container"]["records"] == 3 and count["container"]["lookalike"] == [LOOKALIKE]
    # done: skipped, not given twice; still one of the shard's records (the ledger's digest matches the output's ids)
    (count,) = read_unit(unit, skip_ids={PURIFIED, "s.tar/ok", LOOKALIKE}, purified_ids={PURIFIED})
    assert (count["n"], count["skipped"], count["container"]["records"]) == (0, 3, 3)
    assert sorted(container_ids({PURIFIED, "s.tar/ok", LOOKALIKE}, [unit])[unit.paths[0]]) == sorted(
        [PURIFIED, "s.tar/ok", LOOKALIKE])


def test_a_loose_file_under_a_shards_lookalike_id_is_refused(tmp_path) -> None:
    _shard(tmp_path)
    (tmp_path / "s.tar#lookalike").mkdir()
    (tmp_path / "s.tar#lookalike" / "caf\\xe9").write_bytes(LITERAL)  # its id would be the reject's
    with pytest.raises(ValueError, match="could equal"):
        discover(str(tmp_path))


# --- whole runs ---

def test_a_member_added_beside_one_purified_earlier_is_a_reject_naming_both(two_runs) -> None:
    tmp_path, second = two_runs.saved.restore(), two_runs.second
    printed = two_runs.printed  # the CLI's end lines count it
    assert "read 1, purified 0, rejected 1" in printed and "holds 2 purified and 1 rejected" in printed
    assert second["status"] == "complete"
    run = second["this_run"]
    assert (run["read"], run["purified"], run["rejected"]) == (1, 0, 1)  # was (0, 0, 0): the new image vanished
    assert second["output_totals"]["purified"] == 2 and second["output_totals"]["rejected"] == 1
    data, rejects = _output(tmp_path / "out")
    assert set(data) == {PURIFIED, "s.tar/ok"} and set(rejects) == {LOOKALIKE}
    assert data[PURIFIED]["source_sha256"] == hashlib.sha256(LATIN1).hexdigest()  # the earlier row stays
    error = rejects[LOOKALIKE]["error"]
    assert "b'caf\\xe9.png'" in error and "b'caf\\\\xe9.png'" in error
    assert "purified one of them" in error and "did not read the other" in error and "--retry-rejects" in error


def test_the_lookalike_reject_is_given_once_and_the_unchanged_shard_is_not_read_again(two_runs, model) -> None:
    tmp_path = two_runs.saved.restore()
    root, out = tmp_path / "in", tmp_path / "out"
    # unchanged: skipped unread (the ledger's ids match the output's, the look-alike reject's included)
    third = run_job(small_job_config(tmp_path, model, incremental=True))
    assert third["status"] == "complete" and third["this_run"]["containers_skipped_unread"] == 1
    assert (third["this_run"]["read"], third["output_totals"]["rejected"]) == (0, 1)
    _shard(root, "new.png")  # grown: read again, its done ids skipped, the look-alike reject not written again
    fourth = run_job(small_job_config(tmp_path, model, incremental=True))
    assert fourth["status"] == "complete"
    assert (fourth["this_run"]["purified"], fourth["this_run"]["rejected"]) == (1, 0)
    data, rejects = _output(out)
    assert set(data) == {PURIFIED, "s.tar/ok", "s.tar/new"} and set(rejects) == {LOOKALIKE}


def test_retry_rejects_gives_the_reject_again_in_place_and_purifies_the_member_once_renamed(two_runs, model,
                                                                                             capsys) -> None:
    tmp_path = two_runs.saved.restore()
    root, out = tmp_path / "in", tmp_path / "out"
    _, rejects = _output(out)
    before = rejects[LOOKALIKE]["rejected_at"]
    again = run_job(small_job_config(tmp_path, model, retry_rejects=True))  # not renamed: rejected again, once
    assert again["status"] == "complete" and again["this_run"]["rejects_retried"]["rejected_again"] == 1
    assert again["output_totals"]["purified"] == 2 and again["output_totals"]["rejected"] == 1
    _, rejects = _output(out)
    assert set(rejects) == {LOOKALIKE} and rejects[LOOKALIKE]["rejected_at"] > before

    _shard(root, literal="cafe2.png")  # the user renames the new member, as the reject says
    assert _cli(tmp_path, model, "--retry-rejects") == 0
    printed = capsys.readouterr().out
    assert "1 tar look-alike reject gone" in printed and "not found in the input" not in printed
    renamed = _summary(tmp_path)
    assert renamed["status"] == "complete"
    assert (renamed["this_run"]["purified"], renamed["this_run"]["rejected"]) == (1, 0)
    assert renamed["this_run"]["rejects_retried"]["lookalikes_renamed"] == 1
    assert renamed["output_totals"]["purified"] == 3 and renamed["output_totals"]["rejected"] == 0
    data, rejects = _output(out)
    assert set(data) == {PURIFIED, "s.tar/ok", "s.tar/cafe2"} and not rejects  # the untrue reject is gone
    assert data["s.tar/cafe2"]["source_sha256"] == hashlib.sha256(LITERAL).hexdigest()
    assert data[PURIFIED]["source_sha256"] == hashlib.sha256(LATIN1).hexdigest()


def test_renamed_without_retry_rejects_the_member_is_purified_and_the_reject_goes(two_runs, model) -> None:
    tmp_path = two_runs.saved.restore()
    _shard(tmp_path / "in", literal="cafe2.png")
    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    assert summary["status"] == "complete" and summary["this_run"]["stale_rejects_removed"] == 1
    assert summary["output_totals"]["purified"] == 3 and summary["output_totals"]["rejected"] == 0
    data, rejects = _output(tmp_path / "out")
    assert set(data) == {PURIFIED, "s.tar/ok", "s.tar/cafe2"} and not rejects
