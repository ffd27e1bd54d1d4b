"""The purifier's per-batch hooks, which the evaluation's resumable ZIP sets are built on, and the purification version
in the evaluation's cache key.

`Purifier.batches` is the one place that says how canvases are batched and each batch seeded; `purify_canvases`
takes a batch purified earlier (`kept`) and reports each batch it purifies (`on_batch`), so a set purified across
interrupted runs is the set one call makes. The cache key takes `PURIFICATION_VERSION` only from version 2 on, so
every set cached so far keeps its key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation import cache, defenses
from pipeline.purifier import CanvasBatch, Purifier
from tests.jobutil import tiny_model_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _purifier(tmp_path: Path, batch_size: int = 2, seed: int = 0) -> Purifier:
    return Purifier.from_checkpoint(tiny_model_file(tmp_path), steps=2, pool=4, batch_size=batch_size, seed=seed,
                                    device="cpu")


def _canvases(n: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_batches_are_the_batch_size_runs_of_canvases_seeded_by_their_first_canvas(tmp_path: Path) -> None:
    p = _purifier(tmp_path, batch_size=2, seed=7)
    assert p.batches(5) == [CanvasBatch(0, 2, 7), CanvasBatch(2, 4, 9), CanvasBatch(4, 5, 11)]
    assert p.batches(5, seed=100) == [CanvasBatch(0, 2, 100), CanvasBatch(2, 4, 102), CanvasBatch(4, 5, 104)]
    assert p.batches(4, seed=0)[-1] == CanvasBatch(2, 4, 2)  # the call's seed 0, not the settings' 7
    assert p.batches(0) == []


def test_a_batch_is_purified_as_its_own_call_with_its_seed_would(tmp_path: Path) -> None:
    """The rule a resumed set depends on: each batch's result depends only on its canvases and its seed."""
    p = _purifier(tmp_path, batch_size=2, seed=5)
    x = _canvases(5)
    whole = p.purify_canvases(x)
    for batch in p.batches(len(x)):
        np.testing.assert_array_equal(whole[batch.start : batch.stop],
                                      p.purify_canvases(x[batch.start : batch.stop], seed=batch.seed))


def test_batch_seeds_wrap_at_2_to_the_32_so_a_top_seeds_batches_are_valid_seeds(tmp_path: Path) -> None:
    """A seed near the top of its range: its later batches' seeds wrap to small ones (torch's CPU generator read only
    the low 32 bits anyway), and each stays a seed the purifier takes, so a batch redone alone (a resumed set) is
    purified as in the whole call; unwrapped, the batch seed 2**32 was refused when given back."""
    top = 2**32 - 2
    p = _purifier(tmp_path, batch_size=2, seed=top)
    assert p.batches(5) == [CanvasBatch(0, 2, top), CanvasBatch(2, 4, 0), CanvasBatch(4, 5, 2)]
    x = _canvases(5)
    whole = p.purify_canvases(x)
    for batch in p.batches(len(x)):
        np.testing.assert_array_equal(whole[batch.start : batch.stop],
                                      p.purify_canvases(x[batch.start : batch.stop], seed=batch.seed))


def test_on_batch_reports_each_purified_batch_and_kept_batches_are_not_purified_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _purifier(tmp_path, batch_size=2)
    x = _canvases(5)
    reported: dict[CanvasBatch, np.ndarray] = {}
    whole = p.purify_canvases(x, on_batch=lambda b, done: reported.__setitem__(b, done.copy()))
    assert list(reported) == p.batches(5)
    np.testing.assert_array_equal(np.concatenate(list(reported.values())), whole)

    calls: list[int] = []
    original = Purifier.purify_tensor

    def counted(self: Purifier, x: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(x))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(Purifier, "purify_tensor", counted)
    middle = p.batches(5)[1]
    again: list[CanvasBatch] = []
    out = p.purify_canvases(x, kept={middle: reported[middle]}.get, on_batch=lambda b, done: again.append(b))
    np.testing.assert_array_equal(out, whole)  # bit-identical with one batch taken from before
    assert calls == [2, 1] and again == [p.batches(5)[0], p.batches(5)[2]]

    # A kept batch is used as given, not purified: a marker shows where it went.
    marker = np.full((2, 32, 32, 3), 77, dtype=np.uint8)
    out = p.purify_canvases(x, kept={middle: marker}.get)
    np.testing.assert_array_equal(out[2:4], marker)
    np.testing.assert_array_equal(np.delete(out, [2, 3], axis=0), np.delete(whole, [2, 3], axis=0))


