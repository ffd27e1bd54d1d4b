"""Mutation-audit gaps in input discovery: every image file is in exactly one read unit whatever the unit size, and
hidden files or folders at any depth (.ipynb_checkpoints, _tmp) are not inputs."""

from __future__ import annotations

import pytest

from pipeline.sources import discover


@pytest.mark.parametrize("n,per_unit", [(5, 2), (6, 2), (7, 3), (3, 1), (4, 64)])
def test_every_image_file_is_in_exactly_one_unit(tmp_path, n, per_unit) -> None:
    for i in range(n):
        (tmp_path / f"{i:02d}.png").write_bytes(b"x")
    units = discover(str(tmp_path), files_per_unit=per_unit)
    paths = [p for u in units for p in u.paths]
    assert sorted(paths) == sorted(str(tmp_path / f"{i:02d}.png") for i in range(n))
    assert all(1 <= len(u.paths) <= per_unit for u in units)
    assert len(units) == -(-n // per_unit)


def test_hidden_files_and_folders_below_the_root_are_not_inputs(tmp_path) -> None:
    (tmp_path / "cats" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "cats" / "_tmp").mkdir()
    (tmp_path / "cats" / "a.png").write_bytes(b"x")
    (tmp_path / "cats" / ".b.png").write_bytes(b"x")
    (tmp_path / "cats" / "_c.png").write_bytes(b"x")
    (tmp_path / "cats" / ".ipynb_checkpoints" / "d.png").write_bytes(b"x")
    (tmp_path / "cats" / "_tmp" / "e.png").write_bytes(b"x")
    (unit,) = discover(str(tmp_path))
    assert list(unit.paths) == [str(tmp_path / "cats" / "a.png")]
