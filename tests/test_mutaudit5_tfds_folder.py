"""Mutation audit of where the TFDS metadata of a TFRecord file is looked for (`tfds_metadata.metadata_folder`): a web
address's folder without its query or fragment, which are no part of its path (a query holding a '/' gave a folder
inside the query, and its features.json and dataset_info.json were asked of an address that is none); an object
store's key keeps its '?' (a character of the key's name there); a presigned address looks beside it for none, in
the read tasks too."""

from __future__ import annotations

import pytest

from pipeline.sources.tfds_metadata import metadata_folder


@pytest.mark.parametrize(("path", "folder"), [
    ("https://host/tf/train.tfrecord?release=2024/01", "https://host/tf"),
    ("http://host/tf/train.tfrecord#part/2", "http://host/tf"),
    ("HTTPS://host/tf/train.tfrecord?release=2024/01", "HTTPS://host/tf"),
    ("s3://bucket/run?x/train.tfrecord", "s3://bucket/run?x"),
    ("/data/tf/train.tfrecord", "/data/tf"),
])
def test_the_metadata_folder_is_the_addresses_path_less_its_file(path: str, folder: str) -> None:
    assert metadata_folder(path) == folder


def test_a_presigned_address_has_no_metadata_folder() -> None:
    signed = ("https://bucket.s3.amazonaws.com/tf/train.tfrecord?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
              "AKIAEXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=abc123")
    assert metadata_folder(signed) is None


def test_the_read_of_a_presigned_tfrecord_file_asks_the_server_for_that_file_alone(tmp_path) -> None:
    """Its read task looks for no features.json beside it either (the dry run's look is tested in test_web_refusals):
    the signature grants no other file, and each read task was refused one more request (S3: a 403 a read task)."""

    from pipeline.sources import discover, read_unit
    from tests.jobutil import image_bytes
    from tests.test_tfrecord_inputs import example, shard
    from tests.webutil import presigned_handler, serving

    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "s.tfrecord").write_bytes(shard([example(image=image_bytes(16, 16, i)) for i in range(2)]))
    signed = "/tf/s.tfrecord?X-Amz-Credential=AKIAEXAMPLE/20261207/us-east-1/s3/aws4_request&X-Amz-Signature=0123abcd"
    asked: list[str] = []

    with serving(tmp_path, presigned_handler(signed, "/tf/s.tfrecord", asked)) as url:
        (unit,) = discover(url + signed[1:])
        asked.clear()
        records = list(read_unit(unit, {}))
    assert [r["kind"] for r in records if r["kind"] in ("image", "reject")] == ["image", "image"], records
    assert set(asked) == {signed}, asked
