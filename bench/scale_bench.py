"""The driver's own work at cluster scale, without the model: time and peak memory per function and size.

    python bench/scale_bench.py                                  # sizes 10000,100000
    python bench/scale_bench.py --sizes 10000,100000,1000000 --work /tmp/scale-bench
    python bench/scale_bench.py --sizes 1000000 --only plan-files,dedup-dirty --tracemalloc
    python bench/scale_bench.py --sizes 10000000 --only journal                # a journal of 10^6 ids, no fixture

A run over an output that already holds N rows does work on the driver before and after its pipeline, and that work
grows with N, not with the images purified tonight. For each size N this builds (once, cached under --work/N):

  in-files/   N zero-byte "image" files, 1,000 a folder (only listed, never read)
  in-tar/     N/10,000 tar shards (at least 10) of zero-byte members, holding N members in all, plus one new shard
  out-files/  the output of a complete run over in-files, but for the last 50 files: 99% in data/, 1% in rejects/,
              --rows-per-part rows a part file, in the job's own schemas (pipeline.stages) with 8-byte "images"
  out-tar/    the output of a complete run over in-tar (every member of every shard but the new one) and its
              _containers/ ledger recording each shard read whole
  in-nest/    in-files again, with out-files inside it as in-nest/purified (an output written inside its input)
  out-dirty/  out-files plus what a killed or retried run leaves: 1% of the ids again in new data/ part files
              (a write retried with another batch) and 0.2% of the rejects again in new rejects/ part files with a
              newer rejected_at (a --retry-rejects run killed before its end-of-run check)

N must be at least 61 (50 new files and 10 purified ones to change in place; a smaller N is refused), except for
`--only journal`, which builds nothing. The bench then measures each function in a fresh process (setup excluded):
wall seconds, CPU seconds (the process's, all its threads: on a machine shared with other work the wall time grows
with the load, the CPU time much less), and peak resident memory above what the process held just before the call
(Linux VmHWM, reset through /proc/self/clear_refs). --tracemalloc adds a second run of each under tracemalloc for the
Python heap's peak (slower; Arrow's own buffers are not in it).

  discover      sources.discover(in-files): the input listing
  plan-files    job.plan_job over in-files and out-files, --incremental (what a nightly run does before Ray starts)
  plan-inside   the same over in-nest and in-nest/purified: each listed file is checked for being the output's own
  done-ids      output.output_ids(out-files): every part file's id column
  plan-tar      job.plan_job over in-tar and out-tar, --incremental: container_ids, the ledger, digests
  container-ids ledger.container_ids(the output's ids, in-tar's shards) alone
  ledger        ledger.read_ledger + unchanged_and_done for every shard + write_ledger
  dedup-clean   output.deduplicate_output + unify_output_types + job.run_status on out-files (nothing to remove:
                the end-of-run check of a normal nightly run)
  dedup-dirty   the same on a fresh copy of out-dirty (rows to remove, rejects' newest-row rule)

--refresh-changed (pipeline.refresh), on fixtures built beside the others when one of these is asked for:

  refresh-files/ a hard-linked copy of out-files with a record of the inputs' stamps (`_inputs/stamps.parquet`) in
                 which 1% of the done image files have an earlier stamp: changed in place since their rows were written
  refresh-few/   the same with only 10 purified image files of an earlier stamp, spread over the output (a few touched)
  refresh-tar/   a hard-linked copy of out-tar (and its ledger) with a record in which the shards holding the first
                 N/10 rows have an earlier stamp (one shard of N/10 members at 10^4 and 10^5; ten of N/100 at 10^6)
  refresh-stop/  out-tar as a refresh of those shards leaves it stopped before its end-of-run check: their new rows
                 in part files of its own (salted names), the old rows still there, its journal and its record

  plan-refresh-files  job.plan_job over in-files and refresh-files, --refresh-changed (not a dry run: the journal is
                      made): output ids, the same-bytes check of the changed files, the part files holding their rows
  plan-refresh-few    the same over in-files and refresh-few: 10 files to compare and refresh, whose rows are in
                      10 of the output's part files
  plan-refresh-tar    the same over in-tar and refresh-tar: N/10 rows to refresh
  journal             refresh.write_journal + read_journal of the journal of a refresh of one changed Parquet
                      file of N/10 rows (made in memory, no fixture: `--only journal --sizes 10000000` is 10^6 ids);
                      its size is printed below the table
  plan-stopped        job.plan_job over in-tar and refresh-stop, --incremental (not a dry run): the plan of the run
                      after a stopped refresh, which reads its journal and looks its ids up
  start-refresh       what that run's start does (job._start_refresh) on a fresh copy of refresh-stop: read the journal,
                      remove the N/10 superseded rows (drop_superseded_rows), remove the journal
  dedup-refresh       the end-of-run check of the refresh run itself (deduplicate_output with its journal, written
                      files and unify_output_types) on a fresh copy of refresh-stop

Prints a table; never asserts on time. The machine it was written on has 2 shared cores: run one thing at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REFRESH_FUNCTIONS = ("plan-refresh-files", "plan-refresh-few", "plan-refresh-tar", "journal", "plan-stopped", "start-refresh",
                     "dedup-refresh")
FUNCTIONS = ("discover", "plan-files", "plan-inside", "done-ids", "plan-tar", "container-ids", "ledger",
             "dedup-clean", "dedup-dirty", *REFRESH_FUNCTIONS)
NO_FIXTURES = ("journal",)  # made in memory: any size, nothing built on disk
CHANGED_EVERY = 100  # refresh-files: one done image file in this many changed in place
FEW_CHANGED = 10  # refresh-few: this many done image files changed in place
NEW_FILES = 50  # input files not yet in the output: tonight's new images
REJECTED_EVERY = 100  # one id in this many is in rejects/
MEMBERS_PER_SHARD = 10_000


def _least_size() -> int:
    """The smallest N whose fixtures are what the docstring says: NEW_FILES new input files, and among the N - NEW_FILES
    done ones (one in REJECTED_EVERY a reject) FEW_CHANGED purified ones for refresh-few to change in place."""
    done = FEW_CHANGED
    while done - -(-done // REJECTED_EVERY) < FEW_CHANGED:
        done += 1
    return NEW_FILES + done


MIN_SIZE = _least_size()  # 61


def _file_id(i: int) -> str:
    return f"d{i // 100_000:02d}/e{(i // 1000) % 100:02d}/{i:07d}.png"


def _shards(n: int) -> int:
    return max(10, n // MEMBERS_PER_SHARD)


def _purified(done: list[str]) -> list[str]:
    """The done ids that are in data/ (the others are in rejects/)."""
    return [i for k, i in enumerate(done) if k % REJECTED_EVERY]


def _few_changed(done: list[str]) -> list[str]:
    """refresh-few's FEW_CHANGED purified ids, spread evenly over the output."""
    purified = _purified(done)
    if len(purified) < FEW_CHANGED:
        raise ValueError(f"{len(purified)} purified ids: refresh-few needs {FEW_CHANGED} (N >= {MIN_SIZE})")
    return purified[:: len(purified) // FEW_CHANGED][:FEW_CHANGED]


def _tar_ids(n: int) -> list[str]:
    shards = _shards(n)
    per = -(-n // shards)
    return [f"shard-{s:05d}.tar/k{k:06d}" for s in range(shards) for k in range(min(per, n - s * per))]


# ---------------------------------------------------------------------------------------------------- fixtures


def _templates(rows: int) -> tuple[Any, Any]:
    from pipeline.stages import _data_table, _rejects_table

    data = _data_table([{"id": f"x{i}", "png": b"\x89PNG\r\n\x1a\n", "width": 8, "height": 8, "meta": {},
                         "source": f"x{i}", "source_sha256": "0" * 64, "psnr_vs_input_db": 30.0,
                         "downscale_factor": 1.0, "original_mode": "RGB", "original_format": "PNG",
                         "original_frames": 1} for i in range(rows)])
    rejects = _rejects_table([{"id": f"x{i}", "source": f"x{i}", "stage": "decode", "error": "cannot identify image",
                               "rejected_at": 1_700_000_000_000_000} for i in range(rows)])
    return data, rejects


def _part(template: Any, ids: list[str], rejected_at: int | None = None) -> Any:
    """`template`'s first len(ids) rows with these ids (and sources, image names, reject times)."""
    import pyarrow as pa

    from pipeline.stages import REJECTED_AT, _png_name

    table = template.slice(0, len(ids))
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    table = table.set_column(table.schema.get_field_index("source"), "source", pa.array(ids, pa.string()))
    if "image" in table.column_names:
        image = table.column("image").combine_chunks()
        table = table.set_column(table.schema.get_field_index("image"), table.schema.field("image"),
                                 pa.StructArray.from_arrays([image.field("bytes"),
                                                             pa.array([_png_name(i) for i in ids], pa.string())],
                                                            fields=list(table.schema.field("image").type)))
    if rejected_at is not None:
        field = table.schema.field(REJECTED_AT)
        table = table.set_column(table.schema.get_field_index(REJECTED_AT), field,
                                 pa.array([rejected_at] * len(ids), pa.int64()).cast(field.type))
    return table


def _write_parts(out: Path, folder: str, template: Any, ids: list[str], rows: int,
                 rejected_at: int | None = None) -> list[str]:
    import pyarrow.parquet as pq

    from pipeline.stages import part_name

    (out / folder).mkdir(parents=True, exist_ok=True)
    names = []
    for s in range(0, len(ids), rows):
        chunk = ids[s : s + rows]
        name = part_name(chunk)
        pq.write_table(_part(template, chunk, rejected_at), out / folder / name, compression="zstd")
        names.append(f"{folder}/{name}")
    return names


def _complete(out: Path, input_: Path) -> None:
    """_job.json as a run over `input_` writes it, and a complete summary."""
    from pipeline.config import JobConfig
    from pipeline.output import JOB_FILE, SUMMARY_FILE, write_json
    from pipeline.plan import plan_job

    record = plan_job(JobConfig(input=str(input_), output=str(out / "_tmp"), steps=1, progress=False),
                      dry_run=True).job_record
    write_json(f"{out}/{JOB_FILE}", record, {})
    write_json(f"{out}/{SUMMARY_FILE}", {"status": "complete"}, {})


def build(n: int, work: Path, rows: int) -> None:
    """Every fixture of size `n` under work/n (skipped when already built with these settings)."""
    from pipeline.ledger import ContainerRead, write_ledger
    from pipeline.sources import discover, ids_digest, relative_id

    root = work / str(n)
    stamp = {"n": n, "rows_per_part": rows, "version": 1}
    if (root / "built.json").exists() and json.loads((root / "built.json").read_text()) == stamp:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    data_t, rejects_t = _templates(rows)

    # in-files, out-files
    ids = [_file_id(i) for i in range(n)]
    for i, id_ in enumerate(ids):
        if i % 1000 == 0:
            (root / "in-files" / id_).parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(root / "in-files" / id_, os.O_CREAT | os.O_WRONLY, 0o644))
    done = ids[: n - NEW_FILES]
    out = root / "out-files"
    _write_parts(out, "data", data_t, _purified(done), rows)
    _write_parts(out, "rejects", rejects_t, done[::REJECTED_EVERY], rows, 1_700_000_000_000_000)
    _complete(out, root / "in-files")

    # out-dirty: out-files and the duplicates a retried write and a killed --retry-rejects run leave
    shutil.copytree(out, root / "out-dirty")
    again = _purified(done)[::100]
    written = _write_parts(root / "out-dirty", "data", data_t, again[::-1], rows)  # other batches: other names
    written += _write_parts(root / "out-dirty", "rejects", rejects_t, done[::REJECTED_EVERY][::5], rows,
                            1_800_000_000_000_000)
    (root / "dirty-written.json").write_text(json.dumps(written))

    # in-tar, out-tar, the ledger
    tar_ids = _tar_ids(n)
    (root / "in-tar").mkdir()
    members: dict[str, list[str]] = {}
    for id_ in tar_ids:
        shard, key = id_.split("/")
        members.setdefault(shard, []).append(key)
    members[f"shard-{_shards(n):05d}.tar"] = [f"k{k:06d}" for k in range(100)]  # tonight's new shard
    for shard, keys in members.items():
        with tarfile.open(root / "in-tar" / shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key in keys:
                info = tarfile.TarInfo(f"{key}.png")
                info.mtime = 0
                tar.addfile(info)
    out = root / "out-tar"
    _write_parts(out, "data", data_t, tar_ids, rows)
    (out / "rejects").mkdir()
    _complete(out, root / "in-tar")
    entries = {}
    for unit in discover(str(root / "in-tar"), {}):
        shard = relative_id(unit.paths[0], unit.root)
        if shard in members and shard != f"shard-{_shards(n):05d}.tar":
            keys = [f"{shard}/{k}" for k in members[shard]]
            entries[unit.paths[0]] = ContainerRead(unit.paths[0], unit.sizes[0], unit.stamps[0], len(keys),
                                                   ids_digest(keys))
    write_ledger(str(out), {}, entries)
    (root / "built.json").write_text(json.dumps(stamp))
    print(f"built size {n} in {time.perf_counter() - t0:.0f} s under {root}", file=sys.stderr, flush=True)


def build_nest(n: int, work: Path) -> None:
    """in-nest/: the input files again, with out-files copied inside it (built apart, after the rest)."""
    from pipeline.output import JOB_FILE, read_json, write_json

    root = work / str(n)
    if (root / "nest-built.json").exists():
        return
    shutil.rmtree(root / "in-nest", ignore_errors=True)
    for i in range(n):
        id_ = _file_id(i)
        if i % 1000 == 0:
            (root / "in-nest" / id_).parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(root / "in-nest" / id_, os.O_CREAT | os.O_WRONLY, 0o644))
    out = root / "in-nest" / "purified"
    shutil.copytree(root / "out-files", out)
    # the record of a run over in-nest: the ids are the same paths, relative to it
    record = read_json(f"{out}/{JOB_FILE}", {})
    record["input"] = {"uri": str(root / "in-nest"), "location": os.path.realpath(root / "in-nest")}
    write_json(f"{out}/{JOB_FILE}", record, {})
    (root / "nest-built.json").write_text("{}")


def _linked_copy(src: Path, dst: Path) -> None:
    """A copy of an output whose files are hard links (planning reads them, never writes them)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=os.link)


def _refreshed_shards(n: int) -> list[str]:
    """The tar shards holding the first N/10 rows of out-tar (the rows --refresh-changed purifies again)."""
    return [f"shard-{s:05d}.tar" for s in range(max(1, _shards(n) // 10))]


def build_refresh(n: int, work: Path, rows: int) -> None:
    """refresh-files/, refresh-few/, refresh-tar/ and refresh-stop/ (built apart, after the rest)."""
    import pyarrow.parquet as pq

    from pipeline.changes import InputRecord, write_record
    from pipeline.output import JOB_FILE, part_files_holding, read_json
    from pipeline.refresh import Journal, write_journal
    from pipeline.sources import discover, relative_id

    root = work / str(n)
    if (root / "refresh-built.json").exists() and (root / "refresh-few-built.json").exists():
        return
    t0 = time.perf_counter()
    done = [_file_id(i) for i in range(n - NEW_FILES)]

    def record(out: Path, input_: Path, earlier: set[str]) -> InputRecord:
        location = (read_json(f"{out}/{JOB_FILE}", {}) or {})["input"]["location"]
        stamps = {}
        for unit in discover(str(input_), {}):
            for path, content in zip(unit.paths, unit.contents, strict=True):
                id_ = relative_id(path, unit.root)
                stamps[id_] = (unit.kind, f"earlier-{content}" if id_ in earlier else content)
        written = InputRecord(location, stamps)
        write_record(str(out), {}, written)
        return written

    if not (root / "refresh-few-built.json").exists():  # added later than the others: built apart
        _linked_copy(root / "out-files", root / "refresh-few")
        record(root / "refresh-few", root / "in-files", set(_few_changed(done)))
        (root / "refresh-few-built.json").write_text("{}")
        if (root / "refresh-built.json").exists():
            return

    _linked_copy(root / "out-files", root / "refresh-files")
    record(root / "refresh-files", root / "in-files", set(done[1::CHANGED_EVERY]))  # purified ones: 1 in 100 is a reject

    _linked_copy(root / "out-tar", root / "refresh-tar")
    shards = _refreshed_shards(n)
    record(root / "refresh-tar", root / "in-tar", set(shards))

    # refresh-stop: the same refresh, stopped after its new rows and before its end-of-run check
    stop = root / "refresh-stop"
    _linked_copy(root / "out-tar", stop)
    final = record(stop, root / "in-tar", set(shards))
    ids = [i for i in _tar_ids(n) if i.split("/")[0] in shards]
    holders = part_files_holding(str(stop), {}, set(ids))
    inputs = {s: ("tar", final.stamps[s][1].removeprefix("earlier-"), [i for i in ids if i.startswith(f"{s}/")])
              for s in shards}
    salt = "bench-refresh"
    data_t, _ = _templates(rows)
    names = []
    for s in range(0, len(ids), rows):  # as write_stage names them: salted
        chunk = ids[s : s + rows]
        name = f"data/{_salted(chunk, salt)}"
        pq.write_table(_part(data_t, chunk), stop / name, compression="zstd")
        names.append(name)
    write_journal(str(stop), {}, Journal(holders, inputs, salt))
    (root / "refresh-written.json").write_text(json.dumps(names))
    (root / "refresh-built.json").write_text("{}")
    print(f"built refresh fixtures of size {n} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def _salted(ids: list[str], salt: str) -> str:
    from pipeline.stages import part_name

    return part_name(ids, salt)


# ---------------------------------------------------------------------------------------------------- measuring


def _status_kb(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _stopped_copy(root: Path, linked: bool) -> Path:
    """A fresh copy of refresh-stop (its files hard links when `linked`: only read), with its journal as this version
    of the program writes it (the fixture's is whichever version built it)."""
    from pipeline.refresh import journal_path, read_journal, write_journal

    copy = root / ("scratch-stopped" if linked else "scratch-refresh")
    if linked:
        _linked_copy(root / "refresh-stop", copy)
    else:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root / "refresh-stop", copy)
    journal = read_journal(str(copy), {})
    os.remove(journal_path(str(copy)))  # a link to the fixture's: not written through
    write_journal(str(copy), {}, journal)
    return copy


def _journal_of(ids: int, rows_per_part: int) -> Any:
    """The journal of a refresh of one changed Parquet file of `ids` rows, whose old rows fill part files of
    `rows_per_part` rows (what plan._journal makes)."""
    from pipeline.refresh import Journal
    from pipeline.stages import part_name

    keys = [f"big.parquet#{k}" for k in range(ids)]
    rows: dict[str, list[str]] = {}
    for s in range(0, ids, rows_per_part):
        name = [f"data/{part_name(keys[s : s + rows_per_part])}"]
        rows.update((k, name) for k in keys[s : s + rows_per_part])
    return Journal(rows, {"big.parquet": ("parquet", "1700000000.0:123", keys)}, "salt")


def _setup(fn: str, n: int, root: Path, rows_per_part: int = 256) -> Any:
    """The call to measure, with its arguments prepared (not measured)."""
    from pipeline.config import JobConfig
    from pipeline.job import run_status
    from pipeline.ledger import container_ids, read_ledger, unchanged_and_done, write_ledger
    from pipeline.output import deduplicate_output, output_ids, unify_output_types
    from pipeline.plan import plan_job
    from pipeline.sources import discover

    if fn == "discover":
        return lambda: discover(str(root / "in-files"), {}, 256)
    if fn in ("plan-files", "plan-tar", "plan-inside"):
        kind = fn.split("-")[1]
        input_, out = (root / "in-nest", root / "in-nest" / "purified") if kind == "inside" else (
            root / f"in-{kind}", root / f"out-{kind}")
        config = JobConfig(input=str(input_), output=str(out), steps=1, incremental=True, progress=False)
        return lambda: plan_job(config, dry_run=True)
    if fn == "done-ids":
        return lambda: output_ids(str(root / "out-files"), {})
    if fn in ("container-ids", "ledger"):
        purified, rejected = output_ids(str(root / "out-tar"), {})
        done = purified | rejected
        units = discover(str(root / "in-tar"), {})
        if fn == "container-ids":
            return lambda: container_ids(done, units)
        found = container_ids(done, units)

        def ledger() -> int:
            entries = read_ledger(str(root / "out-tar"), {})
            unread = [u for u in units if unchanged_and_done(u, u.stamps[0], entries.get(u.paths[0]),
                                                             found[u.paths[0]])]
            write_ledger(str(root / "out-tar"), {}, entries)
            return len(unread)

        return ledger
    if fn in ("dedup-clean", "dedup-dirty"):
        if fn == "dedup-clean":
            out, written = str(root / "out-files"), []
        else:
            out = str(root / "scratch-dirty")
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(root / "out-dirty", out)
            written = json.loads((root / "dirty-written.json").read_text())

        def check() -> str:
            rows = deduplicate_output(out, {}, written=written)
            unify_output_types(out, {}, rows.data_schemas)
            return run_status(0, 0, 0, rows.purified + rows.rejected, rows.purified + rows.rejected)

        return check
    if fn in ("plan-refresh-files", "plan-refresh-few", "plan-refresh-tar", "plan-stopped"):
        input_, out = {"plan-refresh-files": ("in-files", root / "refresh-files"),
                       "plan-refresh-few": ("in-files", root / "refresh-few"),
                       "plan-refresh-tar": ("in-tar", root / "refresh-tar"),
                       "plan-stopped": ("in-tar", _stopped_copy(root, linked=True))}[fn]
        config = JobConfig(input=str(root / input_), output=str(out), steps=1, incremental=True,
                           refresh_changed=fn != "plan-stopped", progress=False)
        return lambda: plan_job(config, dry_run=False)
    if fn == "journal":
        from pipeline.refresh import journal_path, read_journal, write_journal

        journal = _journal_of(n // 10, rows_per_part)
        scratch = root / "scratch-journal"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)

        def journal_both_ways() -> dict[str, str]:
            write_journal(str(scratch), {}, journal)
            size = os.path.getsize(journal_path(str(scratch)))
            ids = len(read_journal(str(scratch), {}).rows)
            return {"note": f"journal of {ids} ids: {size / 2**20:.1f} MB"}

        return journal_both_ways
    if fn in ("start-refresh", "dedup-refresh"):
        from pipeline.job import _start_refresh
        from pipeline.refresh import read_journal

        out = str(_stopped_copy(root, linked=False))
        if fn == "start-refresh":
            class NoRefresh:  # the run after the stop: it refreshes nothing itself
                refresh = None

            return lambda: _start_refresh(out, {}, NoRefresh())
        written = json.loads((root / "refresh-written.json").read_text())
        journal = read_journal(out, {})

        def check_refresh() -> str:
            rows = deduplicate_output(out, {}, written=written, journal=journal.rows)
            unify_output_types(out, {}, rows.data_schemas)
            return run_status(0, 0, 0, rows.purified + rows.rejected, rows.purified + rows.rejected)

        return check_refresh
    raise SystemExit(f"unknown function {fn}")


def measure_one(fn: str, n: int, work: Path, traced: bool, rows_per_part: int) -> None:
    """In this fresh process: set up, then time one call and its peak memory; print one JSON line."""
    call = _setup(fn, n, work / str(n), rows_per_part)
    if traced:
        import tracemalloc

        tracemalloc.start()
        t0 = time.perf_counter()
        call()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        print(json.dumps({"traced_mb": peak, "traced_s": seconds}), flush=True)
        return
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so setup's own peak is not counted
    before = _status_kb("VmRSS")
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = call()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = (_status_kb("VmHWM") - before) / 1024
    note = result.get("note") if isinstance(result, dict) else None
    del result
    print(json.dumps({"s": seconds, "cpu_s": cpu, "peak_mb": peak, **({"note": note} if note else {})}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000",
                   help=f"comma-separated N: input files, output rows, tar members (default 10000,100000; at "
                        f"least {MIN_SIZE} but for --only journal)")
    p.add_argument("--only", default=",".join(FUNCTIONS), help=f"comma-separated subset of {', '.join(FUNCTIONS)}")
    p.add_argument("--work", default="/tmp/scale-bench",
                   help="where fixtures are built and kept between runs (a 10^6 size takes ~0.7 GB and 2M inodes)")
    p.add_argument("--rows-per-part", type=int, default=256, help="rows per output part file (default 256)")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest is shown (default 1)")
    p.add_argument("--tracemalloc", action="store_true", help="also the Python heap's peak, in a separate run")
    p.add_argument("--_one", nargs=3, metavar=("FN", "N", "TRACED"), help=argparse.SUPPRESS)
    p.add_argument("--_build", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work)
    if args._build is not None:
        build(args._build, work, args.rows_per_part)
        if "plan-inside" in args.only.split(","):
            build_nest(args._build, work)
        if set(args.only.split(",")) & set(REFRESH_FUNCTIONS):
            build_refresh(args._build, work, args.rows_per_part)
        return
    if args._one:
        measure_one(args._one[0], int(args._one[1]), work, args._one[2] == "1", args.rows_per_part)
        return
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: not a comma-separated list of whole numbers: {args.sizes!r}")
    only = [f for f in args.only.split(",") if f]
    for f in only:
        if f not in FUNCTIONS:
            p.error(f"--only: unknown function {f!r}")
    fixtures = bool(set(only) - set(NO_FIXTURES))
    small = [n for n in sizes if n < (MIN_SIZE if fixtures else 1)]
    if small and fixtures:
        p.error(f"--sizes: {small[0]} is too small: the fixtures leave the last {NEW_FILES} input files new and "
                f"change {FEW_CHANGED} of the purified ones in place (refresh-few), so N must be at least {MIN_SIZE}")
    if small:
        p.error(f"--sizes: {small[0]} is not a size (at least 1)")

    def child(*extra: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, __file__, "--work", str(work), "--rows-per-part",
                               str(args.rows_per_part), *extra], capture_output=True, text=True)
        if done.returncode:  # its traceback, not only CalledProcessError's command line
            sys.stderr.write(done.stderr)
            raise SystemExit(f"{Path(__file__).name}: {' '.join(extra)} failed (exit status {done.returncode})")
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}

    header = "| function | N | seconds | CPU seconds | peak MB |" + (" traced peak MB |" if args.tracemalloc else "")
    print(header + "\n|" + " --- |" * (header.count("|") - 1), flush=True)
    notes = []
    for n in sizes:
        if set(only) - set(NO_FIXTURES):
            child("--_build", str(n), "--only", ",".join(only))
        for fn in only:
            runs = [child("--_one", fn, str(n), "0") for _ in range(max(1, args.repeat))]
            best = min(runs, key=lambda r: r["s"])
            cpu, peak = min(r["cpu_s"] for r in runs), max(r["peak_mb"] for r in runs)
            line = f"| {fn} | {n} | {best['s']:.2f} | {cpu:.2f} | {peak:.0f} |"
            if args.tracemalloc:
                line += f" {child('--_one', fn, str(n), '1')['traced_mb']:.0f} |"
            print(line, flush=True)
            notes += [f"{fn} at {n}: {best['note']}"] if "note" in best else []
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
