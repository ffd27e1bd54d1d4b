"""TFRecord files as input (`.tfrecord`, `.tfrecords`, `.tfrec`, TFDS's `x.tfrecord-00000-of-00016`; plain or GZIP):
one record per tf.train.Example, id `s.tfrecord#N`, the image from its `image/encoded` or `image` feature, its other
features passed through. The files are written here without TensorFlow: each Example built by protobuf itself from a
descriptor (so its wire bytes are not our parser's idea of them), framed with our CRC, checked on the known vector."""

from __future__ import annotations

import gzip
import hashlib
import json
import pathlib
import shutil
import struct

import pyarrow.parquet as pq
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.export import export_path
from pipeline.job import run_job
from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit
from pipeline.sources.crc32c import crc32c, masked_crc32c
from tests.jobutil import image_bytes, read_output, rewritten_in_place

FETCHED, STREAMED = 2**30, 0  # in_memory_bytes: the file fetched whole, or read from storage as it goes


def _example_class() -> type:
    """tf.train.Example's messages (tensorflow/core/example/{example,feature}.proto), declared here."""
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="test_tf_example.proto", package="testtf", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> descriptor_pb2.DescriptorProto:
        m = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            m.field.add(name=field_name, number=number, type=kind, label=label, **({"type_name": type_name} if type_name
                                                                                   else {}))
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, "")])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, "")])  # packed, proto3's default, as TensorFlow writes
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, "")])
    feature = message("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, opt, ".testtf.BytesList"),
                                  ("float_list", 2, F.TYPE_MESSAGE, opt, ".testtf.FloatList"),
                                  ("int64_list", 3, F.TYPE_MESSAGE, opt, ".testtf.Int64List")])
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = message("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".testtf.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".testtf.Feature")
    entry.options.map_entry = True
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".testtf.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("testtf.Example"))


Example = _example_class()


def example(**features) -> bytes:
    """A serialized Example: bytes (or a list of bytes) as a bytes_list, ints as an int64_list, floats a float_list."""
    ex = Example()
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        kind = ("bytes_list" if isinstance(values[0], bytes) else
                "float_list" if isinstance(values[0], float) else "int64_list")
        getattr(ex.features.feature[name.replace("__", "/")], kind).value.extend(values)
    return ex.SerializeToString()


