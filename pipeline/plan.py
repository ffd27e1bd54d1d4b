"""Planning a run before any image is read: the checkpoint to use, the output's state (new, resume, incremental, or
refused with the reason), and the input's read units less what the output already holds. The dry run prints it."""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.changes import (
    DIFFERS,
    EARLIER,
    ChangedInputs,
    InputRecord,
    find_changes,
    read_record,
    rows_as_recorded,
    same_bytes,
    same_members,
    updated_record,
    with_metadata_rows,
)
from pipeline.checkpoint import LoadedCheckpoint, load_checkpoint, save_bundle
from pipeline.config import DEFAULT_PRIOR_NAME, JobConfig
from pipeline.decode import DecodePolicy
from pipeline.errors import InputRefused, JobError, UnlistableFolder
from pipeline.lease import refuse_live_lease
from pipeline.ledger import ContainerRead, container_ids, read_ledger, unchanged_and_done
from pipeline.model import UNetConfig
from pipeline.output import (
    JOB_FILE,
    SUMMARY_FILE,
    DamagedPart,
    OutputIndex,
    check_output_location,
    clear_output,
    input_inside_written_folder,
    is_written_file,
    list_parts,
    output_files_inside_input,
    output_ids,
    output_index,
    output_inside_input,
    output_inside_written_folder,
    output_reached,
    read_json,
)
from pipeline.presets import shipped_prior_path
from pipeline.redaction import redact_uri, redact_uri_secrets
from pipeline.refresh import Journal, read_journal
from pipeline.sampler import run_timesteps
from pipeline.schedule import NoiseSchedule
from pipeline.settings import (
    RECIPES,
    ZipSettings,
    canonical_operators,
    check_trained_timesteps,
    guides_no_step,
    prior_range_note,
)
from pipeline.sources import (
    MAX_IMAGE_BYTES,
    HiddenSkipped,
    ReadUnit,
    discover,
    image_column_problem,
    input_location,
    partition_folders,
    relative_id,
    repeated_key_problem,
    repeated_partition_key,
    rows_without_image,
)
from pipeline.sources.arrow_ipc import is_arrow_ipc
from pipeline.sources.folder_metadata import ArchiveMetadata, FolderMetadata, metadata_report, with_row
from pipeline.sources.listing import InputNotFound
from pipeline.sources.partitions import partition_column
from pipeline.sources.read_budget import ReadBudget
from pipeline.sources.sidecar_files import Sidecars, sampled_json_sidecars, sidecar_names
from pipeline.sources.tar_count import ShardKeys, count_keys
from pipeline.sources.tfrecord_count import count_records
from pipeline.sources.tfrecord_files import features_json_notes, image_feature_problem, is_tfrecord
from pipeline.sources.webdataset_keys import with_own_columns
from pipeline.sources.zip_archives import zip_metadata_found
from pipeline.stages import DATA_DIR, REJECTS_DIR
from pipeline.storage import (
    OBJECT_STORE_PROTOCOLS,
    WEB_PROTOCOLS,
    access_denied,
    concurrent_reads,
    describe,
    described_whole,
    list_permission,
    protocols,
    storage_path,
    web_refusal_hint,
    with_retries,
)


def _checkpoint_for(config: JobConfig) -> tuple[str, str]:
    """The checkpoint to use and a note on where it came from."""
    if config.checkpoint and config.prior:
        raise JobError(f"give a checkpoint or a shipped prior, not both (checkpoint {config.checkpoint!r}, "
                       f"prior {config.prior!r})")
    if config.checkpoint:
        return config.checkpoint, "user checkpoint"
    name = config.prior or DEFAULT_PRIOR_NAME
    try:
        path = shipped_prior_path(name)
    except ValueError as err:
        raise JobError(str(err)) from err
    if path.exists():
        return str(path), f"the project's own {name} prior (pipeline/assets/{path.name})"
    if config.prior:
        raise JobError(f"shipped prior {name!r} is missing from this installation ({path})")
    # No trained prior shipped: a seeded random-weight model of the right architecture, said loudly.
    import torch

    from pipeline.model import build_unet
    from pipeline.presets import preset_config

    torch.manual_seed(0)
    path = Path.home() / ".cache" / "zip-purify" / "random_prior.pt"
    save_bundle(path, build_unet(preset_config("cifar10_prior_small")), meta={"random_weights": True})
    return str(path), "RANDOM-WEIGHT model (no trained prior shipped): output is not a real purification"


def check_output_state(config: JobConfig, job_record: dict[str, Any], dry_run: bool = False,
                       notes: list[str] | None = None) -> str:
    """Refuse to mix runs with different settings, or to silently append to a finished run; return the output's
    state: "new", "resume" (an unfinished run), "incremental" (a finished run, --incremental) or "overwrite".

    With --overwrite the existing output is deleted first, except in a dry run, which deletes nothing. The settings of
    an earlier run that wrote no row, which this run's replace, are said on stderr at once, or, when `notes` is given,
    put there (as the settings that differ) for the caller to say (`replaced_settings_note`).
    """
    so = config.storage_options
    out = config.output.rstrip("/")
    fs, root = check_output_location(out, so)
    if config.overwrite:
        _refuse_to_delete_foreign_files(fs, root, out)
        if not dry_run:
            clear_output(out, so)
        return "overwrite"
    previous = read_json(f"{out}/{JOB_FILE}", so)
    has_parts = bool(list_parts(out, DATA_DIR, so) or list_parts(out, REJECTS_DIR, so))
    if previous is None:
        if has_parts:
            raise JobError(f"{out} holds part files but no {JOB_FILE}: not an output of this job; choose another "
                           "output or pass --overwrite")
        if (foreign := _foreign_files(fs, root)) is not None:
            # a data set's own folder given as the output: the part files would land among the user's files, and
            # pd.read_parquet(OUTPUT/data) would read those as rows of the output
            folder, files = foreign
            raise JobError(f"{out}/{folder}/ holds {len(files)} file(s) this job did not write (e.g. {files[0]}) "
                           f"and {out} has no {JOB_FILE}: not an output of this job, whose part files would land "
                           f"among them; choose another output")
        return "new"
    previous = _with_defaults_of_now(previous, job_record)
    differ = _settings_differences(previous, job_record, out) + _input_difference(previous, job_record, config, out)
    if differ and not has_parts:
        # The run that recorded those settings wrote no row (it failed before its first batch, e.g. on an option the
        # model could not take): nothing is purified with them, so this run's settings replace them rather than
        # lock the corrected command out of the output.
        what = "; ".join(what for what, _ in differ)
        if notes is None:
            print(replaced_settings_note(out, what, dry_run), file=sys.stderr)
        else:
            notes.append(what)
        differ = []
    if differ:
        raise JobError(differ[0][1])
    return _resume_or_incremental(config, out)


def _foreign_files(fs: Any, root: str) -> tuple[str, list[str]] | None:
    """The first of the output's data/ and rejects/ folders that holds files the job does not write, with those files
    (sorted), or None."""
    for folder in (DATA_DIR, REJECTS_DIR):
        path = posixpath.join(root, folder)
        foreign = sorted(p for p in (fs.find(path) if fs.exists(path) else []) if not is_written_file(p))
        if foreign:
            return folder, foreign
    return None


def _refuse_to_delete_foreign_files(fs: Any, root: str, out: str) -> None:
    """--overwrite deletes the data/ and rejects/ folders whole: an output given as a data set's own folder (or the
    input itself) would lose the user's images in a data/ or rejects/ folder of theirs."""
    if (foreign := _foreign_files(fs, root)) is not None:
        folder, files = foreign
        raise JobError(f"--overwrite would delete {out}/{folder}/, which holds {len(files)} file(s) this job "
                       f"did not write (e.g. {files[0]}); choose another output")


def _with_defaults_of_now(previous: dict[str, Any], now: dict[str, Any] | None = None) -> dict[str, Any]:
    """An output's record as this version would write it (a copy). A settings field added after that output was
    written is missing from its record; the field's default is what that older version did, so fill it in rather
    than refuse an upgraded scheduled (--incremental) run. `now`: this run's record, for a field either of whose values
    an older output takes."""
    # (the defaults for a prior that records no schedule and no range: a field added since is what those versions did)
    previous = {**previous, "settings": {**ZipSettings().for_prior({}).to_dict(), **(previous.get("settings") or {})},
                "decoding": {**asdict(DecodePolicy()), **(previous.get("decoding") or {})}}
    if isinstance(previous.get("model_flags"), dict):  # a model flag added since: its default is what was built
        defaults = {name: value for name, value in UNetConfig().to_flags().items() if name != "dropout"}
        previous["model_flags"] = {**defaults, **previous["model_flags"]}
    if isinstance(previous.get("reading"), dict):  # recorded before --partitioning: those versions made no such columns
        # recorded before --join-metadata (`now`'s, this run's record): those versions made a metadata file a reject,
        # and an upgraded scheduled run goes on with either value (its rows have the columns from now on, or not)
        joined = (now or {}).get("reading", {}).get("join_metadata", JobConfig().join_metadata)
        previous["reading"] = {"partitioning": "none", "join_metadata": joined, **previous["reading"]}
    # Versions before ddpm refused an η recorded the one given, which the ddpm sampler never used: the same pixels
    if previous["settings"].get("sampler") == "ddpm":
        previous["settings"]["eta"] = ZipSettings().eta
    # Versions before resample above 1 was refused where no step is guided recorded it, though it redid no step: the
    # same pixels as resample 1, the command that leaves it out
    recorded = previous["settings"]
    with contextlib.suppress(TypeError, ValueError, KeyError):
        if recorded["resample"] != 1 and guides_no_step(recorded["steps"], recorded["lam"], recorded["start"],
                                                        recorded["schedule"]):
            recorded["resample"] = ZipSettings().resample
    # A late start is the steps it runs: one recorded as given (0.299, as train_prior.py advised for a prior of
    # --max-timestep 299) runs the same steps as the one a run without --start now resolves for it (0.25 at 20 steps),
    # so the same pixels, not other settings
    now_settings = (now or {}).get("settings") or {}
    with contextlib.suppress(TypeError, ValueError, KeyError):
        before, after, steps = recorded["start"], now_settings["start"], recorded["steps"]
        num_steps = NoiseSchedule.named(recorded["schedule"]).num_steps
        if (before != after and max(before, after) < 1 and steps == now_settings["steps"]
                and run_timesteps(num_steps, steps, before) == run_timesteps(num_steps, steps, after)):
            recorded["start"] = after
    # Versions before one spelling per operator setting recorded it as given ("gray, pool", a YAML list): the same
    # operators, which must not refuse the command that wrote the output
    with contextlib.suppress(ValueError):
        previous["settings"]["operators"] = canonical_operators(previous["settings"]["operators"])
    return previous


