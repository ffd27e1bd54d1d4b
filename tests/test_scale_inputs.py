"""Planning and reading at scale: the checks over a listing stay linear, and an object store's listing is used.

The id-collision check compared every image file with every tar shard (files x shards: 10 s for 100,000 files
beside 200 shards), and relative_id went through posixpath.relpath for each path; these tests pin the behaviour the
faster code must keep. The read tasks did not get the sizes the listing had found, so every image file on S3 cost a
HEAD before its GET (and a tar shard two): the request counts are asserted against a moto server.
"""

from __future__ import annotations

import io
import posixpath
import random
import tarfile
from collections import Counter

import pytest

from pipeline.sources import ReadUnit, discover, read_unit, relative_id
from pipeline.sources.listing import _refuse_colliding_ids
from pipeline.stages import read_stage, records_of
from pipeline.storage import storage_path
from tests.jobutil import image_bytes
from tests.s3util import moto_s3


def _old_clash(id_: str, containers: dict[str, ReadUnit]) -> bool:
    """The rule as first written: every container compared with the id (any id under a shard's, dotted or not: a
    tar key may hold dots, 'cat.0' in a shard of Kaggle-style names)."""
    head, sep, rest = id_.partition("#")
    if sep and head in containers and (rest == "unreadable" or rest.isdigit()):
        return True
    return any(unit.kind == "tar" and id_.startswith(cid + "/") for cid, unit in containers.items())