def framed(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def shard(records: list[bytes]) -> bytes:
    return b"".join(map(framed, records))


def labelled(n: int, start: int = 0) -> list[bytes]:
    """Records as TFDS writes an image data set: `image` (PNG bytes), `label` (int64), and a text feature."""
    return [example(image=image_bytes(16, 16, i), label=i % 3, caption=f"picture {i}".encode()) for i in range(start, n)]


def test_crc32c_gives_the_known_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = bytes(range(256)) * 40 + b"tail"  # long enough for the lanes, and a tail after them
    crc = 0xFFFFFFFF
    for b in data:  # the definition, bit by bit
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    assert crc32c(data) == crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
@pytest.mark.parametrize("name", ["train.tfrecord", "d.tfrecords", "x.tfrec", "mnist-train.tfrecord-00000-of-00016",
                                  "g.tfrecord.gz"])
def test_a_tfrecord_file_gives_one_record_per_example(tmp_path, name: str, in_memory_bytes: int) -> None:
    data = shard(labelled(4))
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    (unit,) = discover(str(tmp_path))
    assert unit.kind == "parquet" and unit.stamps[0] is not None  # ids as a table's rows; its version for --incremental
    records = list(read_unit(unit, in_memory_bytes=in_memory_bytes))
    images = [r for r in records if r["kind"] == "image"]
    assert [(r["id"], r["meta"]) for r in images] == [
        (f"{name}#{i}", {"label": i % 3, "caption": f"picture {i}"}) for i in range(4)]
    assert [r["data"] for r in images] == [image_bytes(16, 16, i) for i in range(4)]
    assert records[-1]["n"] == 4 and records[-1]["container"]["records"] == 4  # read whole: recorded for --incremental
    assert export_path(f"{name}#3") == (f"{name}/3.png", False)


def test_features_as_the_object_detection_api_writes_them(tmp_path) -> None:
    record = example(image__encoded=image_bytes(16, 16, 0, "JPEG"), image__format=b"jpeg", image__height=16,
                     image__object__bbox__xmin=[0.25, 0.5], image__object__class__label=[1, 7],
                     image__key__sha256=b"\xff\x00", image__source_id=b"id",
                     image__object__class__text=[b"cat", b"caf\xe9"])
    (tmp_path / "od.record.tfrecord").write_bytes(shard([record]))
    (image,) = [r for r in read_unit(discover(str(tmp_path))[0]) if r["kind"] == "image"]
    assert image["data"] == image_bytes(16, 16, 0, "JPEG")
    assert image["meta"] == {"image/format": "jpeg", "image/height": 16, "image/object/bbox/xmin": [0.25, 0.5],
                             "image/object/class/label": [1, 7], "image/key/sha256": b"\xff\x00",
                             "image/source_id": "id", "image/object/class/text": ["cat", "caf\\xe9"]}


def test_records_without_an_image_or_not_examples_are_their_own_rejects(tmp_path) -> None:
    records = [example(image=image_bytes(16, 16, 0), label=0), example(label=1, caption=b"no image"),
               b"\x0a\x05hello\x12\x00", example(image=image_bytes(16, 16, 3), id=b"own id")]
    (tmp_path / "s.tfrecord").write_bytes(shard(records))
    got = {r["id"]: r for r in read_unit(discover(str(tmp_path))[0]) if r["kind"] in ("image", "reject")}
    assert [got[f"s.tfrecord#{i}"]["kind"] for i in range(4)] == ["image", "reject", "reject", "image"]
    assert "no image feature" in got["s.tfrecord#1"]["error"] and "['caption', 'label']" in got["s.tfrecord#1"]["error"]
    assert "not a tf.train.Example" in got["s.tfrecord#2"]["error"]
    assert got["s.tfrecord#3"]["meta"] == {"input_id": "own id"}  # named apart from the job's own id column


def test_image_column_names_the_feature(tmp_path) -> None:
    (tmp_path / "s.tfrecord").write_bytes(shard([example(photo=image_bytes(16, 16, 0), thumb=image_bytes(8, 8, 1))]))
    unit = discover(str(tmp_path))[0]
    assert [r["kind"] for r in read_unit(unit)][:1] == ["reject"]  # two binary features: which is the image is not told
    (image,) = [r for r in read_unit(unit, image_column="photo") if r["kind"] == "image"]
    assert image["data"] == image_bytes(16, 16, 0) and image["meta"] == {"thumb": image_bytes(8, 8, 1)}


@pytest.mark.parametrize("compress", [False, True])
def test_a_damaged_length_ends_the_file_after_the_records_before_it(tmp_path, compress: bool) -> None:
    records = labelled(4)
    data = bytearray(shard(records))
    third = len(framed(records[0])) + len(framed(records[1]))
    data[third + 1] ^= 0x40  # record 2's length: its CRC no longer matches
    (tmp_path / "s.tfrecord").write_bytes(gzip.compress(bytes(data)) if compress else bytes(data))
    out = list(read_unit(discover(str(tmp_path))[0]))
    assert [r["id"] for r in out if r["kind"] == "image"] == ["s.tfrecord#0", "s.tfrecord#1"]
    (broken,) = [r for r in out if r["kind"] == "reject"]
    assert broken["id"] == "s.tfrecord#unreadable"
    assert "after 2 records" in broken["error"] and "record 2's length does not match its CRC" in broken["error"]
    assert "container" not in out[-1]  # not read whole: a later --incremental run reads it again


def test_damaged_data_is_its_records_reject_and_the_rest_are_read(tmp_path) -> None:
    records = labelled(3)
    data = bytearray(shard(records))
    data[len(framed(records[0])) + 40] ^= 0x01  # inside record 1's data
    (tmp_path / "s.tfrecord").write_bytes(bytes(data))
    out = {r["id"]: r for r in read_unit(discover(str(tmp_path))[0]) if r["kind"] in ("image", "reject")}
    assert [out[f"s.tfrecord#{i}"]["kind"] for i in range(3)] == ["image", "reject", "image"]
    assert "does not match its CRC" in out["s.tfrecord#1"]["error"]


def test_a_truncated_gzip_file_ends_with_its_reject(tmp_path) -> None:
    packed = gzip.compress(shard(labelled(6)))
    (tmp_path / "s.tfrecord.gz").write_bytes(packed[: len(packed) * 2 // 3])
    out = list(read_unit(discover(str(tmp_path))[0]))
    assert out[-2]["id"] == "s.tfrecord.gz#unreadable" and out[-2]["kind"] == "reject"
    assert all(r["kind"] == "image" for r in out[:-2])


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_done_records_are_skipped_unparsed(tmp_path, in_memory_bytes: int) -> None:
    (tmp_path / "s.tfrecord").write_bytes(shard(labelled(4)))
    unit = discover(str(tmp_path))[0]
    out = list(read_unit(unit, skip_ids={"s.tfrecord#0", "s.tfrecord#2"}, in_memory_bytes=in_memory_bytes))
    assert [r["id"] for r in out if r["kind"] == "image"] == ["s.tfrecord#1", "s.tfrecord#3"]
    assert (out[-1]["n"], out[-1]["skipped"], out[-1]["container"]["records"]) == (2, 2, 4)


def test_a_file_cut_inside_a_skipped_record_is_not_taken_for_whole(tmp_path) -> None:
    data = shard(labelled(3))
    (tmp_path / "s.tfrecord").write_bytes(data[:-10])  # inside record 2's data
    out = list(read_unit(discover(str(tmp_path))[0], skip_ids={"s.tfrecord#2"}, in_memory_bytes=STREAMED))
    assert out[-2]["id"] == "s.tfrecord#unreadable" and "ends inside record 2's data" in out[-2]["error"]
    assert "container" not in out[-1]


def test_a_record_over_max_image_mb_is_a_reject_without_being_read(tmp_path) -> None:
    (tmp_path / "s.tfrecord").write_bytes(shard([example(image=b"\x89PNG" + bytes(3000)), *labelled(3, 1)]))
    out = [r for r in read_unit(discover(str(tmp_path))[0], max_image_bytes=2000) if r["kind"] in ("image", "reject")]
    assert [(r["id"], r["kind"]) for r in out] == [("s.tfrecord#0", "reject"), ("s.tfrecord#1", "image"),
                                                   ("s.tfrecord#2", "image")]
    assert "--max-image-mb" in out[0]["error"]


@pytest.mark.usefixtures("ray_local")
def test_a_job_purifies_a_tfrecord_shard_then_an_incremental_run_reads_only_what_is_new(tmp_path, model, capsys) -> None:
    (tmp_path / "in").mkdir()
    not_an_image = example(image=b"GIF89a, cut short", label=9)  # decoded as any image is: its row's reject
    (tmp_path / "in" / "train.tfrecord-00000-of-00002").write_bytes(shard([*labelled(3), not_an_image]))
    config = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1, progress=False,
                  canvas_size=32)
    report = plan_job(JobConfig(**config), dry_run=True).describe()
    assert (report["input"]["tfrecord_files"], report["input"]["parquet_files"]) == (1, 0)
    cli.print_plan(report)
    said = " ".join(capsys.readouterr().out.split())
    assert "0 Parquet files, 1 TFRecord file (4 records)," in said  # counted from its headers
    first = run_job(JobConfig(**config))["this_run"]
    assert (first["read"], first["purified"], first["rejected"], first["containers_recorded"]) == (4, 3, 1, 1)
    data, rejects = read_output(str(tmp_path / "out"))
    assert sorted(zip(data["id"], data["label"], data["caption"], strict=True)) == [
        (f"train.tfrecord-00000-of-00002#{i}", i % 3, f"picture {i}") for i in range(3)]
    assert str(data["label"].dtype) == "int64" and list(rejects["id"]) == ["train.tfrecord-00000-of-00002#3"]
    assert rejects["stage"][0] == "decode"
    (tmp_path / "in" / "train.tfrecord-00001-of-00002").write_bytes(shard(labelled(5, 3)))
    again = run_job(JobConfig(**config, incremental=True))["this_run"]
    assert (again["read"], again["purified"], again["containers_skipped_unread"]) == (2, 2, 1)
    data, _ = read_output(str(tmp_path / "out"))
    assert sorted(data["id"])[3:] == ["train.tfrecord-00001-of-00002#0", "train.tfrecord-00001-of-00002#1"]
    # the first shard rewritten with another image in record 1: read to compare, and told as changed
    changed = [*labelled(1), *labelled(6, 5), *labelled(3, 2), not_an_image]
    rewritten_in_place(tmp_path / "in" / "train.tfrecord-00000-of-00002", shard(changed))
    found = plan_job(JobConfig(**config, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (found["containers"], found["examples"]) == (1, ["train.tfrecord-00000-of-00002"])


def test_a_storage_error_mid_file_is_retried_from_the_record_it_stopped_at(tmp_path, monkeypatch) -> None:
    from pipeline.sources import tfrecord_files

    (tmp_path / "s.tfrecord").write_bytes(shard(labelled(4)))
    (unit,) = discover(str(tmp_path))
    original, left = tfrecord_files._header, {"n": 2}

    def flaky(f, index: int):
        if index == 2 and left["n"]:
            left["n"] -= 1
            raise ConnectionResetError(104, "Connection reset by peer")
        return original(f, index)

    monkeypatch.setattr(tfrecord_files, "_header", flaky)
    monkeypatch.setattr(tfrecord_files, "backoff", lambda attempt: 0.0)
    records = list(read_unit(unit, in_memory_bytes=STREAMED))
    assert [(r["id"], r["kind"]) for r in records[:-1]] == [(f"s.tfrecord#{i}", "image") for i in range(4)]
    assert [r["data"] for r in records[:-1]] == [image_bytes(16, 16, i) for i in range(4)]


@pytest.mark.usefixtures("ray_local")
def test_a_damaged_shard_keeps_its_first_rows_and_once_mended_is_read_again_for_the_rest(tmp_path, model) -> None:
    (tmp_path / "in").mkdir()
    records = labelled(4)
    whole = shard(records)
    damaged = bytearray(whole)
    damaged[len(framed(records[0])) + len(framed(records[1])) + 8] ^= 0x01  # record 2's length CRC
    (tmp_path / "in" / "s.tfrecord").write_bytes(bytes(damaged))
    config = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1, progress=False,
                  canvas_size=32)
    first = run_job(JobConfig(**config))["this_run"]
    assert (first["purified"], first["rejected"]) == (2, 1)
    data, rejects = read_output(str(tmp_path / "out"))
    assert sorted(data["id"]) == ["s.tfrecord#0", "s.tfrecord#1"] and list(rejects["id"]) == ["s.tfrecord#unreadable"]
    (tmp_path / "in" / "s.tfrecord").write_bytes(whole)
    again = run_job(JobConfig(**config, incremental=True))["this_run"]
    assert (again["read"], again["purified"]) == (2, 2)  # records 2 and 3; 0 and 1 skipped as done
    data, rejects = read_output(str(tmp_path / "out"))
    assert sorted(data["id"]) == [f"s.tfrecord#{i}" for i in range(4)] and list(rejects["id"]) == []


def test_a_zlib_compressed_file_is_read_by_its_first_bytes(tmp_path) -> None:
    import zlib

    (tmp_path / "z.tfrecord").write_bytes(zlib.compress(shard(labelled(3))))  # TensorFlow's compression_type 'ZLIB'
    out = list(read_unit(discover(str(tmp_path))[0], in_memory_bytes=STREAMED))
    assert [r["data"] for r in out if r["kind"] == "image"] == [image_bytes(16, 16, i) for i in range(3)]
    assert out[-1]["container"]["records"] == 3


def test_a_misspelt_image_column_stops_the_run_before_any_work(tmp_path, model) -> None:
    from pipeline.errors import JobError

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tfrecord").write_bytes(shard([example(photo=image_bytes(16, 16, 0), label=1)]))
    config = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model)
    with pytest.raises(JobError, match=r"--image-column phot: no feature 'phot' in the first record .*\['label', 'photo'\]"):
        plan_job(JobConfig(**config, image_column="phot"), dry_run=True)
    assert plan_job(JobConfig(**config, image_column="photo"), dry_run=True).describe()["input"]["tfrecord_files"] == 1


class _Unseekable:
    """A web server's response of unknown length: read once, from its start, no seeking; fsspec's streamed web file
    says it can seek (`claims_seekable`) and raises ValueError when asked to."""

    def __init__(self, data: bytes, claims_seekable: bool) -> None:
        import io

        self.raw, self.claims_seekable = io.BytesIO(data), claims_seekable

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)

    def seekable(self) -> bool:
        return self.claims_seekable

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, loc: int, whence: int = 0) -> int:
        raise ValueError("Cannot seek streaming HTTP file")


