"""Labelled image sets from the project's shared data folder, decoded once and cached as .npz, and the evaluation's
(train, test) split of each (`load_splits`).

Only evaluation and prior training use these; the purification job reads user data through
`pipeline.sources`.
"""

from __future__ import annotations

import csv
import io
import lzma
import os
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.local_folders import LocalPathError, local_path, remote_uri
from pipeline.redaction import redact_uri

# The variables naming the shared data folder (read) and the cache of decoded copies (written; also the evaluation's
# default --cache-dir).
FOLDER_VARIABLES = ("ZIP_SHARED_DIR", "ZIP_CACHE_DIR")


def _folder_variable(name: str, default: Path) -> Path:
    """The folder an environment variable names. Unset or empty, `default`: an empty one (`ZIP_CACHE_DIR=` in a compose
    file, a script's unset variable passed on) was the current folder, caches and all. A '~' the shell left (a quoted
    "~/cache", an env file) is the home folder and a file:// URI its path, as the jobs read --cache-dir."""
    text = os.environ.get(name, "")
    if not text:
        return default
    if remote_uri(text):  # refused by the jobs before any work (`folder_variable_problem`)
        return Path(text)
    try:
        return local_path(text)
    except LocalPathError:  # '~nobody': kept as written, as before
        return Path(text)


def folder_variable_problem() -> str | None:
    """Why ZIP_SHARED_DIR or ZIP_CACHE_DIR names no local folder (a URI: it was read as a path, a server's password in
    the folder's name and in the "not found" message), or None. The jobs refuse it as a usage error."""
    for name in FOLDER_VARIABLES:
        text = os.environ.get(name, "")
        if remote_uri(text):
            return f"${name} {redact_uri(text)}: must be a local folder, not a URI"
    return None


SHARED_DIR = _folder_variable("ZIP_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared")
CACHE_DIR = _folder_variable("ZIP_CACHE_DIR", Path.home() / ".cache" / "zip-purify")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Each data set's archive under SHARED_DIR/data.
_ARCHIVES = {
    "cifar10": "cifar10/cifar10-{split}.tar.gz",
    "gtsrb": "gtsrb/gtsrb-{split}.tar.xz",
    "imagenette": "imagenette/imagenette-{split}.tar.gz",
}


class DataError(RuntimeError):
    """A data set that cannot be read: its archive is missing (`MissingDataError`) or unreadable. The message names
    the file and what to do, so callers can print it as one line."""


class MissingDataError(DataError, FileNotFoundError):
    """The shared data folder or one of its archives is not there."""


def archive_path(name: str, split: str) -> Path:
    """Where the shared copy of a data set's split is expected (SHARED_DIR/data/...)."""
    return SHARED_DIR / "data" / _ARCHIVES[name].format(split=split)


def missing_data(name: str, split: str) -> str | None:
    """Why `load_dataset(name, split)` would fail for want of its archive (a cheap check: no decoding), or None when a
    decoded cache or the archive is there."""
    if name not in _ARCHIVES:
        return None
    cache = CACHE_DIR / f"{name}-{split}.npz"
    path = archive_path(name, split)
    if cache.is_file() or path.is_file():
        return None
    if not SHARED_DIR.is_dir():
        return f"shared data folder {SHARED_DIR} not found (set ZIP_SHARED_DIR to the folder holding data/)"
    return f"{name}/{split}: archive {path} not found (and no decoded copy in {CACHE_DIR})"


