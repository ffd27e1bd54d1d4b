"""A features.json beside TFRecord files that is not as TFDS writes it types no column, as the docs say, and never
makes the files unreadable: before, one nested deeper than Python's JSON parser goes (a RecursionError, not a
ValueError) raised out of the reading, and every record of every shard beside it was one '#unreadable' reject."""

from __future__ import annotations

from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes
from tests.test_tfrecord_inputs import example, shard


def test_a_features_json_nested_too_deep_to_parse_leaves_the_records_typed_by_their_values(tmp_path) -> None:
    (tmp_path / "s.tfrecord").write_bytes(shard([example(image=image_bytes(16, 16, i), tokens=[4]) for i in range(2)]))
    (tmp_path / "features.json").write_text("[" * 100_000 + "]" * 100_000)
    records = [r for r in read_unit(discover(str(tmp_path / "s.tfrecord"))[0]) if r["kind"] != "count"]
    assert [(r["kind"], r["id"]) for r in records] == [("image", "s.tfrecord#0"), ("image", "s.tfrecord#1")]
    assert [r["meta"]["tokens"] for r in records] == [4, 4]  # as without a features.json
