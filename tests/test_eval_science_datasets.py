"""The decoded-data-set cache serves only what the current archive holds (tiny synthetic archives, no ../shared)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation import datasets


def _cifar_archive(root: Path, value: int) -> Path:
    """A two-image CIFAR-10-layout test archive whose pixels are all `value` (airplane) and `value + 1` (cat)."""
    path = root / "data" / "cifar10" / "cifar10-test.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for i, cls in enumerate(["airplane", "cat"]):
            buf = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), value + i, np.uint8)).save(buf, "PNG")
            info = tarfile.TarInfo(f"test/{cls}/{i:04d}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def _load(monkeypatch: pytest.MonkeyPatch, shared: Path, cache: Path) -> datasets.LabelledImages:
    monkeypatch.setattr(datasets, "SHARED_DIR", shared)
    monkeypatch.setattr(datasets, "CACHE_DIR", cache)
    return datasets.load_dataset("cifar10", "test")


def test_cache_of_another_shared_folder_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pointing ZIP_SHARED_DIR at another copy of a data set used to return the first copy's cached pixels."""
    cache = tmp_path / "cache"
    _cifar_archive(tmp_path / "a", 10)
    _cifar_archive(tmp_path / "b", 200)
    first = _load(monkeypatch, tmp_path / "a", cache)
    assert set(np.unique(first.images)) == {10, 11} and first.labels.tolist() == [0, 3]
    second = _load(monkeypatch, tmp_path / "b", cache)
    assert set(np.unique(second.images)) == {200, 201}
    again = _load(monkeypatch, tmp_path / "b", cache)  # now cached for b
    np.testing.assert_array_equal(again.images, second.images)
    assert sorted(p.name for p in cache.iterdir()) == ["cifar10-test.npz"]  # no temporary file left behind


def test_replaced_archive_is_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    archive = _cifar_archive(tmp_path / "shared", 10)
    assert set(np.unique(_load(monkeypatch, tmp_path / "shared", cache).images)) == {10, 11}
    _cifar_archive(tmp_path / "shared", 50)
    os.utime(archive, ns=(1, 1))  # even if the size were the same, the mtime differs
    assert set(np.unique(_load(monkeypatch, tmp_path / "shared", cache).images)) == {50, 51}


def test_cache_is_served_without_the_shared_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no archive to compare with, the decoded copy is all there is: it is served as before."""
    cache = tmp_path / "cache"
    _cifar_archive(tmp_path / "shared", 10)
    made = _load(monkeypatch, tmp_path / "shared", cache)
    served = _load(monkeypatch, tmp_path / "absent", cache)
    np.testing.assert_array_equal(served.images, made.images)
