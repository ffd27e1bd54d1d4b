"""A plain tar of Kaggle-style names (`tar cf train.tar train/` of 'cat.0.jpg' ... 'cat.12499.jpg'): by WebDataset's
rule every one is key 'cat', so the 12,500 images were one reject and none could be purified. A numbered name is now
keyed with its number ('cat.0', ext 'jpg'): one record per image, its sidecars ('cat.0.cls', 'cat.0.seg.png') with it."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from pipeline.config import JobConfig
from pipeline.job import run_job
from pipeline.ledger import LEDGER_DIR, ContainerRead, container_ids, unchanged_and_done
from pipeline.sources import ReadUnit, discover, read_unit
from pipeline.sources.listing import _refuse_colliding_ids
from tests.jobutil import image_bytes, read_output, spy_on_extraction, tar_bytes

FETCHED, STREAMED = 2**30, 0  # in_memory_bytes: the shard read from memory, or streamed from storage twice


def _cats(n: int) -> dict[str, bytes]:
    return {f"cat.{i}.jpg": image_bytes(8, 8, i, "JPEG") for i in range(n)}


def _read(tmp_path, members: dict[str, bytes], hard_links: dict[str, str] | None = None,
          **kw) -> list[dict]:
    (tmp_path / "s.tar").write_bytes(tar_bytes(members, hard_links))
    (unit,) = discover(str(tmp_path))
    return list(read_unit(unit, **kw))


def _images(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records if r["kind"] == "image"}


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_each_dotted_name_is_its_own_image(tmp_path, in_memory_bytes) -> None:
    records = _read(tmp_path, _cats(40), in_memory_bytes=in_memory_bytes)
    images = _images(records)
    assert sorted(images) == sorted(f"s.tar/cat.{i}" for i in range(40))
    assert not [r for r in records if r["kind"] == "reject"]
    assert images["s.tar/cat.17"]["data"] == image_bytes(8, 8, 17, "JPEG")
    assert images["s.tar/cat.17"]["source"] == f"{tmp_path}/s.tar:cat.17.jpg"
    assert (records[-1]["n"], records[-1]["container"]["records"]) == (40, 40)


def test_kaggle_layout_in_a_folder_with_two_classes(tmp_path) -> None:
    members = {f"train/{animal}.{i}.jpg": image_bytes(8, 8, i, "JPEG") for animal in ("cat", "dog") for i in range(3)}
    assert sorted(_images(_read(tmp_path, members))) == [f"s.tar/train/{a}.{i}" for a in ("cat", "dog") for i in range(3)]


def test_a_sidecar_named_as_its_image_goes_with_it(tmp_path) -> None:
    records = _read(tmp_path, {**_cats(5), "cat.3.cls": b"7", "cat.4.json": b'{"breed": "tabby"}'})
    images = _images(records)
    assert sorted(images) == [f"s.tar/cat.{i}" for i in range(5)] and len(records) == 6
    assert images["s.tar/cat.3"]["meta"] == {"label": 7} and images["s.tar/cat.4"]["meta"] == {"breed": "tabby"}
    assert images["s.tar/cat.0"]["meta"] == {}


def test_a_member_without_a_further_dot_is_its_own_reject_and_the_images_still_purify(tmp_path) -> None:
    records = _read(tmp_path, {**_cats(4), "cat.cls": b"1"})
    assert sorted(_images(records)) == [f"s.tar/cat.{i}" for i in range(4)]
    (reject,) = [r for r in records if r["kind"] == "reject"]
    assert reject["id"] == "s.tar/cat" and "found cat.cls" in reject["error"] and "belongs to no image" in reject["error"]
    assert len(reject["error"]) < 300


def _tar_with_symlink_before_its_target() -> bytes:
    # 'cat.6.jpg' -> 'cat.7.jpg', a later member: a stream waits for it
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [*_cats(2).items(), ("cat.6.jpg", None), ("cat.7.jpg", image_bytes(8, 8, 7, "JPEG"))]:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "cat.7.jpg"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_links_among_dotted_names_read_their_targets_bytes(tmp_path, in_memory_bytes) -> None:
    images = _images(_read(tmp_path, _cats(5), hard_links={"cat.5.jpg": "cat.1.jpg"}, in_memory_bytes=in_memory_bytes))
    assert sorted(images) == [f"s.tar/cat.{i}" for i in range(6)]
    assert images["s.tar/cat.5"]["data"] == image_bytes(8, 8, 1, "JPEG")
    (tmp_path / "s.tar").write_bytes(_tar_with_symlink_before_its_target())
    (unit,) = discover(str(tmp_path))
    images = _images(list(read_unit(unit, in_memory_bytes=in_memory_bytes)))
    assert sorted(images) == ["s.tar/cat.0", "s.tar/cat.1", "s.tar/cat.6", "s.tar/cat.7"]
    assert images["s.tar/cat.6"]["data"] == image_bytes(8, 8, 7, "JPEG")


def test_a_done_dotted_id_is_skipped_alone(tmp_path, monkeypatch) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes(_cats(5)))
    (unit,) = discover(str(tmp_path))
    extracted = spy_on_extraction(monkeypatch)
    records = list(read_unit(unit, skip_ids={"s.tar/cat.2"}))
    assert "cat.2.jpg" not in extracted and len(extracted) == 4
    assert sorted(_images(records)) == ["s.tar/cat.0", "s.tar/cat.1", "s.tar/cat.3", "s.tar/cat.4"]
    assert (records[-1]["n"], records[-1]["skipped"], records[-1]["container"]["records"]) == (4, 1, 5)


@pytest.mark.parametrize("members, image_ids, reject_ids", [
    # a plain image and a compound one: the image and its mask, as before
    ({"0001.jpg": image_bytes(8, 8, 1, "JPEG"), "0001.seg.png": image_bytes(8, 8, 2)}, ["s.tar/0001"], []),
    # two plain images in one key: which is the sample's image cannot be told, as before
    ({"a.jpg": image_bytes(8, 8, 1, "JPEG"), "a.png": image_bytes(8, 8, 2)}, [], ["s.tar/a"]),
    # one dotted name alone in its key: key 'a', ext 'b.jpg', as before
    ({"a.b.jpg": image_bytes(8, 8, 1, "JPEG"), "a.b.cls": b"3"}, ["s.tar/a"], []),
])
def test_keys_of_one_image_or_of_plain_images_are_keyed_as_before(tmp_path, members, image_ids, reject_ids) -> None:
    records = _read(tmp_path, members)
    assert sorted(_images(records)) == image_ids
    assert [r["id"] for r in records if r["kind"] == "reject"] == reject_ids
    if "0001.seg.png" in members:
        (image,) = _images(records).values()
        assert image["source"].endswith(":0001.jpg") and image["meta"] == {"seg_png": members["0001.seg.png"]}
    if "a.b.jpg" in members:
        assert _images(records)["s.tar/a"]["meta"] == {"b_cls": "3"}


@pytest.mark.parametrize("loose", ["x.tar/cat.0", "x.tar/cat.0.jpg", "x.tar/train/cat.0.jpg"])
def test_a_loose_file_under_a_shards_id_is_refused_whatever_its_name(loose) -> None:
    # an object store can hold an object 'x.tar' and objects under the prefix 'x.tar/'; a member's id may hold dots
    shard = ReadUnit("tar", ("s3://b/in/x.tar",), "s3://b/in", (1,))
    with pytest.raises(ValueError, match=rf"s3://b/in/{loose} \(beside s3://b/in/x.tar\); rename them"):
        _refuse_colliding_ids([shard], [f"s3://b/in/{loose}"], "s3://b/in")
    _refuse_colliding_ids([shard], [f"s3://b/in/{loose.replace('x.tar', 'x.tar.d')}"], "s3://b/in")  # beside, not under


def test_dotted_ids_are_the_shards_so_an_unchanged_shard_can_be_skipped(tmp_path) -> None:
    units = [ReadUnit("tar", ("/in/a/s.tar",), "/in")]
    done = {"a/s.tar/cat.0", "a/s.tar/train/cat.12", "a/s.tar/cat", "a/s.tar#unreadable", "a/other.tar/cat.0"}
    assert sorted(container_ids(done, units)["/in/a/s.tar"]) == ["a/s.tar/cat", "a/s.tar/cat.0", "a/s.tar/train/cat.12"]
    # what a later --incremental run compares: the output's ids of the shard against its count record
    (tmp_path / "s.tar").write_bytes(tar_bytes({**_cats(4), "cat.cls": b"1"}))
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    count = records[-1]["container"]
    output_ids = {r["id"] for r in records if r["kind"] in ("image", "reject")}
    ids = container_ids(output_ids, [unit])[unit.paths[0]]
    entry = ContainerRead(unit.paths[0], unit.sizes[0], "v1", count["records"], count["ids_sha256"])
    assert len(ids) == 5 and unchanged_and_done(unit, "v1", entry, ids)


@pytest.mark.usefixtures("ray_local", "one_torch_thread")
def test_an_incremental_run_skips_a_shard_of_dotted_names_unread(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    (root / "s.tar").write_bytes(tar_bytes({f"cat.{i}.png": image_bytes(8, 8, i) for i in range(3)}))
    cfg = dict(input=str(root), output=str(out), checkpoint=model, steps=1, pool=4, progress=False, write_batch=8,
               canvas_size=32)
    first = run_job(JobConfig(**cfg))["this_run"]
    assert first["purified"] == 3 and first["containers_recorded"] == 1
    (entry,) = json.loads((out / LEDGER_DIR / "containers.json").read_text())["containers"]
    assert entry["records"] == 3
    second = run_job(JobConfig(**cfg, incremental=True))["this_run"]
    assert second["containers_skipped_unread"] == 1 and (second["read"], second["purified"]) == (0, 0)
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == [f"s.tar/cat.{i}" for i in range(3)] and len(rejects) == 0


def test_dotted_names_that_are_not_numbered_stay_one_sample_and_its_reject_says_how_to_fix_it(tmp_path) -> None:
    # 'cat.a.jpg', 'cat.b.jpg': by WebDataset's rule one sample with two images, which cannot be purified as one
    records = _read(tmp_path, {f"cat.{c}.jpg": image_bytes(8, 8, i, "JPEG") for i, c in enumerate("abcdefg")})
    (reject,) = [r for r in records if r["kind"] == "reject"]
    assert reject["id"] == "s.tar/cat" and "and 2 more" in reject["error"] and len(reject["error"]) < 400
    assert "give each image its own key (e.g. cat_1.jpg, or a numbered cat.1.jpg)" in reject["error"]
