"""zip-purify-export against a store that fails: an outage that outlasts every retry, and the deletes and
clean-ups around the manifest. The store is fsspec's in-memory one, made to fail; the retries' waits are patched out
(`storage.backoff`), so nothing sleeps."""

from __future__ import annotations

import csv
import errno
import io
import json
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import pipeline.storage as storage
from pipeline.export import OUTAGE_ROWS, _earlier_manifest_removed, _OutageWatch, _StorageDown, export_images
from pipeline.export_cli import main
from tests.test_export import files_under, image, make_output


@pytest.fixture
def no_waits(monkeypatch) -> None:
    monkeypatch.setattr(storage, "backoff", lambda *args, **kwargs: 0.0)


@pytest.fixture
def store():
    """A folder of the in-memory store, removed after the test."""
    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/export-store-failures"):
        fs.rm("/export-store-failures", recursive=True)


def test_an_export_into_a_store_that_stays_down_stops_and_resume_finishes_it_keeping_what_landed(
        tmp_path: Path, capsys, monkeypatch, no_waits, store) -> None:
    """Each image write that failed through every retry cost 10 to 15 s, and the export went on to the next row, and
    the next: days to give up on 100,000 rows. After OUTAGE_ROWS rows in a row it stops, naming the store's error and
    --resume, whose run writes the rest and leaves the files that had landed as they are."""
    rows = OUTAGE_ROWS + 8
    make_output(str(tmp_path / "out"), [image(f"{i:02d}.jpg", i) for i in range(rows)], per_file=16)
    to, root = "memory://export-store-failures/images", "/export-store-failures/images"
    pipe_file, tried = MemoryFileSystem.pipe_file, []

    def down_after_five(self, path, *args, **kwargs):  # noqa: ANN001, ANN202 - fsspec's signature
        tried.append(path)
        if len(set(tried)) > 5:
            raise ConnectionResetError(104, "Connection reset by peer")
        return pipe_file(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", down_after_five)
    argv = ["--output", str(tmp_path / "out"), "--to", to, "--no-progress", "--workers", "1"]
    assert main(argv) == 1
    said = capsys.readouterr()
    assert f"error: the export stopped: the last {OUTAGE_ROWS} rows in a row could not be written, as the storage kept " \
           "failing (RetriesExhausted: write " in said.err
    assert "ConnectionResetError: [Errno 104] Connection reset by peer" in said.err
    assert "export again with --resume to continue where it stopped" in said.err
    assert f"exported 5 of {rows} images" in said.out and f"{OUTAGE_ROWS} failed" in said.out
    assert len(set(tried)) == 5 + OUTAGE_ROWS  # the rows after were not tried
    landed = {path: store.cat_file(path) for path in store.find(root)}
    assert len(landed) == 5 and not store.exists(f"{root}/manifest.csv")

    # the store is up again: --resume writes the others, and none of those that landed again
    tried.clear()
    monkeypatch.setattr(MemoryFileSystem, "pipe_file", lambda self, path, *a, **k: (tried.append(path),
                                                                                   pipe_file(self, path, *a, **k)))
    assert main([*argv, "--resume"]) == 0
    assert f"({rows - 5} written, 5 already there)" in capsys.readouterr().out
    assert not set(tried) & set(landed)
    assert all(store.cat_file(path) == data for path, data in landed.items())
    assert len(store.cat_file(f"{root}/manifest.csv").decode().splitlines()) == rows + 1


def test_failures_of_the_store_stop_the_export_only_when_that_many_come_in_a_row() -> None:
    """Isolated failures among rows written are counted per row and the export goes on; a row failed for its own sake
    (bytes that are not PNG, Pillow's OSError without an errno) says nothing of the store; the limit-th failure of the
    store in a row stops it, an outage through every retry or a refusal alike."""
    outage = storage.RetriesExhausted("write a.png: gave up after 6 attempts")
    refusal = PermissionError(13, "Access Denied")
    watch = _OutageWatch(3)
    for err in (outage, refusal, None, outage, ValueError("the row's image is not PNG bytes"), refusal, None,
                OSError("cannot write mode RGBA as JPEG"), outage):
        watch.row_done(err, "why")
    assert watch.failing == 1
    watch.row_done(outage)
    with pytest.raises(_StorageDown) as stopped:
        cause = RuntimeError("its sidecar file a.txt could not be written")
        cause.__cause__ = outage  # a sidecar's failure, raised from the store's
        watch.row_done(cause, "the last")
    assert stopped.value.rows == 3 and stopped.value.reason == "the last" and not stopped.value.refused


class Forbidden(Exception):
    status_code = 403  # as azure.core's HttpResponseError says a refusal


@pytest.mark.parametrize("refusal", [PermissionError(13, "Access Denied"), OSError(errno.EROFS, "Read-only file system"),
                                     OSError(errno.ENOSPC, "No space left on device"), Forbidden("AuthorizationFailure")])
def test_a_store_that_refuses_every_write_stops_the_export_as_an_outage_does(refusal: Exception) -> None:
    """A refusal is not retried: a read-only bucket failed each of 100,000 rows at once, with a request and an error
    line each, and the export went on to the end. The limit-th refusal in a row stops it, said as a refusal."""
    watch = _OutageWatch(3)
    watch.row_done(refusal)
    watch.row_done(refusal)
    with pytest.raises(_StorageDown) as stopped:
        watch.row_done(refusal, "the last")
    assert stopped.value.rows == 3 and stopped.value.refused


def test_an_export_into_a_store_that_refuses_every_write_stops_naming_its_reason_and_resume(
        tmp_path: Path, capsys, monkeypatch, no_waits, store) -> None:
    """A read-only bucket (credentials without s3:PutObject) refuses each write at once: the export made a request and
    an error line for every row. It stops after OUTAGE_ROWS in a row, naming the store's reason and DIR, saying nothing
    was lost and how to continue; no manifest is written."""
    rows = OUTAGE_ROWS + 8
    make_output(str(tmp_path / "out"), [image(f"{i:02d}.jpg", i) for i in range(rows)], per_file=16)
    to = "memory://export-store-failures/images"
    tried = []

    def read_only(self, path, *args, **kwargs):  # noqa: ANN001, ANN202 - fsspec's signature
        tried.append(path)
        raise PermissionError(13, "Access Denied")

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", read_only)
    assert main(["--output", str(tmp_path / "out"), "--to", to, "--no-progress", "--workers", "1"]) == 1
    said = capsys.readouterr()
    assert f"error: the export stopped: the last {OUTAGE_ROWS} rows in a row could not be written, as {to} refused " \
           "them (PermissionError: [Errno 13] Access Denied); nothing was lost" in said.err
    assert "export again with --resume once it accepts writes" in said.err
    assert f"exported 0 of {rows} images" in said.out and f"{OUTAGE_ROWS} failed" in said.out
    assert len(tried) == OUTAGE_ROWS  # the rows after were not tried
    assert not store.exists("/export-store-failures/images/manifest.csv")


def manifest_lines(folder: Path, kind: str) -> dict[str, dict]:
    """The manifest's lines by path, its sidecar_files a list."""
    text = (folder / f"manifest.{kind}").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text))) if kind == "csv" else [json.loads(line) for line in text.splitlines()]
    return {row["path"]: {**row, "sidecar_files": json.loads(row["sidecar_files"]) if kind == "csv"
                          else row["sidecar_files"]} for row in rows}


