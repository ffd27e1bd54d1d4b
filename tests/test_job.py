"""The streaming job end to end on a local Ray: every input exactly once, resumable, all formats."""

from __future__ import annotations

import gzip
import json
import platform

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

import pipeline
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.job import progress_total, run_job, run_status
from pipeline.output import JOB_FILE
from pipeline.plan import plan_job
from tests.jobutil import decoded_size, image_bytes, read_output, tar_bytes, tiny_model_file, zip_bytes

pytestmark = pytest.mark.usefixtures("ray_local")


def _config(tmp_path, model, **kw) -> JobConfig:
    base = dict(output=str(tmp_path / "out"), checkpoint=model, steps=2, pool=4, progress=False, write_batch=16)
    return JobConfig(**{**base, **kw})


def _folder(tmp_path):
    root = tmp_path / "in"
    sizes = {"cat/a.png": (32, 32), "cat/b.jpg": (224, 224), "dog/c.png": (200, 300), "dog/d.bmp": (7, 5)}
    for i, (name, (h, w)) in enumerate(sizes.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        fmt = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}[name.rsplit(".", 1)[1]]
        (root / name).write_bytes(image_bytes(h, w, i, fmt))
    (root / "dog/broken.png").write_bytes(image_bytes(32, 32, 9)[:60])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored: hidden")
    return root, sizes


def test_folder_mixed_sizes_labels_and_rejects(tmp_path, model) -> None:
    root, sizes = _folder(tmp_path)
    summary = run_job(_config(tmp_path, model, input=str(root), labels_from_folders=True, canvas_size=64))
    data, rejects = read_output(str(tmp_path / "out"))
    run = summary["this_run"]
    assert run["read"] == 6 == run["purified"] + run["rejected"]
    assert (run["purified"], run["rejected"]) == (4, 2)
    assert sorted(data["id"]) == sorted(sizes)
    for _, row in data.iterrows():
        assert decoded_size(row["image"]) == sizes[row["id"]]
        assert (row["height"], row["width"]) == sizes[row["id"]]
        assert row["label"] == row["id"].split("/")[0]
        assert len(row["source_sha256"]) == 64
        assert 0 < row["psnr_vs_input_db"] < 100  # the 2-step random model changes every image, but not to noise
    assert sorted(rejects["id"]) == ["dog/broken.png", "notes.txt"]
    assert all(rejects["error"].str.len() > 0)
    out = json.loads((tmp_path / "out/_summary.json").read_text())
    assert out["status"] == "complete" and out["model"]["sha256"] == summary["model"]["sha256"]
    change = out["this_run"]["psnr_vs_input_db"]
    assert change["mean"] == pytest.approx(data["psnr_vs_input_db"].mean(), abs=0.01)
    assert change["min"] == data["psnr_vs_input_db"].min() and change["unchanged"] == 0
    # the 224 px and 200x300 images were shrunk to the 64 px canvas; the others were purified at their own size
    factors = dict(zip(data["id"], data["downscale_factor"], strict=True))
    assert factors == {"cat/a.png": 1.0, "dog/d.bmp": 1.0, "cat/b.jpg": 3.5, "dog/c.png": 4.688}
    assert out["this_run"]["downscaled"] == {"images": 2, "max_factor": 4.688}
    # what the output was made with, for a bug report: the code's version and the libraries that can move its pixels
    assert out["versions"] == {"zip_purify": pipeline.__version__, "torch": torch.__version__, "ray": ray.__version__,
                               "python": platform.python_version()}
    # the output is a data set that pandas and pyarrow.dataset read as it is (the image a struct of bytes and path)
    import pandas as pd
    import pyarrow.dataset as pads

    assert len(pd.read_parquet(tmp_path / "out" / "data")) == len(sizes)
    table = pads.dataset(str(tmp_path / "out" / "data"), format="parquet").to_table()
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_cell_psnr_measures_only_that_images_cell() -> None:
    import numpy as np

    from pipeline.stages import cell_psnr
    from pipeline.tiling import Placement

    before = np.zeros((64, 64, 3), np.uint8)
    after = before.copy()
    after[32:, :32] = 10  # the lower-left image changed by 10 levels everywhere: 20 log10(255 / 10) dB
    assert cell_psnr(before, after, Placement(0, 32, 0, 32, 32, 32, 32)) == 28.13
    assert cell_psnr(before, after, Placement(0, 0, 0, 32, 32, 32, 32)) == float("inf")
    assert cell_psnr(before, after, Placement(0, 0, 0, 64, 64, 64, 64)) == round(28.13 + 10 * np.log10(4), 2)


