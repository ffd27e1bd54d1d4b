"""jobs/evaluate.py given a user's own prior it cannot use (user path, Dec 7): the error's advice read "(train one with
jobs/train_prior.py, pass --checkpoint, or leave out the zip defenses)" to a user who had passed --checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.evaluation import runner
from pipeline.evaluation.preflight import EvaluationError, checked_prior


def test_a_refused_prior_of_the_users_own_is_not_answered_with_pass_checkpoint(tmp_path: Path) -> None:
    prior = tmp_path / "prior.pt"
    prior.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a torch file cut short
    config = runner.EvalConfig("cifar10", attacks=["badnet"], defenses=["none", "zip"], checkpoint=str(prior),
                               subset=10, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    with pytest.raises(EvaluationError) as refused:
        checked_prior(config, config.defenses)
    message = str(refused.value)
    assert message.startswith(f"diffusion prior: checkpoint {prior} ")  # the file, and what is wrong with it
    assert "(train one with jobs/train_prior.py and give it as --checkpoint, or leave out the zip defenses)" in message
    assert "pass --checkpoint" not in message
