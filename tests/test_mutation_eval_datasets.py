"""Reading the shared data sets and drawing the evaluation subset, as a mutation audit found them under-tested.

Tiny synthetic archives in the shared copies' layouts (checked against ../shared by the last test, which skips
without it): CIFAR-10 labels by class name, GTSRB labels from the CSVs' ClassId column (the test split's CSV sits
above its images, next to an unlabelled copy), Imagenette labels by sorted WordNet id, grey images as RGB, and the
class-stratified subset: balanced, seeded, sorted, without repeats.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation import datasets

SHARED = datasets.SHARED_DIR


def _png(value: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    size = (32, 32)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(buf, fmt)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "shared")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "shared"


def test_cifar10_labels_are_the_class_index_whatever_the_archive_order(shared: Path) -> None:
    path = shared / "data" / "cifar10" / "cifar10-test.tar.gz"
    path.parent.mkdir(parents=True)
    order = ["truck", "frog", "airplane", "ship"]  # not the canonical order, and classes missing
    with tarfile.open(path, "w:gz") as tar:
        for i, cls in enumerate(order):
            _add(tar, f"test/{cls}/{i:04d}.png", _png(10 * i))
    data = datasets.load_dataset("cifar10", "test")
    assert data.labels.tolist() == [9, 6, 0, 8] and data.num_classes == 10
    assert [int(im[0, 0, 0]) for im in data.images] == [0, 10, 20, 30]


CSV_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def _gtsrb(shared: Path) -> None:
    """Train: one folder per class, each with its GT-<class>.csv; test: Final_Test/GT-final_test.csv (labelled) above
    Final_Test/Images/, which holds the images and an unlabelled GT-final_test.test.csv. ClassIds differ from every
    other column, and the image values say which image is which."""
    root = shared / "data" / "gtsrb"
    root.mkdir(parents=True)
    with tarfile.open(root / "gtsrb-train.tar.xz", "w:xz") as tar:
        for cls, value in ((42, 5), (7, 9)):
            folder = f"Final_Training/Images/{cls:05d}"
            rows = "".join(f"{cls:05d}_{i:05d}.ppm;32;32;5;6;26;27;{cls}\n" for i in range(2))
            _add(tar, f"{folder}/GT-{cls:05d}.csv", (CSV_HEADER + rows).encode())
            for i in range(2):
                _add(tar, f"{folder}/{cls:05d}_{i:05d}.ppm", _png(value + i, fmt="PPM"))
    with tarfile.open(root / "gtsrb-test.tar.xz", "w:xz") as tar:
        labels = {"00001.ppm": 3, "00000.ppm": 40, "00002.ppm": 0}
        rows = "".join(f"{name};32;32;5;6;26;27;{cls}\n" for name, cls in labels.items())
        _add(tar, "Final_Test/GT-final_test.csv", (CSV_HEADER + rows).encode())
        unlabelled = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2\n" + "".join(
            f"{name};32;32;5;6;26;27\n" for name in labels)
        _add(tar, "Final_Test/Images/GT-final_test.test.csv", unlabelled.encode())
        for name in ("00002.ppm", "00000.ppm", "00001.ppm"):  # packed out of name order
            _add(tar, f"Final_Test/Images/{name}", _png(100 + int(name[:5]), fmt="PPM"))


def test_gtsrb_labels_come_from_the_class_id_column_in_both_splits(shared: Path) -> None:
    _gtsrb(shared)
    train = datasets.load_dataset("gtsrb", "train")
    assert train.num_classes == 43
    assert train.labels.tolist() == [7, 7, 42, 42]  # in file-name order: class folder 00007 before 00042
    assert [int(im[0, 0, 0]) for im in train.images] == [9, 10, 5, 6]
    test = datasets.load_dataset("gtsrb", "test")
    assert test.labels.tolist() == [40, 3, 0]  # 00000, 00001, 00002: the order does not follow the packing
    assert [int(im[0, 0, 0]) for im in test.images] == [100, 101, 102]


def test_imagenette_labels_are_the_sorted_wordnet_ids_and_grey_images_become_rgb(shared: Path) -> None:
    path = shared / "data" / "imagenette" / "imagenette-val.tar.gz"
    path.parent.mkdir(parents=True)
    members = [("n03000684", "b.JPEG", 1), ("n01440764", "z.JPEG", 2), ("n03000684", "a.JPEG", 3),
               ("n02102040", "c.JPEG", 4)]
    with tarfile.open(path, "w:gz") as tar:
        for wnid, name, value in members:
            grey = value == 2  # ImageNet holds some greyscale JPEGs
            _add(tar, f"val/{wnid}/{name}", _png(40 * value, "L" if grey else "RGB"))
    data = datasets.load_dataset("imagenette", "val")
    assert data.images.shape == (4, 32, 32, 3)
    # in member-name order: n01440764/z, n02102040/c, n03000684/a, n03000684/b
    assert data.labels.tolist() == [0, 1, 2, 2]
    assert [int(im[0, 0, 0]) // 40 for im in data.images] == [2, 4, 3, 1]
    assert (data.images[0] == data.images[0][..., :1]).all()  # grey: three equal channels


def test_the_splits_of_a_data_set_are_cached_apart(shared: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Served from the cache alone (no shared folder), the test split is still the test split."""
    folder = shared / "data" / "cifar10"
    folder.mkdir(parents=True)
    for split, value in (("train", 50), ("test", 150)):
        with tarfile.open(folder / f"cifar10-{split}.tar.gz", "w:gz") as tar:
            _add(tar, f"{split}/cat/0000.png", _png(value))
    assert int(datasets.load_dataset("cifar10", "train").images[0, 0, 0, 0]) == 50
    assert int(datasets.load_dataset("cifar10", "test").images[0, 0, 0, 0]) == 150
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "elsewhere")
    assert int(datasets.load_dataset("cifar10", "train").images[0, 0, 0, 0]) == 50
    assert int(datasets.load_dataset("cifar10", "test").images[0, 0, 0, 0]) == 150


