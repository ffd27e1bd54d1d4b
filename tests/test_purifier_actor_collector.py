"""The purifier actor's start: Python's cyclic garbage collector during its setup
(pipeline.purify_stage.long_lived_objects_made), and what its process imports before it.

Each run starts its purifier actor in a new process. Collecting while torch was imported and walking every object
torch made once more at the process's exit cost that process about 0.6 CPU s per run, on top of its work; importing
the job's readers with the actor's class, ~0.25 CPU s more."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from pipeline.errors import NotOnThisNodeError
from tests.conftest import ROOT
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


def test_the_actors_class_comes_without_the_readers_and_without_torch() -> None:
    """A new actor process imports the module of the actor's class (to unpickle it) before its constructor runs: that
    module must not bring the job's readers and decoders (pipeline.sources, PIL), which the actor never uses, nor torch,
    which the constructor imports: the CPU stages' workers import the module too (`pipeline.stages` re-exports it)."""
    from pipeline.stages import PurifyStage

    code = "import importlib, json, sys; importlib.import_module(sys.argv[1]); print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code, PurifyStage.__module__], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout))
    assert PurifyStage.__module__ in modules
    unused = {"pipeline.sources", "pipeline.decode", "PIL", "torch"}
    assert not {m for m in modules if m in unused or m.split(".")[0] in unused or m.startswith("pipeline.sources.")}
