"""docs/api.md's claims, checked one by one against the calls (Dec 5 audit): those a script or a notebook relies on
that no other test held. No Ray is started here."""

from __future__ import annotations

import ast
import inspect
import os
import re
import signal
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.plan import plan_job
from tests.jobutil import png_inputs, tiny_model_file


@pytest.mark.parametrize("precision", [["fp16"], {"fp16": True}])
def test_a_precision_of_the_wrong_type_is_a_job_error_as_for_any_bad_option(tmp_path: Path, precision) -> None:
    """plan_job raises JobError for a bad option; a list or a dict as the precision raised TypeError ("unhashable type:
    'list'"), naming neither the option nor its values (a list from a grid of settings, say)."""
    png_inputs(tmp_path / "in", 1)
    config = JobConfig(input=tmp_path / "in", output=tmp_path / "out", checkpoint=tiny_model_file(tmp_path),
                       precision=precision)
    with pytest.raises(JobError, match=r"--precision must be one of fp32, fp16, bf16, got "):
        plan_job(config, dry_run=True)


ROOT = Path(__file__).resolve().parent.parent


def _documented_calls() -> dict[str, str]:
    """docs/api.md's "The calls" block: each call's name (as the block writes it at a line's start) -> its parameter
    list, as written between the parentheses (comments dropped, continuation lines joined)."""
    text = (ROOT / "docs" / "api.md").read_text()
    block = text.split("## The calls", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = "\n".join(line.split("#", 1)[0] for line in block.splitlines())
    calls: dict[str, str] = {}
    for match in re.finditer(r"(?m)^([A-Za-z_][\w.]*)\(", code):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        calls.setdefault(match[1], " ".join(code[match.end() : i - 1].split()))
    return calls


def _signature_of_doc(params: str) -> list[tuple[str, str, object]]:
    """(name, kind, default) of each parameter of a documented call; kind as inspect names it."""
    args = ast.parse(f"def f({params}): pass").body[0].args  # type: ignore[attr-defined]
    out: list[tuple[str, str, object]] = []
    positional = args.posonlyargs + args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + [
        ast.literal_eval(d) for d in args.defaults]
    out += [(a.arg, "POSITIONAL_OR_KEYWORD", d) for a, d in zip(positional, defaults, strict=True)]
    if args.vararg:
        out.append((args.vararg.arg, "VAR_POSITIONAL", inspect.Parameter.empty))
    out += [(a.arg, "KEYWORD_ONLY", inspect.Parameter.empty if d is None else ast.literal_eval(d))
            for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg:
        out.append((args.kwarg.arg, "VAR_KEYWORD", inspect.Parameter.empty))
    return out


def _api_calls() -> dict[str, tuple[object, set[str]]]:
    """Each documented call -> (what it calls, the parameters the code has that the page leaves out on purpose)."""
    from pipeline import Purifier, ZipSettings, shipped_prior
    from pipeline.export import export_images
    from pipeline.job import run_job

    return {
        "shipped_prior": (shipped_prior, set()),
        "Purifier.from_checkpoint": (Purifier.from_checkpoint, set()),
        "Purifier": (Purifier.__init__, {"self"}),  # checkpoint shown too: its meta sets the schedule and start
        "purifier": (Purifier.__call__, {"self"}),
        "ZipSettings": (ZipSettings, set()),
        "ZipSettings.recipe": (ZipSettings.recipe, set()),
        "JobConfig.from_recipe": (JobConfig.from_recipe, set()),
        "plan_job": (plan_job, set()),
        "run_job": (run_job, set()),
        "export_images": (export_images, set()),
    }


def test_the_calls_take_the_parameters_and_defaults_the_page_shows() -> None:
    """A script written from docs/api.md's block of calls (ZipSettings(steps=20, pool=4, ...), export_images(...,
    workers=8)) gets the defaults shown, and each parameter is taken the way it is written there: positionally, or by
    keyword only after a `*`."""
    documented = _documented_calls()
    calls = _api_calls()
    assert set(calls) <= set(documented), sorted(set(calls) - set(documented))
    for name, (call, left_out) in calls.items():
        code = [(p.name, p.kind.name, p.default) for p in inspect.signature(call).parameters.values()
                if p.name not in left_out]
        assert _signature_of_doc(documented[name]) == code, name


def test_a_seeds_batch_at_canvas_k_draws_the_noise_of_seed_s_plus_k_wrapping_at_2_to_the_32(tmp_path: Path) -> None:
    """docs/api.md: each sampling batch is seeded by the call's seed plus the index of its first canvas, wrapping at
    2**32: a set purified a batch at a time with seeds s, s + k, ... comes out as one call with seed s."""
    from pipeline import Purifier

    purifier = Purifier.from_checkpoint(tiny_model_file(tmp_path), device="cpu", steps=2, pool=4, batch_size=1)
    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))  # a canvas each
    for seed in (5, 2**32 - 1):
        together = purifier([first, second], seed=seed)
        assert np.array_equal(together[0], purifier([first], seed=seed)[0])
        assert np.array_equal(together[1], purifier([second], seed=(seed + 1) % 2**32)[0]), seed
        assert not np.array_equal(together[1], purifier([second], seed=seed)[0])  # the seed does make the noise


