"""`--labels-from-folders` over tar shards: a tarred image folder (CIFAR-10's `cifar10-test.tar.gz`, `test/<class>/
0000.jpg`) gets each image's folder as its `label`, as a zip archive's members and a folder's files do. Before, the flag
was taken without a word and the output had no `label` column (found running the job on that archive, Dec 7)."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import pytest

from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes, read_output, small_job_argv, tar_bytes


def _cli(argv: list[str]) -> int:
    from pipeline.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz of `members` with the folders' own entries first, as `tar czf` of an image folder makes it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in sorted({name.rsplit("/", 1)[0] + "/" for name in members if "/" in name}):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


@pytest.mark.usefixtures("ray_local")
def test_a_tarred_image_folder_gets_its_folders_as_labels_on_the_command_line(tmp_path, model) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "test.tar.gz").write_bytes(_tar_gz({
        "test/cat/0000.jpg": image_bytes(8, 8, 1, "JPEG"), "test/dog/0000.jpg": image_bytes(8, 8, 2, "JPEG"),
        "test/dog/0001.jpg": image_bytes(8, 8, 3, "JPEG")}))
    assert _cli(small_job_argv(tmp_path, model, "--labels-from-folders", "true")) == 0
    data, rejects = read_output(str(tmp_path / "out"))
    assert rejects.empty
    assert sorted(zip(data["id"], data["label"], strict=True)) == [
        ("test.tar.gz/test/cat/0000", "cat"), ("test.tar.gz/test/dog/0000", "dog"), ("test.tar.gz/test/dog/0001", "dog")]


def test_a_keys_own_label_and_a_metadata_rows_label_win_over_its_folders(tmp_path) -> None:
    """A key's `.cls` (or a `.json` `Label`) is written for that image: the folder's name stays in the id alone. A
    tarred image folder's metadata row's `label` wins over the folder's, as in a folder.
    At the shard's top there is no folder: None, as in a zip archive. Without the flag, no `label` column."""
    (tmp_path / "s.tar").write_bytes(tar_bytes({
        "a/cat/0.png": image_bytes(8, 8, 1), "a/cat/0.cls": b"7",
        "a/cat/1.png": image_bytes(8, 8, 2), "a/cat/1.json": b'{"Label": "tabby"}',
        "a/cat/2.png": image_bytes(8, 8, 3),
        "b/dog/3.png": image_bytes(8, 8, 4), "b/dog/4.png": image_bytes(8, 8, 5),
        "b/metadata.csv": b"file_name,label,caption\ndog/3.png,puppy,small\n",
        "top.png": image_bytes(8, 8, 6)}))
    (unit,) = discover(str(tmp_path))

    def metas(**kw) -> dict[str, dict]:
        return {r["id"]: r["meta"] for r in read_unit(unit, join_metadata=True, **kw) if r["kind"] == "image"}

    labelled = metas(labels_from_folders=True)
    assert labelled["s.tar/a/cat/0"] == {"label": 7}
    assert labelled["s.tar/a/cat/1"] == {"Label": "tabby"}
    assert labelled["s.tar/a/cat/2"] == {"label": "cat"}
    assert labelled["s.tar/b/dog/3"] == {"file_name": "dog/3.png", "label": "puppy", "caption": "small"}
    assert labelled["s.tar/b/dog/4"] == {"label": "dog"}
    assert labelled["s.tar/top"] == {"label": None}
    plain = metas()
    assert plain["s.tar/a/cat/2"] == {} and plain["s.tar/top"] == {}
    assert plain["s.tar/b/dog/3"] == {"file_name": "dog/3.png", "label": "puppy", "caption": "small"}


def test_a_folder_tarred_with_dot_names_gets_the_labels_its_zip_and_its_files_get(tmp_path) -> None:
    """`tar czf test.tar.gz -C test .` names each member './cat/0000.jpg' and './top.jpg' (tarfile's add(folder,
    arcname='.') likewise): a key at the top was labelled '.', where the same file zipped or left in its folder has no
    folder label. An absolute '/top.png' was labelled ''."""
    tree = {"top.png": image_bytes(8, 8, 1), "cat/0.png": image_bytes(8, 8, 2), "a/dog/1.png": image_bytes(8, 8, 3)}
    folder = tmp_path / "test"
    for name, data in tree.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (tmp_path / "tars").mkdir()
    with tarfile.open(tmp_path / "tars" / "test.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=".")
    (tmp_path / "zips").mkdir()
    with zipfile.ZipFile(tmp_path / "zips" / "test.zip", "w") as archive:
        for name, data in tree.items():
            archive.writestr(name, data)

    def labels(inp: str, archive: bool) -> dict[str, str | None]:  # the path inside the folder or archive -> label
        found = {}
        for unit in discover(inp):
            for record in read_unit(unit, labels_from_folders=True):
                if record["kind"] == "image":
                    inside = record["id"].split("/", 1)[1] if archive else record["id"]
                    found[inside.removeprefix("./").rsplit(".", 1)[0]] = record["meta"]["label"]
        return found

    expected = {"top": None, "cat/0": "cat", "a/dog/1": "dog"}
    assert labels(str(folder), archive=False) == expected
    assert labels(str(tmp_path / "zips"), archive=True) == expected
    assert labels(str(tmp_path / "tars"), archive=True) == expected
    (tmp_path / "abs.tar").write_bytes(tar_bytes({"/top.png": image_bytes(8, 8, 1), "/cat/0.png": image_bytes(8, 8, 2)}))
    (unit,) = discover(str(tmp_path / "abs.tar"))
    assert sorted(r["meta"]["label"] or "-" for r in read_unit(unit, labels_from_folders=True)
                  if r["kind"] == "image") == ["-", "cat"]
