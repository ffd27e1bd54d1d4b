"""A large tar shard is read in two passes (headers, then members); one replaced between them must not be read
against the first pass's index: its keys are rejects that say the shard changed, and --retry-rejects reads it anew."""

import os

from pipeline.sources import discover, read_unit, tar_shards
from pipeline.sources.file_bytes import InputChangedWhileRead, file_opener
from tests.jobutil import image_bytes, tar_bytes

CHANGED = "s.tar was replaced while this run read it"


def _replace_after_the_first_pass(monkeypatch, replace) -> None:
    index = tar_shards.index_tar

    def index_then_replace(open_stream, **options):
        found = index(open_stream, **options)
        replace()
        return found

    monkeypatch.setattr(tar_shards, "index_tar", index_then_replace)


def test_a_shard_replaced_between_its_passes_is_rejected_as_changed_not_as_corrupt(tmp_path, monkeypatch) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(4)}))

    def replace() -> None:  # another writer puts a new version in place (a rename, as uploaders and cp do)
        (tmp_path / "new.tar").write_bytes(tar_bytes({f"{i}.png": image_bytes(8, 8, 10 + i) for i in (0, 2, 5)}))
        os.replace(tmp_path / "new.tar", shard)

    _replace_after_the_first_pass(monkeypatch, replace)
    [unit] = discover(str(tmp_path), {})
    records = [r for r in read_unit(unit, {}, in_memory_bytes=0) if r.get("kind") in ("image", "reject")]
    # nothing of the new version is taken for the old one's keys (0 and 2 had other pixels), and no key is called corrupt
    assert {r["kind"] for r in records} == {"reject"}
    assert sorted(r["id"] for r in records) == ["s.tar#unreadable", "s.tar/0", "s.tar/1", "s.tar/2", "s.tar/3"]
    assert all(CHANGED in r["error"] and "--retry-rejects" in r["error"] for r in records)
    assert not any("corrupt" in r["error"] for r in records)


def test_an_unchanged_shard_opens_as_often_as_asked_and_a_shard_fetched_once_is_never_compared(tmp_path) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes({"0.png": image_bytes(8, 8, 0)}))
    streamed = file_opener(str(shard), {}, 0)
    for _ in range(3):
        with streamed() as f:
            assert f.read(3)
    in_memory = file_opener(str(shard), {}, 2**20)
    in_memory().close()
    shard.write_bytes(tar_bytes({"1.png": image_bytes(8, 8, 1)}))  # after the one fetch: that copy is what is read
    in_memory().close()
    try:
        streamed()
    except InputChangedWhileRead as err:
        assert CHANGED in str(err)
    else:
        raise AssertionError("a changed shard was opened again without a word")
