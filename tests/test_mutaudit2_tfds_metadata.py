"""TFDS's metadata files read without TFDS (`pipeline.sources.tfds_metadata`): the cases the TFDS tests let a mutant
through (a mutation audit). A dataset_info.json as TFDS writes it gives each shard's records unread (no request
spent on their headers); one that is not so gives nothing, and the shards are counted from their headers as if it were
not there: never a wrong total, nor none where the headers give one. A features.json declares which features are a
list in every record."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from pipeline.config import JobConfig
from pipeline.job import progress_total
from pipeline.plan import plan_job
from pipeline.sources import tfds_metadata, tfrecord_count
from pipeline.sources.tfds_metadata import declared_lists
from tests.test_tfrecord_inputs import labelled, shard

NAMES = {"train": ["d-train.tfrecord-00000-of-00002", "d-train.tfrecord-00001-of-00002"]}


def _tfds(root: pathlib.Path, lengths: list[int], names: list[str] | None = None, **split: Any) -> dict[str, Any]:
    """A prepared data set's 'train' split of shards holding `lengths` records, and the dataset_info.json TFDS writes
    for it (returned, for a test to alter and write again), its split's fields replaced by `split`'s."""
    root.mkdir(parents=True, exist_ok=True)
    names = names or [f"d-train.tfrecord-{i:05d}-of-{len(lengths):05d}" for i in range(len(lengths))]
    data_bytes = 0
    for i, name in enumerate(names):
        records = labelled(sum(lengths[: i + 1]), sum(lengths[:i]))
        data_bytes += sum(map(len, records))
        (root / name).write_bytes(shard(records))
    info = {"fileFormat": "tfrecord", "name": "d", "version": "1.0.0",
            "splits": [{"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "name": "train",
                        "numBytes": str(data_bytes), "shardLengths": [str(n) for n in lengths], **split}]}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return info


def _config(tmp_path: pathlib.Path, model: str) -> JobConfig:
    return JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1,
                     canvas_size=32)


def _total(tmp_path: pathlib.Path, model: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int | None, int]:
    """The progress total, and how many files were counted from their headers (not from dataset_info.json)."""
    plan = plan_job(_config(tmp_path, model), dry_run=True)
    counted = []
    original = tfrecord_count.count_file

    def count_file(*args, **kw):
        counted.append(args[0])
        return original(*args, **kw)

    with monkeypatch.context() as m:
        m.setattr(tfrecord_count, "count_file", count_file)
        return progress_total(plan, {}), len(counted)


@pytest.mark.parametrize("written", ["4.9", "older", "template"])
def test_a_dataset_info_json_as_tfds_writes_it_gives_the_counts_unread(tmp_path, model, monkeypatch, written) -> None:
    if written == "template":  # a split's template of its own, numbering its shards apart
        _tfds(tmp_path / "in", [3, 2], [f"d-train-{i:05d}-of-00002.tfrecord" for i in range(2)],
              filepathTemplate="{DATASET}-{SPLIT}-{SHARD_INDEX}-of-{NUM_SHARDS}.{FILEFORMAT}")
    else:
        info = _tfds(tmp_path / "in", [3, 2])
        if written == "older":  # no template (TFDS's default) and no file format (TFRecord)
            del info["splits"][0]["filepathTemplate"], info["fileFormat"]
            (tmp_path / "in" / "dataset_info.json").write_text(json.dumps(info))
    assert _total(tmp_path, model, monkeypatch) == (5, 0)


def test_an_empty_shard_tfds_wrote_is_counted_unread(tmp_path, model, monkeypatch) -> None:
    # a split of fewer records than shards leaves a shard empty: 0 records is a count, not a file unlike TFDS's
    _tfds(tmp_path / "in", [3, 0, 2])
    assert _total(tmp_path, model, monkeypatch) == (5, 0)


def test_a_large_dataset_info_json_is_read(tmp_path, model, monkeypatch) -> None:
    # a split of 30,000 shards (another split of the same data set) makes a dataset_info.json of some 200 KB
    info = _tfds(tmp_path / "in", [3, 2])
    info["splits"].append({"name": "test", "numBytes": "0", "shardLengths": ["1"] * 30_000})
    (tmp_path / "in" / "dataset_info.json").write_text(json.dumps(info, indent=2))
    assert (tmp_path / "in" / "dataset_info.json").stat().st_size > 200_000
    assert _total(tmp_path, model, monkeypatch) == (5, 0)


def test_a_splits_records_are_summed_once_not_once_a_shard(monkeypatch) -> None:
    # summed again for each of its shards, a split of a million shards (a dataset_info.json of 10 MB, well within what
    # is read) took hours to plan: the work grew with the square of its shards
    summed = []

    def counted_sum(values, *start):
        summed.append(1)
        return sum(values, *start)

    info = {"name": "d", "splits": [{"name": "train", "numBytes": "0", "shardLengths": ["1"] * 1000},
                                    {"name": "test", "numBytes": "0", "shardLengths": ["1"] * 10}]}
    monkeypatch.setattr(tfds_metadata, "sum", counted_sum, raising=False)
    shards = tfds_metadata.listed_shards(info)
    assert len(shards) == 1010 and shards["d-train.tfrecord-00999-of-01000"].split_records == 1000
    assert len(summed) == 2


def test_a_dataset_info_json_over_the_size_tfds_could_write_is_not_read(tmp_path, model, monkeypatch) -> None:
    _tfds(tmp_path / "in", [3, 2])
    size = (tmp_path / "in" / "dataset_info.json").stat().st_size
    monkeypatch.setattr(tfds_metadata, "MAX_METADATA_BYTES", size)  # a file of exactly the limit is read
    assert _total(tmp_path, model, monkeypatch) == (5, 0)
    monkeypatch.setattr(tfds_metadata, "MAX_METADATA_BYTES", size - 1)  # one over it is not: the headers count
    assert _total(tmp_path, model, monkeypatch) == (5, 2)


def test_a_dataset_info_json_whose_storage_gives_no_size_is_read(tmp_path, model, monkeypatch) -> None:
    # a web server may give no length: the file is read all the same (its size unknown is no reason to refuse it)
    from fsspec.implementations.local import LocalFileSystem

    _tfds(tmp_path / "in", [3, 2])
    original = LocalFileSystem.size
    monkeypatch.setattr(LocalFileSystem, "size",
                        lambda self, path: None if path.endswith("dataset_info.json") else original(self, path))
    assert _total(tmp_path, model, monkeypatch) == (5, 0)


@pytest.mark.parametrize("altered", [
    "[1, 2]",  # no JSON object
    {"shardLengths": ["3", True]},  # a count that is no number, the split's framing made to add up with it (3 + 1)
    {"shardLengths": ["4", "-1"]},  # a negative count, the framing made to add up with it (4 - 1)
    {"filepathTemplate": 5},  # a template that is no text
    {"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y"},  # one str.format cannot fill
    {"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{0}"},
])
def test_a_dataset_info_json_not_as_tfds_writes_it_leaves_the_shards_counted_from_their_headers(
        tmp_path, model, monkeypatch, altered) -> None:
    info = _tfds(tmp_path / "in", [3, 2])
    if isinstance(altered, str):
        (tmp_path / "in" / "dataset_info.json").write_text(altered)
    else:
        split = info["splits"][0]
        if "shardLengths" in altered:  # numBytes as if the counts were true, so that the shards' sizes add up
            taken = sum(int(n) for n in altered["shardLengths"])
            split["numBytes"] = str(int(split["numBytes"]) + 16 * (5 - taken))
        split.update(altered)
        (tmp_path / "in" / "dataset_info.json").write_text(json.dumps(info))
    assert _total(tmp_path, model, monkeypatch) == (5, 2)


def _tensor(*dims: int, encoding: str = "none") -> dict[str, Any]:
    return {"tensor": {"dtype": "int64", "encoding": encoding, "shape": {"dimensions": [str(d) for d in dims]}}}


def _sequence(feature: dict[str, Any], length: int | None = -1) -> dict[str, Any]:
    return {"sequence": {"feature": feature, **({} if length is None else {"length": str(length)})}}


@pytest.mark.parametrize(("feature", "is_list"), [
    (_tensor(-1, -1), True),  # a ragged matrix: a list, though -1 × -1 is 1
    (_tensor(0), True),  # no value: an empty list
    (_tensor(2, encoding="zlib"), False),  # an encoded tensor: one bytes value
    (_tensor(2, encoding="bytes"), False),
    ({"boundingBox": {"dtype": "float32", "shape": {"dimensions": ["4"]}}}, True),  # one box: 4 values
    (_sequence(_sequence(_tensor(), length=1)), True),  # a sequence of one-value sequences: still a list
    (_sequence(_tensor(), length=None), True),  # a Sequence of no declared length: any
    (_sequence(_tensor(), length=1), False),  # of length 1: its one value
    (_sequence({"audio": {"dtype": "int64"}}), False),  # a kind not known: its values type it
])
def test_features_json_declares_a_list_where_a_feature_holds_not_exactly_one_value(feature, is_list: bool) -> None:
    features = {"featuresDict": {"features": {"f": feature}}}
    assert declared_lists(features) == (frozenset({"f"}) if is_list else frozenset())
