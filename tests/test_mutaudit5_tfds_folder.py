"""Mutation audit of where the TFDS metadata of a TFRecord file is looked for (`tfds_metadata.metadata_folder`): a web
address's folder without its query or fragment, which are no part of its path (a query holding a '/' gave a folder
inside the query, and its features.json and dataset_info.json were asked of an address that is none); an object
store's key keeps its '?' (a character of the key's name there); a presigned address looks beside it for none."""

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