def test_colliding_ids_match_the_rule_on_random_names() -> None:
    rng = random.Random(0)
    names = ["a", "b.tar", "c.parquet", "x", "k", "0", "d.e", "s.tar", "t.pq"]
    for _ in range(300):
        containers = []
        for _ in range(rng.randint(1, 4)):
            depth = rng.randint(0, 2)
            folder = "/".join(rng.choice(["a", "x", "b.tar"]) for _ in range(depth))
            name = rng.choice(["b.tar", "s.tar", "c.parquet", "t.pq"])
            path = f"s3://bk/in/{folder + '/' if folder else ''}{name}"
            containers.append(ReadUnit("tar" if name.endswith(".tar") else "parquet", (path,), "s3://bk/in"))
        by_id = {relative_id(u.paths[0], "s3://bk/in"): u for u in containers}
        file_id = "/".join(rng.choice(names) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.3:
            file_id += "#" + rng.choice(["0", "12", "unreadable", "x"])
        expected = _old_clash(file_id, by_id)
        if expected:
            with pytest.raises(ValueError, match="rename them"):
                _refuse_colliding_ids(containers, [f"s3://bk/in/{file_id}"], "s3://bk/in")
        else:
            _refuse_colliding_ids(containers, [f"s3://bk/in/{file_id}"], "s3://bk/in")


def test_a_collision_among_many_shards_and_files_is_found_and_named() -> None:
    root = "/data/in"
    shards = [ReadUnit("tar", (f"{root}/part{i // 100}/shard-{i:04d}.tar",), root) for i in range(300)]
    files = [f"{root}/img/{i // 1000}/{i:06d}.png" for i in range(20_000)]
    _refuse_colliding_ids(shards, files, root)  # no clash among ordinary names
    # dotted or not, a file under a shard's id clashes (a member's key may hold dots); one beside it does not
    odd = [f"{root}/part2/shard-0257.tar/sub/k", f"{root}/part0/shard-0003.tar/k.png", f"{root}/part0/shard-0003.tar.png"]
    with pytest.raises(ValueError, match=r"^2 input file\(s\).*part2/shard-0257.tar/sub/k \(beside .*shard-0257.tar\); "
                                         r".*part0/shard-0003.tar/k.png \(beside .*shard-0003.tar\); rename them"):
        _refuse_colliding_ids(shards, files + odd, root)


@pytest.mark.parametrize("path, root", [
    ("/r/a/b.png", "/r"), ("/r/a/b.png", "/r/"), ("s3://bk/in/a/b.png", "s3://bk/in"), ("bk/in/x", "s3://bk/in"),
    ("/r/a//b.png", "/r"), ("/r/./a.png", "/r"), ("/r/a/../b.png", "/r"), ("/r/a/.", "/r"), ("/r/a/", "/r"),
    ("/r", "/r"), ("/rx/a.png", "/r"), ("/other/a.png", "/r"), ("rel/a.png", "rel"), ("/r/..a.png", "/r"),
    ("/r/a b/ü.png", "/r"), ("/a.png", "/"),
])
def test_relative_id_is_posix_relpath(path: str, root: str) -> None:
    bare, base = path.split("://", 1)[-1], root.split("://", 1)[-1].rstrip("/")
    expected = posixpath.basename(bare) if bare == base else posixpath.relpath(bare, base)
    assert relative_id(path, root) == expected


def test_read_units_carry_the_listed_sizes_to_the_read_task(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    (tmp_path / "in" / "b.png").write_bytes(image_bytes(8, 8, 2))
    (unit,) = discover(str(tmp_path / "in"))
    assert unit.sizes == tuple((tmp_path / "in" / n).stat().st_size for n in ("a.png", "b.png"))
    assert ReadUnit.from_row(unit.to_row()) == unit
    unsized = ReadUnit("files", unit.paths, unit.root, (None, 5))
    assert ReadUnit.from_row(unsized.to_row()) == unsized
    assert ReadUnit.from_row({"kind": "tar", "paths": ["x.tar"], "root": "r"}).sizes == ()  # a row without sizes
    row = {k: [v] for k, v in unit.to_row().items()}
    records = [r for b in read_stage(row, {}, False, None, frozenset()) for r in records_of(b)]
    assert [r["id"] for r in records if r["kind"] == "image"] == ["a.png", "b.png"]


# --- S3: requests per object ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    with moto_s3("scale-in", key="scale-key", secret="scale-secret") as (client, options):
        yield client, options


def _counting(options: dict) -> Counter:
    """A counter of the S3 operations the job's file system sends from now on (by name: GetObject, HeadObject...)."""
    from fsspec.asyn import sync

    fs, _ = storage_path("s3://scale-in", options)
    fs.invalidate_cache()
    counts: Counter = Counter()
    client = sync(fs.loop, fs.set_session)
    client.meta.events.register("before-call.s3", lambda model, **_: counts.update([model.name]))
    return counts


def test_s3_listing_sends_no_request_per_object_and_each_image_file_costs_one_get(s3) -> None:
    """One GET per image file, no HEAD. (Listing is paged, 1,000 keys a page: 2,500 objects took 3 ListObjectsV2
    requests; not repeated here, since putting that many objects into moto takes most of a minute.)"""
    client, options = s3
    png = image_bytes(8, 8, 3)
    for i in range(120):
        client.put_object(Bucket="scale-in", Key=f"many/d{i % 3}/{i:05d}.png", Body=png)
    counts = _counting(options)
    units = discover("s3://scale-in/many", options, files_per_unit=100)
    assert sum(len(u.paths) for u in units) == 120
    # the input's own info and is-file checks, then one listing of the whole prefix (not a request per folder)
    assert counts["ListObjectsV2"] <= 3 and counts["HeadObject"] <= 2 and counts["GetObject"] == 0
    counts.clear()
    _counting(options)  # a read task's fresh file system: nothing cached from the listing
    counts.clear()
    records = list(read_unit(units[0], options))
    images = [r for r in records if r["kind"] == "image"]
    assert len(images) == 100 and all(r["data"] == png for r in images)
    assert counts == Counter(GetObject=100)  # no HEAD before each GET
    # the empty file is still read (a range on 0 bytes is refused; it is opened as before), and becomes a reject later
    client.put_object(Bucket="scale-in", Key="empty/e.png", Body=b"")
    (unit,) = discover("s3://scale-in/empty", options)
    (empty, _count) = list(read_unit(unit, options))
    assert empty["kind"] == "image" and empty["data"] == b"" and unit.sizes == (0,)


def test_s3_file_grown_past_the_limit_since_listing_is_rejected_unread(s3) -> None:
    client, options = s3
    client.put_object(Bucket="scale-in", Key="grow/a.png", Body=b"x" * 100)
    (unit,) = discover("s3://scale-in/grow", options)
    client.put_object(Bucket="scale-in", Key="grow/a.png", Body=b"x" * 5000)
    storage_path("s3://scale-in", options)[0].invalidate_cache()  # as in a read task: nothing cached from the listing
    (record, _count) = list(read_unit(unit, options, max_image_bytes=1000))
    assert record["kind"] == "reject" and "over --max-image-mb" in record["error"]
    client.put_object(Bucket="scale-in", Key="grow/a.png", Body=b"y" * 50)  # shrank: read whole, as it is now
    (record, _count) = list(read_unit(unit, options, max_image_bytes=1000))
    assert record["kind"] == "image" and record["data"] == b"y" * 50


def test_s3_tar_shard_is_fetched_with_one_get(s3) -> None:
    client, options = s3
    buf = io.BytesIO()
    png = image_bytes(8, 8, 4)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(3):
            info = tarfile.TarInfo(f"{k}.png")
            info.size = len(png)
            tar.addfile(info, io.BytesIO(png))
    client.put_object(Bucket="scale-in", Key="tars/s.tar", Body=buf.getvalue())
    (unit,) = discover("s3://scale-in/tars", options)
    counts = _counting(options)
    assert [r["id"] for r in read_unit(unit, options) if r["kind"] == "image"] == ["s.tar/0", "s.tar/1", "s.tar/2"]
    assert counts == Counter(GetObject=1)
    # over --in-memory-mb it is streamed from storage, as before
    assert len([r for r in read_unit(unit, options, in_memory_bytes=10) if r["kind"] == "image"]) == 3
