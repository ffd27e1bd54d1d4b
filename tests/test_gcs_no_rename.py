"""Google Cloud Storage has no rename: the job writes there with one PUT, as on S3. gcsfs has a mv of its own (GCS's
moveTo), so the job took it for a renaming file system and wrote each file to a temporary name, then moved it with that
mv, which expands glob characters in its source: every write under an output prefix such as `run[1]` failed with
FileNotFoundError naming the temporary file (seen against the GCS emulator, where moveTo is missing and each move
was retried for about 20 s before gcsfs copied). A stand-in for gcsfs is enough here: gcsfs is not a dependency."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import storage
from pipeline.export import write_file


class GlobbingMoveStore(MemoryFileSystem):
    """An object store whose mv globs its source, as gcsfs's does; a write must not need it."""

    protocol = ("gs", "gcs")
    moves: list[str] = []

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):  # noqa: ANN001 - fsspec's signature
        type(self).moves.append(path1)
        try:
            found = [p for p in self.expand_path(path1) if self.isfile(p)]  # "run[1]" is a pattern that matches "run1"
        except FileNotFoundError:
            found = []
        if not found:
            raise FileNotFoundError(path1)
        for p in found:
            self.cp_file(p, path2)
            self.rm_file(p)


@pytest.fixture
def store():
    fs = GlobbingMoveStore(skip_instance_cache=True)
    GlobbingMoveStore.moves = []
    yield fs
    for path in list(MemoryFileSystem.store):
        if path.startswith("/bucket-gcs-test"):
            del MemoryFileSystem.store[path]


def test_an_object_store_is_written_with_one_put_whatever_its_mv(store) -> None:
    assert not storage.has_rename(store)
    path = "/bucket-gcs-test/run[1]/_job.json"
    storage.replace_file(store, path, b'{"status": "complete"}', "write gs://bucket-gcs-test/run[1]/_job.json")
    assert store.cat_file(path) == b'{"status": "complete"}'
    assert GlobbingMoveStore.moves == [] and store.ls("/bucket-gcs-test/run[1]", detail=False) == [path]


def test_part_files_and_exported_images_land_under_a_bracketed_prefix(store) -> None:
    part = "/bucket-gcs-test/run[1]/data/part-0.parquet"
    tmp = storage.temporary_name(part)
    data = b"PAR1"
    store.pipe_file(tmp, data)
    storage.move_into_place(store, tmp, part, len(data), f"write gs:/{part}")
    assert store.cat_file(part) == data and not store.exists(tmp)
    image = "/bucket-gcs-test/run[1]/images/cat [2].png"
    assert write_file(store, image, b"\x89PNG-bytes", resume=False)
    assert store.cat_file(image) == b"\x89PNG-bytes"
    assert GlobbingMoveStore.moves == []
    assert sorted(store.find("/bucket-gcs-test")) == [part, image]


def test_a_renaming_file_system_still_renames(tmp_path) -> None:
    from fsspec.implementations.local import LocalFileSystem

    assert storage.has_rename(LocalFileSystem())
    table = pa.table({"id": ["a", "b"]})
    from pipeline.stages import write_parquet_atomic

    out = tmp_path / "run[1]" / "data" / "part-0.parquet"
    write_parquet_atomic(table, str(out), {})
    assert pq.read_table(out).column("id").to_pylist() == ["a", "b"]
    assert [p.name for p in out.parent.iterdir()] == ["part-0.parquet"]