def test_tar_shards_with_webdataset_keys(tmp_path, model) -> None:
    root = tmp_path / "in"
    root.mkdir()
    members = {}
    for i in range(5):
        members[f"s/{i:04d}.png"] = image_bytes(32, 32, i)
        members[f"s/{i:04d}.cls"] = str(i % 2).encode()
    members["s/0005.jpg"] = b"\xff\xd8garbage"
    (root / "shard-0.tar").write_bytes(tar_bytes(members))
    summary = run_job(_config(tmp_path, model, input=str(root), in_memory_mb=0))  # streamed, as a large shard is
    data, rejects = read_output(str(tmp_path / "out"))
    assert summary["this_run"]["read"] == 6
    assert sorted(data["id"]) == [f"shard-0.tar/s/{i:04d}" for i in range(5)]
    assert sorted(data["label"]) == [0, 0, 0, 1, 1]
    assert list(rejects["id"]) == ["shard-0.tar/s/0005"]
    assert data["source"].str.contains("shard-0.tar:s/").all()


def test_progress_over_shards_has_a_total_from_their_headers_or_says_how_many_read_tasks_are_done_and_mixed_labels_unify(
        tmp_path, model, capsys, monkeypatch) -> None:
    # a plain shard's keys are counted from its headers; compressed shards past the bytes decompressed to count them
    # have an image count unknown until they are read: no total, so the line counts shards (read tasks) instead
    from pipeline.sources import tar_count

    # The same run shows labels of mixed types in two shards read back as one data set (one run instead of two): the
    # shards' .cls labels are numbers in two and words in one, each image in a part file of its own.
    root = tmp_path / "in"
    root.mkdir()
    labels = {0: [b"3", b"4"], 1: [b"cat", b"dog"], 2: [b"5", b"6"]}
    for s in range(3):
        members = {f"{k}.png": image_bytes(32, 32, k) for k in range(2)}
        members.update({f"{k}.cls": labels[s][k] for k in range(2)})
        (root / f"shard-{s}.tar").write_bytes(tar_bytes(members))
    summary = run_job(_config(tmp_path, model, input=str(root), progress=True, write_batch=1))  # one file per image
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("images: 6/6 (100 %) in ") and last.endswith(", rejected 0"), last
    assert summary["this_run"]["columns_retyped"] == {"label": "string"}
    import pandas as pd

    df = pd.read_parquet(tmp_path / "out" / "data").sort_values("id")
    assert list(df["label"]) == ["3", "4", "cat", "dog", "5", "6"]
    for s in range(3):
        shard = root / f"shard-{s}.tar"
        (root / f"shard-{s}.tar.gz").write_bytes(gzip.compress(shard.read_bytes()))
        shard.unlink()
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", 100)
    run_job(_config(tmp_path, model, input=str(root), output=str(tmp_path / "out-gz"), progress=True, write_batch=1))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("images: 6 in ") and last.endswith(", rejected 0, read_tasks 3/3"), last