@pytest.mark.parametrize("claims_seekable", [False, True])
@pytest.mark.parametrize("compress", [None, "gzip", "zlib"])
def test_a_stream_that_cannot_seek_is_read_from_its_start(compress: str | None, claims_seekable: bool) -> None:
    import zlib

    from pipeline.sources import tfrecord_files

    data = shard([*labelled(2), example(image=b"\x89PNG" + bytes(3000)), *labelled(4, 3)])
    data = gzip.compress(data) if compress == "gzip" else zlib.compress(data) if compress == "zlib" else data
    f = tfrecord_files._open_records(_Unseekable(data, claims_seekable))
    records = list(tfrecord_files._records(f, None, "/in/s.tfrecord", "s.tfrecord", None, 2000, {"s.tfrecord#1"}, 1))
    assert [(r["id"], r["kind"]) for r in records] == [
        ("s.tfrecord#0", "image"), ("s.tfrecord#1", "skipped"), ("s.tfrecord#2", "reject"), ("s.tfrecord#3", "image")]
    assert records[3]["data"] == image_bytes(16, 16, 3)


FIXTURES = pathlib.Path(__file__).parent / "data" / "tfrecord"


@pytest.mark.parametrize("name", ["plain.tfrecord", "gzip.tfrecord.gz", "zlib.tfrecord"])
def test_files_tensorflow_wrote_are_read_as_it_wrote_them(tmp_path, name: str) -> None:
    # Written by TensorFlow 2.21's TFRecordWriter (tests/data/tfrecord/make_fixtures.py): framing, checksums, the three
    # compressions and the Example encoding are TensorFlow's own, not this file's encoder's
    expected = json.loads((FIXTURES / "expected.json").read_text())
    shutil.copy(FIXTURES / name, tmp_path / name)
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    images = [r for r in records if r["kind"] == "image"]
    assert [r["id"] for r in images] == [f"{name}#{i}" for i in range(len(expected))]
    for record, want in zip(images, expected, strict=True):
        assert hashlib.sha256(record["data"]).hexdigest() == want["image_sha256"]
        assert record["meta"] == {"image/class/label": want["label"], "image/object/bbox/xmin": want["xmin"],
                                  "image/filename": want["filename"], "image/format": want["format"]}
    assert records[-1]["container"]["records"] == len(expected)  # read to its end, no reject


