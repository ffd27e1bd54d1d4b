"""Mutation audit of a zip archive's sidecar members (`zip_archives._zip_sidecars`, `_sidecar_meta`): a member that is
hidden, a link, one of two names of one path or under a '..' folder is read, or refused, as it is without sidecars,
never paired as an image's columns; an encrypted sidecar and one at the size limit are said as they are."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes
from tests.test_mutation_audit_sources import _flagged_encrypted

X = image_bytes(8, 8, 0, "JPEG")


def _zip(tmp_path: Path, members: list[tuple[str, bytes] | zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]]) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for member in members:
            archive.writestr(*member)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.zip").write_bytes(buf.getvalue())
    return tmp_path / "in"


def _records(root: Path, **read: object) -> tuple[dict[str, dict], dict]:
    (unit,) = discover(str(root))
    records = list(read_unit(unit, join_metadata=True, **read))
    by_id = {r.get("id", r.get("name")): r for r in records if r["kind"] != "count"}
    (count,) = [r for r in records if r["kind"] == "count"]
    return by_id, count


def test_hidden_members_stay_hidden_not_sidecars(tmp_path) -> None:
    # a folder named '_old/' is skipped whole, and counted so (a mislabelled '_train/' is found by that count)
    records, count = _records(_zip(tmp_path, [("_old/x.jpg", X), ("_old/x.txt", b"a cat"), ("d/.y.txt", b"a dog"),
                                              ("d/.y.jpg", X)]))
    assert records == {}
    assert count["hidden"] == 4 and "sidecars" not in count["container"]


def test_members_under_a_dotdot_folder_are_refused_not_paired(tmp_path) -> None:
    records, _ = _records(_zip(tmp_path, [("../x.jpg", X), ("../x.txt", b"a cat")]))
    assert {id_: r["kind"] for id_, r in records.items()} == {"a.zip/../x.jpg": "reject", "a.zip/../x.txt": "reject"}
    assert "has a '..' folder in its path" in records["a.zip/../x.txt"]["error"]


def _link(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def test_a_link_named_as_a_sidecar_is_read_as_a_link_not_as_a_caption(tmp_path) -> None:
    # a link's bytes are its target's path: as a caption, the image's row got 'd/y.png' as its text
    records, _ = _records(_zip(tmp_path, [("d/x.jpg", X), _link("d/x.txt", "y.png"), ("d/y.png", image_bytes(8, 8, 1))]))
    assert records["a.zip/d/x.jpg"]["meta"] == {}
    assert records["a.zip/d/x.txt"]["kind"] == "image" and records["a.zip/d/x.txt"]["data"] == image_bytes(8, 8, 1)


def test_two_names_of_one_sidecar_path_are_one_reject_naming_both_not_one_caption(tmp_path) -> None:
    # 'd/x.txt' and 'd//x.txt' are one file extracted: pairing one of them as the caption dropped the other unsaid
    records, _ = _records(_zip(tmp_path, [("d/x.jpg", X), ("d/x.txt", b"a cat"), ("d//x.txt", b"a dog")]))
    assert records["a.zip/d/x.jpg"]["meta"] == {}
    assert records["a.zip/d/x.txt"]["kind"] == "reject"
    assert records["a.zip/d/x.txt"]["error"].startswith("zip members 'd/x.txt' and 'd//x.txt' are one path")


def test_an_encrypted_sidecar_makes_its_image_a_reject_saying_so(tmp_path) -> None:
    root = _zip(tmp_path, [("d/x.jpg", X), ("d/x.txt", b"a cat")])
    (root / "a.zip").write_bytes(_flagged_encrypted((root / "a.zip").read_bytes(), b"d/x.txt"))
    records, _ = _records(root)
    assert records["a.zip/d/x.jpg"]["kind"] == "reject"
    assert records["a.zip/d/x.jpg"]["error"] == ("its sidecar member d/x.txt is encrypted, so the image is not purified "
                                                 "without its columns")


def test_a_sidecar_member_of_the_limits_size_is_read(tmp_path) -> None:
    root = _zip(tmp_path, [("d/x.jpg", X), ("d/x.txt", b"c" * 1500), ("d/y.jpg", X), ("d/y.txt", b"c" * 1501)])
    records, _ = _records(root, max_image_bytes=1500)
    assert records["a.zip/d/x.jpg"]["meta"] == {"txt": "c" * 1500}
    assert records["a.zip/d/y.jpg"]["error"].startswith("its sidecar member d/y.txt is 0.0 MiB (1,501 bytes), over "
                                                        "--max-image-mb ")


def test_a_metadata_file_beside_an_image_named_metadata_is_joined_not_its_sidecar(tmp_path) -> None:
    # 'metadata.csv' fits 'metadata.png' as a sidecar's name would: it is the folder's metadata file all the same, not
    # a 'csv' column of that one image holding the whole table
    root = _zip(tmp_path, [("d/metadata.png", X), ("d/x.png", X),
                           ("d/metadata.csv", b"file_name,label\nmetadata.png,3\nx.png,4\n")])
    records, count = _records(root)
    assert records["a.zip/d/metadata.png"]["meta"] == {"file_name": "metadata.png", "label": 3}
    assert records["a.zip/d/x.png"]["meta"] == {"file_name": "x.png", "label": 4}
    assert count["container"]["metadata"] == ["a.zip/d/metadata.csv"] and "sidecars" not in count["container"]
