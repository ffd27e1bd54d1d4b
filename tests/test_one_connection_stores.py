"""FTP's and SFTP's file systems talk to their server over one connection, which threads may not share: two threads'
requests interleave on it and each waits for ever for its answer. The job read an output's part files 16 at a time
through one such file system, so a run resuming an sftp:// output of several part files hung at its start without a
word (seen against a local SFTP server, paramiko's client), and the export wrote 8 files at once through one. Such a
store is now called from one thread at a time. The stand-in below is a local folder that says when two threads call
it at once, under the protocol name "sftp" (paramiko is not a dependency)."""

from __future__ import annotations

import importlib
import json
import threading
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline import storage
from pipeline.export import export_images
from pipeline.output import output_ids
from tests.jobutil import image_bytes
from tests.test_export import image, make_output


class OneConnection(LocalFileSystem):
    """A local folder as sftp://: records every call that came while another thread's was under way."""

    protocol = ("sftp", "ssh")
    root_marker = "/"
    state = threading.Lock()
    inside: list[int] = []  # the threads in a call now (one thread may be in a call inside its own)
    overlaps: list[str] = []
    calls = 0

    @classmethod
    def _strip_protocol(cls, path):  # noqa: ANN001 - fsspec's signature
        path = path[len("sftp://"):] if isinstance(path, str) and path.startswith("sftp://") else path
        return super()._strip_protocol(path)

    def _connection_users(self) -> list[int]:
        """The threads in a call on the connection this instance talks through: here one for all instances."""
        return OneConnection.inside

    def _guarded(self, what: str, call):  # noqa: ANN001 - any file-system call
        me = threading.get_ident()
        with OneConnection.state:
            inside = self._connection_users()
            if inside and inside[0] != me:
                OneConnection.overlaps.append(what)
            inside.append(me)
            OneConnection.calls += 1
        try:
            time.sleep(0.002)  # a round trip: time for another thread to come in
            return call()
        finally:
            with OneConnection.state:
                inside.remove(me)

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001
        return self._guarded(f"open {path}", lambda: super(OneConnection, self)._open(path, mode=mode, **kwargs))

    def info(self, path, **kwargs):  # noqa: ANN001
        return self._guarded(f"info {path}", lambda: super(OneConnection, self).info(path, **kwargs))

    def ls(self, path, detail=False, **kwargs):  # noqa: ANN001
        return self._guarded(f"ls {path}", lambda: super(OneConnection, self).ls(path, detail=detail, **kwargs))


@pytest.fixture
def one_connection(monkeypatch):
    registry = importlib.import_module("fsspec.registry")  # the module: fsspec.registry is also its read-only view
    monkeypatch.setitem(registry._registry, "sftp", OneConnection)
    OneConnection.overlaps, OneConnection.calls = [], 0
    OneConnection.clear_instance_cache()
    yield OneConnection
    OneConnection.clear_instance_cache()


def test_a_single_connection_store_is_called_from_one_thread_at_a_time() -> None:
    assert storage.concurrent_calls(OneConnection(), 16) == 1
    assert storage.concurrent_calls(fsspec.get_filesystem_class("ftp"), 8) == 1  # ftplib's one connection
    assert storage.concurrent_calls(LocalFileSystem(), 16) == 16


def test_an_outputs_part_files_are_read_one_at_a_time_through_one_connection(tmp_path: Path, one_connection) -> None:
    out = tmp_path / "out"
    make_output(str(out), [image(f"{i:03d}.png", i) for i in range(24)], per_file=3)  # 8 part files
    ids, rejected = output_ids(f"sftp://{out}", {})
    assert ids == {f"{i:03d}.png" for i in range(24)} and rejected == set()
    assert one_connection.calls > 8 and one_connection.overlaps == []


def test_the_export_writes_one_file_at_a_time_through_one_connection(tmp_path: Path, one_connection) -> None:
    out, to = tmp_path / "out", tmp_path / "exported"
    make_output(str(out), [image(f"{i:03d}.png", i) for i in range(24)], per_file=3)
    report = export_images(f"sftp://{out}", f"sftp://{to}", workers=8)
    assert report.ok and report.written == 24
    assert sorted(p.name for p in to.iterdir()) == [*(f"{i:03d}.png" for i in range(24)), "manifest.csv"]
    assert one_connection.overlaps == []