# Recorded fields that a later run may change: they decide only which inputs are rejects, never a purified image's
# pixels (an image over --max-pixels is refused before it is decoded), so, like --max-image-mb, a run with a larger
# limit may add to the output, and --retry-rejects reads again the images an earlier limit refused.
_NOT_COMPARED = {"decoding": ("max_pixels",)}


def _settings_differences(previous: dict[str, Any], job_record: dict[str, Any], out: str) -> list[tuple[str, str]]:
    """(what differs, the refusal that says it) for each recorded group of settings this run's differ from."""
    differ = []
    for key in ("settings", "decoding", "checkpoint_sha256", "canvas_size", "model_flags", "reading"):
        before, now = previous.get(key), job_record.get(key)
        if key in _NOT_COMPARED and isinstance(before, dict) and isinstance(now, dict):
            before, now = ({k: v for k, v in d.items() if k not in _NOT_COMPARED[key]} for d in (before, now))
        if before == now or (key in ("reading", "model_flags") and before is None):  # not recorded by an older version
            continue
        if isinstance(before, dict) and isinstance(now, dict):
            what = ", ".join(f"{name} {before.get(name)!r} (now {now.get(name)!r})"
                             for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name))
        else:
            what = f"{key} {before!r} (now {now!r})"
        if key == "reading":
            differ.append((what, _reading_refusal(out, what, before, now)))
            continue
        recipe = _recipe_made_with(before, now) if key == "settings" else None
        hint = "" if recipe is None else (f" (the output's sampler settings are those of --recipe {recipe}"
                                          f"{', the default' if recipe == 'paper' else ''})")
        differ.append((what, f"{out} was written with other {key}: {what}{hint}; use another output, or --overwrite "
                             "to start over"))
    return differ


def _recipe_made_with(before: Any, now: Any) -> str | None:
    """The named recipe (`RECIPES`) whose values, put in place of this run's sampler settings, give exactly the
    output's recorded ones: the run most likely lost (or changed) its --recipe. None when no recipe does."""
    if not isinstance(before, dict) or not isinstance(now, dict):
        return None
    defaults = ZipSettings().for_prior({}).to_dict()  # as for a prior that records no schedule or range
    touched = {name for r in RECIPES.values() for name in r.values}  # what any recipe sets
    for name, recipe in RECIPES.items():
        made = {**now, **{k: defaults[k] for k in touched}, **recipe.values}
        if made == before:
            return name
    return None


def _reading_refusal(out: str, what: str, before: dict[str, Any], now: dict[str, Any]) -> str:
    """The input-reading options set the rows' columns: the refusal says how to give the output's own."""
    flags = [f"--{name.replace('_', '-')} {json.dumps(before.get(name))}" if before.get(name) is not None
             else f"no --{name.replace('_', '-')}" for name in sorted(before) if before.get(name) != now.get(name)]
    return (f"{out} was written with other input-reading options: {what}; they set its rows' columns (label, the "
            f"Parquet image, the partition folders' columns, the metadata and sidecar files' columns), so this run's "
            "rows would not match the output's: "
            f"give {', '.join(flags)} as its runs did, or use another output")


def _input_difference(previous: dict[str, Any], job_record: dict[str, Any], config: JobConfig,
                      out: str) -> list[tuple[str, str]]:
    """The input's location, if it differs from the one the output was made from (and --input-moved is not given)."""
    before_input = (previous.get("input") or {}).get("location")
    now_input = (job_record.get("input") or {}).get("location")
    if before_input is not None and now_input is not None and before_input != now_input and not config.input_moved:
        # an older version's record has no input: compatible
        return [(f"input {before_input} (now {now_input})",
                 f"{out} was made from input {before_input}, and this run's --input {redact_uri(config.input)} is "
                 f"{now_input}: an output's ids are paths relative to its input, so every file here whose "
                 "relative path the output already holds would be skipped as done, unread; write to another "
                 "output, or give the original input (if the same files only moved here, pass --input-moved)")]
    return []


def _resume_or_incremental(config: JobConfig, out: str) -> str:
    """An earlier run's output with the same settings: "resume" when that run did not finish, "incremental" when it
    did and this run asks for it (--incremental, --retry-rejects, --refresh-changed); a complete output is not
    appended to silently."""
    summary = read_json(f"{out}/{SUMMARY_FILE}", config.storage_options)
    complete = bool(summary) and summary.get("status") == "complete"
    if complete and not (config.incremental or config.retry_rejects or config.refresh_changed):
        raise JobError(f"{out} already holds a complete run; pass --incremental to purify only new inputs, "
                       "--retry-rejects to read its rejected inputs again as well, --refresh-changed to purify again "
                       "the inputs changed in place since, or --overwrite to start over")
    return "incremental" if complete else "resume"


