"""The purifier actor's setup and Python's cyclic garbage collector (pipeline.stages.long_lived_objects_made).

Each run starts its purifier actor in a new process. Collecting while torch was imported and walking every object
torch made once more at the process's exit cost that process about 0.6 CPU s per run, on top of its work."""

from __future__ import annotations

import gc

import pytest

from pipeline.errors import NotOnThisNodeError
from tests.jobutil import tiny_model_file


def _stage_args(tmp_path) -> dict:
    return dict(checkpoint=tiny_model_file(tmp_path), checkpoint_sha256=None, settings={"steps": 1}, preset=None,
                flags=None, storage_options={}, device="cpu", precision="fp32", canvas_size=32, torch_threads=None)


def test_in_a_ray_actor_the_setup_is_frozen_out_of_the_collector_which_stays_on(tmp_path, ray_local) -> None:
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        def __init__(self, args: dict):
            from pipeline.stages import PurifyStage

            self.stage = PurifyStage(**args)

        def collector(self) -> tuple[bool, int]:
            return gc.isenabled(), gc.get_freeze_count()

        def purified_shape(self) -> tuple[int, ...]:
            import numpy as np

            return self.stage.purifier.purify_canvases(np.zeros((1, 32, 32, 3), np.uint8), seeds=[0]).shape

    probe = Probe.remote(_stage_args(tmp_path))
    try:
        enabled, frozen = ray.get(probe.collector.remote())
        assert enabled  # collection goes on for what the batches make
        assert frozen > 10_000  # torch's modules and the model: out of every later collection and the exit's
        assert ray.get(probe.purified_shape.remote()) == (1, 32, 32, 3)
    finally:
        ray.kill(probe)


@pytest.mark.parametrize("enabled_before", [True, False])
def test_outside_an_actor_the_callers_collector_is_left_as_it_was(tmp_path, enabled_before: bool) -> None:
    from pipeline.stages import PurifyStage

    frozen_before = gc.get_freeze_count()
    (gc.enable if enabled_before else gc.disable)()
    try:
        PurifyStage(**_stage_args(tmp_path))
        assert gc.isenabled() is enabled_before
        with pytest.raises(NotOnThisNodeError):  # a setup that fails gives the collector back too
            PurifyStage(**{**_stage_args(tmp_path), "checkpoint": str(tmp_path / "missing.pt")})
        assert gc.isenabled() is enabled_before
    finally:
        gc.enable()
    assert gc.get_freeze_count() == frozen_before  # nothing of the caller's frozen