def _inputs(folder: Path) -> None:
    """Six Parquet files, four TFRecord files and four zip archives with a metadata.csv each: what the planning and
    the progress total read the footers, headers and central directories of, many files at a time elsewhere."""
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.jobutil import image_bytes, zip_bytes
    from tests.test_tfrecord_inputs import labelled, shard

    folder.mkdir()
    for i in range(6):
        pq.write_table(pa.table({"image": [image_bytes(8, 8, i)], "label": [i]}), folder / f"t{i}.parquet")
    for i in range(4):
        (folder / f"r{i}.tfrecord").write_bytes(shard(labelled(2 * i + 2, 2 * i)))
        (folder / f"z{i}.zip").write_bytes(zip_bytes({"a.png": image_bytes(8, 8, i), "metadata.csv":
                                                     b"file_name,label\na.png,3\nmissing.png,4\n"}, zipfile.ZIP_STORED))


def test_the_planning_and_the_progress_total_read_inputs_one_at_a_time_through_one_connection(
        tmp_path: Path, one_connection) -> None:
    """A dry run over an sftp:// input of Parquet, TFRecord and zip files read their footers, record headers and
    central directories 16 files at a time through the one connection (and the run's progress total its footers):
    on a real server each thread then waits for ever for an answer another took."""
    from pipeline.job import progress_total
    from pipeline.plan import plan_job
    from tests.jobutil import small_job_config, tiny_model_file

    _inputs(tmp_path / "in")
    model = tiny_model_file(tmp_path)
    config = small_job_config(tmp_path, model, input=f"sftp://{tmp_path / 'in'}")
    plan = plan_job(config, dry_run=True)
    assert plan.tfrecord_records == 8
    assert plan.archive_metadata.unmatched == 4  # each archive's metadata.csv read: its row naming no member
    assert one_connection.overlaps == [], one_connection.overlaps[:5]
    for zipped in (tmp_path / "in").glob("*.zip"):
        zipped.unlink()
    plan = plan_job(config, dry_run=False)
    assert progress_total(plan, {}) == 6 + 8
    assert one_connection.overlaps == [], one_connection.overlaps[:5]


def touched_inputs_with_rows(tmp_path: Path, rows_per_part: int):  # noqa: ANN201 - a tuple of five
    """20 sftp:// image files of the same bytes whose listing changed since their rows (version v1 recorded, v2
    listed), and an output holding their rows' source_sha256, `rows_per_part` rows a part file: what an --incremental
    run reads to tell the same bytes. (input folder, output folder, names, their ReadUnit, the InputRecord)"""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.changes import InputRecord
    from pipeline.sources.units import ReadUnit

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "data").mkdir(parents=True)
    names = [f"{k:02d}.png" for k in range(20)]
    for name in names:
        (inp / name).write_bytes(b"the same bytes")
    digest = hashlib.sha256(b"the same bytes").hexdigest()
    for part in range(0, len(names), rows_per_part):
        pq.write_table(pa.table({"id": names[part: part + rows_per_part], "source_sha256": [digest] * len(
            names[part: part + rows_per_part])}), out / "data" / f"part-{part}.parquet")
    unit = ReadUnit("files", tuple(f"sftp://{inp / n}" for n in names), f"sftp://{inp}", (14,) * 20, (), ("v2",) * 20)
    record = InputRecord(f"sftp://{inp}", {name: ("files", "v1") for name in names})
    return inp, out, names, unit, record


def test_a_scheduled_run_reads_touched_inputs_one_at_a_time_through_one_connection(tmp_path: Path,
                                                                                  one_connection) -> None:
    """An --incremental run over an sftp:// input whose files' listing changed since their rows (touched, copied over)
    reads them to tell the same bytes: 16 image files, or 8 tar shards, at a time through the one connection."""
    import os

    from pipeline.changes import InputRecord, same_bytes, same_members
    from pipeline.sources.units import ReadUnit
    from tests.jobutil import tar_bytes
    from tests.test_mutation_changes import _rows_of

    inp, out, names, unit, record = touched_inputs_with_rows(tmp_path, rows_per_part=20)
    assert same_bytes([unit], set(names), set(), frozenset(), record, str(out), {})[1] == 20
    assert one_connection.overlaps == [], one_connection.overlaps[:5]

    units, purified = [], set()
    for k in range(10):
        shard = inp / f"s{k}.tar"
        shard.write_bytes(tar_bytes({"0.png": image_bytes(8, 8, k)}))
        size = (os.path.getsize(shard),)
        _rows_of(ReadUnit("tar", (f"sftp://{shard}",), f"sftp://{inp}", size, ("l1",), ("v1",)), out, set())
        units.append(ReadUnit("tar", (f"sftp://{shard}",), f"sftp://{inp}", size, ("l2",), ("v2",)))
        purified.add(f"s{k}.tar/0")
    record = InputRecord(f"sftp://{inp}", {f"s{k}.tar": ("tar", "v1") for k in range(10)})
    assert same_members(units, purified, set(), frozenset(), record, {}, str(out), {}, {"in_memory_bytes": 0})[1] == 10
    assert one_connection.overlaps == [], one_connection.overlaps[:5]