@dataclass
class JobPlan:
    """What a run will do, worked out before any image is read: the model, the output's state, the inputs."""

    checkpoint_uri: str
    model_note: str
    checkpoint: LoadedCheckpoint
    canvas_size: int
    job_record: dict[str, Any]
    output_state: str  # "new", "resume" (a partial run), "incremental" (a finished run) or "overwrite"
    done: set[str]  # ids already in the output's data/ or rejects/ (with --retry-rejects: data/ only)
    done_purified: int
    done_rejected: int
    units: list[ReadUnit]  # what is left to read; image files already done are dropped here
    skipped_files: int
    in_memory_bytes: int  # tar shards and Parquet files over this are streamed from storage
    excluded_output_files: int = 0  # files of the job's own output, found inside the input and not read
    max_image_bytes: int = MAX_IMAGE_BYTES  # an image file, tar member or Parquet cell over this is rejected unread
    stale_lease: str | None = None  # the holder of a lease left by a run that stopped without releasing it
    # Containers (tar shards, Parquet files, zip archives): the done ids of each one left to read (its read task
    # skips them unread), those an earlier complete run read whole (pipeline.ledger), and how many of those are
    # unchanged and skipped unread.
    container_done: dict[str, list[str]] = field(default_factory=dict)
    ledger: dict[str, ContainerRead] = field(default_factory=dict)
    skipped_containers: int = 0
    skipped_container_records: int = 0
    # of those, the ones whose read gave only their own lasting reject (`ContainerRead.lasting_reject`): no images
    skipped_lasting_rejects: int = 0
    retry: frozenset[str] = frozenset()  # --retry-rejects: the ids in rejects/ that this run reads again
    # the done ids of each tar shard left to read that are in data/ and that a name not UTF-8 can give ('\\x'): its
    # read task tells a member added beside one purified earlier under the same id (sources.tar_shards.read_tar)
    container_purified: dict[str, list[str]] = field(default_factory=dict)
    hidden: HiddenSkipped = field(default_factory=HiddenSkipped)  # hidden files the listing left out (sources.hidden.is_hidden)
    # --partitioning hive: the partition keys of the input's files, from the listing (`_partition_keys`); else None
    partitions: dict[str, Any] | None = None
    # --join-metadata: the image-folder metadata files' rows, joined to the image files at the listing; else None
    folder_metadata: FolderMetadata | None = None
    # the output's rejects of image-folder metadata files the listing joins now (fixed since an earlier run could not
    # join them): untrue now, removed by the end-of-run check (`job.StaleRejects`), not said gone from the input
    metadata_rejects: frozenset[str] = frozenset()
    # --join-metadata: the sidecar files paired with the image files at the listing (`sources.sidecar_files`); else None
    sidecars: Sidecars | None = None
    # the output's rejects of files the listing pairs as sidecars now (an earlier version read them as images): untrue
    # now, removed by the end-of-run check as `metadata_rejects` are, not said gone from the input
    sidecar_rejects: frozenset[str] = frozenset()
    # a dry run's zip archives to read, their metadata members joined as their read tasks will (`zip_metadata_found`);
    # a run's read tasks report their own
    archive_metadata: ArchiveMetadata = field(default_factory=ArchiveMetadata)
    # inputs whose rows the output keeps though they changed or went since (pipeline.changes), and the record of the
    # inputs' stamps a complete run leaves (None in a dry run; `changes.starting_record` is the one written first)
    changes: ChangedInputs = field(default_factory=ChangedInputs)
    input_record: InputRecord | None = None
    # the containers whose `ledger` entry the planning made, having read them whole and found them as their rows were
    # made (`changes.same_members`): a complete run records them, read or not
    ledger_checked: frozenset[str] = frozenset()
    # every container the listing gave (less the output's own files): the ledger keeps no entry for one that went;
    # None: not known, every entry kept
    listed_containers: frozenset[str] | None = None
    # a dry run's Parquet files to read whose footers give rows a null image cell, each a reject: path -> rows
    # (`parquet_rows_without_image`); not looked for in a run
    rows_without_image: dict[str, int] = field(default_factory=dict)
    # a dry run's Parquet and Arrow IPC files to read that have no image column (a sample index, labels), by their
    # footers and headers: each one reject of the run, whose reason says how to use it; not looked for in a run
    tables_without_images: list[str] = field(default_factory=list)
    # the records the dry run's TFRecord files hold (`tfrecord_count`), None where one of them cannot be counted
    # before it is read; not counted in a run (its progress total counts them)
    tfrecord_records: int | None = None
    # a dry run whose Arrow IPC headers would take more requests than the run's budget (`read_budget`): the files past
    # it are not counted, so their null image cells are unknown (TFRecord files past it: `tfrecord_records` None)
    headers_over_budget: bool = False
    # the keys the dry run's tar shards hold (`tar_count`), from their headers, left to read and done, or why they are
    # unknown before the shards are read; not counted in a run (its progress total counts them)
    tar_keys: ShardKeys | None = None
    # a dry run's input columns whose names differ only in case, as far as it knows them (`known_columns`,
    # `column_case_twins`)
    case_twins: list[dict[str, Any]] = field(default_factory=list)
    # --refresh-changed: the journal it writes before any row: each id it purifies again, with the part files holding
    # its old rows (pipeline.refresh); None when it refreshes nothing, and in a dry run (whose count is in `changes`)
    refresh: Journal | None = None
    # optional files beside the inputs that the store refused, taken as absent where it would not say whether they are
    # there, or there and refused (`tfrecord_files.features_json_notes`): said in the dry run, the summary and on stderr
    storage_notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """Counts a person can check before committing a cluster to the run (the --dry-run report)."""
        by_kind = {kind: [u for u in self.units if u.kind == kind] for kind in ("files", "tar", "parquet", "zip")}
        # the sidecar files of the image files to read are read with them (once each, whatever images share one)
        of = self.sidecars.of if self.sidecars is not None else {}
        sidecar_sizes = {path: size for u in by_kind["files"] for image in u.paths for _, path, size, _ in of.get(image, ())}
        sizes = [*(size for u in self.units for size in u.sizes), *sidecar_sizes.values()]
        streamed = [size for u in self.units if u.kind != "files" for size in u.sizes
                    if size is not None and size > self.in_memory_bytes]
        return {
            "model": {"checkpoint": redact_uri(self.checkpoint_uri), "note": self.model_note,
                      "sha256": self.checkpoint.sha256,
                      "image_size": self.checkpoint.config.image_size, "canvas_size": self.canvas_size},
            "settings": self.job_record["settings"],
            "output": {"state": self.output_state, "purified": self.done_purified, "rejected": self.done_rejected,
                       # --retry-rejects: every id in rejects/ (the run's `rejects_retried.earlier_rejects`), and of
                       # those the ones the listing gives: loose image files to read, ids of tar/Parquet/zip files to
                       # read (whether each still holds its member is known when read); the others keep their rows
                       "rejects_to_retry": len(self.retry), **self._retry_listed()},
            # inputs whose rows the output keeps though they changed or went since (pipeline.changes)
            "changed_inputs": self.changes.summary(),
            "stale_lease": self.stale_lease,
            "input": {"image_files_to_read": sum(len(u.paths) for u in by_kind["files"]),
                      # beside the image files to read, named as theirs: their columns, no inputs (`sources.sidecar_files`)
                      "sidecar_files": len(sidecar_sizes),
                      # and the zip archives' to read, from the directories read for their metadata members (an
                      # archive storage gives no size for, or that cannot be read, is left to the run)
                      "zip_sidecar_members": self.archive_metadata.sidecars,
                      # the output's rejects of files paired as sidecars now (an older version read them as images):
                      # removed by the run's end, whatever images it reads
                      "sidecar_rejects_removed": len(self.sidecar_rejects),
                      "image_files_already_done": self.skipped_files,
                      "tar_shards": sum(len(u.paths) for u in by_kind["tar"]),
                      # their size (of those whose storage gives one), and their keys by their headers (`tar_count`)
                      "tar_bytes": sum(size for u in by_kind["tar"] for size in u.sizes or () if size is not None),
                      # those whose storage gives no size (a web server that sends no Content-Length): not 0 bytes
                      "tar_shards_unsized": sum(size is None for u in by_kind["tar"]
                                                for size in u.sizes or (None,) * len(u.paths)),
                      **({"tar_keys": {"to_read": self.tar_keys.left, "already_done": self.tar_keys.done,
                                       "unknown_why": self.tar_keys.why, **self._partial_tar_keys()}}
                         if self.tar_keys is not None and by_kind["tar"] else {}),
                      "parquet_files": sum(not is_arrow_ipc(u.paths[0]) and not is_tfrecord(u.paths[0])
                                           for u in by_kind["parquet"]),
                      # read as Parquet files are (`sources.arrow_ipc`), named .arrow, .feather or .ipc
                      "arrow_files": sum(is_arrow_ipc(u.paths[0]) for u in by_kind["parquet"]),
                      # records numbered as a table's rows (`sources.tfrecord_files`): .tfrecord, .tfrecords, .tfrec
                      "tfrecord_files": sum(is_tfrecord(u.paths[0]) for u in by_kind["parquet"]),
                      "tfrecord_records": self.tfrecord_records,
                      # a TFRecord folder's features.json the store refused (`storage_notes`), each also a warning
                      "storage_notes": self.storage_notes,
                      "zip_files": sum(len(u.paths) for u in by_kind["zip"]),
                      # read whole by an earlier complete run, unchanged since, all their ids in the output: not read
                      "containers_already_done": self.skipped_containers,
                      # of them, those that hold no images, only their own lasting reject (a table without an image
                      # column, a file that is not one of its kind): the dry run says what is true of them
                      "containers_already_rejected": self.skipped_lasting_rejects,
                      "read_tasks": len(self.units),
                      "bytes": sum(size for size in sizes if size is not None),
                      "unsized": sum(size is None for size in sizes),
                      "streamed": len(streamed), "in_memory_mb": self.in_memory_bytes // 2**20,
                      # known from the listing; tar members and Parquet cells over the limit are found when read
                      "image_files_over_max_image_mb": sum(
                          size is not None and size > self.max_image_bytes
                          for u in by_kind["files"] for size in u.sizes),
                      "max_image_mb": self.max_image_bytes // 2**20,
                      "excluded_output_files": self.excluded_output_files,
                      "hidden_files_skipped": self.hidden.count, "hidden_files_examples": self.hidden.examples,
                      **({"partitions": self.partitions} if self.partitions is not None else {}),
                      **({"folder_metadata": report} if (report := self.folder_metadata_report()) else {}),
                      # by the Parquet footers' statistics and the Arrow IPC files' record batch headers: rows whose
                      # image cell is null, each rejected when read
                      "parquet_rows_without_image": self._rows_without_image(),
                      # by the same footers and headers: tables without an image column, each one reject of the run
                      "tables_without_images": {"files": len(self.tables_without_images),
                                                "examples": self._ids(self.tables_without_images)[:5]},
                      # by the same footers and headers, the metadata files and the paths: the inputs' columns whose
                      # names differ only in case, which the output keeps as they are and case-blind readers take for
                      # one (`known_columns`, `column_case_twins`)
                      "columns_differing_in_case": self.case_twins},
        }

    def folder_metadata_report(self, archives: ArchiveMetadata | None = None) -> dict[str, Any] | None:
        """--join-metadata: the image-folder metadata files joined and not, the image files given a row, and the rows
        that name no image file of the input (with the first few), for the dry run and the run's summary (`archives`:
        what the run's read tasks joined inside zip archives and tar shards; the dry run's own, `archive_metadata`,
        by default); None when there is no metadata file."""
        return metadata_report(self.folder_metadata, self.archive_metadata if archives is None else archives,
                               len(self.metadata_rejects))

    def _retry_listed(self) -> dict[str, int]:
        """Of the rejects --retry-rejects reads again (`retry`), those of loose image files the listing gives, and
        those of the tar/Parquet/zip files it gives (a container's '#unreadable' reject with them)."""
        files = sum(relative_id(path, u.root) in self.retry for u in self.units if u.kind == "files" for path in u.paths)
        containers = [u for u in self.units if u.kind != "files"]
        listed = {relative_id(u.paths[0], u.root) for u in containers}
        held = sum(map(len, container_ids(self.retry, containers).values())) if self.retry and containers else 0
        unreadable = sum(id_.endswith("#unreadable") and id_[: -len("#unreadable")] in listed for id_ in self.retry)
        return {"rejects_to_retry_image_files": files, "rejects_to_retry_in_containers": held + unreadable}

    def _ids(self, paths: list[str]) -> list[str]:
        """The ids of the unit files `paths`, sorted."""
        roots = {u.paths[0]: u.root for u in self.units}
        return sorted(relative_id(path, roots[path]) for path in paths if path in roots)

    def _partial_tar_keys(self) -> dict[str, Any]:
        """Where compressed shards were too large to count (`ShardKeys.uncounted`): what the others' headers say, and
        those shards with their sizes."""
        keys = self.tar_keys
        if keys is None or keys.counted is None:
            return {}
        shards, left, done = keys.counted
        return {"counted_shards": {"shards": shards, "to_read": left, "already_done": done},
                "uncounted_compressed_shards": [{"shard": name, "bytes": size} for name, size in keys.uncounted]}

    def _rows_without_image(self) -> dict[str, Any]:
        """`rows_without_image` in all, the files with the most (their ids) and how many of the files are Arrow IPC
        files (the warning names their kinds), for the report."""
        roots = {u.paths[0]: u.root for u in self.units}
        most = sorted(self.rows_without_image.items(), key=lambda item: (-item[1], item[0]))[:5]
        return {"rows": sum(self.rows_without_image.values()), "files": len(self.rows_without_image),
                "arrow_files": sum(map(is_arrow_ipc, self.rows_without_image)),
                # only when so: Arrow IPC files past the budget of requests, their null image cells unknown
                **({"headers_over_budget": True} if self.headers_over_budget else {}),
                "examples": [[relative_id(path, roots[path]), n] for path, n in most]}