def test_per_object_features_are_lists_in_every_row_so_their_column_keeps_its_type(tmp_path, model) -> None:
    # An Object Detection API shard: one image with one box, one with two. As scalar-or-list, the column had no one type
    # and was written as text ('0.25', '[0.25, 0.5]'); a reader wants list<double> and list<int64>
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "od.tfrecord").write_bytes(shard([
        example(image__encoded=image_bytes(16, 16, 0), image__object__bbox__xmin=[0.25],
                image__object__class__label=[3], image__class__label=1),
        example(image__encoded=image_bytes(16, 16, 1), image__object__bbox__xmin=[0.25, 0.5],
                image__object__class__label=[3, 7], image__class__label=2)]))
    run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1,
                      progress=False, canvas_size=32))
    table = pq.read_table(str(tmp_path / "out" / "data"))
    assert str(table.schema.field("image/object/bbox/xmin").type) == "list<element: double>"
    assert str(table.schema.field("image/object/class/label").type) == "list<element: int64>"
    assert str(table.schema.field("image/class/label").type) == "int64"  # one value per image: the value itself
    rows = sorted(table.select(["id", "image/object/bbox/xmin", "image/object/class/label"]).to_pylist(),
                  key=lambda r: r["id"])
    assert [(r["image/object/bbox/xmin"], r["image/object/class/label"]) for r in rows] == [
        ([0.25], [3]), ([0.25, 0.5], [3, 7])]


