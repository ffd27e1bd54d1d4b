"""An output written inside its input, at scale: which listed files are the output's own.

Planning checks every listed input path for being one of the output's data/ or rejects/ files (they are not input).
Each check resolved the whole path with os.path.realpath (a lookup per folder of the path) and ran up to four times
a path: 100,000 files took 34 s to plan against 4.7 s with the output elsewhere (bench/scale_bench.py plan-inside).
Each folder is now resolved once and only the file's own name looked up; these tests pin that the answers are
the old rule's, links included, and the plan that rests on them.
"""

from __future__ import annotations

import os
import posixpath

import pytest

import pipeline.output as output
from pipeline.errors import JobError
from pipeline.output import JOB_FILE, output_inside_input, write_json
from pipeline.stages import _data_table, write_parquet_atomic


def _old_rule(input_uri: str, output_uri: str):
    """The test as first written: os.path.realpath of every path, compared with each written folder."""
    fs, in_path = output._fs(input_uri, {})
    _, out_path = output._fs(output_uri, {})

    def normal(path: str) -> str:
        return os.path.realpath(fs._strip_protocol(path))

    out = normal(out_path)
    if not output._is_under(out, normal(in_path)):
        return None
    written = [posixpath.join(out, "data"), posixpath.join(out, "rejects")]
    return lambda path: any(output._is_under(normal(path), folder) for folder in written)


def _linked_tree(tmp_path):
    """An input holding its output, with links into, out of and around the output's folders."""
    root = tmp_path / "in"
    out = root / "out"
    for folder in (root / "a" / "b", out / "data", out / "rejects", tmp_path / "elsewhere"):
        folder.mkdir(parents=True, exist_ok=True)
    for f in (root / "a" / "1.png", root / "a" / "b" / "2.png", out / "data" / "part-1.parquet",
              out / "rejects" / "part-2.parquet", out / "other.png", tmp_path / "elsewhere" / "3.png"):
        f.write_bytes(b"x")
    links = {
        root / "via": out / "data",  # a folder link into data/
        root / "a" / "p.parquet": out / "rejects" / "part-2.parquet",  # a file link to a part file
        out / "data" / "away.png": root / "a" / "1.png",  # a file in data/ that leads out of it
        out / "data" / "far": tmp_path / "elsewhere",  # a folder in data/ that leads out of it
        root / "up": root / "a",  # a folder link that stays outside the output
        root / "dangling.png": root / "nowhere.png",
        root / "loop": root / "loop",
        root / "chain": root / "via",  # a link to a link into data/
    }
    for link, target in links.items():
        os.symlink(target, link)
    return root, out


def test_the_output_s_own_files_are_those_the_old_rule_found_links_included(tmp_path) -> None:
    root, out = _linked_tree(tmp_path)
    paths = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        paths += [os.path.join(folder, name) for name in dirs + files]
    r = str(root)
    paths += [r + "/via/part-1.parquet", r + "/chain/part-1.parquet", r + "/via/../out/rejects/part-2.parquet",
              r + "/a/../out/data/part-1.parquet", r + "/out/data/far/3.png", r + "/out/data/", r + "/out/data/.",
              r + "/via/..", r + "/loop/x.png", r + "/up/b/2.png", r + "//out//data//part-1.parquet", r + "/out/data",
              "file://" + r + "/via/part-1.parquet", r + "/missing/part-9.parquet", r + "/out/rejects/../data/x"]
    for input_uri, output_uri in ((r, str(out)), ("file://" + r, str(out) + "/"), (r, r), (str(out), str(out))):
        new, old = output_inside_input(input_uri, output_uri, {}), _old_rule(input_uri, output_uri)
        assert (new is None) == (old is None)
        found = {p: new(p) for p in paths}
        assert found == {p: old(p) for p in paths}, (input_uri, output_uri)
        if output_uri.rstrip("/") == str(out):
            # what the rule means, spelled out: part files reached through links are the output's; links out of
            # data/ are not
            assert found[r + "/via/part-1.parquet"] and found[r + "/chain/part-1.parquet"]
            assert found[r + "/a/p.parquet"] and not found[r + "/out/data/away.png"]
            assert not found[r + "/out/data/far/3.png"] and not found[r + "/up/b/2.png"]
    assert output_inside_input(str(root / "a"), str(out), {}) is None  # an output beside the input


def test_a_folder_of_many_files_is_resolved_once_not_once_a_file(tmp_path, monkeypatch) -> None:
    root = tmp_path / "in"
    for k in range(2):
        (root / f"f{k}").mkdir(parents=True)
    paths = [str(root / f"f{i % 2}" / f"{i}.png") for i in range(200)]
    inside = output_inside_input(str(root), str(root / "out"), {})
    calls = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    assert not any(inside(p) for p in paths)
    assert len(calls) <= 2  # one per folder (the old rule: two per file, 400)


def _part(out, folder: str, ids: list[str]) -> None:
    rows = [{"id": i, "png": b"\x89PNG", "width": 1, "height": 1, "meta": {}, "source": i, "source_sha256": "0"}
            for i in ids]
    write_parquet_atomic(_data_table(rows), f"{out}/{folder}/part-{ids[0].replace('/', '_')}.parquet", {})


def test_planning_leaves_out_the_output_s_files_however_they_are_reached(tmp_path) -> None:
    from pipeline.config import JobConfig
    from pipeline.plan import plan_job

    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    for name in ("1.png", "2.png"):
        (root / "a" / name).write_bytes(b"x")
    out = root / "out"
    config = JobConfig(input=str(root), output=str(out), steps=1, progress=False)
    write_json(f"{out}/{JOB_FILE}", plan_job(config, dry_run=True).job_record, {})  # an unfinished run's record
    _part(out, "data", ["a/1.png"])
    os.symlink(out / "data", root / "via")  # the same part file again, through a folder link
    os.symlink(out / "data" / "part-a_1.png.parquet", root / "a" / "part-x.parquet")  # and through a file link
    plan = plan_job(config, dry_run=True)
    assert plan.output_state == "resume" and plan.excluded_output_files == 3
    assert [(u.kind, [posixpath.basename(p) for p in u.paths]) for u in plan.units] == [("files", ["2.png"])]
    # a file of the user's in data/: neither read nor skipped, the run is refused
    (out / "data" / "mine.png").write_bytes(b"x")
    with pytest.raises(JobError, match=r"input file .*/mine\.png lies in the data/ or rejects/ folder"):
        plan_job(config, dry_run=True)
    # and so when it is listed only through a link (the output's own folder is hidden from the listing: '_')
    # (an output with its record: a new one whose data/ holds the user's files is refused before any listing)
    root = tmp_path / "in2"
    (root / "_out" / "data").mkdir(parents=True)
    (root / "1.png").write_bytes(b"x")
    config = JobConfig(input=str(root), output=str(root / "_out"), steps=1, progress=False)
    write_json(f"{root / '_out'}/{JOB_FILE}", plan_job(config, dry_run=True).job_record, {})
    (root / "_out" / "data" / "mine.png").write_bytes(b"x")
    os.symlink(root / "_out" / "data", root / "via")
    with pytest.raises(JobError, match=r"input file .*/in2/via/mine\.png lies in the data/ or rejects/ folder"):
        plan_job(config, dry_run=True)