def require_job_config(config: Any, call: str) -> None:
    """A TypeError naming the argument and what to pass, for a `config` that is no JobConfig: a dict of the job's
    fields, or a path, failed with an AttributeError from deep inside the call ('dict' object has no attribute...)."""
    if not isinstance(config, JobConfig):
        hint = " (JobConfig(**fields) makes one from a dict of its fields)" if isinstance(config, dict) else ""
        raise TypeError(f"{call}'s config must be a pipeline.config.JobConfig{hint}, got {type(config).__name__}")


def plan_job(config: JobConfig, dry_run: bool = False) -> JobPlan:
    """Check the model and the output and list the inputs, without reading an image or writing anything.

    Every error a run can find before its first image (unsafe or mismatched checkpoint, missing input, an
    output made with other settings, a finished output without --incremental) is raised here as a JobError, naming
    no credential of the run's URIs (`without_uri_secrets`).
    """
    try:
        return _plan_job(config, dry_run)
    except JobError as err:
        without_uri_secrets(err, config)
        raise


def without_uri_secrets(err: JobError, config: Any) -> None:
    """`err`'s message with the credentials of `config`'s checkpoint, input and output URIs (a password in an FTP URL,
    a presigned URL's signature) written as '***', in place: the same exception, its type, attributes and cause kept.
    The messages quote those URIs; the command line redacts what it prints, and a program that calls the API logs
    the error as it is."""
    if err.args and isinstance(err.args[0], str):
        err.args = (uri_secrets_redacted(err.args[0], config), *err.args[1:])


def uri_secrets_redacted(text: str, config: Any) -> str:
    """`text` with the credentials of `config`'s checkpoint, input and output URIs written as '***' (`config` a
    JobConfig, or None)."""
    for uri in (getattr(config, name, None) for name in ("checkpoint", "input", "output")):
        if isinstance(uri, str):
            text = redact_uri_secrets(text, uri)
    return text


def _plan_job(config: JobConfig, dry_run: bool) -> JobPlan:
    require_job_config(config, "plan_job")
    config.check()
    so = config.storage_options
    out = config.output.rstrip("/")
    model = _checked_model(config)  # before any data is read: unreadable, unsafe or mismatched files stop here
    job_record = _job_record(config, model.settings, model, _input_location(config))
    output_reached(out, so)
    # Before the output is looked at (and, with --overwrite, emptied by run_job): it must not be, or hold, the input,
    # nor lie inside another output's data/ or rejects/.
    try:
        overlap = input_inside_written_folder(config.input, out, so) or output_inside_written_folder(out, so)
    except Exception as err:  # noqa: BLE001 - its look for a _job.json above the output, refused or failing
        raise _cannot_use_output(out, so, err) from err
    if overlap:
        raise JobError(overlap)
    output = _output_done(config, job_record, dry_run)  # its state, and what it already holds (resume / incremental)
    # a --refresh-changed run stopped before its end: the rows it replaced are taken as this run's start will leave them,
    # and the containers it read to their end have the `_containers/` entries its journal notes of them
    output, settled_stamps, earlier_read = _after_earlier_refresh(config, out, so, output)
    hidden = HiddenSkipped()  # the hidden files the listing leaves out
    # --join-metadata: the image-folder metadata files the listing finds, read once here (sources.folder_metadata)
    metadata = FolderMetadata() if config.join_metadata else None
    sidecars = Sidecars() if config.join_metadata else None  # and the sidecar files beside image files
    # the job's own files, when the output lies inside the input, are no input: neither the Parquet file whose
    # footer --image-column is checked on, nor files the partition report counts
    inputs, excluded = _inputs_listed(_listed_units(config, hidden, metadata, sidecars), config)
    first_parquet = next((u for u in inputs if u.kind == "parquet" and not is_tfrecord(u.paths[0])), None)
    if config.image_column and first_parquet is not None:
        problem = image_column_problem(first_parquet, so, config.image_column)
        if problem:
            raise JobError(problem)
    first_tfrecord = next((u for u in inputs if u.kind == "parquet" and is_tfrecord(u.paths[0])), None)
    if config.image_column and first_tfrecord is not None:  # by its first record (`tfrecord_files`)
        problem = image_feature_problem(first_tfrecord, so, config.image_column)
        if problem:
            raise JobError(problem)
    partitions = _partition_keys(inputs) if config.partitioning == "hive" else None
    # a metadata file an earlier run could not join, fixed since: its reject is no longer true, nor is it to retry
    metadata_rejects = frozenset(metadata.joined_ids if metadata else ()) & output.rejected_ids
    # a file an earlier version read as an image and rejected, paired as a sidecar now: likewise
    sidecar_rejects = frozenset(sidecars.ids if sidecars else ()) & output.rejected_ids
    if metadata_rejects or sidecar_rejects:
        output = replace(output, retry=output.retry - metadata_rejects - sidecar_rejects)
    ledger = _read_ledger(inputs, out, so, output) | earlier_read
    reading = dict(labels_from_folders=config.labels_from_folders, image_column=config.image_column,
                   in_memory_bytes=config.in_memory_mb * 2**20, max_image_bytes=config.max_image_mb * 2**20,
                   partitioning=config.partitioning, join_metadata=config.join_metadata)
    read_whole: dict[str, ContainerRead] = {}  # containers the planning read whole and found as their rows were made
    changes, input_record = _changed_inputs(inputs, out, so, output, ledger, job_record, dry_run,
                                            config.refresh_changed, settled_stamps, reading, read_whole,
                                            metadata_rejects | sidecar_rejects)
    if read_whole:  # their ledger entries are of this version now: one whose ids are all done is not read again
        ledger = ledger | read_whole
    refresh = None
    if changes.refreshed:  # --refresh-changed: their rows are not done (the units left are worked out after this)
        output = replace(output, skip=output.skip - changes.refreshed_rows())
        if input_record is not None:  # not in a dry run
            refresh = _journal(output, changes, input_record)
    kept_units, skipped_files = _units_left(inputs, output.skip)
    containers = _containers_left(kept_units, output, ledger)
    tables = [u for u in kept_units if u.kind == "parquet" and u.paths[0] not in containers.unread]
    budget = ReadBudget()  # one for the dry run's headers, TFRecord's and Arrow IPC's, as a run's progress total
    columns: dict[str, list[str]] = {}
    no_images: list[str] = []  # tables without an image column: a sample index, labels
    no_image = parquet_rows_without_image([u for u in tables if not is_tfrecord(u.paths[0])], so, config.image_column,
                                          budget, columns, no_images) if dry_run else {}
    # taken before the TFRecord files draw on the same budget: their uncounted records are said apart (`_records`), and
    # a budget they spend left no Arrow IPC file uncounted
    ipc_over_budget = budget.spent
    records = _tfrecord_records([u for u in tables if is_tfrecord(u.paths[0])], so, budget) if dry_run else None
    tar_keys = count_keys([u for u in kept_units if u.kind == "tar" and u.paths[0] not in containers.unread], so,
                          containers.done, config.join_metadata, budget, partial=True) if dry_run else None
    # the TFRecord files' features.json that the store refused: in a run too, its read tasks having no way to say it
    storage_notes = features_json_notes([u.paths[0] for u in tables], so)
    read_units = [u for u in kept_units if u.kind == "files" or u.paths[0] not in containers.unread]
    archive_metadata, case_twins = ArchiveMetadata(), []
    if dry_run:
        zips = [u for u in read_units if u.kind == "zip"]
        if config.join_metadata and zips:  # each archive's metadata members' columns, from the same reads
            archive_metadata = zip_metadata_found(zips, so, config.max_image_mb * 2**20, columns)
        # a sample of the image files' .json sidecars, for their keys (`sampled_json_sidecars`: at most 16 files read)
        json_bytes = sampled_json_sidecars((p for u in read_units if u.kind == "files" for p in u.paths), sidecars, so,
                                           config.max_image_mb * 2**20) if sidecars is not None and sidecars.of else {}
        case_twins = column_case_twins(known_columns(read_units, columns, metadata, config.labels_from_folders,
                                                     config.partitioning == "hive", sidecars, json_bytes), read_units)
    return JobPlan(checkpoint_uri=model.uri, model_note=model.note, checkpoint=model.checkpoint,
                   canvas_size=model.canvas_size, job_record=job_record, output_state=output.state, done=output.skip,
                   done_purified=output.prior_purified, done_rejected=output.prior_rejected,
                   units=read_units,
                   skipped_files=skipped_files, in_memory_bytes=config.in_memory_mb * 2**20,
                   excluded_output_files=excluded, max_image_bytes=config.max_image_mb * 2**20,
                   stale_lease=output.stale_lease, container_done=containers.done, ledger=containers.ledger,
                   skipped_containers=len(containers.unread),
                   # a lasting reject is a record of the output skipped too: its container's one (0 ids of its own)
                   skipped_container_records=sum(containers.ledger[path].records + containers.ledger[path].lasting_reject
                                                 for path in containers.unread),
                   skipped_lasting_rejects=sum(containers.ledger[path].lasting_reject for path in containers.unread),
                   retry=output.retry, container_purified=containers.purified, hidden=hidden, partitions=partitions,
                   folder_metadata=metadata, metadata_rejects=metadata_rejects, sidecars=sidecars,
                   sidecar_rejects=sidecar_rejects,
                   changes=changes, input_record=input_record, storage_notes=storage_notes,
                   ledger_checked=frozenset(read_whole) | (frozenset(earlier_read) & containers.unread),
                   listed_containers=frozenset(u.paths[0] for u in inputs if u.kind != "files"),
                   rows_without_image=no_image, tables_without_images=no_images, refresh=refresh, tfrecord_records=records,
                   headers_over_budget=ipc_over_budget, tar_keys=tar_keys, case_twins=case_twins,
                   archive_metadata=archive_metadata)