@pytest.mark.parametrize(("refused", "kind"), [("a.json", "csv"), ("a.png", "jsonl")])
def test_a_row_that_fails_keeps_the_earlier_exports_line_so_that_its_files_stay_known(
        tmp_path: Path, capsys, monkeypatch, refused: str, kind: str) -> None:
    """A row that failed (a sidecar's write, or its image's after its sidecars) dropped out of the manifest a --resume
    or --overwrite wrote: the files an earlier export had written at its path were then no export's, and the next
    export's cleanup kept their stale sidecars for good. That export's line is kept, listing those of its sidecar files
    still there and those the row wrote; the row is still a failed one (exit status 1), and what it wrote and removed
    before it failed is counted (an image's failure lost those counts)."""
    import pipeline.export as export

    make_output(str(tmp_path / "old"), [image("a.jpg", 1, txt="cap", label=3, url="u"), image("b.jpg", 2, txt="b")])
    make_output(str(tmp_path / "out"), [image("a.jpg", 5, txt="cap 2", label=None, url="u2"), image("b.jpg", 2, txt="b")])
    files = tmp_path / "files"
    assert export_images(tmp_path / "old", files, sidecars=True, manifest=kind).ok
    earlier = manifest_lines(files, kind)
    assert earlier["a.png"]["sidecar_files"] == ["a.cls", "a.json", "a.txt"]
    write_file = export.write_file

    def refusing(fs, path, data, *args):  # noqa: ANN001, ANN202
        if path.endswith(f"/{refused}"):
            raise PermissionError(13, "Permission denied")
        return write_file(fs, path, data, *args)

    monkeypatch.setattr(export, "write_file", refusing)
    argv = ["--output", str(tmp_path / "out"), "--to", str(files), "--sidecars", "--resume", "--manifest", kind,
            "--no-progress", "--workers", "1"]
    assert main(argv) == 1
    said = capsys.readouterr()
    assert "failed: a.jpg: " in said.err and "Permission denied" in said.err
    assert "note: 1 failed row left an earlier export's files at its path: the manifest keeps that export's line" \
        in said.err
    written = "1 sidecar file" if refused == "a.json" else "2 sidecar files"  # a.txt, then a.json: before a.png
    assert f"(0 written, 1 already there, {written} written, 1 sidecar file already there, 1 stale sidecar file of an " \
           "earlier export removed, 1 failed)" in said.out  # a.cls removed: its row has no label now
    lines = manifest_lines(files, kind)
    assert lines["a.png"] == {**earlier["a.png"], "sidecar_files": ["a.json", "a.txt"]}
    assert lines["b.png"] == earlier["b.png"]
    assert files_under(files) == {"a.png", "a.txt", "a.json", "b.png", "b.txt", f"manifest.{kind}"}

    # the next export knows a.txt and a.json for an export's: stale now (its rows have no caption, nor url), removed
    monkeypatch.undo()
    make_output(str(tmp_path / "bare"), [image("a.jpg", 5), image("b.jpg", 2)])
    report = export_images(tmp_path / "bare", files, sidecars=True, existing="overwrite", manifest=kind)
    assert report.ok and report.stale_sidecars_removed == 3
    assert files_under(files) == {"a.png", "b.png", f"manifest.{kind}"}


