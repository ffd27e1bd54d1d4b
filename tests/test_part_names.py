"""Part file names and ledger digests are made from the ids they hold: two different sets must never share one.

A file may be named "a.png\nb.png" (POSIX allows a newline in a name, S3 in a key). Joined by newlines, the set
{"a.png\nb.png"} read the same as {"a.png", "b.png"}: two write batches got one part file name, and the second
write replaced the first, losing its images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.sources import ids_digest
from pipeline.stages import batch_of, part_name, write_stage


def _image(image_id: str) -> dict:
    return {"kind": "image", "id": image_id, "source": f"/in/{image_id}", "source_sha256": "0" * 64,
            "png": b"png", "width": 4, "height": 4, "meta": {}}


def test_a_batch_whose_one_id_holds_a_newline_does_not_replace_another_batchs_file(tmp_path: Path) -> None:
    first = write_stage(batch_of([_image("a.png\nb.png")]), str(tmp_path), {})
    second = write_stage(batch_of([_image("a.png"), _image("b.png")]), str(tmp_path), {})

    assert first["files"][0] != second["files"][0]
    ids = sorted(i for f in (tmp_path / "data").glob("*.parquet") for i in pq.read_table(f)["id"].to_pylist())
    assert ids == ["a.png", "a.png\nb.png", "b.png"]


def test_sets_that_join_alike_get_different_names_and_digests() -> None:
    pairs = [
        (["a\nb"], ["a", "b"]),
        (["a\nb", "c"], ["a", "b\nc"]),
        (["a\0b"], ["a", "b"]),
    ]
    for one, other in pairs:
        assert part_name(one) != part_name(other), (one, other)
        assert ids_digest(one) != ids_digest(other), (one, other)


def test_names_and_digests_do_not_depend_on_order() -> None:
    ids = ["z.png", "a\nb.png", "m/k.png"]
    assert part_name(ids) == part_name(list(reversed(ids)))
    assert ids_digest(ids) == ids_digest(list(reversed(ids)))


def test_ordinary_ids_keep_the_names_and_digests_earlier_versions_wrote() -> None:
    # An output made by an earlier version: its ledger's digests must still match (else --incremental reads every
    # tar shard again), and a write retried by the new version must replace the file the old one wrote.
    ids = ["s.tar/0002", "s.tar/0001", "d/é.png"]
    joined = "\n".join(sorted(ids)).encode()
    assert ids_digest(ids) == hashlib.sha256(joined).hexdigest()
    assert part_name(ids) == "part-" + hashlib.sha1(joined).hexdigest()[:20] + ".parquet"


def test_an_id_that_is_not_valid_text_still_gets_a_name() -> None:
    # a file name with undecodable bytes reaches the job as a lone surrogate (os.fsdecode)
    odd = b"a.png\n\xff".decode("utf-8", "surrogateescape")
    assert part_name([odd]) != part_name(["a.png", "\udcff"])
    assert len(ids_digest([odd])) == 64