def _tfrecord_records(units: list[ReadUnit], so: dict[str, Any], budget: ReadBudget) -> int | None:
    """The records the TFRecord files `units` hold in all (`tfrecord_count`), their requests taken from `budget`; None
    where one cannot be counted."""
    counts = count_records(units, so, budget)
    return None if counts is None else sum(counts.values())


# How many Parquet footers the dry run reads at once (`parquet_rows_without_image`), as the listing's HEAD requests.
FOOTER_READS = 16


def _retried_in_same(inputs: list[ReadUnit], members: dict[str, tuple[str, str]], retry: frozenset[str],
                     record: InputRecord | None) -> dict[str, tuple[str, str]]:
    """Of the containers `same_members` found as their rows were made (`members`: id -> the stamp the record takes;
    one found other has `DIFFERS` in it), those holding ids `retry` reads again, each with the stamp recorded before
    (EARLIER where only the ledger knew it)."""
    if not retry or not members:
        return {}
    units = [u for u in inputs if u.kind != "files" and DIFFERS not in members.get(relative_id(u.paths[0], u.root),
                                                                                    ("", DIFFERS))[1]]
    recorded = record.stamps if record is not None else {}
    held = container_ids(retry, units) if units else {}
    earlier = {}
    for unit in units:
        if held.get(unit.paths[0]):
            id_ = relative_id(unit.paths[0], unit.root)
            earlier[id_] = recorded.get(id_, (unit.kind, EARLIER))
    return earlier


def parquet_rows_without_image(units: list[ReadUnit], so: dict[str, Any], image_column: str | None,
                               budget: ReadBudget | None = None, columns: dict[str, list[str]] | None = None,
                               no_images: list[str] | None = None) -> dict[str, int]:
    """Of these Parquet and Arrow IPC files, those whose footer statistics (record batch headers) give rows a null
    image cell, with how many (`rows_without_image`: the footer, or the headers, alone are read; the headers' ranged
    requests taken from `budget`, past which an IPC file is not counted). Each such row is a reject of the run, which
    a dry run warns of: a file whose image column is mostly null is otherwise found out only by a run's count of
    rejects. `columns` (path -> names), when given, gets each file's pass-through columns from the same reads, and
    `no_images` the paths of those with no image column (tables without images, each one reject of the run)."""
    from concurrent.futures import ThreadPoolExecutor

    budget = budget if budget is not None else ReadBudget()
    # one at a time on FTP/SFTP (`concurrent_calls`)
    threads = concurrent_reads(units[0].paths[0], FOOTER_READS) if units else 1
    with ThreadPoolExecutor(max_workers=threads) as pool:  # each file's thread sets its own key of `columns`
        counts = pool.map(lambda unit: rows_without_image(unit, so, image_column, budget, columns, no_images), units)
        return {unit.paths[0]: n for unit, n in zip(units, counts, strict=True) if n}


def known_columns(units: list[ReadUnit], columns: dict[str, list[str]], metadata: FolderMetadata | None,
                  labels_from_folders: bool, hive: bool, sidecars: Sidecars | None = None,
                  json_bytes: dict[str, bytes] | None = None) -> dict[str, list[str]]:
    """Each input file's columns (path -> names, as the output names them) as far as a dry run knows them without
    reading more: a Parquet or Arrow IPC file's own (`columns`, from its footer or headers) and a zip archive's metadata
    members' (`columns` too, from the members its dry run reads), an image file's metadata row (joined at the listing),
    the `label` of --labels-from-folders (image files, zip archives' and tar shards' members: a key's `.cls` gives one
    too), then its `key=value` folders' partition columns (from its path), each named beside the others as its rows
    will name it. An image file's sidecar files' columns (`sidecars`) by their names, and a .json sidecar's keys where
    its bytes are in `json_bytes` (`sidecar_files.sampled_json_sidecars`: a sample); an image file with a .json
    sidecar not read is left out, its columns unknown (its row's may be renamed for the sidecar's keys). A tar shard's
    other sidecars and .json keys and a TFRecord file's features are read by the run alone: not here."""
    known: dict[str, list[str]] = {}
    # (kind, root, folder) -> the names of a file without columns of its own there: a folder's files share them
    by_folder: dict[tuple[str, str, str], list[str]] = {}
    for unit in units:
        for path in unit.paths if unit.kind == "files" else unit.paths[:1]:
            if unit.kind == "files" and sidecars is not None and path in sidecars.of:
                names = _sidecar_file_columns(path, unit.root, sidecars, json_bytes or {}, metadata,
                                              labels_from_folders, hive)
                if names:
                    known[path] = names
                continue
            # a zip archive's `columns` are its metadata rows', joined to its members as an image file's row
            own = columns.get(path) if unit.kind != "zip" else None
            row = (metadata.rows.get(path) if metadata is not None else None) if unit.kind == "files" else \
                columns.get(path) if unit.kind == "zip" else None
            folder = (unit.kind, unit.root, posixpath.dirname(path))
            if row is None and own is None and folder in by_folder:
                names = by_folder[folder]
            else:
                meta: dict[str, Any] = dict.fromkeys(own or ())
                if labels_from_folders and unit.kind in ("files", "zip", "tar"):
                    meta["label"] = None
                with_row(meta, dict.fromkeys(row or ()))  # as the read task adds it: a name taken gets metadata_
                if hive:
                    for key, _ in partition_folders(relative_id(path, unit.root)):
                        meta[partition_column(key, meta)] = None
                names = list(meta)
                if row is None and own is None:
                    by_folder[folder] = names
            if names:
                known[path] = names
    return known


def _sidecar_file_columns(path: str, root: str, sidecars: Sidecars, json_bytes: dict[str, bytes],
                          metadata: FolderMetadata | None, labels_from_folders: bool, hive: bool) -> list[str] | None:
    """The columns of an image file with sidecar files, as its read task names them (`image_files.read_files`): its
    sidecars' (`sidecar_files.sidecar_names`), its folder's label, its metadata row's, then its partition columns; None
    when a .json sidecar of it was not read."""
    meta = sidecar_names(path, sidecars, json_bytes)
    if meta is None:
        return None
    row = metadata.rows.get(path) if metadata is not None else None
    with_own_columns(meta, labels_from_folders, None, dict.fromkeys(row or ()))
    if hive:
        for key, _ in partition_folders(relative_id(path, root)):
            meta[partition_column(key, meta)] = None
    return list(meta)


def column_case_twins(columns: dict[str, list[str]], units: list[ReadUnit]) -> list[dict[str, Any]]:
    """Of the input files' columns (`columns`: path -> names, as the output names them; `known_columns`), each set whose
    names differ only in case, with the first file holding each name (its id): DuckDB, Spark, Hive, Athena and
    BigQuery take them for one column, and the run keeps them as the inputs name them (`output.
    columns_differing_in_case` says so again at its end, of all of data/)."""
    first: dict[str, str] = {}  # name -> the first file (path) holding it; not sorted: an image folder has millions
    for path, names in columns.items():
        for name in names:
            if name not in first or path < first[name]:
                first[name] = path
    spellings: dict[str, list[str]] = {}
    for name in sorted(first):
        spellings.setdefault(name.lower(), []).append(name)
    twins = [names for names in sorted(spellings.values()) if len(names) > 1]
    named = {first[name] for names in twins for name in names}
    roots = {path: u.root for u in units for path in u.paths if path in named}
    return [{"columns": names, "files": [relative_id(first[n], roots.get(first[n], "")) for n in names]}
            for names in twins]