def test_progress_over_parquet_files_has_a_total_from_their_footers_and_hf_layout_and_binary_columns_are_read(
        tmp_path, model, capsys) -> None:
    # one run for the progress over Parquet files and the Parquet layouts read (two runs before): a Hugging Face
    # layout (an image struct of bytes and path, a label, a split; one cell not an image) and a binary image column
    # with a caption, beside an image file and a damaged one
    root = tmp_path / "in"
    root.mkdir()
    hf = pa.table({"image": [{"bytes": image_bytes(32, 32, i), "path": f"x{i}.png"} for i in range(3)] +
                   [{"bytes": b"bad", "path": "bad.png"}], "label": [3, 1, 4, 1], "split": ["a", "b", "c", "d"]})
    pq.write_table(hf, root / "hf.parquet")
    pq.write_table(pa.table({"img": [image_bytes(16, 48, 7)], "caption": ["wide"]}), root / "bin.parquet")
    (root / "x.png").write_bytes(image_bytes(16, 16, 9))
    (root / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")  # a reject: counted, but not as purified
    summary = run_job(_config(tmp_path, model, input=str(root), progress=True))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # images done, purified or rejected: the old "purified: 7/7 (100 %) ..., rejected 2" said 7 purified where 5 were
    assert last.startswith("images: 7/7 (100 %) in ") and last.endswith(", rejected 2"), last
    assert "read_tasks" not in last, last
    data, rejects = read_output(str(tmp_path / "out"))
    assert summary["this_run"]["read"] == 7 and len(data) == 5
    assert sorted(rejects["id"]) == ["hf.parquet#3", "y.png"]
    hf_rows = data[data["id"].str.startswith("hf")].sort_values("id")
    assert list(hf_rows["label"]) == [3, 1, 4] and list(hf_rows["split"]) == ["a", "b", "c"]
    wide = data[data["id"] == "bin.parquet#0"].iloc[0]
    assert wide["caption"] == "wide" and decoded_size(wide["image"]) == (16, 48)
    # the plan behind it: rows less those done; no total with a zip archive among the inputs, or a footer unreadable
    fresh = _config(tmp_path, model, input=str(root), output=str(tmp_path / "fresh"))
    plan = plan_job(fresh, dry_run=True)
    hf_unit = next(u for u in plan.units if u.paths[0].endswith("hf.parquet"))
    plan.container_done[hf_unit.paths[0]] = ["hf.parquet#0", "hf.parquet#unreadable"]
    assert progress_total(plan, {}) == 7 - 1
    (root / "c.parquet").write_bytes(b"not parquet")
    assert progress_total(plan_job(fresh, dry_run=True), {}) is None
    (root / "c.parquet").unlink()
    (root / "s.tar").write_bytes(tar_bytes({"0.png": image_bytes(16, 16, 0)}))
    assert progress_total(plan_job(fresh, dry_run=True), {}) == 7 + 1  # a tar shard's keys, from its headers
    (root / "z.zip").write_bytes(zip_bytes({"0.png": image_bytes(16, 16, 0)}))
    assert progress_total(plan_job(fresh, dry_run=True), {}) is None


def test_resume_and_incremental_without_duplicates(tmp_path, model) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(40):
        (root / f"{i:03d}.png").write_bytes(image_bytes(32, 32, i))
    cfg = _config(tmp_path, model, input=str(root), files_per_unit=8, write_batch=8, tile_batch=8)
    run_job(cfg)
    out = tmp_path / "out"
    parts = sorted((out / "data").glob("part-*.parquet"))
    assert len(parts) >= 3
    # A run killed mid-way: some parts missing, summary still says "running".
    for p in parts[:2]:
        p.unlink()
    missing = 40 - len(read_output(str(out))[0])
    summary = json.loads((out / "_summary.json").read_text())
    summary["status"] = "running"
    (out / "_summary.json").write_text(json.dumps(summary))
    resumed = run_job(cfg)
    assert resumed["this_run"]["purified"] == missing
    assert resumed["this_run"]["skipped_already_done"] == 40 - missing
    data, _ = read_output(str(out))
    assert len(data) == 40 and data["id"].is_unique
    # A finished output is not appended to by accident ...
    with pytest.raises(JobError, match="--incremental"):
        run_job(cfg)
    # ... but --incremental adds exactly the new inputs.
    for i in range(40, 45):
        (root / f"{i:03d}.png").write_bytes(image_bytes(32, 32, i))
    inc = run_job(JobConfig(**{**cfg.__dict__, "incremental": True}))
    assert inc["this_run"]["purified"] == 5
    data, _ = read_output(str(out))
    assert len(data) == 45 and data["id"].is_unique
    # Other settings into the same output are refused.
    with pytest.raises(JobError, match=r"other settings: pool 4 \(now 2\)"):
        run_job(JobConfig(**{**cfg.__dict__, "incremental": True, "pool": 2}))
    # ... and so are other decoding options, which change what an image's pixels are
    with pytest.raises(JobError, match=r"other decoding: alpha 'white' \(now 'black'\)"):
        run_job(JobConfig(**{**cfg.__dict__, "incremental": True, "alpha": "black"}))
    # An output written before a sampler setting existed (no `resample` in its record) still takes incremental runs
    # with that setting's default, and still refuses another value of it.
    job_file = out / JOB_FILE
    record = json.loads(job_file.read_text())
    del record["settings"]["resample"]
    del record["decoding"]  # written before the decoding options were recorded: today's defaults
    job_file.write_text(json.dumps(record))
    assert run_job(JobConfig(**{**cfg.__dict__, "incremental": True}))["this_run"]["skipped_already_done"] == 45
    with pytest.raises(JobError, match=r"other settings: resample 1 \(now 2\)"):
        run_job(JobConfig(**{**cfg.__dict__, "incremental": True, "resample": 2}))


def _pngs_and_one_broken(root, count: int):
    """`count` small PNGs 0.png... and broken.png, which is not an image (a reject)."""
    root.mkdir()
    for i in range(count):
        (root / f"{i}.png").write_bytes(image_bytes(32, 32, i))
    (root / "broken.png").write_bytes(b"not an image")
    return root


def test_dry_run_reports_the_plan_and_writes_nothing(tmp_path, model, capsys) -> None:
    root = _pngs_and_one_broken(tmp_path / "in", 6)
    out = tmp_path / "out"
    cfg = _config(tmp_path, model, input=str(root), files_per_unit=4)
    plan = plan_job(cfg, dry_run=True).describe()
    assert plan["output"] == {"state": "new", "purified": 0, "rejected": 0, "rejects_to_retry": 0,
                              "rejects_to_retry_image_files": 0, "rejects_to_retry_in_containers": 0}
    assert plan["input"]["image_files_to_read"] == 7 and plan["input"]["read_tasks"] == 2
    assert plan["input"]["bytes"] == sum(p.stat().st_size for p in root.iterdir()) and plan["input"]["unsized"] == 0
    assert plan["model"]["sha256"] == plan_job(cfg).job_record["checkpoint_sha256"]
    assert not out.exists()
    run_job(cfg)
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    # A finished output: the dry run stops where the run would, with the same reason.
    with pytest.raises(JobError, match="--incremental"):
        plan_job(cfg, dry_run=True)
    (root / "6.png").write_bytes(image_bytes(32, 32, 6))
    inc = plan_job(JobConfig(**{**cfg.__dict__, "incremental": True}), dry_run=True).describe()
    assert inc["output"] == {"state": "incremental", "purified": 6, "rejected": 1, "rejects_to_retry": 0,
                             "rejects_to_retry_image_files": 0, "rejects_to_retry_in_containers": 0}
    assert (inc["input"]["image_files_to_read"], inc["input"]["image_files_already_done"]) == (1, 7)
    assert inc["input"]["bytes"] == (root / "6.png").stat().st_size  # only what is left to read
    # --overwrite in a dry run deletes nothing and plans every input again.
    over = plan_job(JobConfig(**{**cfg.__dict__, "overwrite": True}), dry_run=True).describe()
    assert over["output"]["state"] == "overwrite" and over["input"]["image_files_to_read"] == 8
    assert (over["output"]["purified"], over["output"]["rejected"]) == (6, 1)  # what --overwrite would delete
    with pytest.raises(JobError, match="other settings: pool"):
        plan_job(JobConfig(**{**cfg.__dict__, "incremental": True, "pool": 2}), dry_run=True)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(JobError, match="is a file"):
        plan_job(JobConfig(**{**cfg.__dict__, "output": str(tmp_path / "a-file")}), dry_run=True)
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    from pipeline.cli import _human_bytes, main

    status = main(["--dry-run", "--incremental", "--input", str(root), "--output", str(out), "--checkpoint", model,
                   "--steps", "2", "--files-per-unit", "4"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "1 image file to read (7 already done" in printed.out and "nothing was read" in printed.out
    assert f"{_human_bytes((root / '6.png').stat().st_size)} to read" in printed.out
    assert [_human_bytes(n) for n in (1023, 1536, 5 * 2**20, 3 * 2**30)] == ["1023 bytes", "1.5 KiB", "5.0 MiB", "3.0 GiB"]

    # Tar shards and Parquet files over --in-memory-mb are counted as streamed; image files never are.
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.tar").write_bytes(b"\0" * 2**20 + b"\0")  # just over 1 MiB: streamed at --in-memory-mb 1
    (shards / "b.tar").write_bytes(b"\0" * 1024)
    (shards / "c.png").write_bytes(b"\0" * 2 * 2**20)
    plan = plan_job(JobConfig(**{**cfg.__dict__, "input": str(shards), "output": str(tmp_path / "o2"),
                                 "in_memory_mb": 1}), dry_run=True).describe()["input"]
    assert (plan["tar_shards"], plan["streamed"], plan["in_memory_mb"]) == (2, 1, 1)
    assert plan["bytes"] == 2**20 + 1 + 1024 + 2 * 2**20
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_empty_input_completes_with_a_warning(tmp_path, model, capsys) -> None:
    from pipeline.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden.png").write_bytes(image_bytes(32, 32, 0))
    code = main(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"), "--checkpoint", model,
                 "--steps", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "read 0, purified 0" in captured.out
    assert "found no inputs under" in captured.err
    assert json.loads((tmp_path / "out" / "_summary.json").read_text())["status"] == "complete"


def test_cli_help_and_bad_checkpoint(tmp_path, capsys) -> None:
    # in this process: that jobs/purify.py runs as a script and hands its arguments to this parser is
    # test_cli_options' to show (a process of its own, ~10 CPU s, which what the help and the run say do not need)
    from pipeline.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for option in ["--input", "--output", "--checkpoint", "--preset", "--steps", "--pool", "--lam", "--eta",
                   "--seed", "--resample", "--batch-size", "--actors", "--gpus-per-actor", "--s3-endpoint", "--incremental",
                   "--config"]:
        assert option in help_text
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"truncated")
    assert main(["--checkpoint", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "is not a torch file" in capsys.readouterr().err
    assert not (tmp_path / "o" / "data").exists()  # stopped before reading any data


def test_yaml_config_and_flag_precedence(tmp_path) -> None:
    from pipeline.cli import ConfigError, config_from_args

    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("input: s3://b/in\npool: 2\nsteps: 10\nstorage_options: {anon: true}\n")
    cfg = config_from_args(["--config", str(cfg_file), "--steps", "5", "--s3-endpoint", "http://localhost:9",
                            "--resample", "2", "--start", "0.3"])
    assert (cfg.input, cfg.pool, cfg.steps) == ("s3://b/in", 2, 5)
    assert (cfg.settings().resample, cfg.settings().start) == (2, 0.3)
    assert cfg.storage_options == {"anon": True, "client_kwargs": {"endpoint_url": "http://localhost:9"}}
    cfg_file.write_text("pol: 2\n")
    with pytest.raises(ConfigError, match="pol"):
        config_from_args(["--config", str(cfg_file)])
    # the storage shorthands of the command line work in the file too
    cfg_file.write_text("s3_endpoint: http://localhost:9\nanon: true\nstorage_option: [region=eu]\n")
    assert config_from_args(["--config", str(cfg_file)]).storage_options == {
        "client_kwargs": {"endpoint_url": "http://localhost:9"}, "anon": True, "region": "eu"}


def test_recipes_set_the_sampler_and_explicit_options_win(tmp_path) -> None:
    """--recipe low-asr is the measured Algorithm 1 + late start; a flag or --config key given as well wins over it."""
    from pipeline.cli import config_from_args
    from pipeline.settings import RECIPES, ZipSettings

    low = config_from_args(["--recipe", "low-asr"]).settings()
    assert (low.sampler, low.steps, low.start, low.pool) == ("ddpm", 50, 0.3, 4)
    assert config_from_args(["--recipe", "low-asr", "--steps", "40"]).settings().steps == 40
    assert config_from_args(["--recipe", "paper"]).settings() == ZipSettings().for_prior({})
    assert config_from_args(["--recipe", "authors-code"]).settings() == ZipSettings.authors_code().for_prior({})
    assert ZipSettings.recipe("fast", pool=2) == ZipSettings(start=0.3, pool=2)
    assert set(RECIPES) == {"paper", "fast", "low-asr", "authors-code"}

    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("recipe: fast\nsteps: 10\n")
    from_file = config_from_args(["--config", str(cfg_file)]).settings()
    assert (from_file.start, from_file.steps) == (0.3, 10)  # the file's own key wins over its recipe
    assert config_from_args(["--config", str(cfg_file), "--recipe", "paper"]).settings().steps == 10
    assert config_from_args(["--config", str(cfg_file), "--recipe", "paper"]).settings().start == 1.0  # flag's recipe
    cfg_file.write_text("recipe: quick\n")
    with pytest.raises(ValueError, match="unknown recipe 'quick'; choose one of paper, fast"):
        config_from_args(["--config", str(cfg_file)])
    with pytest.raises(SystemExit):  # argparse's own check of the flag's choices
        config_from_args(["--recipe", "quick"])


def test_shipped_gtsrb_prior_by_name_and_conflicts(tmp_path) -> None:
    import hashlib

    from pipeline.presets import ASSETS

    root = tmp_path / "signs"
    root.mkdir()
    for i in range(2):
        (root / f"s{i}.png").write_bytes(image_bytes(32, 32, i))
    config = JobConfig(input=str(root), output=str(tmp_path / "out"), prior="gtsrb", steps=2, progress=False)
    summary = run_job(config)
    assert summary["this_run"]["purified"] == 2
    assert summary["model"]["sha256"] == hashlib.sha256((ASSETS / "gtsrb_prior.pt").read_bytes()).hexdigest()
    assert "gtsrb" in summary["model"]["note"]
    with pytest.raises(JobError, match="not both"):
        run_job(JobConfig(input=str(root), output=str(tmp_path / "o2"), prior="gtsrb", checkpoint="x.pt"))
    with pytest.raises(JobError, match="shipped priors: cifar10, gtsrb"):
        run_job(JobConfig(input=str(root), output=str(tmp_path / "o3"), prior="imagenet"))
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_a_negative_in_memory_limit_is_refused_before_reading(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(JobError, match="--in-memory-mb must be a whole number of 0 or more, got -1"):
        plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), in_memory_mb=-1), dry_run=True)


def test_untile_hands_on_images_shrunk_to_the_canvas_in_bounded_batches() -> None:
    """A block of small canvases holding shrunk large images grows many-fold when untiled: it must go on in pieces."""
    import numpy as np

    from pipeline.stages import batch_of, records_of, tile_stage, untile_stage

    rng = np.random.default_rng(0)
    images = [{"kind": "image", "id": f"{i}", "source": "s", "source_sha256": "0", "meta": {},
               "pixels": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)} for i in range(10)]
    tiled = tile_stage(batch_of(images + [{"kind": "count", "n": 10, "skipped": 0}]), 32, 4, "fit", 0)
    assert len(tiled["record"]) == 11  # ten 32 px canvases, one image each, and the count
    batches = [records_of(b) for b in untile_stage(tiled, 32, 4, max_bytes=2 * 128 * 128 * 3)]
    assert [len(b) for b in batches] == [3, 2, 2, 2, 2]  # two images at a time (the count rides with the first)
    untiled = [r for b in batches for r in b if r["kind"] == "image"]
    assert [r["id"] for r in untiled] == [f"{i}" for i in range(10)]
    assert all(r["pixels"].shape == (128, 128, 3) and r["downscale_factor"] == 4.0 for r in untiled)


def test_bad_option_values_stop_the_run_and_the_dry_run_naming_the_option(tmp_path, model, capsys) -> None:
    """A bad value is an `error:` with exit status 2 before any work, never dropped images or a crash later."""
    from pipeline.cli import main

    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(image_bytes(32, 32, 0))
    (tmp_path / "ckpt-folder").mkdir()
    (tmp_path / "picture.pt").write_bytes(image_bytes(8, 8, 0))
    configs = {"missing.yaml": None, "bad.yaml": "pool: [4\n", "list.yaml": "- pool: 4\n",
               "so.yaml": "storage_options: foo\n", "sha.yaml": "checkpoint_sha256: 12345\n",
               "types.yaml": "write_batch: '16'\nincremental: 'yes'\n"}
    for name, text in configs.items():
        if text is not None:
            (tmp_path / name).write_text(text)
    cases = {
        "--write-batch must be a whole number of at least 1, got -1": ["--write-batch", "-1"],
        "--tile-batch must be a whole number of at least 1, got 0": ["--tile-batch", "0"],
        "--files-per-unit must be a whole number of at least 1, got -1": ["--files-per-unit", "-1"],
        "--actors must be a whole number of 0 or more, got -1": ["--actors", "-1"],
        "--cpus-per-task must be a number above 0, got 0.0": ["--cpus-per-task", "0"],
        "--precision fp16 needs a CUDA device": ["--precision", "fp16", "--device", "cpu"],
        "--device must be cpu, cuda or cuda:N, got 'foo'": ["--device", "foo"],
        "cannot read --config": ["--config", str(tmp_path / "missing.yaml")],
        "is not valid YAML": ["--config", str(tmp_path / "bad.yaml")],
        "must hold a mapping of option: value, got a list": ["--config", str(tmp_path / "list.yaml")],
        "storage_options in": ["--config", str(tmp_path / "so.yaml")],
        "--checkpoint-sha256 must be 64 hexadecimal digits, got 12345": ["--config", str(tmp_path / "sha.yaml")],
        "--write-batch must be a whole number of at least 1, got '16'; --incremental must be true or false":
            ["--config", str(tmp_path / "types.yaml")],
        "storage option expects KEY=VALUE, got 'foo'": ["--storage-option", "foo"],
        "is a folder; give the checkpoint file in it": ["--checkpoint", str(tmp_path / "ckpt-folder")],
        "is not a torch file": ["--checkpoint", str(tmp_path / "picture.pt")],
    }
    for message, args in cases.items():
        for dry in ([], ["--dry-run"]):
            args = ["--input", str(root), "--output", str(tmp_path / "out"), "--checkpoint", model, "--steps", "2",
                    "--no-progress", *dry, *args]
            assert main(args) == 2, (message, dry)
            err = capsys.readouterr().err
            assert err.startswith("error: ") and message in err, (message, dry, err)
            assert not (tmp_path / "out").exists(), message


def test_an_output_inside_the_input_is_not_read_back(tmp_path, model) -> None:
    root = _pngs_and_one_broken(tmp_path / "in", 3)
    cfg = _config(tmp_path, model, input=str(root), output=str(root / "clean"))
    run_job(cfg)
    (root / "3.png").write_bytes(image_bytes(32, 32, 3))
    plan = plan_job(JobConfig(**{**cfg.__dict__, "incremental": True}), dry_run=True).describe()["input"]
    # two part files (data/ and rejects/) lie inside the input; only the new image is left to read
    assert (plan["excluded_output_files"], plan["image_files_to_read"], plan["parquet_files"]) == (2, 1, 0)
    inc = run_job(JobConfig(**{**cfg.__dict__, "incremental": True}))
    assert (inc["this_run"]["read"], inc["this_run"]["purified"]) == (1, 1)
    data, rejects = read_output(str(root / "clean"))
    assert sorted(data["id"]) == ["0.png", "1.png", "2.png", "3.png"] and list(rejects["id"]) == ["broken.png"]
    # the output as the input folder itself: its data/ and rejects/ are left out the same way (another input than the
    # output's own, which the plan refuses without --input-moved: its ids would be relative to another folder)
    same = plan_job(JobConfig(**{**cfg.__dict__, "input": str(root / "clean"), "incremental": True, "input_moved": True}),
                    dry_run=True).describe()["input"]
    parts = len(list((root / "clean").glob("*/part-*.parquet")))
    assert parts == 3 and (same["excluded_output_files"], same["parquet_files"], same["image_files_to_read"]) == (
        parts, 0, 0)


def test_a_run_is_complete_only_when_its_rows_reached_the_output() -> None:
    assert run_status(read=10, purified=7, rejected=3, rows_before=5, rows_after=15) == "complete"
    assert run_status(read=10, purified=7, rejected=3, rows_before=5, rows_after=5) == "inconsistent"  # nothing landed
    assert run_status(read=10, purified=7, rejected=2, rows_before=0, rows_after=9) == "inconsistent"  # one lost
    assert run_status(read=0, purified=0, rejected=0, rows_before=4, rows_after=4) == "complete"  # nothing new


def test_a_gpu_precision_or_device_on_a_cluster_without_gpus_stops_before_any_actor(tmp_path, model, capsys) -> None:
    import ray

    from pipeline.cli import main

    if ray.cluster_resources().get("GPU"):
        pytest.skip("this Ray cluster has GPUs")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(32, 32, 0))
    base = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", model, "--steps", "2",
            "--no-progress"]
    for args, message in ((["--precision", "fp16"], "--precision fp16 needs CUDA, but the actors run on cpu"),
                          (["--device", "cuda"], "--device cuda needs GPU actors, but they get none")):
        assert main([*base, *args]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()  # not even _job.json: nothing was started


def test_columns_get_one_type_across_part_files(tmp_path) -> None:
    from pipeline.output import common_column_types, unify_output_types

    s = lambda **types: pa.schema(list(types.items()))  # noqa: E731
    assert common_column_types([s(a=pa.int64(), b=pa.string()), s(a=pa.int64(), b=pa.string())]) == {}
    assert common_column_types([s(a=pa.null()), s(a=pa.int64())]) == {"a": pa.int64()}  # an all-null file
    assert common_column_types([s(a=pa.int64()), s(a=pa.float64())]) == {"a": pa.float64()}
    assert common_column_types([s(a=pa.int64()), s(a=pa.string())]) == {"a": pa.string()}
    assert common_column_types([s(a=pa.null()), s(a=pa.null())]) == {}
    assert common_column_types([s(a=pa.null()), s()]) == {"a": pa.null()}  # all null where held: given to every file
    assert common_column_types([s(a=pa.int64()), s(b=pa.string())]) == {"a": pa.int64(), "b": pa.string()}  # lacking

    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "label": pa.nulls(1), "score": pa.nulls(1)}), data / "part-0.parquet")
    pq.write_table(pa.table({"id": ["b"], "label": [3], "score": [1]}), data / "part-1.parquet")
    pq.write_table(pa.table({"id": ["c"], "label": ["cat"], "score": [2.5], "extra": [{"k": 1}]}),
                   data / "part-2.parquet")
    with pytest.raises(pa.ArrowException):  # what a user of the folder met before
        pq.read_table(data)
    assert unify_output_types(str(tmp_path / "out"), {}) == {"label": "string", "score": "double",
                                                            "extra": "struct<k: int64>"}
    table = pq.read_table(data).sort_by("id")
    assert table.column("label").to_pylist() == [None, "3", "cat"]
    assert table.column("score").to_pylist() == [None, 1.0, 2.5]
    assert table.column("extra").to_pylist() == [None, None, {"k": 1}]
    before = sorted(p.stat().st_mtime_ns for p in data.iterdir())
    assert unify_output_types(str(tmp_path / "out"), {}) == {}  # nothing left to do, nothing rewritten
    assert sorted(p.stat().st_mtime_ns for p in data.iterdir()) == before