class OneConnectionEach(OneConnection):
    """`OneConnection` as fsspec gives it: one instance (one connection) per thread, each thread's own (fsspec caches a
    file system per thread), so that only an instance called from two threads at once is an overlap."""

    def _connection_users(self) -> list[int]:
        return self.__dict__.setdefault("_inside", [])


def test_the_leases_heartbeat_writes_through_a_connection_of_its_own(tmp_path: Path, monkeypatch) -> None:
    """A run holding an sftp:// output's lease beat every 30 s from a thread of its own, writing the lease through the
    connection the driver's own writes and reads of the output go through: on a real server (paramiko, asyncssh's
    server) both threads then waited for ever, the run hung without a word. The heartbeat has its own connection."""
    from pipeline import lease as leases
    from pipeline.output import write_json

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "sftp", OneConnectionEach)
    OneConnection.overlaps, OneConnection.calls = [], 0
    OneConnectionEach.clear_instance_cache()
    monkeypatch.setattr(leases, "LEASE_HEARTBEAT_S", 0.001)  # the beat sooner: the same calls, more often
    out = f"sftp://{tmp_path / 'out'}"
    beats: set[float] = set()
    with leases.OutputLease(out, {}) as lease:
        while len(beats) < 20:  # what the driver does meanwhile: its records written, its listings and reads
            write_json(f"{out}/_summary.json", {"status": "running"}, {})
            beats.add(lease.record["heartbeat"])
    lease._beat.join()  # a beat the release did not wait for (it waits one beat's time) has ended too
    assert not (tmp_path / "out" / leases.LEASE_FILE).exists()  # released
    OneConnectionEach.clear_instance_cache()
    assert OneConnection.overlaps == [], OneConnection.overlaps[:5]


class IdleClosing(LocalFileSystem):
    """A local folder as ftp://: each instance is one connection of its own (fsspec caches no FTP file system), which
    the server closes once it has been idle a while (vsftpd's idle_session_timeout, 300 s by default).

    The server's clock is the calls it has answered, on any connection: one idle while it answered IDLE_CALLS calls on
    others is closed. Idle in seconds (1 s, 0.2 s before) closed the heartbeat's own connection by chance whenever its
    thread waited that long for a core on a loaded machine; counted in calls, only a connection that sat out the run is."""

    protocol = ("ftp",)
    root_marker = "/"
    cachable = False
    IDLE_CALLS = 10
    served = 0  # calls answered on every connection (one count for the subclasses too)

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - fsspec's signature
        super().__init__(*args, **kwargs)
        self._used = IdleClosing.served

    @classmethod
    def run_past_idle_timeout(cls, deadline_s: float = 60.0) -> None:
        """Wait out a run three idle timeouts long: until the server has answered 3 * IDLE_CALLS more calls (the lease
        heartbeat's, through its own connection)."""
        until, deadline = IdleClosing.served + 3 * cls.IDLE_CALLS, time.monotonic() + deadline_s
        while IdleClosing.served < until:
            assert time.monotonic() < deadline, f"{until - IdleClosing.served} calls short after {deadline_s} s"
            time.sleep(0.01)

    @classmethod
    def _strip_protocol(cls, path):  # noqa: ANN001 - fsspec's signature
        path = path[len("ftp://"):] if isinstance(path, str) and path.startswith("ftp://") else path
        return super()._strip_protocol(path)

    def _alive(self) -> None:
        if IdleClosing.served - self._used > self.IDLE_CALLS:
            raise BrokenPipeError(32, "Broken pipe")
        IdleClosing.served += 1
        self._used = IdleClosing.served

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001
        self._alive()
        return super()._open(path, mode=mode, **kwargs)

    def info(self, path, **kwargs):  # noqa: ANN001
        self._alive()
        return super().info(path, **kwargs)

    def rm_file(self, path):  # noqa: ANN001
        self._alive()
        return super().rm_file(path)