def cached_labels(name: str, split: str) -> np.ndarray | None:
    """The labels of a split from its decoded cache when that cache is current (see `load_dataset`), read without the
    pixels; None otherwise. Lets a run check its subset size before it loads or decodes anything."""
    cache = CACHE_DIR / f"{name}-{split}.npz"
    if name not in _ARCHIVES or not cache.is_file():
        return None
    stamp = _source_stamp(name, split)
    try:
        with np.load(cache) as data:
            made_from = str(data["source"]) if "source" in data.files else None
            if stamp is not None and made_from != stamp:
                return None
            return np.asarray(data["labels"])
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
        return None


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # N x H x W x 3 uint8
    labels: np.ndarray  # N int64
    num_classes: int


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _read_cifar10(split: str) -> tuple[np.ndarray, np.ndarray]:
    path = SHARED_DIR / "data" / _ARCHIVES["cifar10"].format(split=split)
    images, labels = [], []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            images.append(_decode(tar.extractfile(member).read()))  # type: ignore[union-attr]
            labels.append(CIFAR10_CLASSES.index(parts[1]))
    if not images:
        raise ValueError(f"{path} holds no image at <split>/<class>/<image>")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _read_gtsrb(split: str) -> tuple[np.ndarray, np.ndarray]:
    path = SHARED_DIR / "data" / _ARCHIVES["gtsrb"].format(split=split)
    pixels: dict[str, np.ndarray] = {}
    label_of: dict[str, int] = {}
    with tarfile.open(path, "r:xz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith(".ppm"):
                pixels[member.name] = _decode(data)
            elif member.name.endswith(".csv"):
                folder = member.name.rsplit("/", 1)[0]
                reader = csv.DictReader(io.StringIO(data.decode()), delimiter=";")
                if "ClassId" not in (reader.fieldnames or []):
                    continue  # the test archive also holds an unlabelled copy of its ground-truth CSV
                for row in reader:
                    label_of[f"{folder}/{row['Filename']}"] = int(row["ClassId"])
                    # The test CSV sits one level above its images (Final_Test/ vs Final_Test/Images/).
                    label_of[f"{folder}/Images/{row['Filename']}"] = int(row["ClassId"])
    names = sorted(n for n in pixels if n in label_of)
    if not names:
        raise ValueError(f"{path}: no image has a label in the archive's ClassId CSVs")
    return np.stack([pixels[n] for n in names]), np.asarray([label_of[n] for n in names], dtype=np.int64)


def _read_imagenette(split: str) -> tuple[np.ndarray, np.ndarray]:
    path = SHARED_DIR / "data" / _ARCHIVES["imagenette"].format(split=split)
    items = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3:
                items.append((parts[1], member.name, _decode(tar.extractfile(member).read())))  # type: ignore[union-attr]
    if not items:
        raise ValueError(f"{path} holds no image at <split>/<class>/<image>")
    wnids = sorted({w for w, _, _ in items})
    items.sort(key=lambda it: it[1])
    return np.stack([im for _, _, im in items]), np.asarray([wnids.index(w) for w, _, _ in items], dtype=np.int64)


_READERS = {"cifar10": (_read_cifar10, 10), "gtsrb": (_read_gtsrb, 43), "imagenette": (_read_imagenette, 10)}
NUM_CLASSES = {name: classes for name, (_, classes) in _READERS.items()}
IMAGE_SIZES = {"cifar10": 32, "gtsrb": 32, "imagenette": 224}  # the shared copies' square images, in px


# Bump when a reader changes what it decodes from the same archive, so caches made by the old reader are redone.
CACHE_FORMAT = 1


def _source_stamp(name: str, split: str) -> str | None:
    """What a decoded cache was made from: the reader's format and the archive's size and mtime (None when the
    archive is not there to compare with, e.g. no shared folder: the cache is then served as it is)."""
    try:
        st = (SHARED_DIR / "data" / _ARCHIVES[name].format(split=split)).stat()
    except (OSError, KeyError):
        return None
    return f"format {CACHE_FORMAT}, {st.st_size} bytes, mtime_ns {st.st_mtime_ns}"


def load_dataset(name: str, split: str) -> LabelledImages:
    """Decode a shared data set once, then serve it from the cache.

    The cache records which archive it was decoded from (`_source_stamp`): one decoded from another copy of the
    data set (another ZIP_SHARED_DIR, a replaced archive) or by an older reader is decoded again, never served.
    """
    if name not in _READERS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(_READERS)}")
    reader, num_classes = _READERS[name]
    cache = CACHE_DIR / f"{name}-{split}.npz"
    stamp = _source_stamp(name, split)
    if cache.exists():
        try:
            with np.load(cache) as data:
                made_from = str(data["source"]) if "source" in data.files else None
                if stamp is None or made_from == stamp:
                    return LabelledImages(data["images"], data["labels"], num_classes)
            print(f"note: cache file {cache} was decoded from {made_from or 'an unrecorded source'}, the archive now "
                  f"is {stamp}; decoding {name}/{split} again", file=sys.stderr)
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
            # Only a decoded copy of the shared archive: decode it again and replace it.
            print(f"warning: cache file {cache} is damaged ({type(err).__name__}: {err}); decoding {name}/{split} "
                  "again", file=sys.stderr)
    if not SHARED_DIR.exists():
        raise MissingDataError(f"shared data folder {SHARED_DIR} not found (set ZIP_SHARED_DIR to the folder holding "
                               "data/)")
    path = archive_path(name, split)
    try:
        images, labels = reader(split)
    except FileNotFoundError as err:
        raise MissingDataError(f"{name}/{split}: archive {path} not found (the shared data folder is {SHARED_DIR}; set "
                               "ZIP_SHARED_DIR to another copy)") from err
    except (OSError, EOFError, ValueError, KeyError, tarfile.TarError, lzma.LZMAError, zlib.error) as err:
        # A truncated or damaged archive: one line naming it, not a traceback from deep inside tarfile.
        raise DataError(f"{name}/{split}: archive {path} could not be read ({type(err).__name__}: {err})") from err
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")  # the process's own: concurrent decoders don't mix
    extra = {} if stamp is None else {"source": np.array(stamp)}
    np.savez(tmp, images=images, labels=labels, **extra)
    os.replace(tmp, cache)
    return LabelledImages(images, labels, num_classes)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced random subset (sorted), reproducible from the seed."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = size // len(classes)
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(chosen))


Loader = Callable[[str, str], LabelledImages]
# Data sets whose shared copy has a single split: the evaluation holds out a stratified test share of it.
SINGLE_SPLIT = {"imagenette": ("val", 0.25)}


def load_splits(dataset: str, loader: Loader = load_dataset) -> tuple[LabelledImages, LabelledImages]:
    """(train, test) of a data set. Single-split sets are split once, stratified, with a fixed seed."""
    if dataset not in SINGLE_SPLIT:
        return loader(dataset, "train"), loader(dataset, "test")
    split, test_share = SINGLE_SPLIT[dataset]
    full = loader(dataset, split)
    counts = np.bincount(full.labels, minlength=full.num_classes)
    test_idx = stratified_subset(full.labels, int(round(test_share * counts.min())) * full.num_classes, seed=12345)
    train_mask = np.ones(len(full.labels), dtype=bool)
    train_mask[test_idx] = False
    return (
        LabelledImages(full.images[train_mask], full.labels[train_mask], full.num_classes),
        LabelledImages(full.images[test_idx], full.labels[test_idx], full.num_classes),
    )
