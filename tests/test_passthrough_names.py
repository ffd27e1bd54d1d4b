"""Pass-through columns named like the job's own, or like each other, and names that are not UTF-8 (review, Dec 3).

An input's own `id`, `source`, ... reach the output as input_id, input_source; a tar key's sidecars that give one
column keep both values or make the key a reject; a name that is not UTF-8 gives an id that is text (its odd bytes as
\\xNN), the same in every run; a Parquet input's column types are kept."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import discover, read_unit
from pipeline.stages import batch_of, canvas_seed, part_name, write_stage
from tests.jobutil import image_bytes, read_output, small_job_config, tar_bytes


def _read(folder: Path, skip: frozenset[str] = frozenset()) -> list[dict]:
    """Every image and reject record of the units under `folder`."""
    return [r for unit in discover(str(folder)) for r in read_unit(unit, skip_ids=skip)
            if r["kind"] in ("image", "reject", "skipped")]


def _written(tmp_path: Path, records: list[dict]) -> pa.Table:
    """The data table write_stage makes of reader records, as if decoded and purified (the input bytes as the PNG)."""
    images = [{**{k: v for k, v in r.items() if k != "data"}, "png": r["data"], "width": 8, "height": 8}
              for r in records if r["kind"] == "image"]
    manifest = write_stage(batch_of(images), str(tmp_path / "out"), {})
    (name,) = json.loads(manifest["files"][0])
    return pq.read_table(tmp_path / "out" / name)


def _non_utf8(folder: Path, name: bytes, data: bytes) -> bytes:
    try:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(data)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    return name


def _latin1_tar(members: dict[str, bytes]) -> bytes:
    """A tar whose names are stored as latin-1 bytes (GNU tar on a latin-1 disk): 'café' is b'caf\\xe9'."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _unescape(text: str) -> bytes:
    """The bytes a `text_name` stands for (\\xNN: that byte; \\\\: a backslash)."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1] == "x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif text[i] == "\\" and text[i + 1] == "\\":
            out.append(ord("\\"))
            i += 2
        else:
            out += text[i].encode()
            i += 1
    return bytes(out)


# --- an input's own columns named like the job's ---

def test_a_tar_json_sidecars_id_width_and_source_keys_are_kept_under_input_names(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1),
                                                "0001.json": json.dumps({"id": 42, "width": 640, "source": "flickr",
                                                                         "input_id": "older"}).encode()}))
    table = _written(tmp_path, _read(tmp_path))
    row = table.to_pylist()[0]
    assert row["id"] == "s.tar/0001" and row["width"] == 8 and row["source"].endswith("s.tar:0001.png")
    assert (row["input_id"], row["input_width"], row["input_source"]) == (42, 640, "flickr")
    assert row["input_input_id"] == "older"  # a name already taken by a renamed one moves on, never over it


def test_a_parquet_inputs_own_original_path_and_psnr_columns_are_kept_beside_the_jobs(tmp_path) -> None:
    images = pa.array([{"bytes": image_bytes(8, 8, 1), "path": "a.png"}],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images, "original_path": ["/old/a.png"], "psnr_vs_input_db": [31.5],
                             "downscale_factor": ["x"]}), tmp_path / "t.parquet")
    row = _written(tmp_path, _read(tmp_path)).to_pylist()[0]
    assert row["original_path"] == "a.png" and row["input_original_path"] == "/old/a.png"
    assert row["input_psnr_vs_input_db"] == 31.5 and row["input_downscale_factor"] == "x"
    assert row["psnr_vs_input_db"] is None  # the job's own column (not purified here), not the input's value


def _one_name_in_any_case(names: list[str]) -> bool:
    """No two columns differ only in case: DuckDB, Spark, Hive and Athena take `Source` and `source` for one name."""
    return len({name.lower() for name in names}) == len(names)


def test_a_parquet_inputs_columns_named_like_the_jobs_in_another_case_get_input_before_them(tmp_path) -> None:
    # A Parquet input's `ID`, `Source` and `Width` were written as they were, beside the job's `id`, `source` and
    # `width`. DuckDB, whose names have no case, renamed the later of each two (`ID_1`, `source_1`): `SELECT source`
    # gave the input's 'flickr', not the job's URI, and `SELECT ID` the job's id, not the input's 101; Spark refuses
    # such a file ("Found duplicate column(s)"). They are input_ID, input_Source, input_Width now, as `id` is input_id.
    pq.write_table(pa.table({"image": pa.array([image_bytes(8, 8, 1)], pa.binary()), "ID": [101],
                             "Source": ["flickr"], "Width": [640], "Input_ID": ["older"], "Label": ["cat"]}),
                   tmp_path / "t.parquet")
    table = _written(tmp_path, _read(tmp_path))
    assert _one_name_in_any_case(table.schema.names), table.schema.names
    row = table.to_pylist()[0]
    assert (row["id"], row["width"]) == ("t.parquet#0", 8) and row["source"].endswith("t.parquet#0")
    assert (row["input_ID"], row["input_Source"], row["input_Width"]) == (101, "flickr", 640)
    assert row["input_Input_ID"] == "older"  # `input_` in any case before a job's name moves on too, as input_id does
    assert row["Label"] == "cat"  # named like no job column: kept


def test_a_tar_json_sidecars_keys_named_like_the_jobs_in_another_case_get_input_before_them(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1),
                                                "0001.json": json.dumps({"Source": "flickr", "HEIGHT": 480}).encode()}))
    table = _written(tmp_path, _read(tmp_path))
    assert _one_name_in_any_case(table.schema.names), table.schema.names
    row = table.to_pylist()[0]
    assert (row["input_Source"], row["input_HEIGHT"], row["height"]) == ("flickr", 480, 8)


def test_a_purified_output_read_again_keeps_its_ids_and_sources_under_input_names(tmp_path) -> None:
    # pass 1: a Parquet input with its own id and source, written as the job writes it
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image": pa.array([image_bytes(8, 8, k) for k in range(2)], pa.binary()),
                             "id": ["img-001", "img-002"], "source": ["laion", "cc3m"], "caption": ["a", "b"]}),
                   tmp_path / "in" / "t.parquet")
    first = _written(tmp_path, _read(tmp_path / "in")).to_pylist()
    assert [r["input_id"] for r in first] == ["img-001", "img-002"]
    # pass 2: that output's data/ as the input (--input OUT/data)
    (tmp_path / "out").rename(tmp_path / "out1")
    second = sorted(_written(tmp_path, _read(tmp_path / "out1" / "data")).to_pylist(), key=lambda r: r["input_id"])
    assert [r["input_id"] for r in second] == ["t.parquet#0", "t.parquet#1"]  # pass 1's ids
    assert [r["input_input_id"] for r in second] == ["img-001", "img-002"]  # the user's own, still there
    assert [r["input_source"].rsplit("/", 1)[-1] for r in second] == ["t.parquet#0", "t.parquet#1"]
    assert [r["input_input_source"] for r in second] == ["laion", "cc3m"]
    assert [r["caption"] for r in second] == ["a", "b"]
    assert [r["original_path"] for r in second] == ["t.parquet_0.png", "t.parquet_1.png"]  # pass 1's image path
    assert all(r["id"].startswith("part-") and "#" in r["id"] for r in second)


@pytest.mark.usefixtures("ray_local")
def test_a_whole_run_over_an_earlier_outputs_data_keeps_its_ids(tmp_path, model) -> None:
    from pipeline.job import run_job

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    (tmp_path / "in" / "b.png").write_bytes(image_bytes(8, 8, 2))
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    again = small_job_config(tmp_path, model, input=str(tmp_path / "out" / "data"), output=str(tmp_path / "out2"))
    assert run_job(again)["status"] == "complete"
    data, rejects = read_output(str(tmp_path / "out2"))
    assert len(rejects) == 0 and sorted(data["input_id"]) == ["a.png", "b.png"]
    assert sorted(s.rsplit("/", 1)[-1] for s in data["input_source"]) == ["a.png", "b.png"]
    assert data["input_source_sha256"].notna().all() and data["input_psnr_vs_input_db"].notna().all()


# --- sidecars of one tar key that give one column ---

def test_a_json_label_beside_a_cls_label_keeps_both(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1), "0001.cls": b"3",
                                                "0001.json": b'{"label": "tench", "json_label": "x", "score": 1}'}))
    (record,) = _read(tmp_path)
    assert record["kind"] == "image"
    assert record["meta"] == {"label": 3, "json_label": "x", "json_json_label": "tench", "score": 1}


def test_a_json_seg_png_key_beside_a_seg_png_mask_keeps_both(tmp_path) -> None:
    mask = image_bytes(8, 8, 9)
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1), "0001.seg.png": mask,
                                                "0001.json": b'{"seg_png": "masks/0001.png"}'}))
    (record,) = _read(tmp_path)
    assert record["meta"] == {"seg_png": mask, "json_seg_png": "masks/0001.png"}


def test_two_sidecar_members_that_give_one_column_make_the_key_a_reject_naming_both(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1), "0001.cls": b"3",
                                                "0001.label": b"cat", "0002.png": image_bytes(8, 8, 2)}))
    records = {r["id"]: r for r in _read(tmp_path)}
    assert records["s.tar/0002"]["kind"] == "image"
    reject = records["s.tar/0001"]
    assert reject["kind"] == "reject" and "0001.cls" in reject["error"] and "0001.label" in reject["error"]


def test_pass_through_columns_never_reach_the_rejects_table(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1), "0001.cls": b"3",
                                                "0001.label": b"cat"}))
    manifest = write_stage(batch_of(_read(tmp_path)), str(tmp_path / "out"), {})
    (name,) = json.loads(manifest["files"][0])
    assert pq.read_schema(tmp_path / "out" / name).names == ["id", "source", "source_sha256", "stage", "error",
                                                            "rejected_at"]


# --- names that are not UTF-8 ---

def test_a_tar_shard_and_member_named_in_latin1_give_text_ids_that_resume_skips(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    _non_utf8(tmp_path / "in", b"s\xe9.tar", _latin1_tar({"café.png": image_bytes(8, 8, 1), "café.cls": b"1",
                                                           "plain.png": image_bytes(8, 8, 2)}))
    records = _read(tmp_path / "in")
    assert sorted(r["id"] for r in records) == ["s\\xe9.tar/caf\\xe9", "s\\xe9.tar/plain"]
    assert all(r["kind"] == "image" for r in records)
    assert {r["id"]: r["meta"] for r in records}["s\\xe9.tar/caf\\xe9"] == {"label": 1}
    source = {r["id"]: r["source"] for r in records}["s\\xe9.tar/caf\\xe9"]
    assert os.path.exists(_unescape(source.rsplit(":", 1)[0]))  # the source finds the shard
    table = _written(tmp_path, records)  # a Parquet string must be UTF-8: the write works
    assert sorted(table.column("id").to_pylist()) == ["s\\xe9.tar/caf\\xe9", "s\\xe9.tar/plain"]
    (unit,) = discover(str(tmp_path / "in"))  # the next run: the ids are the same, so both are skipped
    (count,) = read_unit(unit, skip_ids=frozenset(table.column("id").to_pylist()))
    assert (count["n"], count["skipped"]) == (0, 2)


def test_a_zip_archive_named_in_latin1_gives_text_ids(tmp_path) -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.png", image_bytes(8, 8, 1))
    _non_utf8(tmp_path, b"z\xe9.zip", buf.getvalue())
    (record,) = _read(tmp_path)
    assert record["id"] == "z\\xe9.zip/a.png" and record["id"].encode("utf-8")
    assert os.path.exists(_unescape(record["source"].rsplit(":", 1)[0]))


def test_a_file_name_that_is_not_utf8_keeps_its_other_bytes_and_backslashes_reversibly(tmp_path) -> None:
    _non_utf8(tmp_path, b"a\\b\xe9.png", image_bytes(8, 8, 1))
    (record,) = _read(tmp_path)
    assert record["id"] == "a\\\\b\\xe9.png"
    assert os.path.exists(_unescape(record["source"]))


def test_a_file_named_like_the_escaped_name_of_another_stops_the_run_naming_both(tmp_path) -> None:
    _non_utf8(tmp_path, b"caf\xe9.png", image_bytes(8, 8, 1))
    (tmp_path / "caf\\xe9.png").write_bytes(image_bytes(8, 8, 2))  # a literal backslash: the same id
    with pytest.raises(ValueError, match="not UTF-8") as stop:
        discover(str(tmp_path))
    assert "caf\\xe9.png" in str(stop.value)


def test_an_input_folder_named_in_latin1_leaves_its_files_ids_as_they_are(tmp_path) -> None:
    folder = os.path.join(os.fsencode(tmp_path), b"in\xe9")
    try:
        os.mkdir(folder)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with open(os.path.join(folder, b"a.png"), "wb") as f:
        f.write(image_bytes(8, 8, 1))
    (unit,) = discover(os.fsdecode(folder))
    image, _count = read_unit(unit)
    assert image["id"] == "a.png" and image["source"].endswith("in\\xe9/a.png")


def test_a_json_sidecar_value_with_a_lone_surrogate_is_written(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1),
                                                "0001.json": b'{"caption": "a\\ud800b", "\\udce9": 1}'}))
    row = _written(tmp_path, _read(tmp_path)).to_pylist()[0]
    assert row["caption"] == "a\\ud800b" and row["\\xe9"] == 1


def test_a_caption_that_is_not_utf8_leaves_the_txt_column_text_with_its_bytes_escaped(tmp_path) -> None:
    # one latin-1 .txt made the whole part file's txt column binary (Arrow makes text and bytes one binary column)
    (tmp_path / "s.tar").write_bytes(tar_bytes({
        "a.png": image_bytes(8, 8, 1), "a.txt": b"a cat", "b.png": image_bytes(8, 8, 2),
        "b.txt": "caf\u00e9 \\ au lait".encode("latin-1"), "c.png": image_bytes(8, 8, 3), "c.en.txt": b"\xff",
        "d.png": image_bytes(8, 8, 4), "d.seg.png": b"\x89PNG\xff"}))  # a mask stays bytes
    table = _written(tmp_path, _read(tmp_path))
    assert table.schema.field("txt").type == pa.string() and table.schema.field("en_txt").type == pa.string()
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["s.tar/a"]["txt"] == "a cat" and rows["s.tar/c"]["en_txt"] == "\\xff"
    assert rows["s.tar/b"]["txt"] == "caf\\xe9 \\\\ au lait"  # a backslash doubled: the bytes read back
    assert _unescape(rows["s.tar/b"]["txt"]) == "caf\u00e9 \\ au lait".encode("latin-1")
    assert table.schema.field("seg_png").type == pa.binary() and rows["s.tar/d"]["seg_png"] == b"\x89PNG\xff"


def test_a_parquet_inputs_binary_caption_column_stays_binary(tmp_path) -> None:
    pq.write_table(pa.table({"image": pa.array([image_bytes(8, 8, k) for k in range(2)], pa.binary()),
                             "caption": pa.array([b"a cat", b"caf\xe9"], pa.binary())}), tmp_path / "t.parquet")
    table = _written(tmp_path, _read(tmp_path))
    assert table.schema.field("caption").type == pa.binary()
    assert sorted(table.column("caption").to_pylist()) == [b"a cat", b"caf\xe9"]


def test_ids_that_are_not_text_name_a_part_file_and_seed_a_canvas_as_text_ids_do() -> None:
    assert part_name(["caf\udce9"]).startswith("part-") and isinstance(canvas_seed(0, ["caf\udce9"]), int)
    # text ids: the same name and seed as before (resumed runs write the same part files)
    assert part_name(["b", "a"]) == "part-" + __import__("hashlib").sha1(b"a\nb").hexdigest()[:20] + ".parquet"


# --- a Parquet input's column types ---

def test_a_parquet_inputs_column_types_are_kept(tmp_path) -> None:
    pq.write_table(pa.table({
        "image": pa.array([image_bytes(8, 8, k) for k in range(2)], pa.binary()),
        "score": pa.array([0.5, None], pa.float32()), "count": pa.array([1, 2], pa.int32()),
        "tag": pa.array(["x", "y"]).dictionary_encode(), "when": pa.array([1, 2], pa.timestamp("ms", "UTC")),
        "box": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())), "id": pa.array([7, 8], pa.int16())}),
        tmp_path / "t.parquet")
    schema = _written(tmp_path, _read(tmp_path)).schema
    assert schema.field("score").type == pa.float32() and schema.field("count").type == pa.int32()
    assert schema.field("tag").type == pa.dictionary(pa.int32(), pa.string())
    assert schema.field("when").type == pa.timestamp("ms", "UTC")
    assert schema.field("box").type == pa.list_(pa.float32())
    assert schema.field("input_id").type == pa.int16() and schema.field("id").type == pa.string()
