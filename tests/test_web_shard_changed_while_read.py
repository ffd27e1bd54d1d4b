"""A web server's tar shard read in two passes (headers, then members) and replaced between them: fsspec's HTTP file
carries no ETag, so the version is asked of the server (ETag, Last-Modified, size), as an object store's file is."""

import os

from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes, tar_bytes
from tests.test_input_changed_while_read import CHANGED, _replace_after_the_first_pass


def _read_replaced(folder, url, monkeypatch, new: bytes, times: tuple[int, int] | None = None) -> list[dict]:
    shard = folder / "s.tar"
    shard.write_bytes(tar_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(4)}))
    os.utime(shard, (1_700_000_000, 1_700_000_000))

    def replace() -> None:
        (folder / "new.tar").write_bytes(new)
        os.replace(folder / "new.tar", shard)
        if times:
            os.utime(shard, times)

    _replace_after_the_first_pass(monkeypatch, replace)
    [unit] = discover(f"{url}s.tar", {})
    return [r for r in read_unit(unit, {}, in_memory_bytes=0) if r.get("kind") in ("image", "reject")]


def test_a_web_shard_replaced_by_another_size_between_its_passes_is_rejected_as_changed(web, monkeypatch) -> None:
    folder, url = web
    new = tar_bytes({f"{i}.png": image_bytes(8, 8, 10 + i) for i in (0, 2, 5)})
    records = _read_replaced(folder, url, monkeypatch, new)
    assert {r["kind"] for r in records} == {"reject"}, "the new version's pixels were taken for the old keys"
    assert all(CHANGED in r["error"] and "--retry-rejects" in r["error"] for r in records)


def test_a_web_shard_rewritten_with_the_same_size_is_told_by_its_last_modified_date(web, monkeypatch) -> None:
    """Same names, same sizes, other pixels: only the Last-Modified header (Python's http.server sends no ETag)
    tells the versions apart."""
    folder, url = web
    new = tar_bytes({f"{i}.png": image_bytes(8, 8, 10 + i) for i in range(4)})
    assert len(new) == len(tar_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(4)}))
    records = _read_replaced(folder, url, monkeypatch, new, times=(1_700_000_100, 1_700_000_100))
    assert {r["kind"] for r in records} == {"reject"}
    assert all(CHANGED in r["error"] for r in records)


def test_an_unchanged_web_shard_is_read_whole_in_two_passes(web, monkeypatch) -> None:
    folder, url = web
    records = _read_replaced(folder, url, monkeypatch, tar_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(4)}),
                             times=(1_700_000_000, 1_700_000_000))
    assert sorted(r["id"] for r in records if r["kind"] == "image") == ["s.tar/0", "s.tar/1", "s.tar/2", "s.tar/3"]
