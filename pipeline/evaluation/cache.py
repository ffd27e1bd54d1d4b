"""The evaluation's cache files: the content hashes that name them, atomic writes, and reading them back.

Everything under the cache folder is derived, so a damaged file (cut off by a killed run, changed on disk) is named in
a warning and then treated as missing: its caller rebuilds it. A write goes to a temporary file of the process's own
and is renamed into place, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.log import log


def sha256_of_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# What reading a damaged derived cache file raises (truncated zip archives, cut-off pickles, missing entries).
DAMAGED_CACHE = (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile, zlib.error,
                 pickle.UnpicklingError)


def warn_damaged(path: Path, err: BaseException, action: str) -> None:
    log(f"warning: cache file {path} is damaged ({type(err).__name__}: {err}); {action}")


def read_json_cache(path: Path) -> dict[str, Any]:
    """A cached JSON record, or {} when it is missing or damaged (it is derived, so it is rebuilt)."""
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warn_damaged(path, err, "ignoring it")
        return {}
    if not isinstance(info, dict):
        warn_damaged(path, TypeError(f"a JSON {type(info).__name__}, not an object"), "ignoring it")
        return {}
    return info


def write_atomic(path: Path, write: Callable[[Path], Any], suffix: str = ".tmp") -> None:
    """`write(tmp)` into a temporary file beside `path`, then renamed into place: a killed run never leaves a
    half-written file. The temporary name is the process's own, so two evaluations sharing a cache cannot take each
    other's half-written file; a write that fails (a full disk) takes its temporary file with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_npz(path: Path, **arrays: Any) -> None:
    """Atomic .npz write (`write_atomic`); numpy adds '.npz' to a name without it, so the temporary one has it."""
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz")


def write_text_atomic(path: Path, text: str) -> None:
    # the Markdown table holds A⁺A x, ≤ and –, whatever the locale
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
