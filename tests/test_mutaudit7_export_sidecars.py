"""Mutation audit of zip-purify-export --sidecars (pipeline/export.py): what the tests of tests/test_export_sidecars.py
left unchecked, each through the export a user runs."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.export import export_images, sidecar_bytes
from pipeline.export_cli import main
from tests.jobutil import image_bytes, write_tree
from tests.test_export import files_under, image, make_output
from tests.test_export_sidecars import purified, read_folder


def test_a_column_of_bytes_in_one_part_file_and_of_text_in_another_is_in_the_sidecars_and_not_said_left_out(
        tmp_path: Path, capsys) -> None:
    # one part file's `extra` holds bytes, another's text: the text rows' .json keep it, and the last lines do not say
    # the column is in no sidecar file (it is, where it holds text)
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, extra=b"\x00raw"), image("b.jpg", 2, extra="text")], per_file=1)
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True)
    assert report.ok and report.sidecars_left_out == []
    assert json.loads((tmp_path / "files" / "b.json").read_text()) == {"extra": "text"}
    assert main(["--output", str(tmp_path / "out"), "--to", str(tmp_path / "again"), "--sidecars", "--no-progress"]) == 0
    assert "in no sidecar file" not in capsys.readouterr().err


@pytest.mark.parametrize("ids", [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg")])
def test_a_column_null_in_one_part_file_but_not_in_every_row_is_no_null_key(tmp_path: Path, ids) -> None:
    # one part file's `error_message` is typed null, another's holds a message: not a column null in every row, so a
    # row without a message has no such key (a null is no key), whichever part file is listed last
    with_message, without = ids
    make_output(str(tmp_path / "out"), [image(with_message, 1, error_message="boom", url="u1"),
                                        image(without, 2, error_message=None, url="u2")], per_file=1)
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    assert json.loads((tmp_path / "files" / f"{without[:-4]}.json").read_text()) == {"url": "u2"}
    assert json.loads((tmp_path / "files" / f"{with_message[:-4]}.json").read_text()) == {"error_message": "boom",
                                                                                          "url": "u1"}


def test_a_row_whose_image_is_not_png_bytes_fails_with_no_sidecar_written(tmp_path: Path) -> None:
    # said before any sidecar is written: a caption left in DIR without its image would read back as an image's
    # sidecar of another folder, or be taken for a stray file
    out, to = tmp_path / "out", tmp_path / "images"
    bad = image("bad.jpg", 1, txt="cap", label=2, url="u")
    bad["png"] = image_bytes(6, 7, 1, "JPEG")
    make_output(str(out), [bad, image("good.jpg", 2, txt="ok")])
    report = export_images(out, to, sidecars=True)
    assert (report.written, report.failed, report.sidecars_written) == (1, 1, 1)
    assert report.failures == [("bad.jpg", "ValueError: the row's image is not PNG bytes")]
    assert files_under(to) == {"good.png", "good.txt", "manifest.csv"}


def test_a_json_kept_as_text_with_bytes_that_are_not_utf8_is_exported_and_reads_back_the_same(tmp_path: Path) -> None:
    # the reader keeps a .json that is no JSON as text, a latin-1 byte written \xe9 (and a backslash then \\): that
    # text is the .json again as it is, not undone into text that has no UTF-8 bytes (the row failed)
    files = {"a.jpg": image_bytes(8, 8, 1, "JPEG"), "a.json": b'{"not json \\ caf\xe9',
             "b.jpg": image_bytes(8, 8, 2, "JPEG"), "b.json": b'{"x": "caf\\\\xe9 \\\\ typed so"}'}
    first = read_folder(str(write_tree(tmp_path / "in", files)))
    make_output(str(tmp_path / "out"), purified(first))
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True)
    assert report.ok and report.sidecars_written == 2, report.failures
    again = read_folder(str(tmp_path / "files"))
    assert {id_: r["meta"] for id_, r in again.items()} == {id_[:-4] + ".png": r["meta"] for id_, r in first.items()}


def test_a_json_is_utf8_text_as_the_inputs_was() -> None:
    # JSON's \u escapes read back the same, but a .json a user reads (or greps for 'café') holds the text
    files = sidecar_bytes({"id": "a.jpg", "caption": "café 東京"}, ["caption"])
    assert files == {".json": '{"caption": "café 東京"}'.encode()}


def test_a_null_key_never_replaces_a_value_the_json_column_gives_back() -> None:
    # the fields past the reader's column limit (the `json` column's object) go back into the .json: one of them named
    # as a column null in every row keeps its value, not that column's null
    row = {"id": "a.jpg", "a": 1, "json": '{"b": 2, "error_message": "timeout"}', "error_message": None}
    files = sidecar_bytes(row, ["a", "json", "error_message"], nulls={"error_message"})
    assert json.loads(files[".json"]) == {"a": 1, "b": 2, "error_message": "timeout"}


def test_a_resumed_export_says_no_sidecar_file_was_written_when_all_were_there(tmp_path: Path, capsys) -> None:
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap", url="u")])
    argv = ["--output", str(tmp_path / "out"), "--to", str(tmp_path / "files"), "--sidecars", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "(0 written, 1 already there, 0 sidecar files written, 2 sidecar files already there)" in capsys.readouterr().out


def test_an_image_moved_off_the_manifests_name_by_a_folder_of_that_name_is_exported_with_sidecars(tmp_path: Path) -> None:
    # manifest.jpg would be manifest.png, a folder's name here: it goes to manifest.jpg.png, and no image is
    # manifest.<its extension> at the top, so nothing is refused
    make_output(str(tmp_path / "out"), [image("manifest.jpg", 1, txt="top"), image("manifest.png/x.jpg", 2, txt="x")])
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True)
    assert report.ok and report.renamed == 1
    assert files_under(tmp_path / "files") == {"manifest.jpg.png", "manifest.jpg.txt", "manifest.png/x.png",
                                               "manifest.png/x.txt", "manifest.csv"}


def test_an_image_keeping_its_name_among_moved_ones_gives_its_stem_up_to_one_that_claims_it_too(tmp_path: Path) -> None:
    # a.jpg and a.png are both a.png: a.jpg moves to a.jpg.png; a.png.png's stem is a.png, the name a.png keeps, so
    # its sidecars take its whole name (a.png.png.txt): a.png.txt would read back as both images' caption
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="jpg"), image("a.png", 2, "PNG", txt="png"),
                                        image("a.png.png", 3, "PNG", txt="png png")])
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    again = read_folder(str(tmp_path / "files"))
    assert {id_: r["meta"] for id_, r in again.items()} == {"a.jpg.png": {"txt": "jpg"}, "a.png": {"txt": "png"},
                                                            "a.png.png": {"txt": "png png"}}


def test_a_stale_sidecar_left_as_a_broken_link_is_removed(tmp_path: Path) -> None:
    # an earlier export wrote a.cls (its manifest lists it); the file became a link whose target is gone
    make_output(str(tmp_path / "earlier"), [image("a.jpg", 1, txt="cap", label=3)])
    assert export_images(tmp_path / "earlier", tmp_path / "files", sidecars=True).ok
    (tmp_path / "files" / "a.cls").unlink()
    (tmp_path / "files" / "a.cls").symlink_to(tmp_path / "gone")
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap")])
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True, existing="overwrite").ok
    assert not (tmp_path / "files" / "a.cls").is_symlink()
    assert files_under(tmp_path / "files") == {"a.png", "a.txt", "manifest.csv"}


def test_a_json_whose_text_is_no_utf8_is_written_as_json_escapes_any_reader_takes(tmp_path: Path) -> None:
    # "\udce9" in a .json is text no UTF-8 bytes are: written as JSON's escape, the .json stays UTF-8
    files = {"a.jpg": image_bytes(8, 8, 1, "JPEG"), "a.json": b'{"k": "caf\\udce9", "t": "caf\\u00e9"}'}
    first = read_folder(str(write_tree(tmp_path / "in", files)))
    make_output(str(tmp_path / "out"), purified(first))
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    written = (tmp_path / "files" / "a.json").read_bytes()
    assert json.loads(written.decode("utf-8")) == {"k": "caf\udce9", "t": "café"}
    assert read_folder(str(tmp_path / "files"))["a.png"]["meta"] == first["a.jpg"]["meta"]


class RenamingServer(MemoryFileSystem):
    """A server's file system with a rename (FTP's, HDFS's) that refuses to delete a folder as a file, as FTP's DELE."""

    protocol = "mutaudit7-server"
    cachable = False

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return path.removeprefix(f"{cls.protocol}://")

    def mv(self, path1: str, path2: str, **kwargs) -> None:  # noqa: ANN003
        super().mv(path1, path2, **kwargs)

    def rm_file(self, path: str) -> None:
        if self.isdir(path):
            raise PermissionError(f"550 {path}: is a folder")
        super().rm_file(path)


def test_a_folder_named_as_a_stale_sidecar_is_left_on_a_server_too(tmp_path: Path) -> None:
    fsspec.register_implementation(RenamingServer.protocol, RenamingServer, clobber=True)
    fs, root = RenamingServer(), "/mutaudit7-server-test"
    try:
        make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap"), image("a.cls/b.jpg", 2, txt="b")])
        fs.pipe_file(f"{root}/files/a.cls/b.png", b"an earlier export's")
        report = export_images(tmp_path / "out", f"{RenamingServer.protocol}://{root}/files", sidecars=True,
                               existing="overwrite")
        assert report.ok, report.failures
        assert fs.cat_file(f"{root}/files/a.png.txt") == b"cap" and fs.isdir(f"{root}/files/a.cls")
    finally:
        fs.rm(root, recursive=True)