@pytest.mark.usefixtures("ray_local")
def test_tfds_features_json_types_each_feature_a_list_where_it_declares_one(tmp_path, model) -> None:
    # A data set TFDS wrote (tests/data/tfds): record i holds 1 + i % 3 values of each Sequence. Typed record by record,
    # `tokens` was 6 in one row and [101, 102, 103] in the next: no one Arrow type, so the column was written as text
    from pipeline.sources.tfds_metadata import declared_lists

    tfds = pathlib.Path(__file__).parent / "data" / "tfds" / "tiny" / "1.0.0"
    assert declared_lists(json.loads((tfds / "features.json").read_text())) == {
        "tokens", "labels", "words", "objects/bbox", "objects/label", "pair"}  # not one value: `one` is shape [1]
    shutil.copytree(tfds, tmp_path / "in")
    config = dict(input=str(tmp_path / "in"), checkpoint=model, steps=1, progress=False, canvas_size=32)
    run_job(JobConfig(output=str(tmp_path / "out"), **config))
    table = pq.read_table(str(tmp_path / "out" / "data"))
    types = {name: str(table.schema.field(name).type) for name in table.schema.names}
    assert {name: types[name] for name in ("tokens", "labels", "words", "objects/bbox", "pair")} == {
        "tokens": "list<element: int64>", "labels": "list<element: int64>", "words": "list<element: string>",
        "objects/bbox": "list<element: double>", "pair": "list<element: double>"}
    # one value, declared so: as before (a ClassLabel an integer, a Text a string, a Tensor of shape [] or [1] its value)
    assert {name: types[name] for name in ("label", "caption", "score", "one")} == {
        "label": "int64", "caption": "string", "score": "double", "one": "int64"}
    rows = {r["id"]: r for r in table.select(["id", "tokens", "words", "label", "caption"]).to_pylist()}
    assert len(rows) == 11
    assert rows["tiny-train.tfrecord-00000-of-00002#0"]["tokens"] in ([0], [1, 2], [2, 3, 4], [3], [4, 5], [5, 6, 7],
                                                                       [6], [7, 8])  # shuffled by TFDS as it wrote them
    assert sorted(len(r["tokens"]) for r in rows.values()) == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert all(r["words"] == [f"w{j}" for j in range(len(r["tokens"]))] for r in rows.values())
    # without features.json a record's values say nothing of the other records': one value is that value (the column
    # is then text, where other records hold more), as before
    (tmp_path / "in" / "features.json").unlink()
    metas = [r["meta"] for u in discover(str(tmp_path / "in")) for r in read_unit(u) if r["kind"] == "image"]
    assert sorted((m["tokens"], m["objects/label"]) for m in metas if not isinstance(m["tokens"], list)) == [
        (0, [1]), (3, [1]), (6, [1]), (102, [1])]  # per object: a list always


