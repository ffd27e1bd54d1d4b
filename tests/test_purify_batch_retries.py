"""A purify batch whose purification raises is tried again in its actor, a bounded number of times.

Ray retries the purifier actor's tasks only for the actor's loss (max_task_retries=-1 in pipeline.job.build_pipeline:
an actor on a lost node is unreachable for the ~17 s Ray takes to declare the node dead, and a count of retries ran out
before it was restarted elsewhere; tests/reliability/test_node_loss.py). Ray no longer retries an exception raised in a
batch (it would, forever, with that setting), so the actor does: a transient error still lets the batch through, and
one that stays fails the run after PURIFY_ATTEMPTS tries instead of hanging it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages import PURIFY_ATTEMPTS, PurifyStage, batch_of, records_of


class _Purifier:
    """Fails its first `failures` calls, then adds 1 to every canvas."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def purify_canvases(self, stack: np.ndarray, seeds: list[int]) -> np.ndarray:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("CUDA error: unspecified launch failure")
        return stack + 1


def _stage(failures: int) -> PurifyStage:
    stage = PurifyStage.__new__(PurifyStage)  # the model-loading constructor left out: only __call__ is tested
    stage.purifier = _Purifier(failures)
    return stage


def _batch() -> dict:
    return batch_of([{"kind": "canvas", "canvas": np.zeros((4, 4, 3), np.float32), "seed": 7, "members": []}])


def test_a_batch_whose_purification_fails_for_a_while_is_purified() -> None:
    stage = _stage(PURIFY_ATTEMPTS - 1)
    out = records_of(stage(_batch()))
    assert stage.purifier.calls == PURIFY_ATTEMPTS
    assert np.array_equal(out[0]["canvas"], np.ones((4, 4, 3), np.float32))  # purified once, from the batch as it came


def test_a_batch_whose_purification_always_fails_fails_after_a_bounded_number_of_tries() -> None:
    stage = _stage(10**6)
    with pytest.raises(RuntimeError, match="unspecified launch failure"):
        stage(_batch())
    assert stage.purifier.calls == PURIFY_ATTEMPTS == 4