def test_a_cache_of_an_older_reader_is_decoded_again(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = shared / "data" / "cifar10" / "cifar10-test.tar.gz"
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "test/cat/0000.png", _png(7))
    datasets.load_dataset("cifar10", "test")
    assert datasets.cached_labels("cifar10", "test").tolist() == [3]
    monkeypatch.setattr(datasets, "CACHE_FORMAT", datasets.CACHE_FORMAT + 1)
    assert datasets.cached_labels("cifar10", "test") is None  # made by the older reader: not current
    assert datasets.missing_data("cifar10", "test") is None
    decoded: list[str] = []
    real = datasets._READERS["cifar10"]
    monkeypatch.setitem(datasets._READERS, "cifar10", (lambda split: (decoded.append(split), real[0](split))[1], 10))
    assert datasets.load_dataset("cifar10", "test").labels.tolist() == [3]
    assert decoded == ["test"]


def test_missing_data_needs_only_one_of_the_archive_or_its_decoded_copy(shared: Path) -> None:
    path = shared / "data" / "cifar10" / "cifar10-test.tar.gz"
    path.parent.mkdir(parents=True)
    assert "not found" in datasets.missing_data("cifar10", "test")
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "test/cat/0000.png", _png(7))
    assert datasets.missing_data("cifar10", "test") is None  # the archive, not yet decoded
    datasets.load_dataset("cifar10", "test")
    path.unlink()
    assert datasets.missing_data("cifar10", "test") is None  # the decoded copy alone


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)[np.random.default_rng(5).permutation(sum(counts))]


def test_the_subset_is_class_balanced_without_repeats_and_sorted() -> None:
    labels = _labels([50, 7, 300, 12])  # unbalanced classes, shuffled
    subset = datasets.stratified_subset(labels, 24, seed=0)
    assert len(subset) == 24 and len(set(subset.tolist())) == 24
    assert subset.tolist() == sorted(subset.tolist())
    assert np.bincount(labels[subset]).tolist() == [6, 6, 6, 6]
    # a size that does not divide by the class count rounds down, never past it
    assert np.bincount(labels[datasets.stratified_subset(labels, 27, seed=0)]).tolist() == [6, 6, 6, 6]


def test_the_subset_follows_the_seed() -> None:
    labels = _labels([40, 40, 40])
    a = datasets.stratified_subset(labels, 12, seed=3)
    np.testing.assert_array_equal(a, datasets.stratified_subset(labels, 12, seed=3))
    assert not np.array_equal(a, datasets.stratified_subset(labels, 12, seed=4))
    # every image of a class can be drawn: no class's subset is a fixed slice
    draws = np.concatenate([datasets.stratified_subset(labels, 3, seed=s) for s in range(200)])
    assert len(np.unique(draws)) > 110


@pytest.mark.skipif(not (SHARED / "data" / "cifar10" / "cifar10-test.tar.gz").is_file(),
                    reason=f"{SHARED}/data not found: the synthetic archives above stand in for it")
def test_the_shared_cifar10_archive_has_the_layout_the_reader_expects() -> None:
    """The synthetic archives copy the shared ones' layout: split/class/file with the ten CIFAR-10 class names."""
    with tarfile.open(SHARED / "data" / "cifar10" / "cifar10-test.tar.gz", "r:gz") as tar:
        classes = {m.name.split("/")[1] for m in tar if m.isfile()}
    assert classes == set(datasets.CIFAR10_CLASSES)