def _journal(output: _OutputDone, changes: ChangedInputs, final: InputRecord) -> Journal:
    """The journal of a --refresh-changed run (`pipeline.refresh`): the part files holding the old rows of each id it
    purifies again (as the planning read them: `output.index`), and each input's stamp as this run's listing gives it
    (`final`: the record it leaves)."""
    rows = output.index.holding(changes.refreshed_rows())
    inputs = {input_id: (*final.stamps[input_id], [i for i in ids if i in rows])
              for input_id, ids in changes.refreshed.items() if input_id in final.stamps}
    return Journal(rows, inputs, uuid.uuid4().hex)


def _after_earlier_refresh(config: JobConfig, out: str, so: dict[str, Any], output: _OutputDone
                           ) -> tuple[_OutputDone, dict[str, tuple[str, str]], dict[str, ContainerRead]]:
    """When a --refresh-changed run stopped before its end left its journal (`pipeline.refresh`), which this run
    applies before it writes anything: what the output holds as it will then (an id whose new row is a reject and whose
    old one is in data/ is a reject), and the stamps of the inputs whose ids all have their new rows (the record takes
    them: they are not changed since). Only the journal's ids are looked up, in the output's ids as the planning read
    them (`output.index`), and only when there is one. The old rows of those with a new row go at this run's start:
    `superseded` names them, so that the planning's comparison of inputs with their rows (`changes.same_bytes`,
    `changes.same_members`) leaves them out. Last, by path, the `_containers/` entries of the containers that run read
    to their end (`Journal.read`), as a complete run records them: of one whose rows it had all written (`whole`), its
    ids left without a new row (a member the container no longer gives) are left over from it. With them, such a
    container is skipped unread when it is unchanged since and the output holds exactly the ids its read gave
    (`ledger.unchanged_and_done`), as after a complete run; otherwise it is read again, its done ids skipped. One with
    ids whose only row is the old one (the stopped run wrote no new row of them) keeps its earlier stamp
    (`Journal.new_stamps`): said changed, and read again by the next --refresh-changed."""
    if output.state not in ("resume", "incremental"):
        return output, {}, {}
    try:
        journal = read_journal(out, so)
    except JobError:
        raise
    except Exception as err:  # noqa: BLE001
        raise _cannot_use_output(out, so, err) from err
    if journal is None:
        return output, {}, {}
    holders = output.index.holding(set(journal.rows))
    settled = journal.settled(holders)
    purified, rejected = set(output.purified_ids), set(output.rejected_ids)
    for id_ in settled:
        new = set(holders[id_]) - set(journal.rows[id_])
        if any(name.startswith(f"{DATA_DIR}/") for name in new):
            purified.add(id_)
            rejected.discard(id_)
        else:
            purified.discard(id_)
            rejected.add(id_)
    retry = frozenset(rejected) if config.retry_rejects else frozenset()
    skip = purified if config.retry_rejects else purified | rejected
    superseded: dict[str, set[str]] = {}
    for id_ in settled:
        for name in journal.rows[id_]:
            superseded.setdefault(name, set()).add(id_)
    read = {}
    for input_id, entry in journal.read.items():
        # read to its end with all its rows written (`whole`): an id without a new row is one it no longer gives
        left = [i for i in journal.inputs[input_id][2] if i not in settled] if input_id in journal.whole else []
        read[entry.path] = replace(entry, leftover=tuple(sorted({*entry.leftover, *left})))
    return replace(output, purified_ids=purified, rejected_ids=rejected, prior_purified=len(purified),
                   prior_rejected=len(rejected), retry=retry, skip=skip,
                   superseded=superseded), journal.new_stamps(settled), read


def _changed_inputs(inputs: list[ReadUnit], out: str, so: dict[str, Any], output: _OutputDone,
                    ledger: dict[str, ContainerRead], job_record: dict[str, Any],
                    dry_run: bool, refresh: bool = False,
                    settled: dict[str, tuple[str, str]] | None = None,
                    reading: dict[str, Any] | None = None,
                    read_whole: dict[str, ContainerRead] | None = None,
                    metadata_rejects: frozenset[str] = frozenset()) -> tuple[ChangedInputs, InputRecord | None]:
    """The inputs whose rows the output keeps though they changed or went since (`pipeline.changes`; with `refresh`,
    --refresh-changed, those changed are purified again instead), and the record of the inputs' stamps a run writes
    before it reads anything (None in a dry run, which writes nothing). `settled`: the stamps of inputs a stopped
    --refresh-changed run purified again, which replace their recorded ones (`_after_earlier_refresh`). `reading`: the
    run's options of `sources.read_unit`, with which a tar, Parquet or zip file whose stamp changed is read to compare
    its members with its rows (`changes.same_members`); `read_whole` gets the ledger entry of each one read to its end and
    found as its rows were made (`same_members`' `whole`). `metadata_rejects`: rejects of metadata files joined now,
    which the run removes: not gone from the input, and no longer recorded."""
    location = (job_record.get("input") or {}).get("location")
    try:
        record = read_record(out, so, location) if output.state in ("resume", "incremental") else None
    except Exception as err:  # noqa: BLE001 - read_record ignores a bad record; this is storage failing
        raise _cannot_use_output(out, so, err) from err
    if record is not None and settled:
        record = replace(record, stamps={**record.stamps, **settled})
    # a record an older version wrote: its image files' stamps take their metadata rows' digests as they are now
    record = with_metadata_rows(record, inputs)
    # an image a metadata file that cannot be joined may name: its row as recorded (not changed for that file)
    inputs = rows_as_recorded(inputs, record)
    # image files whose stamp changed, read: those whose bytes did not change get their new stamp, so are no change
    # (the part files holding their rows looked up in the ids the planning read: `output.index`)
    # (compared with the rows the output holds once this run's start has applied a stopped refresh's journal)
    checked, same = same_bytes(inputs, output.purified_ids, output.rejected_ids, output.retry, record, out, so,
                               output.index, output.superseded)
    if record is not None and checked:
        record = InputRecord(record.location, {**record.stamps, **checked})
    # tar, Parquet and zip files whose stamp changed, read: those that give each member of a row as it was get their new
    # stamp (one whose earlier stamp only the ledger knew too: the record starts with it), so are no change
    members, same_containers = same_members(inputs, output.purified_ids, output.rejected_ids, output.retry, record,
                                            ledger, out, so, reading, read_whole, output.index, output.superseded)
    # One found as it was, but for its rejects --retry-rejects reads again (not compared: their rows are replaced),
    # keeps its earlier stamp until this run ends complete, as one whose only rows are such rejects does
    # (`ChangedInputs.pending`): a retry stopped before it read them leaves the container said changed, if they are.
    earlier = _retried_in_same(inputs, members, output.retry, record)
    if members:
        record = InputRecord(record.location if record is not None else location,
                             {**(record.stamps if record is not None else {}), **members})
    root = inputs[0].root if inputs else None
    changes = find_changes(inputs, output.purified_ids, output.rejected_ids, output.retry, record, ledger, root,
                           refresh)
    changes = replace(changes, same_bytes=same, same_members=same_containers, compared_files=len(checked),
                      compared_containers=len(members), pending={**changes.pending, **earlier},
                      gone_files=[i for i in changes.gone_files if i not in metadata_rejects])
    return changes, None if dry_run else updated_record(record, location, inputs, changes)


def _partition_keys(units: list[ReadUnit]) -> dict[str, Any]:
    """--partitioning hive: each partition key of the input's files (image files, and tar, Parquet and zip files, from
    the listing: nothing more is asked of storage) with how many values it takes, and how many of the files lie in no
    `key=value` folder. A file whose path gives one key twice (`a=1/a=2/`) stops the run before any work."""
    values: dict[str, set[str | None]] = {}
    outside = files = 0
    by_folder: dict[str, list[tuple[str, str | None]]] = {}  # a folder's files share its partitions
    for unit in units:
        for path in unit.paths if unit.kind == "files" else unit.paths[:1]:
            rel = relative_id(path, unit.root)
            folder = posixpath.dirname(rel)
            if folder not in by_folder:
                key = repeated_partition_key(rel)
                if key is not None:
                    raise JobError(repeated_key_problem(rel, key))
                by_folder[folder] = partition_folders(rel)
            files += 1
            outside += not by_folder[folder]
            for key, value in by_folder[folder]:
                values.setdefault(key, set()).add(value)
    return {"keys": {key: len(found) for key, found in values.items()}, "files": files, "files_outside": outside}


@dataclass(frozen=True)
class _Model:
    """The checkpoint a run uses, checked, and the canvas size it purifies at."""

    uri: str
    note: str  # where it came from (`_checkpoint_for`)
    checkpoint: LoadedCheckpoint
    canvas_size: int
    settings: ZipSettings  # the run's, with the noise schedule the checkpoint records unless one was given