def test_a_features_json_unlike_tfds_s_is_left_and_one_that_cannot_be_read_ends_the_file(tmp_path, monkeypatch) -> None:
    from pipeline.sources import tfds_metadata

    (tmp_path / "s.tfrecord").write_bytes(shard([example(image=image_bytes(16, 16, 0), tokens=[4])]))
    (tmp_path / "features.json").write_text('{"tokens": "a list"}')  # not TFDS's: the values type the columns
    (record,) = [r for r in read_unit(discover(str(tmp_path / "s.tfrecord"))[0]) if r["kind"] == "image"]
    assert record["meta"]["tokens"] == 4
    (tmp_path / "features.json").write_text(json.dumps({"featuresDict": {"features": {"tokens": {
        "sequence": {"feature": {"tensor": {"shape": {}, "dtype": "int64"}}, "length": "-1"}}}}}))
    (record,) = [r for r in read_unit(discover(str(tmp_path / "s.tfrecord"))[0]) if r["kind"] == "image"]
    assert record["meta"]["tokens"] == [4]

    def denied(*args, **kw):
        raise PermissionError("access denied")

    # read as the other shards' are, or not at all: its records typed otherwise would not match their columns
    monkeypatch.setattr(tfds_metadata, "with_retries", denied)
    out = [r for r in read_unit(discover(str(tmp_path / "s.tfrecord"))[0]) if r["kind"] != "count"]
    assert [r["id"] for r in out] == ["s.tfrecord#unreadable"] and "access denied" in out[0]["error"]


