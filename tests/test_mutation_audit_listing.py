"""Mutation audit of the input listing (pipeline/sources/listing.py, walk.py): tests for the behaviours that hand-made
mutants of those modules showed no other test to hold."""

from __future__ import annotations

from pipeline.sources import discover
from tests.test_http_inputs import _index


def test_a_web_subfolders_sort_links_are_that_folder_not_files(web) -> None:
    """Apache's index page of every folder links its sort views ('?C=N;O=D'): in the input folder they were left out,
    in a subfolder each was listed as a file, read as an image and written as a reject of the index page."""
    folder, url = web
    _index(folder / "data", '"sub/"', '"?C=N;O=D"', '"a.png"')
    _index(folder / "data" / "sub", '"?C=N;O=D"', '"?C=M;O=A"', '"in.png"', '"/data/"')
    units = discover(url + "data/", {})
    assert sorted(p for u in units for p in u.paths) == [url + "data/a.png", url + "data/sub/in.png"]