def _checked_model(config: JobConfig) -> _Model:
    """The checkpoint, verified (not loaded for use), the sampler settings it resolves (`JobConfig.settings`) and the
    canvas size, checked against each other."""
    checkpoint_uri, model_note = _checkpoint_for(config)
    ckpt: LoadedCheckpoint = load_checkpoint(checkpoint_uri, config.preset, config.flags,
                                             config.checkpoint_storage_options(checkpoint_uri),
                                             config.checkpoint_sha256, verify_only=True)
    settings = config.settings(ckpt.meta)
    recorded = ckpt.meta.get("schedule")
    if config.schedule is not None and recorded is not None and recorded != config.schedule:
        # given against the prior's own: without the flag the job samples as the prior was trained
        raise JobError(f"this prior was trained with the {recorded} noise schedule, but --schedule {config.schedule} "
                       f"was given: its noise levels would not match; leave --schedule out (the prior's own is used) "
                       f"or give --schedule {recorded}")
    try:
        check_trained_timesteps(ckpt.meta, settings)
    except ValueError as err:
        raise JobError(str(err)) from err
    if config.start is None and (note := prior_range_note(ckpt.meta, settings)):  # left out: the prior's range
        print(f"zip-purify: note: {note.replace('give a start', 'give --start')}", file=sys.stderr)
    canvas_size = config.canvas_size or ckpt.config.image_size
    canvas_problem = _canvas_problem(canvas_size, config.canvas_size is not None, settings.pool,
                                     ckpt.config.min_input_multiple)
    if canvas_problem:
        raise JobError(canvas_problem)
    return _Model(checkpoint_uri, model_note, ckpt, canvas_size, settings)


def _input_location(config: JobConfig) -> str | None:
    """Where the input is (`sources.input_location`), a listing error said as a JobError."""
    try:
        return input_location(config.input, config.storage_options)
    except InputRefused as err:
        raise JobError(_refusal(config, err)) from err
    except Exception as err:  # noqa: BLE001
        raise JobError(f"cannot list input {config.input}: {described_whole(err)}{_input_refusal(config, err)}") from err


def _input_refusal(config: JobConfig, err: BaseException) -> str:
    """For an input the store refused: on an object store, that without its list permission a folder cannot be read
    and a key that is not there is refused too (S3 answers 403, not 404), so that a mistyped key is looked for as well
    as a permission; on a web server, what it may want (`web_refusal_hint`); else nothing."""
    if not access_denied(err):
        return ""
    try:
        fs, _ = storage_path(config.input, config.storage_options)  # made already, to be refused
    except Exception:  # noqa: BLE001 - the refusal is said without the advice
        return ""
    if not WEB_PROTOCOLS.isdisjoint(protocols(fs)):
        return web_refusal_hint(fs, config.input)
    if OBJECT_STORE_PROTOCOLS.isdisjoint(protocols(fs)):
        return ""
    return (f" (without {list_permission(fs)} the store refuses a folder given as the input, and a file that is not "
            "there too: give one file these credentials may read by its exact path, or grant that permission)")


def model_architecture(config: UNetConfig) -> dict[str, Any]:
    """The model flags a run's rows depend on, in one spelling: the default channel_mult and num_heads_upsample written
    out, the head counts left out (-1) where num_head_channels sets the heads, and no dropout (off while sampling),
    so that a preset and the same model's flags given by hand compare equal."""
    flags = config.to_flags()
    del flags["dropout"]
    flags["channel_mult"] = ",".join(f"{m:g}" for m in config.channel_multipliers())
    if flags["num_head_channels"] != -1:
        flags["num_heads"] = flags["num_heads_upsample"] = -1
    elif flags["num_heads_upsample"] == -1:
        flags["num_heads_upsample"] = flags["num_heads"]
    return flags


def _job_record(config: JobConfig, settings: ZipSettings, model: _Model, location: str | None) -> dict[str, Any]:
    """What the output records of the run that writes it, and a later run's must match (`check_output_state`)."""
    return {"settings": settings.to_dict(), "checkpoint_sha256": model.checkpoint.sha256,
            "canvas_size": model.canvas_size, "decoding": asdict(config.decode_policy()),
            "checkpoint": redact_uri(model.uri), "model": model.note,
            # the architecture the weights were read as: other --flags (or --preset) that fit the same file can make
            # another model (attention heads split otherwise), whose rows would be mixed with these
            "model_flags": model_architecture(model.checkpoint.config),
            # options that set the rows' columns: a run with others would add rows unlike the output's
            "reading": {"labels_from_folders": config.labels_from_folders, "image_column": config.image_column,
                        "partitioning": config.partitioning, "join_metadata": config.join_metadata},
            # what the output's ids are relative to: another input's same-named files would be skipped as done
            "input": {"uri": redact_uri(config.input), "location": redact_uri(location)}}


@dataclass(frozen=True)
class _OutputDone:
    """The output's state and what it already holds (resume / incremental)."""

    state: str  # as `check_output_state` says
    stale_lease: str | None
    purified_ids: set[str]  # ids in data/
    rejected_ids: set[str]  # ids in rejects/
    prior_purified: int  # counts the plan reports (a dry run with --overwrite: those it would delete)
    prior_rejected: int
    retry: frozenset[str]  # --retry-rejects: the ids in rejects/ that this run reads again
    skip: set[str]  # the done ids: this run does not read them
    # every part file's ids, as read once for the above (empty for a new output or one --overwrite clears)
    index: OutputIndex = OutputIndex()
    # part file ('data/part-....parquet') -> the ids whose old rows in it a stopped --refresh-changed run replaced, which
    # this run's start removes (`_after_earlier_refresh`): not compared with the inputs (`changes.same_bytes`)
    superseded: dict[str, set[str]] = field(default_factory=dict)


def replaced_settings_note(out: str, what: str, dry_run: bool) -> str:
    """The note that this run's settings replace those an earlier run that wrote no row recorded (`what`)."""
    # the output as the dry run's own lines name it: an ftp://user:password@host/out's password is not printed
    return (f"zip-purify: note: {redact_uri(out)} holds no rows yet; the settings its earlier run recorded ({what}) "
            + ("would be replaced by this run's (a dry run changes nothing)" if dry_run else "are replaced by this run's"))


def _output_done(config: JobConfig, job_record: dict[str, Any], dry_run: bool) -> _OutputDone:
    """The output's state (a JobError when this run may not use it) and the ids it already holds."""
    so = config.storage_options
    out = config.output.rstrip("/")
    try:
        # deletes nothing: run_job empties an --overwrite output once it holds the output's lease
        notes: list[str] = []
        state = check_output_state(config, job_record, dry_run=True, notes=notes)
        stale_lease = refuse_live_lease(out, so)  # before any work; a real run takes the lease after planning
        for what in notes:  # only now: a run refused for another's live lease replaces nothing
            print(replaced_settings_note(out, what, dry_run), file=sys.stderr)
        # A new or overwritten output holds nothing yet (in a dry run: will hold nothing when the run starts, and
        # the plan reports what --overwrite would delete).
        index = OutputIndex() if state in ("new", "overwrite") else output_index(out, so)
        purified_ids, rejected_ids = index.ids()
        prior_purified, prior_rejected = len(purified_ids), len(rejected_ids)
        if state == "overwrite" and dry_run:
            prior_purified, prior_rejected = _overwritten_counts(out, so)
        # --retry-rejects: a rejected input is not done; it is read again, and its old reject row goes at the end
        retry = frozenset(rejected_ids) if config.retry_rejects else frozenset()
        skip = purified_ids if config.retry_rejects else purified_ids | rejected_ids
    except JobError:
        raise
    except Exception as err:  # noqa: BLE001 - permanent storage errors stop the job before any work
        raise _cannot_use_output(out, so, err) from err
    return _OutputDone(state, stale_lease, purified_ids, rejected_ids, prior_purified, prior_rejected, retry, skip,
                       index)


def _cannot_use_output(out: str, so: dict[str, Any], err: BaseException) -> JobError:
    """'cannot use output', saying what to grant where an object store refused: without its list permission (S3's
    s3:ListBucket) a store answers 403 for each of the output's records not yet written (a first run's `_job.json`, a
    lease), as for one that may not be read. The job cannot take such an answer for "not there": it lists its part
    files to resume or add to a run, and a lease it cannot see would let two runs write one output."""
    message = f"cannot use output {out}: {described_whole(err)}"
    if access_denied(err):
        fs, _ = storage_path(out, so)
        if not OBJECT_STORE_PROTOCOLS.isdisjoint(protocols(fs)):
            message += (f" (the job lists its output and reads its own records there, {JOB_FILE}, {SUMMARY_FILE} and "
                        f"its lease, so its credentials need {list_permission(fs)} on the output as well as reading, "
                        "writing and deleting objects under it: without that, the store refuses a look at each record "
                        "not yet written)")
    return JobError(message)


def _overwritten_counts(out: str, so: dict[str, Any]) -> tuple[int, int]:
    """The rows --overwrite would delete, purified and rejected (the dry run's counts). Part files that cannot be read
    are deleted with the rest, so they do not stop the dry run (they stopped it with advice to move them out, though
    the run itself would start): a note says how many there are."""
    damaged: list[DamagedPart] = []
    purified_old, rejected_old = output_ids(out, so, damaged)
    if damaged:
        first = min(d.path for d in damaged)
        print(f"zip-purify: note: {redact_uri(out)} holds {len(damaged)} part file(s) that cannot be read (e.g. "
              f"{posixpath.basename(posixpath.dirname(first))}/{posixpath.basename(first)}); --overwrite "
              "deletes them with the rest, and their rows are not in these counts", file=sys.stderr)
    return len(purified_old), len(rejected_old)


def _refusal(config: JobConfig, err: InputRefused) -> str:
    """An input the listing refuses, said whole and naming the input: its message names each file and the fix, which
    `describe` cut to a reject reason's length (the second file of a pair, then the fix, were lost)."""
    return str(err) if str(err).startswith("input ") else f"input {config.input}: {err}"