def test_an_ftp_outputs_lease_is_released_after_a_run_longer_than_the_servers_idle_timeout(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """The connection that took the lease sits idle through the run, its heartbeat writing through a connection of its
    own: released through the first, the lease was left behind ('could not release the lease ... Broken pipe'), and a
    next run on another machine waited 3 minutes for it to go stale."""
    from pipeline import lease as leases

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "ftp", IdleClosing)
    monkeypatch.setattr(leases, "LEASE_HEARTBEAT_S", 0.01)
    (tmp_path / "out").mkdir()
    with leases.OutputLease(f"ftp://{tmp_path / 'out'}", {}) as lease:
        IdleClosing.run_past_idle_timeout()  # the run: longer than the server keeps an idle connection
    lease._beat.join()  # a beat the release did not wait for (it waits one beat's time) has ended too
    assert "could not" not in capsys.readouterr().err  # neither a beat nor the release lost its connection
    assert not (tmp_path / "out" / leases.LEASE_FILE).exists()


class Dropping(IdleClosing):
    """A local folder as ftp://, each instance one connection of its own, every one made before `drop()` dropped by
    the server (a restart, a network blip): each call on it is a Broken pipe, however busy it was."""

    made = 0
    dropped_below = 0

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - fsspec's signature
        super().__init__(*args, **kwargs)
        type(self).made += 1
        self.number = type(self).made

    @classmethod
    def drop(cls) -> None:
        cls.dropped_below = cls.made + 1

    def _alive(self) -> None:
        if self.number < type(self).dropped_below:
            raise BrokenPipeError(32, "Broken pipe")


def test_an_ftp_outputs_heartbeat_connects_again_after_its_connection_is_dropped(tmp_path: Path, monkeypatch,
                                                                                 capsys) -> None:
    """The heartbeat writes through a connection of its own, kept from beat to beat: once the server dropped it, every
    later beat failed ('could not refresh the lease ... Broken pipe') and the lease went stale under a live run, for
    another run to take the output over. A beat that fails now connects again at the next."""
    from pipeline import lease as leases

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "ftp", Dropping)
    monkeypatch.setattr(leases, "LEASE_HEARTBEAT_S", 0.02)
    monkeypatch.setattr(storage, "backoff_delay", lambda *args, **kwargs: 0.0)
    (tmp_path / "out").mkdir()
    lease_file = tmp_path / "out" / leases.LEASE_FILE
    with leases.OutputLease(f"ftp://{tmp_path / 'out'}", {}) as lease:
        deadline = time.monotonic() + 60
        # a beat landed through the heartbeat's connection, so that there is one to drop (a fixed 0.2 s was not always
        # enough for the beat thread's first beat on a loaded machine)
        while json.loads(lease_file.read_text())["heartbeat"] <= lease.record["started"] and time.monotonic() < deadline:
            time.sleep(0.02)
        Dropping.drop()
        dropped = time.time()
        deadline = time.monotonic() + 60
        while json.loads(lease_file.read_text())["heartbeat"] <= dropped and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.loads(lease_file.read_text())["heartbeat"] > dropped, capsys.readouterr().err
    assert "Broken pipe" in capsys.readouterr().err  # the dropped connection's beat, said once
    assert not lease_file.exists()


def test_tar_shards_headers_are_counted_one_shard_at_a_time_through_one_connection(tmp_path: Path,
                                                                                   one_connection) -> None:
    """The dry run and the progress total walk tar shards' headers (`tar_count`), 16 shards at a time elsewhere."""
    from pipeline.job import progress_total
    from pipeline.plan import plan_job
    from tests.jobutil import small_job_config, tar_bytes, tiny_model_file

    (tmp_path / "in").mkdir()
    for i in range(6):
        (tmp_path / "in" / f"s{i}.tar").write_bytes(tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(i + 1)}))
    config = small_job_config(tmp_path, tiny_model_file(tmp_path), input=f"sftp://{tmp_path / 'in'}")
    assert plan_job(config, dry_run=True).describe()["input"]["tar_keys"]["to_read"] == 21
    assert progress_total(plan_job(config, dry_run=False), {}) == 21
    assert one_connection.overlaps == [], one_connection.overlaps[:5]