def test_the_resumable_set_saves_the_purifiers_own_batches_and_seeds(tmp_path: Path) -> None:
    """The evaluation's batch files follow `Purifier.batches`, seeds included (here with a sampler seed of 3)."""
    prior = tiny_model_file(tmp_path)
    sha = load_checkpoint(prior, verify_only=True).sha256
    defense = defenses.make_defense("zip", steps=2, pool=4, checkpoint=prior, checkpoint_sha256=sha, batch_size=2,
                                    zip_overrides={"seed": 3})
    x = _canvases(5)
    saved: list[tuple[str, int]] = []
    original = defenses.save_npz

    def recorded(path: Path, **arrays: Any) -> None:
        if "canvases" in arrays:
            saved.append((path.name, int(arrays["seed"])))
        original(path, **arrays)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(defenses, "save_npz", recorded)
        out = defenses.purified(defense, x, tmp_path / "cache", "clean")
    assert saved == [("canvases-0000000-0000002.npz", 3), ("canvases-0000002-0000004.npz", 5),
                     ("canvases-0000004-0000005.npz", 7)]
    np.testing.assert_array_equal(out, defense(x))


# ---------------------------------------------------------------------------------------------- the cache version

SHA = "ab" * 32
# Keys of the sets cached before the version was part of the key (computed at commit 35ad2b8): unchanged at version 1.
KEYS_BEFORE = [
    ("shrinkpad", {}, "shrinkpad-e9c15ce30875"),
    ("naive", {"pool": 2}, "naive-11ca71ea1d1c"),
    ("zip", {}, "zip-5dcd73271012"),
    ("zip-authors", {"zip_overrides": {"sampler": "ddpm", "seed": 3}}, "zip-authors-c1679677214f"),
    ("zip", {"device": "cuda", "canvas_size": 64, "batch_size": 8}, "zip-81c5936228a4"),
]


@pytest.mark.parametrize("name, options, key", KEYS_BEFORE)
def test_version_1_keeps_every_existing_cache_key(name: str, options: dict[str, Any], key: str) -> None:
    assert defenses.PURIFICATION_VERSION == 1
    defense = defenses.make_defense(name, checkpoint="prior.pt", checkpoint_sha256=SHA, **options)
    assert defense.key == key
    assert "purification_version" not in defense.key_fields


@pytest.mark.parametrize("name, options, key", KEYS_BEFORE)
def test_another_version_gives_every_defense_another_key(monkeypatch: pytest.MonkeyPatch, name: str,
                                                         options: dict[str, Any], key: str) -> None:
    monkeypatch.setattr(defenses, "PURIFICATION_VERSION", 2)
    defense = defenses.make_defense(name, checkpoint="prior.pt", checkpoint_sha256=SHA, **options)
    assert defense.key != key and defense.key.startswith(f"{name}-")
    assert defense.key_fields["purification_version"] == 2


def test_a_set_cached_by_an_older_version_is_purified_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bumped version must not find the older code's pixels: here a cached set of all-zero images stands for them."""
    x = _canvases(3)
    defense = defenses.make_defense("naive", pool=4)
    old = tmp_path / defense.key
    digest = cache.sha256_of_arrays(x)[:16]
    cache.save_npz(old / f"clean-{digest}.npz", images=np.zeros_like(x), seconds=np.float64(1))
    assert not defenses.purified(defense, x, tmp_path, "clean").any()  # version 1: the cached set is reused

    monkeypatch.setattr(defenses, "PURIFICATION_VERSION", 2)
    out = defenses.purified(defenses.make_defense("naive", pool=4), x, tmp_path, "clean")
    assert out.any()
    np.testing.assert_array_equal(out, defense(x))
    (folder,) = [f for f in tmp_path.iterdir() if f != old]
    assert json.loads((folder / "settings.json").read_text())["purification_version"] == 2
