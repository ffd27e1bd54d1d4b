"""The reliability suite's fault hook (ZIP_PURIFY_INJECT_FAULT) as the job's driver gives it to its purifier actors.

The workers of a Ray the job joins (a cluster, `ray job submit`, a test's session Ray) do not inherit the environment of
the process that started the job, so the hook set there reached the actors only on a Ray the job started itself. The
driver reads it (`driver_faults`) and each purifier actor is given it (`PurifyStage(faults=...)`); the whole way, a run
in the test's process whose faults are set after its Ray started: tests/reliability/test_faults.py
`test_actor_failures_are_retried`."""

from __future__ import annotations

from pathlib import Path

from pipeline.stages import FAULT_ENV, PurifyStage, batch_of, driver_faults, records_of


def _stage(faults: str | None) -> PurifyStage:
    stage = PurifyStage.__new__(PurifyStage)  # the model-loading constructor left out: a batch of no canvases needs none
    stage.faults = faults
    return stage


def test_the_driver_gives_its_actors_the_fault_of_its_environment_and_none_where_unset(monkeypatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "raise-once:/tmp/m;gate:/tmp/g")
    assert driver_faults() == "raise-once:/tmp/m;gate:/tmp/g"
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv(FAULT_ENV)
        else:
            monkeypatch.setenv(FAULT_ENV, unset)
        assert driver_faults() is None  # the actors then read their own environment, as before


def test_an_actor_given_the_drivers_fault_injects_it_without_it_in_its_own_environment(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    raised, gate = tmp_path / "raised", tmp_path / "gate"
    gate.mkdir()
    (gate / "open").touch()
    stage = _stage(f"raise-once:{raised};gate:{gate}")
    assert records_of(stage(batch_of([]))) == []  # raised once, tried again: through
    assert raised.exists() and (gate / "batch-0").exists()


def test_an_actor_given_no_fault_reads_its_own_environment_and_one_given_the_drivers_that_alone(tmp_path: Path,
                                                                                                monkeypatch) -> None:
    own = tmp_path / "own"
    monkeypatch.setenv(FAULT_ENV, f"raise-once:{own}")  # a Ray the job started: its actors have the driver's environment
    _stage(None)(batch_of([]))
    assert own.exists()
    own.unlink()
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "open").touch()
    _stage(f"gate:{gate}")(batch_of([]))  # the driver's, once, not the actor's on top of it
    assert (gate / "batch-0").exists() and not own.exists()