def test_an_earlier_manifest_is_removed_through_a_transient_error(no_waits) -> None:
    """The earlier export's manifest, which a failed one would have replaced, was removed with one call, so that a
    moment's throttling left it in DIR, read as a list of DIR's images it does not hold; retried as every call is."""

    class Throttled:
        def __init__(self) -> None:
            self.files, self.calls = {"d/manifest.csv"}, 0

        def isfile(self, path: str) -> bool:
            return path in self.files

        def rm_file(self, path: str) -> None:
            self.calls += 1
            if self.calls == 1:
                raise TimeoutError("SlowDown: please reduce your request rate")
            self.files.discard(path)

    fs = Throttled()
    assert _earlier_manifest_removed(fs, "d/manifest.csv") == "removed"
    assert fs.files == set()
    assert _earlier_manifest_removed(fs, "d/manifest.csv") is None


def test_a_temporary_copy_of_the_manifest_that_cannot_be_removed_is_a_warning_line_not_a_python_warning(
        tmp_path: Path, capsys, monkeypatch, recwarn, no_waits, store) -> None:
    """On an object store the manifest is streamed to a hidden key and copied into place; a refused DELETE of that
    key printed Python's RuntimeWarning (a source path and line, the call's code). It is one warning line as the
    export's others, and the export succeeds: the manifest is in place."""
    make_output(str(tmp_path / "out"), [image("a.jpg", 1)])
    to = "memory://export-store-failures/images"
    rm = MemoryFileSystem._rm

    def refused_for_temporaries(self, path, *args, **kwargs):  # noqa: ANN001, ANN202 - fsspec's signature
        if "/.tmp-" in str(path):
            raise PermissionError(13, "Access Denied")
        return rm(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_rm", refused_for_temporaries)
    try:
        assert main(["--output", str(tmp_path / "out"), "--to", to, "--no-progress"]) == 0
    finally:
        monkeypatch.undo()  # before `store` removes the folder
    said = capsys.readouterr()
    lines = [line for line in said.err.splitlines() if "temporary copy" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: the manifest is in place, but its temporary copy {to}/.tmp-")
    assert "could not be removed (PermissionError: [Errno 13] Access Denied)" in lines[0]
    assert "removes it" in lines[0] and "--resume" in lines[0]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert store.exists("/export-store-failures/images/manifest.csv")