def test_a_cuda_device_this_machine_lacks_is_refused_before_the_checkpoint_is_read() -> None:
    """docs/api.md: a device this machine lacks is refused before the checkpoint loads (which may be a large remote
    file): here one that does not exist, so any other error would be the checkpoint's."""
    from pipeline import Purifier

    lacking = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=f"device '{lacking}': "):
        Purifier.from_checkpoint("/nonexistent/prior.pt", device=lacking)


def test_a_ctrl_c_while_run_job_loads_is_stopped_while_loading_a_keyboard_interrupt(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """docs/api.md: run_job raises StoppedWhileLoading, a KeyboardInterrupt, for a Ctrl-C before the output was
    touched: a notebook's `except KeyboardInterrupt` catches it, and nothing was written."""
    import pipeline.job as job
    from pipeline.stopped_run import StoppedWhileLoading

    def stopped(config: JobConfig, dry_run: bool = False):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "plan_job", stopped)
    caught: BaseException | None = None
    try:  # not pytest.raises: a bare KeyboardInterrupt would stop the whole test session
        job.run_job(JobConfig(input=tmp_path / "in", output=tmp_path / "out"))
    except BaseException as err:  # noqa: BLE001 - what it raised is the test's
        caught = err
    assert isinstance(caught, StoppedWhileLoading) and isinstance(caught, KeyboardInterrupt), repr(caught)
    assert caught.signum == signal.SIGINT
    assert not (tmp_path / "out").exists()


def test_an_export_whose_manifest_cannot_be_written_is_not_ok_with_every_image_in_to(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """docs/api.md: report.ok is True when every image is in `to` and the manifest asked for was written; a manifest
    that could not be written is said in manifest_error, and report.manifest names none."""
    import pipeline.export as export
    from tests.test_export import image, make_output

    make_output(str(tmp_path / "out"), [image(f"{i}.jpg", i) for i in range(3)])

    def full_disk(value):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_csv_value", full_disk)
    report = export.export_images(tmp_path / "out", tmp_path / "images")
    assert (report.written, report.failed, report.damaged) == (3, 0, [])
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["0.png", "1.png", "2.png"]
    assert not report.ok and "No space left on device" in report.manifest_error and report.manifest is None
    ok = export.export_images(tmp_path / "out", tmp_path / "images", manifest="none", existing="resume")
    assert ok.ok and ok.present == 3 and ok.manifest is None


def test_the_calls_that_take_a_path_say_so_to_a_type_checker() -> None:
    """docs/api.md: export_images's output and to, like from_checkpoint's uri, are a str or a pathlib.Path; annotated
    `str` alone, a type checker (mypy, an editor's) flagged a script's export_images(Path("out"), Path("images"))."""
    from pipeline import Purifier, load_checkpoint
    from pipeline.export import export_images

    for call, names in ((export_images, ("output", "to")), (Purifier.from_checkpoint, ("uri",)),
                        (load_checkpoint, ("uri",))):
        hints = typing.get_type_hints(call)
        for name in names:
            assert set(typing.get_args(hints[name])) == {str, os.PathLike[str]}, (call.__qualname__, name)


def test_a_purifier_made_from_a_model_runs_it_where_it_is_and_moves_it_only_when_told() -> None:
    """docs/api.md: Purifier(model) without `device` runs the model on the device its weights are on; the former default,
    device="cpu", moved a notebook's model off its GPU in place (model.to), and its next training step failed. A model
    on torch's 'meta' device stands in for one on a GPU here (moving it to the CPU raises)."""
    from pipeline.model import UNetConfig, build_unet
    from pipeline.purifier import Purifier
    from tests.jobutil import TINY_FLAGS

    with torch.device("meta"):
        elsewhere = build_unet(UNetConfig.from_flags(TINY_FLAGS))
    purifier = Purifier(elsewhere)
    assert purifier.device == torch.device("meta")
    assert {p.device.type for p in elsewhere.parameters()} == {"meta"}
    assert Purifier(build_unet(UNetConfig.from_flags(TINY_FLAGS))).device == torch.device("cpu")
    moved = build_unet(UNetConfig.from_flags(TINY_FLAGS)).to(torch.float32)
    assert Purifier(moved, device="cpu").model is moved  # told where: moved there, in place, as before
