"""Mutation audit of tar member ids by their paths ('./x' -> 's.tar/x') against outputs an earlier version made
('s.tar/./x'): which of an output's ids the run's read tasks are told (`ledger.tar_ids_named_otherwise`: './' and
empty folders alike), and a tarred image folder's metadata member keeping the id such an output holds."""

from __future__ import annotations

from pathlib import Path

from pipeline.ledger import tar_ids_named_otherwise
from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes
from tests.test_tar_member_paths import _shard

A = image_bytes(8, 8, 1)


def test_the_ids_an_earlier_version_named_from_member_names_are_found_of_their_shard(tmp_path: Path) -> None:
    _shard(tmp_path / "in", [("./a.png", A)])
    (tmp_path / "in" / "z.zip").write_bytes(b"")
    units = discover(str(tmp_path / "in"))
    shard = next(u.paths[0] for u in units if u.kind == "tar")
    ids = ["s.tar/./a", "s.tar/cat//b", "s.tar/c", "s.tar/d/./e", "z.zip/./f", "x/./y.png"]
    # './a.png' and 'cat//b.png' both: the ids of a shard's members with a '.' or an empty folder in their names
    assert tar_ids_named_otherwise(ids, units) == {shard: ["s.tar/./a", "s.tar/cat//b", "s.tar/d/./e"]}
    assert tar_ids_named_otherwise(["s.tar/a", "s.tar/c"], units) == {}


def test_a_tarred_metadata_member_keeps_the_id_an_earlier_output_holds(tmp_path: Path) -> None:
    # an older version's reject of './train/metadata.csv' (a join that failed then): joined now, that reject is the
    # one made untrue, under its own id
    _shard(tmp_path / "in", [("./train/0.png", A), ("./train/metadata.csv", b"file_name,label\n0.png,3\n")])
    (unit,) = discover(str(tmp_path / "in"))
    records = list(read_unit(unit, join_metadata=True, named_ids={"s.tar/./train/metadata.csv"}))
    assert records[-1]["container"]["metadata"] == ["s.tar/./train/metadata.csv"]
    records = list(read_unit(unit, join_metadata=True))
    assert records[-1]["container"]["metadata"] == ["s.tar/train/metadata.csv"]


def test_a_key_whose_new_id_is_done_is_skipped_under_it_whatever_its_earlier_id(tmp_path: Path) -> None:
    # an output holding both ids (two versions' runs): the key's own, done, wins; taking the earlier one, a reject to
    # read again, would write a second row of the same member
    _shard(tmp_path / "in", [("./b.png", A)])
    (unit,) = discover(str(tmp_path / "in"))
    *records, count = read_unit(unit, skip_ids={"s.tar/b"}, named_ids={"s.tar/./b"})
    assert records == [] and count["skipped"] == 1


def test_the_plannings_compare_finds_an_earlier_versions_reject_of_a_member_under_its_id(tmp_path: Path) -> None:
    # a shard grown since (appended to) whose member './bad.png' an earlier version rejected as 's.tar/./bad': read to
    # compare with the output's rows, that reject is found as it was, not taken for a member gone (a changed input)
    import hashlib

    from pipeline.changes import _members_same, _row_fingerprint

    bad = b"not an image"
    _shard(tmp_path / "in", [("./a.png", A), ("./bad.png", bad), ("./c.png", image_bytes(8, 8, 3))])
    (unit,) = discover(str(tmp_path / "in"))
    rows = {"s.tar/./bad": _row_fingerprint("rejects", {"source": f"{unit.paths[0]}:./bad.png",
                                                         "source_sha256": hashlib.sha256(bad).hexdigest()})}
    same, read = _members_same(unit, rows, set(), {}, {})
    assert same is True and read is not None
