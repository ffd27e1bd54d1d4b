"""What mutation testing of pipeline/refresh.py (the --refresh-changed journal) and pipeline/local_folders.py (the
options that must name a local folder) found untested: each test here failed on a deliberate change to the code it
covers that every earlier test let pass. A damaged journal stops the run with what to do, not a traceback or a rule
applied to the wrong rows; its notes of containers read survive the trip to disk; a failed write leaves the earlier
journal; local:// is a local folder; a chain onto a URI by a name fsspec does not know is still refused."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from fsspec.implementations.local import LocalFileSystem

import pipeline.storage as storage_module
from pipeline.changes import InputRecord
from pipeline.errors import JobError
from pipeline.ledger import ContainerRead
from pipeline.refresh import Journal, journal_path, read_journal, remove_journal, write_journal
from pipeline.sources import ReadUnit
from tests.jobutil import load_job_script, small_job_config, train_prior_parsed
from tests.test_mutation_plan import _images, _output, _part, _record, _to_read

SECRET = "s3cr3t-pw"


def _journal_file(out: Path, payload: object) -> None:
    (out / "_refresh").mkdir(parents=True, exist_ok=True)
    (out / "_refresh" / "journal.json").write_text(json.dumps(payload))


# --- a journal that cannot be read, or read back as written -----------------------------------------------------------

@pytest.mark.parametrize("payload", [
    {"format": 2, "parts": 5, "inputs": {}, "salt": "s"},  # not a list of groups
    {"format": 2, "parts": [["data/part-1.parquet", [1, 2]]], "inputs": {}, "salt": "s"},  # ids that are no texts
    {"format": 2, "parts": [["data/part-1.parquet", "ab"]], "inputs": {}, "salt": "s"},  # a text, not a list of ids
    {"format": 2, "parts": [[7, ["a.png"]]], "inputs": {}, "salt": "s"},  # a part file's name that is no text
    {"format": 2, "parts": [], "inputs": {"a.png": ["files", "v2", ["a.png"], ["b.png"]]}, "salt": "s"},
], ids=["parts", "ids", "ids-text", "name", "input"])
def test_a_damaged_journal_of_a_known_format_stops_the_run_saying_what_to_do(tmp_path: Path, payload: dict) -> None:
    """Taken as it was, a text of ids was its letters and a part file's number never matched a file: the old rows stayed
    beside the new ones (two rows of an id), or the planning ended in a traceback."""
    _journal_file(tmp_path, payload)
    with pytest.raises(JobError) as raised:
        read_journal(str(tmp_path), {})
    said = str(raised.value)
    assert said.startswith(f"cannot read {journal_path(str(tmp_path))} (not a journal of format 2: "), said
    assert "restore it, or remove it to keep, of each id held twice, the row the end-of-run check keeps" in said


@pytest.mark.parametrize("payload", [{"format": 3, "parts": []}, [2, "parts"]], ids=["newer", "list"])
def test_a_journal_of_no_known_format_names_the_version_to_run(tmp_path: Path, payload: object) -> None:
    _journal_file(tmp_path, payload)
    with pytest.raises(JobError, match="is not a journal this version reads .formats 1, 2.; a newer version wrote it, or "
                                       "something else damaged it: run the version that wrote it, or restore it"):
        read_journal(str(tmp_path), {})


def test_a_journal_storage_cannot_read_is_a_job_error_and_none_is_no_journal(tmp_path: Path) -> None:
    # a folder where the journal should be (IsADirectoryError): an OSError of the storage, not a traceback
    assert read_journal(str(tmp_path), {}) is None
    (tmp_path / "_refresh" / "journal.json").mkdir(parents=True)
    with pytest.raises(JobError, match=r"^cannot read .*journal\.json .*: it says which rows a --refresh-changed run"):
        read_journal(str(tmp_path), {})


def test_the_notes_of_containers_read_come_back_as_written_and_only_for_the_journals_inputs(tmp_path: Path) -> None:
    """An entry's lookalikes_checked and an unknown size (a listing without one) were lost on the way, so the next run
    read the container again; an entry of an input the journal does not refresh, or one that is no object, must not
    stop the run (the notes are not needed to apply the rule)."""
    rows = {"s.tar/0": ["data/part-a.parquet"], "t.tar/0": ["data/part-a.parquet"]}
    inputs = {"s.tar": ("tar", "v2", ["s.tar/0"]), "t.tar": ("tar", "v2", ["t.tar/0"])}
    read = {"s.tar": ContainerRead("/in/s.tar", None, "etag-2", 1, "ab" * 32, lookalikes_checked=True),
            "t.tar": ContainerRead("/in/t.tar", 2048, "1.5:7", 1, "cd" * 32)}
    journal = Journal(rows, inputs, "salt", frozenset({"s.tar"}), read)
    write_journal(str(tmp_path), {}, journal)
    assert read_journal(str(tmp_path), {}) == journal
    payload = json.loads(Path(journal_path(str(tmp_path))).read_text())
    payload["read"]["u.tar"] = payload["read"]["t.tar"]  # not one of the journal's inputs
    payload["read"]["t.tar"] = ["/in/t.tar", 2048]  # damaged
    _journal_file(tmp_path, payload)
    assert read_journal(str(tmp_path), {}) == Journal(rows, inputs, "salt", frozenset({"s.tar"}), {"s.tar": read["s.tar"]})


def test_a_container_whose_address_holds_a_credential_is_not_noted_in_the_journal(tmp_path: Path) -> None:
    """A web folder read as 'https://user:password@host/shards/' lists its shards with the password in their paths, and
    a --refresh-changed run that read one whole wrote that path, password and all, to OUTPUT/_refresh/journal.json
    (left there by a stopped run); a presigned shard's signature went there too. Neither is noted now, as the record
    of containers leaves them out: a later run reads them again, its done ids skipped."""
    rows = {f"{n}/0": ["data/part-a.parquet"] for n in ("s.tar", "t.tar", "u.tar")}
    inputs = {n: ("tar", "v2", [f"{n}/0"]) for n in ("s.tar", "t.tar", "u.tar")}
    read = {"s.tar": ContainerRead(f"https://alice:{SECRET}@h.example/shards/s.tar", 10, "etag", 1, "ab" * 32),
            "t.tar": ContainerRead(f"https://h.example/shards/t.tar?X-Amz-Signature={SECRET}", 10, "etag", 1, "cd" * 32),
            "u.tar": ContainerRead("https://h.example/shards/u.tar", 10, "etag", 1, "ef" * 32)}
    write_journal(str(tmp_path), {}, Journal(rows, inputs, "salt", frozenset(inputs), read))
    assert SECRET not in Path(journal_path(str(tmp_path))).read_text()
    assert read_journal(str(tmp_path), {}).read == {"u.tar": read["u.tar"]}


def test_a_journal_write_that_fails_half_way_leaves_the_earlier_journal_whole(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # a journal written in place and cut short is unreadable: the next run could not tell the old rows from the new
    earlier = Journal({f"{i}.png": ["data/part-1.parquet"] for i in range(100)}, {}, "salt")
    write_journal(str(tmp_path), {}, earlier)

    def cut(*args, **kwargs):
        raise OSError("killed half-way")

    monkeypatch.setattr(storage_module, "move_into_place", cut)
    with pytest.raises(OSError, match="killed half-way"):
        write_journal(str(tmp_path), {}, Journal({"0.png": ["data/part-2.parquet"]}, {}, "other"))
    assert read_journal(str(tmp_path), {}) == earlier
    assert [p.name for p in (tmp_path / "_refresh").iterdir()] == ["journal.json"]


def test_removing_the_journal_leaves_no_folder_and_tolerates_a_journal_gone_or_a_stranger_beside_it(tmp_path: Path) -> None:
    write_journal(str(tmp_path), {}, Journal({"a.png": []}, {}, "salt"))
    remove_journal(str(tmp_path), {})
    assert list(tmp_path.iterdir()) == []  # no empty _refresh/ left in the output
    remove_journal(str(tmp_path), {})  # applied twice (a kill after the first): no error
    write_journal(str(tmp_path), {}, Journal({"a.png": []}, {}, "salt"))
    (tmp_path / "_refresh" / ".journal.json.tmp-1").write_bytes(b"another write's temporary")
    remove_journal(str(tmp_path), {})
    assert [p.name for p in (tmp_path / "_refresh").iterdir()] == [".journal.json.tmp-1"]


def test_an_input_the_journal_names_no_id_of_is_not_taken_as_done() -> None:
    """An input none of whose ids had a row when the refresh was planned has no new row to show for it: its stamp
    stays the earlier one (said changed), read to its end or not."""
    journal = Journal({"a.png": ["data/part-1.parquet"]}, {"a.png": ("files", "v2", ["a.png"]), "s.tar": ("tar", "v2", [])},
                      "salt", frozenset({"s.tar"}))
    assert journal.new_stamps({"a.png"}) == {"a.png": ("files", "v2")}


def test_a_stopped_refresh_whose_journal_names_an_id_no_part_file_holds_now_is_planned(tmp_path: Path, model: str) -> None:
    """The journal names c.png in a part file gone since (removed by hand): c.png has no new row, so no old row of it
    goes, and it is read again as any id without a row; the planning ended in a KeyError."""
    _images(tmp_path / "in", ("a.png", "b.png", "c.png"))
    out = _output(tmp_path / "out", _record(tmp_path, model), data=["b.png"], status="failed")
    _part(out, "data", ["a.png"], name="1")
    _part(out, "data", ["a.png"], name="2")
    write_journal(str(out), {}, Journal({"a.png": ["data/part-1.parquet"], "c.png": ["data/part-9.parquet"]},
                                        salt="5a1t"))
    from pipeline.plan import plan_job

    plan = plan_job(small_job_config(tmp_path, model), dry_run=True)
    assert (plan.done_purified, _to_read(plan)) == (2, ["c.png"])


# --- the options that must name a local folder ------------------------------------------------------------------------

@pytest.fixture
def train_prior() -> ModuleType:
    return load_job_script("train_prior.py", "train_prior_mutation_audit_refresh")


@pytest.mark.parametrize("value", [f"mycache::ftp://user:{SECRET}@host/x", "nosuchfs::s3://bucket/run"])
def test_a_chain_onto_a_uri_is_refused_whatever_names_its_first_link(train_prior: ModuleType, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     value: str) -> None:
    """A first link fsspec does not know ('mycache', a typo of a cache's name): the URI after it is still not a local
    path. Taken as one, a folder 'mycache::ftp:/user:<password>@host/x' was made for the run, the password in its
    name."""
    monkeypatch.chdir(tmp_path)
    assert train_prior_parsed(train_prior, "--out", value) == 2
    err = capsys.readouterr().err
    assert "give a local folder" in err and SECRET not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_a_package_registered_is_a_chain_too(train_prior: ModuleType, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # fsspec.register_implementation("teamstore", TheClass), as a package does on import (undone after the test)
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry, known_implementations, registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(_registry, "teamstore", MemoryFileSystem)
    assert "teamstore" in registry and "teamstore" not in known_implementations
    assert train_prior_parsed(train_prior, "--out", "teamstore::runs/1") == 2
    assert "give a local folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_names_the_purify_job_writes_as_local_folders_are_local_folders_here_too(train_prior: ModuleType,
                                                                                     tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """jobs/evaluate.py refuses --out memory::results with "a local folder of that name: give it as ./memory::results":
    a path that starts otherwise than with a scheme is local, whatever it holds further on. So is a name before '::'
    that no file system has (fsspec's are lower-case: 'Memory::v2'), and a file:// URI's path with a file system's
    name last or a '://' inside it: the purify job's --output writes each of these as that local folder."""
    monkeypatch.chdir(tmp_path)
    for value, folder in [("./memory::results", tmp_path / "memory::results"), ("Memory::v2", tmp_path / "Memory::v2"),
                          (f"file://{tmp_path}/runs::memory", tmp_path / "runs::memory"),
                          (f"file://{tmp_path}/runs/ftp://host", tmp_path / "runs/ftp:/host")]:
        assert Path(train_prior_parsed(train_prior, "--out", value).out).absolute() == folder, value
    assert list(tmp_path.iterdir()) == []


def test_a_relative_out_in_a_folder_it_may_not_write_in_names_that_folder_in_full(train_prior: ModuleType,
                                                                                  tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                                  capsys: pytest.CaptureFixture[str]
                                                                                  ) -> None:
    """The folder the refusal names is the one looked at, made absolute: 'locked is not writable' said nothing of
    where 'locked' was (a job started from another folder than the one the user thinks of). Permission stubbed, as in
    tests/test_mutation_cluster_paths.py: this test may run as root."""
    import os

    monkeypatch.chdir(tmp_path)
    locked, real = tmp_path / "locked", os.access
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: os.path.abspath(path) != str(locked)
                        and real(path, mode, *a, **k))
    assert train_prior_parsed(train_prior, "--out", "locked/run") == 2
    assert f"error: --out locked/run: {locked} is not writable by this user" in capsys.readouterr().err


# --- a server's password in --output (ftp://user:password@host/out), kept out of the run's notes -----------------------

class _Throttled(LocalFileSystem):
    """A store that answers every write 503: with_retries gives up, naming the file it wrote by its URI."""

    def pipe_file(self, path, value, **kwargs):
        raise ConnectionError("503 Service Unavailable")


@pytest.fixture
def throttled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each record's writes (`module.storage_path`) go to a throttled store, with no waits between the tries."""
    monkeypatch.setattr(storage_module, "backoff", lambda *a, **k: None)

    def on(module: ModuleType) -> None:
        monkeypatch.setattr(module, "storage_path", lambda uri, so: (_Throttled(), str(tmp_path / "record")))
    return on


SERVER_OUT = f"ftp://user:{SECRET}@host/out"


def test_a_refresh_note_that_could_not_be_written_is_said_without_the_outputs_password(
        throttled, capsys: pytest.CaptureFixture[str]) -> None:
    """BUG (fixed here): the warning quoted the journal's URI whole ('write ftp://user:<password>@host/out/_refresh/
    journal.json: gave up after 6 attempts'), on stderr that ends up in CI logs."""
    import pipeline.job as job_module
    import pipeline.refresh as refresh_module

    throttled(refresh_module)
    unit = ReadUnit("tar", ("/in/a.tar",), "/in", sizes=(10,), stamps=("new",))
    plan = SimpleNamespace(refresh=Journal({"a.tar/0": []}, {"a.tar": ("tar", "new", ["a.tar/0"])}), units=[unit],
                           container_purified=set())
    read_whole = [{"path": "/in/a.tar", "records": 1, "ids_sha256": "x"}]
    assert job_module._note_refreshed_reads(SERVER_OUT, {}, plan, read_whole, pipeline_ended=False, running=True) is False
    err = capsys.readouterr().err
    assert "could not note the containers read so far in the refresh journal (RetriesExhausted: write " \
           "ftp://user:***@host/out/_refresh/journal.json: gave up" in err and SECRET not in err, err


def test_the_records_of_a_complete_run_that_could_not_be_written_are_said_without_the_outputs_password(
        throttled, capsys: pytest.CaptureFixture[str]) -> None:
    """BUG (fixed here): the warnings for the record of the inputs and the record of the containers read quoted their
    URIs whole, the password in them; the second is the summary's this_run.containers_recorded too."""
    import pipeline.changes as changes_module
    import pipeline.job as job_module
    import pipeline.ledger as ledger_module

    throttled(changes_module)
    throttled(ledger_module)
    unit = ReadUnit("tar", ("/in/a.tar",), "/in", sizes=(10,), stamps=("new",))
    plan = SimpleNamespace(input_record=InputRecord("/in", {"a.tar": ("tar", "new")}), units=[unit], ledger={},
                           changes=SimpleNamespace(pending={"a.tar": ("tar", "new")}, refreshed={}),
                           listed_containers=None, ledger_checked=frozenset(), container_purified=set())
    job_module._record_inputs_read_again(SERVER_OUT, {}, plan)
    said = job_module._record_containers_read(SERVER_OUT, {}, plan, [{"path": "/in/a.tar", "records": 1,
                                                                      "ids_sha256": "x"}])
    err = capsys.readouterr().err
    assert "ftp://user:***@host/out/_inputs/" in err and "ftp://user:***@host/out/_containers/" in said, (err, said)
    assert SECRET not in err + said


def test_a_record_of_containers_that_cannot_be_used_is_noted_without_the_outputs_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """BUG (fixed here): the note that the record of the containers read is ignored quoted its URI whole, the
    password in it, where the same note of the record of the inputs hid it."""
    import pipeline.ledger as ledger_module

    damaged = tmp_path / "containers.json"
    damaged.write_bytes(b"{not json")
    monkeypatch.setattr(ledger_module, "storage_path", lambda uri, so: (LocalFileSystem(), str(damaged)))
    assert ledger_module.read_ledger(SERVER_OUT, {}) == {}
    err = capsys.readouterr().err
    assert "ignoring ftp://user:***@host/out/_containers/containers.json (" in err and SECRET not in err, err


def test_a_journal_the_storage_will_not_give_now_is_not_said_to_be_removed(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """BUG (fixed here): a store that throttled every read of the journal (503 SlowDown, six tries) stopped the run
    with the advice for a damaged journal: "restore it, or remove it to keep ... the row ... which may be the earlier
    version's". The journal was whole; removed, it could keep the old row of each id a stopped refresh had replaced."""
    import pipeline.refresh as refresh_module

    class Unavailable(LocalFileSystem):
        def cat_file(self, path, *args, **kwargs):
            raise ConnectionError("503 Service Unavailable")

    write_journal(str(tmp_path), {}, Journal({"a.png": ["data/part-1.parquet"]}, {}, "salt"))
    monkeypatch.setattr(storage_module, "backoff", lambda *a, **k: None)
    monkeypatch.setattr(refresh_module, "storage_path", lambda uri, so: (Unavailable(), journal_path(str(tmp_path))))
    with pytest.raises(JobError) as raised:
        read_journal(str(tmp_path), {})
    said = str(raised.value)
    assert said.startswith(f"cannot read {journal_path(str(tmp_path))} (RetriesExhausted: ") and "try again later" in said
    assert said.endswith("run again once the storage lets it be read") and "remove it" not in said, said