def _listed_units(config: JobConfig, hidden: HiddenSkipped, metadata: FolderMetadata | None,
                  sidecars: Sidecars | None = None) -> list[ReadUnit]:
    """The input's read units (`sources.discover`, retried on transient errors); the hidden files it leaves out are
    counted in `hidden`, and with --join-metadata the image-folder metadata files it finds are joined into `metadata`,
    its sidecar files paired with their image files into `sidecars`."""
    so = config.storage_options
    # the job's own files inside the input are not counted as hidden inputs (a 2nd run's summary)
    own_files = output_files_inside_input(config.input, config.output.rstrip("/"), so)
    try:
        return with_retries(lambda: discover(config.input, so, config.files_per_unit, hidden, own_files, metadata,
                                             sidecars),
                            f"list {config.input}")
    except InputNotFound as err:  # its own message says it: not "input x not found: FileNotFoundError: input x ..."
        raise JobError(str(err)) from err
    except InputRefused as err:
        raise JobError(_refusal(config, err)) from err
    except UnlistableFolder as err:  # said whole, as a refusal: the folder, then the fix
        raise JobError(str(err.strerror)) from err
    except FileNotFoundError as err:  # a file gone while the input was listed
        raise JobError(f"input {config.input} not found: {describe(err)}") from err
    except Exception as err:  # noqa: BLE001
        raise JobError(f"cannot list input {config.input}: {described_whole(err)}{_input_refusal(config, err)}") from err


def _inputs_listed(units: list[ReadUnit], config: JobConfig) -> tuple[list[ReadUnit], int]:
    """The units less the job's own output files, when the output lies inside the input (the input as listed), and
    how many output files were left out."""
    out = config.output.rstrip("/")
    inside = output_inside_input(config.input, out, config.storage_options)
    if inside is None:
        return units, 0
    inputs, excluded = [], 0
    for unit in units:  # the job's own output is not input: reading it back would purify it twice
        outside, excluded_here = _outside_output(unit, inside, out)
        excluded += excluded_here
        if outside is not None:
            inputs.append(outside)
    return inputs, excluded


def _units_left(inputs: list[ReadUnit], skip: set[str]) -> tuple[list[ReadUnit], int]:
    """The input's units less the image files already done (`skip`), and how many those were. Worked out once, after
    --refresh-changed has taken the rows it replaces out of `skip`: a second pass over a listing of 10^6 files took
    seconds."""
    skipped_files, kept_units = 0, []
    for unit in inputs:
        if unit.kind == "files":
            none = [None] * len(unit.paths)
            kept = [(p, size, content) for p, size, content in zip(unit.paths, unit.sizes or none,
                                                                   unit.contents or none, strict=True)
                    if relative_id(p, unit.root) not in skip]
            skipped_files += len(unit.paths) - len(kept)
            if kept:
                kept_units.append(ReadUnit("files", tuple(p for p, _, _ in kept), unit.root,
                                           tuple(s for _, s, _ in kept), (), tuple(c for _, _, c in kept)))
        else:
            kept_units.append(unit)
    return kept_units, skipped_files


def _outside_output(unit: ReadUnit, inside: Callable[[str], bool], out: str) -> tuple[ReadUnit | None, int]:
    """The unit less its paths in the job's output (None when that is all of them), and how many those were. A path
    in the output that the job did not write is the user's: a JobError."""
    none = [None] * len(unit.paths)
    pairs = list(zip(unit.paths, unit.sizes or none, unit.contents or none, strict=True))
    own = [inside(p) for p, _, _ in pairs]  # once a path: each is looked up on disk (a link may lead anywhere)
    outside = [pair for pair, mine in zip(pairs, own, strict=True) if not mine]
    foreign = [p for (p, _, _), mine in zip(pairs, own, strict=True) if mine and not is_written_file(p)]
    if foreign:  # the user's own files, in a folder the job writes its output to: neither read nor skipped
        raise JobError(f"input file {foreign[0]} lies in the data/ or rejects/ folder of --output {out}, which "
                       "the job writes to and does not read; write the output to another folder")
    if not outside:
        return None, len(pairs)
    # a container is one path: kept whole or not at all, so its stamps stay as listed
    return ReadUnit(unit.kind, tuple(p for p, _, _ in outside), unit.root, tuple(size for _, size, _ in outside),
                    unit.stamps, tuple(content for _, _, content in outside)), len(pairs) - len(outside)


@dataclass(frozen=True)
class _ContainersLeft:
    """What the plan says of the containers (tar shards, Parquet files, zip archives) left to read."""

    done: dict[str, list[str]]  # path -> the done ids its read task skips unread (JobPlan.container_done)
    purified: dict[str, list[str]]  # path -> its done ids in data/ that a name not UTF-8 can give (JobPlan)
    ledger: dict[str, ContainerRead]  # those an earlier complete run read whole
    unread: set[str]  # read whole before, unchanged since, all their ids done: not read at all


def _read_ledger(inputs: list[ReadUnit], out: str, so: dict[str, Any], output: _OutputDone) -> dict[str, ContainerRead]:
    """The containers an earlier complete run read whole (`pipeline.ledger`), when the input holds any."""
    try:
        if any(u.kind != "files" for u in inputs) and output.state in ("resume", "incremental"):
            return read_ledger(out, so)
        return {}
    except Exception as err:  # noqa: BLE001 - read_ledger ignores a bad record; this is storage failing
        raise _cannot_use_output(out, so, err) from err


def _containers_left(kept_units: list[ReadUnit], output: _OutputDone,
                     ledger: dict[str, ContainerRead]) -> _ContainersLeft:
    """Containers (tar, Parquet, zip): each read task gets its own container's done ids (not the whole output's), and
    one that an earlier complete run read whole (`ledger`: the output's, with the entries of containers the planning
    read whole and found as their rows were made: `same_members`) and that is unchanged since is not read at all."""
    skip, purified_ids, rejected_ids = output.skip, output.purified_ids, output.rejected_ids
    containers = [u for u in kept_units if u.kind != "files"]
    container_done = container_ids(skip, containers) if skip else {}
    tars = {u.paths[0] for u in containers if u.kind == "tar"}
    # A container's '#unreadable' reject is no record of it (not in the digest), but it is done: a shard still
    # broken gives it again, and written twice it would make the run inconsistent.
    broken = {u.paths[0]: f"{relative_id(u.paths[0], u.root)}#unreadable" for u in containers}
    # the done ids of each tar shard that are in data/ and that a name not UTF-8 can give ('\\x'): its read task tells
    # a member added beside one purified earlier under the same id (sources.tar_shards.read_tar)
    escaped = {path: purified for path, ids in container_done.items()
               if path in tars and (purified := [i for i in ids if "\\x" in i and i in purified_ids])}
    # One with such a reject is read again even where the record says it was read whole (an older version recorded
    # it and kept the reject): once it reads whole, the reject goes (`resolved` in _run).
    # So is a shard holding such an id that an older version recorded (not `lookalikes_checked`), once: that version
    # skipped a member added beside the purified one without a word, and recorded the shard as read whole.
    unread = {u.paths[0] for u in containers
              if _reject_settled(broken[u.paths[0]], ledger.get(u.paths[0]), skip, rejected_ids)
              and broken[u.paths[0]] not in purified_ids
              and unchanged_and_done(u, u.stamps[0] if u.stamps else None, ledger.get(u.paths[0]),
                                     container_done.get(u.paths[0], []))
              and (u.paths[0] not in escaped or ledger[u.paths[0]].lookalikes_checked)}
    return _ContainersLeft(done={path: ids + [broken[path]] * (broken[path] in skip)
                                 for path, ids in container_done.items() if path not in unread},
                           purified={path: ids for path, ids in escaped.items() if path not in unread},
                           ledger=ledger, unread=unread)


def _reject_settled(broken: str, entry: ContainerRead | None, skip: frozenset[str] | set[str],
                    rejected_ids: frozenset[str] | set[str]) -> bool:
    """Whether a container's own '#unreadable' reject (`broken`) lets it be skipped unread: the output holds none, or
    its read ended in that reject and gives it again while the container is unchanged (`ContainerRead.lasting_reject`:
    a table without an image column, a file not of its kind: `sources.records.LastingProblem`), and the output holds it
    as done (not read again by --retry-rejects). Such a container skipped without its reject in the output would be in
    neither data/ nor rejects/."""
    if entry is not None and entry.lasting_reject:
        return broken in skip
    return broken not in rejected_ids


def _canvas_problem(canvas_size: int, given: bool, pool: int, model_multiple: int) -> str | None:
    """Why the model cannot purify canvases of `canvas_size` px with this pool factor, naming the sizes it takes; None
    when it can. Found here, the run stops before it writes anything (in the purifier actors, it failed after
    recording the size in the output, whose record then refused the corrected command)."""
    multiple = math.lcm(pool, model_multiple)
    if canvas_size % multiple == 0:
        return None
    below = canvas_size // multiple * multiple
    sizes = " or ".join(str(n) for n in (below, below + multiple) if n > 0)
    if not given:
        return (f"pool factor {pool} does not divide the model's canvas size {canvas_size}: give a --pool that divides "
                f"it, or --canvas-size {sizes}")
    why = [f"the model halves its input {model_multiple.bit_length() - 1} times: multiples of {model_multiple}"] * (
        model_multiple > 1) + [f"--pool {pool}: multiples of {pool}"] * (pool > 1)
    return (f"--canvas-size {canvas_size} cannot be used: canvases must be multiples of {multiple} ({'; '.join(why)}); "
            f"use {sizes}")