def _length_delimited(number: int, payload: bytes) -> bytes:
    """A protobuf field `number` holding `payload` (wire type 2), its length a one-byte varint (under 128)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_a_sequence_example_is_its_records_reject_naming_it_and_its_file_is_read_to_its_end(tmp_path) -> None:
    # a video data set's record: a context (an Example's features: its wire format) and feature lists of frames. Its
    # reject said 'it has a field 2 (wire type 2), where an Example has only its features (field 1): a
    # tf.train.SequenceExample, or another message, is not read', leaving a user to guess which it is
    frame = image_bytes(4, 4, 0, "JPEG")[:100]
    frames = _length_delimited(1, _length_delimited(1, b"frames") + _length_delimited(
        2, _length_delimited(1, _length_delimited(1, _length_delimited(1, frame[:90])))))
    sequence = example(label=1, video_id=b"v0") + _length_delimited(2, frames)
    records = [sequence, example(image=image_bytes(16, 16, 1), label=0), b"\x0a\x05hello\x12\x00"]
    (tmp_path / "s.tfrecord").write_bytes(shard(records))
    got = list(read_unit(discover(str(tmp_path))[0]))
    by_id = {r["id"]: r for r in got if r["kind"] in ("image", "reject")}
    assert by_id["s.tfrecord#0"]["error"] == (
        "record 0 is not a tf.train.Example: it is a tf.train.SequenceExample (a context, field 1, and feature lists, "
        "field 2), which is not read: its feature lists' steps (a video's frames) are no one image of one row; write "
        "each image as a tf.train.Example")
    assert by_id["s.tfrecord#1"]["kind"] == "image"
    assert "SequenceExample (a context" not in by_id["s.tfrecord#2"]["error"]  # no Features in its field 1: another message
    # read to its end: recorded, so that --incremental runs skip it unread while it is unchanged
    assert got[-1]["container"]["records"] == 3