def test_the_ids_of_a_part_file_are_read_without_its_images(tmp_path) -> None:
    """Every run lists the whole output's ids (resume, the end-of-run check): that must not download the images."""
    import io

    from pipeline.output import _part_ids

    rng = np.random.default_rng(0)
    images = [{"bytes": rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes(), "path": f"{i}.png"} for i in range(20)]
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"id": [f"img-{i}" for i in range(20)], "image": images}), path)

    class CountingFile(io.FileIO):
        read_bytes = 0

        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            CountingFile.read_bytes += len(data)
            return data

    class LocalFs:
        def open(self, p: str, mode: str) -> io.FileIO:
            return CountingFile(p, "r")

    assert _part_ids(LocalFs(), str(path)) == [f"img-{i}" for i in range(20)]
    assert path.stat().st_size > 4_000_000 and CountingFile.read_bytes < 100_000


def test_duplicate_rows_are_removed_once_data_winning(tmp_path) -> None:
    """A retried write that landed twice with other batch contents: every id must end up exactly once."""
    from pipeline.output import deduplicate_output

    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "rejects").mkdir()

    def part(folder: str, name: str, ids: list[str]) -> None:
        pq.write_table(pa.table({"id": ids, "n": list(range(len(ids)))}), out / folder / f"part-{name}.parquet")

    part("data", "a", ["a", "b"])
    part("data", "b", ["b", "c"])  # b again: the later file by name loses it
    part("data", "c", ["a"])  # nothing new: the file goes
    part("rejects", "d", ["c", "d"])  # c was purified: data wins over rejects
    rows = deduplicate_output(str(out), {})
    assert (rows.duplicates_removed, rows.purified, rows.rejected) == (3, 3, 1)
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == ["a", "b", "c"] and list(rejects["id"]) == ["d"]
    assert not (out / "data" / "part-c.parquet").exists()
    assert sorted(p.rsplit("/", 1)[-1] for p in rows.data_schemas) == ["part-a.parquet", "part-b.parquet"]
    again = deduplicate_output(str(out), {})
    assert (again.duplicates_removed, again.purified, again.rejected) == (0, 3, 1)


def test_a_purifier_actor_given_gpus_torch_cannot_see_stops_instead_of_running_on_cpu(tmp_path, monkeypatch) -> None:
    """A GPU node whose driver is too old for torch's CUDA: Ray assigns the GPU, torch sees none, and the purifier
    used to fall back to the CPU, so the cluster ran at CPU speed without a word."""
    import ray
    import torch

    from pipeline import stages

    assert stages.unusable_gpus([], False, "2.x", None) is None  # a CPU actor
    assert stages.unusable_gpus(["0"], True, "2.x", "13.0") is None  # a working GPU
    problem = stages.unusable_gpus(["0"], False, "2.x", "13.0")
    assert "given GPU(s) ['0']" in problem and "CUDA 13.0" in problem and "driver" in problem

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = dict(checkpoint=tiny_model_file(tmp_path), checkpoint_sha256=None, settings={"steps": 2}, preset=None,
                flags=None, storage_options={}, precision="fp32", canvas_size=32, torch_threads=None)
    with pytest.raises(RuntimeError, match="sees none"):
        stages.PurifyStage(device=None, **args)
    assert stages.PurifyStage(device="cpu", **args).purifier.device.type == "cpu"  # asked for the CPU: runs there


def test_an_output_name_with_double_colons_is_written_there_and_url_chains_are_refused(tmp_path, model, capsys) -> None:
    """fsspec's url_to_fs read 'out::x' as the chain 'out' :: 'x', so the job wrote its output to ./out instead.
    The same run shows the CLI's warning of images shrunk to the model's canvas (one job run instead of two)."""
    from pipeline.cli import main

    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(image_bytes(32, 32, 0))
    (root / "large.png").write_bytes(image_bytes(96, 128, 1))
    out = tmp_path / "night::1"
    code = main(["--input", str(root), "--output", str(out), "--checkpoint", model, "--steps", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "read 2, purified 2" in captured.out
    # the model is 32 px: the 96x128 image was purified at 24x32, a quarter of its size
    assert "1 image(s) were larger than the model's 32 px canvas" in captured.err and "up to 4.0x" in captured.err
    assert json.loads((out / "_summary.json").read_text())["this_run"]["purified"] == 2
    assert sorted(read_output(str(out))[0]["id"]) == ["a.png", "large.png"] and not (tmp_path / "night").exists()
    for name in ("input", "output"):
        config = JobConfig(input=str(root), output=str(tmp_path / "o"), checkpoint="unused.pt")
        setattr(config, name, "simplecache::file://" + str(tmp_path / "x"))
        with pytest.raises(JobError, match=f"--{name} must be the storage's own URI"):
            plan_job(config, dry_run=True)


def test_a_cpu_purifier_actor_uses_the_cores_of_its_own_node(tmp_path, monkeypatch) -> None:
    """CPU actors used to get the driver's core count as torch threads, which says nothing of a worker node's."""
    import torch

    from pipeline import stages

    threads_before = torch.get_num_threads()
    monkeypatch.setattr(stages.os, "cpu_count", lambda: 3)  # the node the actor runs on
    try:
        stages.PurifyStage(checkpoint=tiny_model_file(tmp_path), checkpoint_sha256=None, settings={"steps": 2}, preset=None,
                           flags=None, storage_options={}, device="cpu", precision="fp32", canvas_size=32,
                           torch_threads=stages.ALL_CORES)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads_before)


@pytest.mark.parametrize("settings, actors, gpus, expected", [
    ({}, 1, 0.0, "all"),                                  # a lone CPU actor: every core of its node
    ({}, 4, 0.0, 1),                                      # four may share a node: each its reserved CPU
    ({"cpus_per_actor": 4.0}, 4, 0.0, 4),
    ({"cpus_per_actor": 0.5}, 4, 0.0, 1),                 # never 0 threads
    ({"torch_threads": 3}, 4, 0.0, 3),                    # the user's choice wins
    ({}, 2, 1.0, None),                                   # GPU actors keep torch's default
])
def test_several_cpu_actors_do_not_each_take_every_core_of_their_node(settings, actors, gpus, expected) -> None:
    """Each CPU actor used all of its node's cores, so N actors on one node ran N times as many threads as cores."""
    from pipeline import stages
    from pipeline.placement import cpu_actor_threads

    threads = cpu_actor_threads(JobConfig(input="in", output="out", **settings), actors, gpus)
    assert threads == (stages.ALL_CORES if expected == "all" else expected)


@pytest.mark.parametrize("option, value", [("pool", 0), ("steps", 0), ("eta", 2.0), ("lam", 3.0), ("start", 0.0),
                                           ("operators", "foo"), ("max_pixels", 10**12)])
def test_a_bad_sampler_or_decoding_value_names_its_flag(option, value) -> None:
    """The settings' own messages use Python names ('pool factor must be ...'); the job's user typed a flag."""
    config = JobConfig(input="in", output="out", **{option: value})
    with pytest.raises(JobError, match=f"^--{option.replace('_', '-')}: "):
        config.check()
