"""Command line of the purification job (`zip-purify`, `python jobs/purify.py`)."""

from __future__ import annotations

import argparse
import difflib
import json
import re
import signal
import sys
import threading
import types
import typing
from dataclasses import fields
from typing import Any

import yaml

from pipeline.changes import changed_warning, compared_note, gone_note, refreshed_note
from pipeline.cli_common import NO_CREDENTIALS_ADVICE as NO_CREDENTIALS_ADVICE  # re-exported: said after errors
from pipeline.cli_common import (
    ConfigError,
    Parser,
    add_storage_options,
    credentials_advice,
    reader_may_go_away,
    storage_options,
)
from pipeline.config import DEFAULT_INPUT, JobConfig
from pipeline.entry import ray_lines_to_stderr
from pipeline.errors import JobError, JobFailed, JobInterrupted
from pipeline.job import run_job
from pipeline.lease import LEASE_WATCH_S
from pipeline.placement import DEFAULT_CPUS_PER_ACTOR
from pipeline.plan import JobPlan, plan_job, uri_secrets_redacted
from pipeline.presets import SHIPPED_PRIORS
from pipeline.redaction import redact_uri, storage_value_shown
from pipeline.settings import RECIPES, canonical_operators, recipe_values
from pipeline.sources import IN_MEMORY_BYTES, PARTITIONINGS, hidden_note, read_budget, terminal_text
from pipeline.sources.folder_metadata import unmatched_note
from pipeline.stopped_run import StoppedWhileLoading
from pipeline.version import version_line

DESCRIPTION = f"""\
Purify an image data set of backdoor triggers with Zero-shot Image Purification (ZIP).

Reads images from a local folder or object storage (any fsspec URI: /path, file://, s3://; https:// for one file,
or for a folder when it ends in / and its index page links the files):
folders of image files, tar shards (WebDataset keys: 0001.jpg + 0001.cls), Parquet or Arrow IPC files
with an image column, TFRecord files of tf.train.Example records (.tfrecord, .tfrecords, .tfrec; the
image/encoded or image feature), or zip archives (each file in one an input); those over --in-memory-mb
({IN_MEMORY_BYTES // 2**20} MiB) are streamed from storage rather than fetched whole, so memory does not grow
with them.
Writes OUTPUT/data/*.parquet (id, image{{bytes: PNG, path}}, pass-through columns,
source, source_sha256, psnr_vs_input_db: how much purification changed the image, downscale_factor:
how far an image larger than the model was shrunk to fit it), OUTPUT/rejects/*.parquet (inputs that
could not be purified, with the reason) and OUTPUT/_summary.json. Running again into the same output
resumes where it stopped.

With no arguments it purifies a small sample shipped with the package into ./purified/.
"""

EXAMPLES = """\
examples:
  python jobs/purify.py                                   # embedded sample -> ./purified
  python jobs/purify.py --input s3://bucket/incoming/ --output s3://bucket/clean/ --incremental
  python jobs/purify.py --input s3://bucket/incoming/ --output s3://bucket/clean/ --dry-run   # check, count, size
  python jobs/purify.py --config job.yaml --steps 20 --pool 2
  python jobs/purify.py --input /data/in --output /data/out --recipe low-asr   # Algorithm 1, late start
  ray job submit --working-dir . -- python jobs/purify.py --input s3://... --output s3://...

a YAML --config holds the same options, named as here without the dashes in front (tile_batch: 8 or tile-batch: 8;
input: ..., pool: 4, progress: false for --no-progress, storage_options: {...}, storage_option: [KEY=VALUE, ...]);
--config and --dry-run are command-line only. Flags given on the command line win over the file (a --checkpoint or
--prior flag replaces the file's checkpoint or prior); operators may be a list there too ([gray, pool]).

exit status:
  0    the run completed (the summary's status is complete), or a dry run found nothing that stops the run
  1    the run started and failed: a batch failed past its retries (_summary.json says "failed", with the reason),
       its end-of-run check found part files damaged during the run (named), its counts do not add up
       ("inconsistent"), or its summary could not be written (named); OUTPUT holds only whole files and the same
       command resumes it
  2    the run could not start: a bad option or --config file, a missing input, a refused checkpoint, an output made
       with other settings or already complete, in use by another run (OUTPUT/_lease.json), one whose records cannot
       be read or written, or a Ray that cannot be started or joined; nothing was purified
  130  interrupted (Ctrl-C; 143 for SIGTERM): _summary.json says "interrupted"; the same command resumes the run
"""


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


class _Parser(Parser):
    """The job's parser: a word where it takes none is most often an input and output given without their flags."""

    POSITIONAL_HINT = "the input and output are named: --input IN --output OUT"
    WORD_HINTS: typing.ClassVar[dict[str, str]] = {
        "export": "purified images out as files: zip-purify-export --output OUT --to DIR (python jobs/export.py)"}


# --blend-k's words for no blend (the hard switch): an option's absent value is None, so a flag cannot give None itself
_NO_BLEND = ("off", "none")


def _blend_k(text: str) -> float | str:
    """--blend-k's value: a number, or "off" (kept as such until the options are merged: None there is "not given")."""
    if text.strip().lower() in _NO_BLEND:
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number above 0, or off for no blend (the hard switch), "
                                         f"got {text!r}") from None


def _json(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:  # argparse would say only "invalid loads value"
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg} at character {err.pos + 1}): {text!r}; "
                                         """give an object such as '{"num_channels": 128}'""") from None
    if value is None:  # JSON's null was taken as the flag not given: the --preset's flags were used without a word
        raise argparse.ArgumentTypeError("""null is not a JSON object of flags; give one such as '{"num_channels": 128}', """
                                         "or leave --flags out to use --preset's")
    return value


def build_parser(prog: str = "zip-purify") -> argparse.ArgumentParser:
    """The command line's parser; `prog`: the tool's name in its usage and error lines, the command the user ran
    (`python jobs/purify.py`, `python -m pipeline.cli`), so that its "run ... --help" hint is one that works."""
    # allow_abbrev=False: a scheduled command that says --over would change meaning the day a flag --over... is added
    p = _Parser(prog=prog, description=DESCRIPTION, epilog=EXAMPLES, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_line(),
                   help="print zip-purify's version, with torch's, Ray's and Python's, and exit")
    d = JobConfig()  # its defaults, quoted in the help
    _add_input_output_options(p, d)
    _add_model_options(p, d)
    _add_sampler_options(p, d)
    _add_cluster_options(p, d)
    _add_decoding_options(p, d)
    add_storage_options(p)
    return p


def _add_input_output_options(p: argparse.ArgumentParser, d: JobConfig) -> None:
    """Where the images come from, where the purified ones go, and how a run meets an existing output."""
    io = p.add_argument_group("input and output")
    io.add_argument("--config", metavar="FILE", help="YAML file with any of these options (see below); flags win over it "
                    "(default: none)")
    io.add_argument("--input", help=f"input folder, file or prefix, or a web address (a folder when it ends in /) "
                    f"(default: the embedded sample, {DEFAULT_INPUT})")
    io.add_argument("--output", help=f"output folder or prefix, on storage the job can write: not a web address "
                    f"(default {d.output})")
    io.add_argument("--labels-from-folders", type=_bool, metavar="BOOL",
                    help="add a `label` column from each image file's parent folder name (a zip or tar member's folder "
                         "inside its archive; default false)")
    io.add_argument("--join-metadata", type=_bool, metavar="BOOL",
                    help="join an image folder's metadata.csv / metadata.jsonl (Hugging Face's imagefolder layout: "
                         "file_name relative to its folder, then labels, captions, ...) to the rows of the images it "
                         "names, as pass-through columns, and an image file's sidecar files (x.txt, x.json, x.cls "
                         "beside x.jpg, as img2dataset writes a folder) to its row, as a tar key's; false: such a file "
                         f"is an input, a reject that says what it is (default {str(d.join_metadata).lower()})")
    io.add_argument("--image-column", help="Parquet, Arrow IPC and TFRecord inputs: the image column, or a TFRecord "
                    "record's image feature (default: detected)")
    io.add_argument("--partitioning", choices=list(PARTITIONINGS),
                    help="hive: each KEY=VALUE folder between --input and an input file (image file, tar shard, "
                         "Parquet or zip file; not folders inside an archive), as in date=2026-11-01/split=train/, "
                         "gives that file's rows a string column KEY holding VALUE (URL-unquoted), as Spark and "
                         "pyarrow read such folders; a KEY named like a job column is written input_KEY, one the row "
                         "has a column of already (a Parquet column, a sidecar, label) partition_KEY; a path with one "
                         "KEY twice stops the run; none: no such columns, the value is only in the id's path (default "
                         f"{d.partitioning})")
    io.add_argument("--incremental", action="store_true", default=None,
                    help="add only inputs not yet in a finished output (scheduled cleaning of incoming data); tar "
                         "shards, Parquet and zip files read whole by an earlier run and unchanged since are not read "
                         "again; not with --overwrite")
    io.add_argument("--retry-rejects", action="store_true", default=None,
                    help="read the inputs in the output's rejects/ again (after a storage outage, with a larger "
                         "--max-image-mb or --max-pixels, or once damaged files are replaced); a retried input that "
                         "is purified or rejected again replaces its old reject row, one whose input is gone keeps "
                         "it; new inputs are added too, as with --incremental; not with --overwrite")
    io.add_argument("--refresh-changed", action="store_true", default=None,
                    help="purify again the inputs changed in place since their rows were written (an image file "
                         "re-uploaded under its name with other bytes, a tar shard, Parquet or zip file rewritten with "
                         "a member or row of its rows changed or gone: every row of it is read again), the ones "
                         "each run's changed_inputs warning counts, and replace their old rows in data/ or rejects/ "
                         "with the new ones, so each id is in the output once, made from the input's current bytes (a "
                         "kill at any point loses no row: the next run finishes the replacement); new inputs are added "
                         "too, as with --incremental; --dry-run says how many would be refreshed; not with "
                         "--overwrite or --input-moved")
    io.add_argument("--input-moved", action="store_true", default=None,
                    help="the output's input moved here (the same files, so the same ids, at a new place): accept "
                         "this --input for an output made from another; without it, another input is refused, as its "
                         "same-named files would be skipped as done")
    io.add_argument("--overwrite", action="store_true", default=None,
                    help="delete an existing output's data, rejects and summary first; not with --incremental")
    io.add_argument("--dry-run", action="store_true",
                    help="check the checkpoint, the output and the input and print what a run would do (model, "
                         "output state, inputs to read and already done) without writing anything; it reads no "
                         "image but those of inputs whose listing changed since their rows were written, to compare "
                         "them with their rows, as a run does; exit status 2 with the reason when the run would stop")


def _add_model_options(p: argparse.ArgumentParser, d: JobConfig) -> None:
    """The diffusion model: which checkpoint, how it is checked and built, and on which device and precision."""
    model = p.add_argument_group("model")
    model.add_argument("--checkpoint", help="diffusion checkpoint: path or URI of a guided-diffusion .pt, "
                       ".safetensors or zip-purify bundle (default: the project's own CIFAR-10 prior)")
    model.add_argument("--prior", choices=sorted(SHIPPED_PRIORS),
                       help="a prior shipped with zip-purify instead of --checkpoint: "
                       + "; ".join(f"{name}: {what}" for name, what in SHIPPED_PRIORS.items()))
    model.add_argument("--preset", help="architecture preset for a bare state dict (e.g. 256x256_diffusion_uncond); "
                       "default: the bundle's flags, else inferred from the keys")
    model.add_argument("--flags", type=_json, help="guided-diffusion create_model flags as JSON (overrides --preset; "
                       "default: as for --preset)")
    model.add_argument("--checkpoint-sha256", help="refuse to run unless the checkpoint has this sha256 (64 hex "
                       "digits; default: none, any file)")
    model.add_argument("--device", help="cuda or cpu (default: cuda on GPU actors, else cpu)")
    model.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                       help=f"inference precision; fp16/bf16 need CUDA (default {d.precision})")


def _add_sampler_options(p: argparse.ArgumentParser, d: JobConfig) -> None:
    """The ZIP sampler's settings (the paper's Algorithm 2 unless changed)."""
    zp = p.add_argument_group("ZIP sampler (defaults: the paper's Algorithm 2)")
    zp.add_argument("--recipe", choices=list(RECIPES),
                    help="named sampler settings; any sampler flag (or --config key) given as well wins over the "
                         "recipe's value. " + "; ".join(f"{name}: {r.what}" for name, r in RECIPES.items()).replace("%", "%%"))
    zp.add_argument("--steps", type=int, help=f"sampler steps, spaced evenly over T = 1000 (default {d.steps})")
    zp.add_argument("--pool", type=int, help=f"average-pooling factor of the operator A (default {d.pool})")
    zp.add_argument("--lam", type=float, help=f"λ: guide while t >= λT; 0 guides every step (default {d.lam})")
    zp.add_argument("--eta", type=float, help=f"DDIM η in [0, 1], --sampler ddim only (default {d.eta})")
    zp.add_argument("--sampler", choices=["ddim", "ddpm"],
                    help=f"ddim = Algorithm 2, ddpm = Algorithm 1 (default {d.sampler})")
    zp.add_argument("--operators",
                    help=f"'pool' (paper) or 'gray,pool' (authors' code, averaged; 'pool,gray' is the same setting); "
                         f"the names are pool, gray and gray+pool (gray, then pool, as one operator), comma-separated "
                         f"to average their guidance (default {d.operators})")
    zp.add_argument("--blend-k", type=_blend_k, metavar="K",
                    help="authors'-code soft blend exponent k instead of the hard switch, a number above 0; off: no "
                         "blend, the paper's hard switch (the default; undoes --recipe authors-code's k = 10, as "
                         "blend_k: off does in a --config file)")
    zp.add_argument("--clip-denoised", type=_bool, metavar="BOOL", help="clamp x̂₀ to [-1, 1] each step (default true)")
    zp.add_argument("--resample", type=int, metavar="R",
                    help="redo each guided step R times, re-noising in between (DDNM+/RePaint time travel); R times "
                         f"the model calls; refused above 1 where --start and --lam leave no step guided (default "
                         f"{d.resample}: the paper)")
    zp.add_argument("--start", type=float, metavar="S",
                    help="late start: run only the steps t <= S*T, from the input's A⁺y noised to that level instead "
                         "of pure noise (0.3: 7 of 20 steps, a third of the model calls; default 1, the paper; for a "
                         "prior trained only up to some timestep, jobs/train_prior.py --max-timestep, the largest start "
                         "in its range, which a note says)")
    zp.add_argument("--schedule", choices=["linear", "cosine"],
                    help="the noise schedule the prior was trained with (default: the one the prior records, "
                         "jobs/train_prior.py --schedule; else linear, as guided-diffusion's checkpoints); one that "
                         "differs from the prior's record is refused")
    zp.add_argument("--large-images", choices=["fit", "stretch"],
                    help="images larger than the model: shrink keeping aspect (fit) or stretch; resized back after, "
                         f"with only the model's detail (column downscale_factor; default {d.large_images})")
    zp.add_argument("--seed", type=int,
                    help=f"noise seed, 0 to 4294967295 (results are reproducible per image set; default {d.seed})")


def _add_cluster_options(p: argparse.ArgumentParser, d: JobConfig) -> None:
    """Batch sizes, read tasks and the Ray cluster: how fast, not what comes out."""
    rt = p.add_argument_group("throughput and cluster")
    rt.add_argument("--canvas-size", type=int, help="mosaic side in pixels (default: the model's image_size)")
    rt.add_argument("--batch-size", type=int,
                    help="canvases sampled together, per model step (default: 4 canvases' worth of 256x256 pixels, "
                         "e.g. 256 of 32 px; a CPU runs each step's model in slices of 256x256 pixels)")
    rt.add_argument("--tile-batch", type=int,
                    help=f"images read, decoded and tiled together per batch (default {d.tile_batch})")
    rt.add_argument("--write-batch", type=int, help=f"rows per output Parquet file at most (default {d.write_batch})")
    rt.add_argument("--files-per-unit", type=int, help=f"image files per read task (default {d.files_per_unit})")
    rt.add_argument("--in-memory-mb", type=int, metavar="MB",
                    help=f"tar shards, Parquet and zip files up to this size are fetched in one request; larger ones "
                         f"are streamed (a tar read twice, a zip a member at a time), so memory does not grow with "
                         f"them (default {d.in_memory_mb}; "
                         "0 streams all); a larger tar, zip or Parquet file a web server sends with no size is copied "
                         "to a local temporary file ($TMPDIR) once and read from there")
    rt.add_argument("--actors", type=int, help="purifier actors at most (default 0: one per GPU, or 1 on CPU)")
    rt.add_argument("--gpus-per-actor", type=float,
                    help="GPUs per actor, 0 or 0.0001 to 1 (default 1 when the cluster has GPUs, else 0)")
    rt.add_argument("--cpus-per-actor", type=float,
                    help=f"CPUs reserved per actor, 0.0001 or more (default {DEFAULT_CPUS_PER_ACTOR}; on a local Ray "
                         "with fewer CPUs than that plus --cpus-per-task, a 1-CPU machine, what one task leaves, and the "
                         "run says so)")
    rt.add_argument("--cpus-per-task", type=float,
                    help=f"CPUs reserved per read/decode/tile/untile/encode/write task, 0.0001 or more (default "
                         f"{d.cpus_per_task})")
    rt.add_argument("--torch-threads", type=int,
                    help="torch threads per CPU actor (default: every core of its node for a lone actor; with "
                         "--actors above 1, its --cpus-per-actor, so that actors sharing a node do not oversubscribe it)")
    rt.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    rt.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                    help="no progress on stderr (default: a bar on a terminal, else a line a minute, for logs)")


def _add_decoding_options(p: argparse.ArgumentParser, d: JobConfig) -> None:
    """Limits and choices in decoding images that are not trusted."""
    dec = p.add_argument_group("decoding untrusted images")
    dec.add_argument("--max-pixels", type=int, help=f"refuse images over this many pixels (default {d.max_pixels:,})")
    dec.add_argument("--max-image-mb", type=int, metavar="MB",
                     help="an image file, tar or zip member or Parquet image cell over this many MiB is a reject, and is not "
                          "read, so one huge or garbage input cannot take a read task's memory (default "
                          f"{d.max_image_mb}: room for any image within the default --max-pixels, even one stored "
                          "uncompressed at 16 bits per channel)")
    dec.add_argument("--alpha", choices=["white", "black", "drop"],
                     help=f"how transparency is flattened: composited on white or black, or dropped (default {d.alpha})")
    dec.add_argument("--exif-transpose", type=_bool, metavar="BOOL", help="apply EXIF orientation (default true)")


# Command-line conveniences that a --config file may hold too; each folds into storage_options.
STORAGE_SHORTHANDS = ("s3_endpoint", "anon", "storage_option")


def config_from_args(argv: list[str] | None = None) -> JobConfig:
    return _config_from_namespace(build_parser().parse_args(argv))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # `<<: *defaults`, YAML's merge key: its mapping's keys are merged in (the safe loader's own
                # flatten_mapping), the mapping's own keys winning; built as a key, it refused the file as "not valid YAML"
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def _load_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.load(f, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects from the file
    except OSError as err:
        raise ConfigError(f"cannot read --config {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path} is not UTF-8 text (byte {err.start}); give a YAML file") from err
    except yaml.YAMLError as err:
        # one line: the problem and where, not PyYAML's several-line report
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"--config {path} is not valid YAML: {getattr(err, 'problem', None) or err}{where}") from err
    if loaded is None:
        # an empty file is most likely the wrong file: running on every default would not be what was asked
        raise ConfigError(f"--config {path} is empty; it must hold a mapping of option: value")
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path} must hold a mapping of option: value, got a {type(loaded).__name__}")
    return loaded


# The value each --config key takes, beyond JobConfig's fields (whose annotations say theirs).
_SHORTHAND_TYPES: dict[str, Any] = {"recipe": str, "s3_endpoint": str, "anon": bool, "storage_option": list[str] | str}


def _expected(hint: Any) -> tuple[tuple[type, ...], str, bool]:
    """(accepted Python types, how to say them, None allowed) for a field annotation."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    optional = type(None) in args
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", dict: "a mapping",
             list: "a list"}
    accepted: list[type] = []
    said = []
    for arg in args:
        base = typing.get_origin(arg) or arg
        if base is type(None):
            continue
        accepted += [int, float] if base is float else [base]
        said.append(names[base])
    return tuple(accepted), " or ".join(said), optional


def _check_file_types(path: str, values: dict[str, Any]) -> None:
    """Refuse a --config value of the wrong type, naming the file and the key. Used for the storage shorthands and
    the recipe, which JobConfig's checks never see (a quoted anon: "no" was read as true), and for values its checks
    could not name (a quoted eta: "1" failed a comparison)."""
    hints = {**typing.get_type_hints(JobConfig), **_SHORTHAND_TYPES}
    for key, value in values.items():
        accepted, said, optional = _expected(hints[key])
        if value is None:
            if optional:
                continue
            raise ConfigError(f"--config {path}: {key} has no value; give {said} or leave the key out")
        if isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted):
            continue
        hint = _text_hint(value, accepted)
        got = storage_value_shown(value) if key in ("storage_options", "storage_option") else repr(value)
        raise ConfigError(f"--config {path}: {key} must be {said}, got {got}" + (f" ({hint[2:]})" if hint else ""))


def _text_hint(value: Any, accepted: tuple[type, ...]) -> str:
    """Why YAML read a value as text that was meant as a number or a boolean."""
    if not isinstance(value, str):
        return ""
    if bool in accepted:
        return "; text: write true or false without quotes"
    try:
        float(value)
    except ValueError:
        return ""
    if int not in accepted:
        return ""
    # PyYAML follows YAML 1.1: 1e-3 without a dot is text, as is anything quoted
    if "e" in value.lower() and "." not in value:
        # a whole-number option (seed: 1e3) takes no exponent at all: 1.0e3 is a float, refused there as well
        return ("; read as text: write it with a dot before the exponent (1.0e-3)" if float in accepted else
                "; read as text: write the whole number out, without an exponent")
    return "; read as text: write the number without quotes"


def _file_blend_k(path: str, value: Any) -> float | None:
    """A --config file's blend_k: a number, or the flag's words for no blend. YAML 1.1 reads a bare off (and no,
    false) as the boolean false, which stopped the run although --blend-k off takes the same word; null, "off" and
    "none" say it too. True and other text are refused here, naming the file, in the words a file is written in."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _NO_BLEND):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        hint = _text_hint(value, (int, float))
        raise ConfigError(f"--config {path}: blend_k must be a number above 0, or off (null) for no blend (the hard "
                          f"switch), got {value!r}" + (f" ({hint[2:]})" if hint else ""))
    return value


def _file_values(path: str) -> dict[str, Any]:
    """A --config file's options under JobConfig's names (dashes read as underscores), checked for unknown keys,
    keys given twice under both spellings, and the types of the keys JobConfig.check never sees."""
    known = {f.name for f in fields(JobConfig)} | set(_SHORTHAND_TYPES)
    values: dict[str, Any] = {}
    for raw, value in _load_config_file(path).items():
        key = str(raw).replace("-", "_")
        if key in values:
            raise ConfigError(f"--config {path}: {key} is given twice (as {key} and {key.replace('_', '-')})")
        if key not in known:
            if key == "no_progress":
                hint = "; write progress: false"
            elif key in ("dry_run", "config"):
                hint = f"; {key} is command-line only"
            else:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"--config {path}: unknown option {raw!r}{hint} (a --config file takes the options of "
                              "--help, without the dashes in front)")
        values[key] = value
    _check_file_types(path, {k: v for k, v in values.items() if k in _SHORTHAND_TYPES})
    if "blend_k" in values:
        values["blend_k"] = _file_blend_k(path, values["blend_k"])
    operators = values.get("operators")
    if isinstance(operators, list):
        # a YAML list of names is one way to write --operators: joined, as the flag's comma-separated text (it
        # was passed on as a list, and recorded as one, unlike the same setting given as text)
        if not operators or not all(isinstance(name, str) for name in operators):
            raise ConfigError(f"--config {path}: operators must be text or a list of operator names (pool, gray, "
                              f"gray+pool), got {operators!r}")
        values["operators"] = ",".join(operators)
    # The flags' choices hold for the file's keys too: JobConfig.check does not know them all (a file's prior:
    # imagenet stopped the run with no word of --prior or the file). The recipe has its own message.
    choices = {a.dest: a.choices for a in build_parser()._actions if a.choices and a.dest != "recipe"}
    for key, value in values.items():
        if key in choices and isinstance(value, str) and value not in choices[key]:
            raise ConfigError(f"--config {path}: {key} must be one of {', '.join(choices[key])}, got {value!r}")
    return values


def _config_from_namespace(args: argparse.Namespace) -> JobConfig:
    values: dict[str, Any] = {}
    recipe = args.recipe
    from_file: dict[str, Any] = {}
    if args.config == "":  # `--config "$CFG"` with the variable unset ran with every default: the embedded sample
        raise ConfigError("--config is empty; give the YAML or JSON file of the run's options, or leave it out")
    if args.config:
        loaded = _file_values(args.config)
        # kept for `_overwrite_file`: the file is read once (a `--config <(...)` pipe or a FIFO has nothing to read,
        # or blocks, the second time)
        args.config_overwrite = loaded.get("overwrite") is True
        file_recipe = loaded.pop("recipe", None)
        recipe = recipe or file_recipe  # --recipe on the command line wins over the file's
        file_storage = {k: loaded.pop(k) for k in STORAGE_SHORTHANDS if k in loaded}
        values.update(loaded)
        values["storage_options"] = storage_options(
            values.get("storage_options") or {}, file_storage.get("s3_endpoint"), file_storage.get("anon"),
            file_storage.get("storage_option"), f" in {args.config}")
        from_file = dict(loaded)
        # a file that names both is wrong for every run that uses it, whatever one command's flags say
        if loaded.get("checkpoint") is not None and loaded.get("prior") is not None:
            raise ConfigError(f"--config {args.config} gives both checkpoint ({loaded['checkpoint']!r}) and prior "
                              f"({loaded['prior']!r}): give a checkpoint or a shipped prior, not both")
        if args.checkpoint is not None or args.prior is not None:
            # The model is one setting given two ways: a flag's choice replaces the file's either way (flags win over
            # the file); without this a flag's --checkpoint and a file's prior stopped the run as "not both".
            for key in ("checkpoint", "prior"):
                values.pop(key, None)
                from_file.pop(key, None)
    if args.checkpoint is not None and args.prior is not None:
        raise ConfigError(f"--checkpoint ({args.checkpoint!r}) and --prior ({args.prior!r}) are both given on the "
                          "command line: give a checkpoint or a shipped prior, not both")
    for f in fields(JobConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
            from_file.pop(f.name, None)
    if args.blend_k == "off":  # no blend: the hard switch, whatever a recipe or the file said
        values["blend_k"] = None
    values["storage_options"] = storage_options(values.get("storage_options") or {}, args.s3_endpoint, args.anon,
                                                 args.storage_option, "")
    if isinstance(values.get("operators"), str):
        # one spelling per setting: "gray, pool" and "gray,pool" are the same operators (ZipSettings, which the
        # output's record holds, spells them so too)
        values["operators"] = canonical_operators(values["operators"])
    if recipe is not None:
        try:
            recipe_values(recipe)
        except ValueError as err:  # an unknown recipe in a --config file (the flag's choices are checked by argparse)
            raise ConfigError(f"--config {args.config}: recipe: {err}" if args.config else str(err)) from None
    try:
        config = JobConfig(**values) if recipe is None else JobConfig.from_recipe(recipe, **values)
    except ValueError as err:
        # another value JobConfig could not take in (an --input hdfs://namenode:80a0/ whose port is no number): it was
        # said as the --config file's recipe's, of a file that has none
        raise ConfigError(str(err)) from None
    try:
        config.check()
    except JobError as err:
        # a bad value that came from the file: say which file and key, as the flag alone points at the command line
        # a flag as a whole word: the file's input is not what "--input-moved" is about, nor its checkpoint
        # "--checkpoint-sha256"
        named = sorted(k for k in from_file if re.search(re.escape(f"--{k.replace('_', '-')}") + r"(?![\w-])", str(err)))
        if named:
            hints = typing.get_type_hints(JobConfig)
            hint = next((h for k in named if (h := _text_hint(from_file[k], _expected(hints[k])[0]))), "")
            raise ConfigError(f"{err} (set in --config {args.config}: {', '.join(named)}{hint})") from None
        if from_file:
            _check_file_types(args.config, from_file)
        raise ConfigError(str(err)) from None
    if recipe is not None:
        _note_recipe_overrides(recipe, values, from_file, args.config)
    return config


def _note_recipe_overrides(recipe: str, values: dict[str, Any], from_file: dict[str, Any], path: str | None) -> None:
    """Say on stderr which of a recipe's settings a flag or a --config key replaced: they win over it, and a file's
    steps: 20 beside --recipe low-asr otherwise ran Algorithm 1 at 20 steps with no word of it but the settings."""
    replaced = [f"{key} {_recipe_value_shown(key, values[key])} "
                f"({f'--config {path}' if key in from_file else '--' + key.replace('_', '-')}), "
                f"not the recipe's {value!r}" for key, value in recipe_values(recipe).items()
                if key in values and values[key] != value]
    if replaced:
        print(f"zip-purify: note: recipe {recipe} runs with {'; '.join(replaced)}: a flag or --config key wins over "
              "the recipe", file=sys.stderr)


def _recipe_value_shown(key: str, value: Any) -> str:
    """A setting's value in the recipe note: None is no blend_k (--blend-k off, blend_k: null), and a start (start: null
    in a --config file) left to the prior's range."""
    if value is None:
        return "unset (the prior's range)" if key == "start" else "off"
    return repr(value)


def _count(n: int, thing: str) -> str:
    """'1 tar shard', '2 tar shards', '12,632 images': the dry run's and the run's counts read as sentences."""
    return f"{n:,} {thing}" + ("" if n == 1 else "s")


def _records(n: int | None) -> str:
    """What the dry run says of its TFRecord files' records: how many, or that they are counted only once read."""
    return f" ({_count(n, 'record')})" if n is not None else " (records counted when read)"


def _tar_keys(inp: dict[str, Any]) -> str:
    """What the dry run says of its tar shards: their size, and the images (keys) they hold by their headers, or why
    those are counted only once read."""
    keys = inp.get("tar_keys")
    if not inp["tar_shards"] or keys is None:
        return ""
    if keys["to_read"] is None and keys.get("counted_shards"):  # compressed shards too large to count, the others counted
        counted = keys["counted_shards"]
        done = f", {counted['already_done']:,} already done, skipped" if counted["already_done"] else ""
        held = (f"{_count(counted['to_read'], 'image')} to read in {_count(counted['shards'], 'shard')} counted{done}; "
                if counted["shards"] else "")
        return f" ({_tar_size(inp)}; {held}{terminal_text(keys['unknown_why'])})"
    if keys["to_read"] is None:
        return f" ({_tar_size(inp)}; images counted when read: {terminal_text(keys['unknown_why'])})"
    done = f", {keys['already_done']:,} already done, skipped" if keys["already_done"] else ""
    return f" ({_tar_size(inp)}; {_count(keys['to_read'], 'image')} to read{done})"


def _tar_size(inp: dict[str, Any]) -> str:
    """The tar shards' size as the dry run says it: shards whose storage gives no size (a web server that sends no
    Content-Length) are said of unknown size, not counted as 0 bytes."""
    unsized = inp.get("tar_shards_unsized", 0)
    if unsized and unsized == inp["tar_shards"]:
        return "size unknown"
    known = _human_bytes(inp["tar_bytes"])
    return f"{known}, and {unsized:,} of unknown size" if unsized else known


def _human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; GiB is the largest unit."""
    if n < 1024:
        return f"{n} bytes"
    exponent = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def print_plan(report: dict[str, Any], input_uri: str | None = None, output_uri: str | None = None) -> None:
    """The dry run's report; `input_uri` and `output_uri` (the run's --input and --output) are named at the head of
    their lines, credentials redacted: a dry run of the defaults said neither what it would read nor where it would
    write."""
    model, out, inp = report["model"], report["output"], report["input"]
    print(f"model: {model['note']}\n  checkpoint {model['checkpoint']}\n  sha256 {model['sha256']}\n"
          f"  {model['image_size']} px model, {model['canvas_size']} px canvas")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    state = {"new": "a new output", "overwrite": "an existing output, deleted first (--overwrite)",
             "resume": "resumes an unfinished run", "incremental": "adds new inputs to a finished run"}
    held = f"{out['purified']:,} purified, {out['rejected']:,} rejected"
    # a new output holds nothing: "new output; already holds 0 purified, 0 rejected" said so twice, the second oddly
    holds = "" if out["state"] == "new" and not (out["purified"] or out["rejected"]) else f"; it holds {held}"
    print(f"output: {_named(output_uri)}{state[out['state']]}{holds}")
    if out.get("rejects_to_retry"):
        print(f"  {_retry_line(out)}")
    if report.get("stale_lease"):
        # also a lease whose heartbeat is ahead of our clock: planning cannot tell it stale or live, the run's watch can
        print(f"  its lease is stale ({report['stale_lease']}): that run stopped without releasing it; the run "
              f"takes the lease over (another machine's once it has seen no heartbeat for {LEASE_WATCH_S:.0f} s; one "
              "still refreshed stops the run)")
    print(f"input: {_named(input_uri)}{_count(inp['image_files_to_read'], 'image file')} to read "
          f"({inp['image_files_already_done']:,} already done, skipped), {_count(inp['tar_shards'], 'tar shard')}"
          f"{_tar_keys(inp)}, "
          f"{_count(inp['parquet_files'], 'Parquet file')}, "
          + (f"{_count(inp['arrow_files'], 'Arrow IPC file')}, " if inp.get("arrow_files") else "")
          + (f"{_count(inp['tfrecord_files'], 'TFRecord file')}{_records(inp.get('tfrecord_records'))}, "
             if inp.get("tfrecord_files") else "") +
          f"{_count(inp.get('zip_files', 0), 'zip file')} (their members are checked against the output when read), "
          f"{_count(inp['read_tasks'], 'read task')}")
    files, members = inp.get("sidecar_files", 0), inp.get("zip_sidecar_members", 0)
    if files or members:
        found = [f"{_count(files, 'sidecar file')} beside image files"] * bool(files) + [
            f"{_count(members, 'sidecar member')} beside image members of zip archives"] * bool(members)
        print(f"  {' and '.join(found)}, named as theirs (x.txt, x.json, x.cls beside x.jpg): read with them as their "
              "columns, not as images")
    if inp.get("sidecar_rejects_removed"):
        print(f"  {_count(inp['sidecar_rejects_removed'], 'earlier reject')} of files paired as sidecars now (an older "
              "version read them as images) would go from rejects/")
    rejected = inp.get("containers_already_rejected", 0)  # no images: only their own reject (a table without one)
    if inp.get("containers_already_done", 0) - rejected:
        done = inp["containers_already_done"] - rejected
        one = done == 1
        what = "tar shard / Parquet / zip file was" if one else "tar shards / Parquet / zip files were"
        print(f"  {done:,} {what} read whole by an earlier run and {'is' if one else 'are'} "
              f"unchanged, with all {'its' if one else 'their'} images done (purified or rejected): not read")
    if rejected:
        one = rejected == 1
        print(f"  {rejected:,} file{'' if one else 's'} read by an earlier run {'is' if one else 'are'} unchanged and "
              f"{'holds' if one else 'hold'} no images, only {'its' if one else 'each its'} one reject, in rejects/ (a "
              "table without an image column, or not a file of its kind): not read again (--retry-rejects reads "
              f"{'it' if one else 'them'})")
    if inp.get("hidden_files_skipped"):
        print(f"  {hidden_note(inp['hidden_files_skipped'], inp.get('hidden_files_examples', []))} (zip members "
              "are counted when read)")
    if "partitions" in inp:
        print(f"  {_partitions_line(inp['partitions'])}")
    if "folder_metadata" in inp:
        for line in _folder_metadata_lines(inp["folder_metadata"]):
            print(f"  {line}")
    if inp.get("excluded_output_files"):
        one = inp["excluded_output_files"] == 1
        print(f"  {_count(inp['excluded_output_files'], 'file')} of the output itself {'lies' if one else 'lie'} inside "
              f"the input and {'is' if one else 'are'} not read")
    unsized = f" ({_count(inp['unsized'], 'file')} of unknown size not counted)" if inp["unsized"] else ""
    print(f"  {_human_bytes(inp['bytes'])} to read{unsized}; {_count(inp['streamed'], 'tar/Parquet file')} over "
          f"--in-memory-mb {inp['in_memory_mb']} will be streamed from storage, the rest fetched whole")
    if inp.get("image_files_over_max_image_mb"):
        one = inp["image_files_over_max_image_mb"] == 1
        print(f"  {_count(inp['image_files_over_max_image_mb'], 'image file')} {'is' if one else 'are'} over "
              f"--max-image-mb {inp['max_image_mb']} and will be rejected without being read (tar members and Parquet "
              "cells are checked when read)")
    tables = inp.get("tables_without_images") or {}
    if tables.get("files"):
        shown = ", ".join(terminal_text(name) for name in tables["examples"])
        more = f" and {tables['files'] - len(tables['examples']):,} more" if tables["files"] > len(tables["examples"]) else ""
        print(f"  warning: {_count(tables['files'], 'Parquet / Arrow IPC file')} without an image column ({shown}{more}): "
              "tables, not images (a sample index, labels?), each one reject of the run; its reason says how to add "
              "such a table's columns to the images' rows")
    no_image = inp.get("parquet_rows_without_image") or {}
    if no_image.get("rows"):
        shown = ", ".join(f"{terminal_text(name)} ({n:,})" for name, n in no_image["examples"])
        left = no_image["files"] - len(no_image["examples"])
        more = f" and {left:,} more" if left else ""
        arrow = no_image.get("arrow_files", 0)  # by their record batch headers, the Parquet files' by their footers
        kind, source = (("Arrow IPC file", "record batch headers") if arrow == no_image["files"] else
                        ("Parquet file", "footer statistics") if not arrow else
                        ("Parquet and Arrow IPC file", "footer statistics and record batch headers"))
        print(f"  warning: {_count(no_image['rows'], 'row')} of {_count(no_image['files'], kind)} "
              f"{'has' if no_image['rows'] == 1 else 'have'} no image (a null image column, by the files' {source}) "
              f"and will be rejected, one reject each: {shown}{more}")
    for twins in inp.get("columns_differing_in_case") or []:
        named = " and ".join(f"{terminal_text(c)} ({terminal_text(f)})" for c, f in zip(twins["columns"], twins["files"],
                                                                                       strict=True))
        print(f"  warning: columns {named} differ only in case: the output keeps both, and DuckDB, Spark, Hive, Athena "
              "and BigQuery take column names without case (they fail on such files or read one for the other): "
              "rename one in the input, or read the output with case-sensitive names")
    if no_image.get("headers_over_budget"):  # counting them all would stall the planning on an object store
        print("  the rows without an image of some Arrow IPC files are unknown: their record batch headers would take "
              f"more than the {read_budget.MAX_READS:,} ranged requests allowed before a run (each such row is rejected "
              "when read)")
    for note in inp.get("storage_notes", []):
        print(f"  warning: {terminal_text(note)}")
    changed = report.get("changed_inputs") or {}
    if changed.get("image_files_compared") or changed.get("containers_compared"):
        # the planning reads inputs whose listing changed, to tell whether their rows are still theirs (the note says)
        print("dry run: nothing was purified or written, and nothing read but the inputs whose listing changed, "
              "compared with their rows")
    else:
        print("dry run: nothing was read, purified or written")


def _retry_line(out: dict[str, Any]) -> str:
    """What a --retry-rejects run would read again: of the output's rejects (all of which its `_retried_line` counts),
    those the input's listing gives (loose image files, ids of tar/Parquet/zip files to read), and how many it does
    not, whose reject rows stay (that line's 'not found in the input')."""
    total = out["rejects_to_retry"]
    files, held = out.get("rejects_to_retry_image_files", 0), out.get("rejects_to_retry_in_containers", 0)
    again, missing = files + held, total - files - held
    where = [_count(files, "image file")] * bool(files) + [
        f"{held:,} in tar/Parquet/zip files, each found or not as its file is read"] * bool(held)
    if again == total:
        said = f"the output's {_count(total, 'reject')} would {'' if total == 1 else 'all '}be read again"
    else:
        said = f"{again:,} of the output's {_count(total, 'reject')} would be read again"
    return (f"--retry-rejects: {said} from the input" + (f" ({', '.join(where)}; counted below as inputs to read)"
                                                          if again else "")
            + (f"; {missing:,} {'is' if missing == 1 else 'are'} not in the input and "
               f"{'keeps its reject row' if missing == 1 else 'keep their reject rows'}" if missing else ""))


def _named(uri: str | None) -> str:
    """'URI: ' at the head of a dry run's line (credentials redacted, one line), or nothing."""
    return "" if uri is None else f"{_uri_shown(uri)}: "


def _uri_shown(uri: str) -> str:
    """--input or --output as the tool's own lines name them: credentials redacted (`redact_uri`: an FTP output's
    password, a presigned URL's signature; stdout and stderr end up in CI logs), on one line."""
    return terminal_text(redact_uri(uri))


def _folder_metadata_lines(found: dict[str, Any]) -> list[str]:
    """What the listing's image-folder metadata files give (--join-metadata): joined, not joined, rows naming nothing;
    and those inside zip archives (tar shards' are found only when read: the dry run reads a shard's headers alone)."""
    lines = [f"image-folder metadata (--join-metadata): {_count(found['files_joined'], 'metadata file')} joined to "
             f"{_count(found['image_files_joined'], 'image file')}, their rows' columns added to those images' rows"
             + (f"; {_count(found['earlier_rejects_removed'], 'earlier reject')} of such a file (fixed since) would go "
                "from rejects/" if found.get("earlier_rejects_removed") else "")
             + (f"; {found['archive_files_joined']:,} inside zip archives, joined to their members as they are read"
                if found.get("archive_files_joined") else "")]
    if found["files_rejected"]:
        lines.append(f"warning: {_count(found['files_rejected'], 'metadata file')} cannot be joined: each is a reject "
                     "saying why, its images purified without its columns")
    if found["rows_without_image_file"]:
        note = unmatched_note(found["rows_without_image_file"], found["rows_without_image_file_examples"])
        lines.append(f"warning: {terminal_text(note)}")
    return lines


def _partitions_line(partitions: dict[str, Any]) -> str:
    """The dry run's line on the partition keys --partitioning hive found in the input's listing."""
    keys, files, outside = partitions["keys"], partitions["files"], partitions["files_outside"]
    if not keys:
        where = "the one input file lies in no" if files == 1 else f"none of the {files:,} input files lies in a"
        return f"partitions (--partitioning hive): {where} key=value folder"
    found = ", ".join(f"{terminal_text(key)} ({_count(n, 'value')})" for key, n in keys.items())
    return (f"partitions (--partitioning hive): {found}, each a string column of its files' rows"
            + (f"; {outside:,} of the {files:,} input files {'lies' if outside == 1 else 'lie'} in no key=value folder"
               if outside else ""))


def unpurified_warning(columns: dict[str, int]) -> str:
    """The warning for images copied unpurified: the purified data set still holds them, triggers and all."""
    listed = ", ".join(f"{terminal_text(name)} ({rows:,} row{'' if rows == 1 else 's'})" for name, rows in columns.items())
    return (f"warning: column(s) {listed} hold images that were copied as they came, NOT purified: only the image "
            "column is purified, so a trigger in these reaches the output too. Drop them before use, or purify them "
            "in a run of their own (a Parquet column: --image-column NAME). Per run: this_run.unpurified_image_columns")


def case_twins_warning(twins: list[list[str]]) -> str:
    """The warning for data/ columns whose names differ only in case (`output.columns_differing_in_case`)."""
    listed = "; ".join(" and ".join(terminal_text(name) for name in names) for names in twins)
    return (f"warning: data/ holds columns whose names differ only in case: {listed}. DuckDB, Spark, Hive, Athena and "
            "BigQuery take column names without case, and fail on such files or read one column for the other: rename "
            "one in the input and make the output again with --overwrite, or read it with case-sensitive names "
            "(Spark: spark.sql.caseSensitive=true). Per run: this_run.columns_differing_in_case")


def _overwrite_file(args: argparse.Namespace, config: JobConfig | None) -> str | None:
    """The --config file that gives an --overwrite run its overwrite: true, else None: with the --overwrite flag given
    too, the command without the flag still overwrites, as the file says so (the stopped run's advice named the flag
    alone then)."""
    if config is None or config.overwrite is not True or not args.config:
        return None
    if args.overwrite is None or getattr(args, "config_overwrite", False):
        return args.config
    return None


def _shown(err: BaseException, config: JobConfig | None) -> str:
    """An error as it is printed: without the credentials of a URI the run was given (a presigned checkpoint URL's
    signature), since stderr ends up in CI logs and schedulers' job histories."""
    # one line, whatever names of the input's files the error holds
    return terminal_text(uri_secrets_redacted(str(err), config))


def ignore_stop_signals() -> None:
    """Ignore Ctrl-C and SIGTERM from now until the process exits: the run's outcome is recorded, and what is left is to
    print it and for Ray to shut its local workers down (atexit, a few seconds). A second Ctrl-C there printed a
    traceback, replaced exit status 130 with 1 and now and then crashed the process (exit -11)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def ray_stopped_before_the_last_lines() -> None:
    """Stop the Ray this process started (or leave the cluster it joined) before the run's last lines are printed.
    Ray prints what its raylet reports (an actor's process that died, a task it retries) when it hears it, from a
    thread of its own, and the repeats it held back at its shutdown: with that shutdown left to the process's exit,
    those lines came after the job's own last line (`error: the run failed: ...`), which a reader or a script takes
    for the run's outcome. The exit would stop Ray anyway; this only does it first."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - the run's outcome is recorded; Ray's own trouble stopping must not replace it
        pass


def main(argv: list[str] | None = None, prog: str = "zip-purify") -> int:
    """The command line; returns the exit status (see EXAMPLES: 0 done, 1 failed, 2 could not start, 130 interrupted).
    `prog`: how the user ran it (`build_parser`)."""
    args = build_parser(prog).parse_args(argv)
    if argv is None:  # the process's own command line: its stdout is the job's lines alone
        ray_lines_to_stderr()
    config: JobConfig | None = None
    try:
        config = _config_from_namespace(args)
        if args.dry_run:
            plan = plan_job(config, dry_run=True)
            with reader_may_go_away():
                _print_plan_of(config, plan)
            return 0
        try:
            summary = run_job(config, overwrite_file=_overwrite_file(args, config))
        finally:
            if argv is None:  # the process's own command line (zip-purify, jobs/purify.py): it exits once main returns
                ignore_stop_signals()
                ray_stopped_before_the_last_lines()
    except JobInterrupted as err:
        print(f"interrupted: {_shown(err, config)}", file=sys.stderr)
        return 128 + err.signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    except JobFailed as err:
        print(f"error: {_shown(err, config)}", file=sys.stderr)
        return 1
    except (JobError, OSError, ValueError) as err:  # OSError: storage that refuses access, not found, ...
        print(f"error: {_shown(err, config)}{credentials_advice(err)}", file=sys.stderr)
        return 2
    except StoppedWhileLoading as err:  # checking the checkpoint and inputs, starting Ray: the output may not exist
        print("interrupted: the run stopped while loading (checking its model and inputs, starting Ray), before it "
              "wrote anything to the output; run the same command again to start it", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt as err:  # before the pipeline (the lease taken, the output's records), or a second Ctrl-C
        # an --overwrite run stopped here purified nothing, but may have deleted the output's earlier files already:
        # nothing to resume (the same command, with --overwrite, deletes what is written)
        print("interrupted: the dry run stopped; nothing was written" if args.dry_run else
              "interrupted: the run stopped before it purified anything, and --overwrite may have deleted the "
              "output's earlier files (those left are whole); run the same command again to start over"
              if config is not None and config.overwrite is True else
              "interrupted: every file in the output is whole; run the same command again to resume", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)  # SIGTERM before the pipeline started is raised as one too (143)
    with reader_may_go_away():
        _print_run_summary(config, summary)
    return 0


def _print_plan_of(config: JobConfig, plan: JobPlan) -> None:
    """The plan printed, nothing read or written (--dry-run); a warning when it finds no input."""
    report = plan.describe()
    print_plan(report, config.input, config.output)
    _print_changed_inputs(report.get("changed_inputs") or {}, dry_run=True)
    if not plan.units and not plan.skipped_files and not plan.skipped_containers:
        print(f"warning: found no inputs under {_uri_shown(config.input)} (hidden files, .x and _x, are skipped)",
              file=sys.stderr)


def _print_run_summary(config: JobConfig, summary: dict[str, Any]) -> None:
    """What the run did (its warnings on stderr), then what the output holds in all."""
    run = summary["this_run"]
    if run["read"] == 0 and run["skipped_already_done"] == 0:
        print(f"warning: found no inputs under {_uri_shown(config.input)} (hidden files, .x and _x, are skipped)",
              file=sys.stderr)
    # with nothing read, no rate: what there was to do instead (a run left nothing to read starts no Ray: ray.note).
    # The rate is the whole run's, planning and Ray's start included: the progress's last line, over the pipeline
    # alone, says a higher one ("images: 256 in 129 s, 1.98 img/s" beside "in 138.96 s (1.842 images/s)")
    rate = (f"({run['images_per_s']} images/s over the whole run)" if run["read"] else
            "(nothing to purify: no Ray was started)" if summary.get("ray", {}).get("note") else
            "(nothing to purify: the files read held nothing new)")
    print(f"read {run['read']:,}, purified {run['purified']:,}, rejected {run['rejected']:,}, "
          f"skipped (already done) {run['skipped_already_done']:,} in {run['wall_s']} s {rate}; "
          f"model: {summary['model']['note']}")
    if run.get("hidden_skipped"):
        print(hidden_note(run["hidden_skipped"], run.get("hidden_skipped_examples", [])))
    joined = run.get("folder_metadata") or {}
    if joined.get("rows_without_image_file"):
        note = unmatched_note(joined["rows_without_image_file"], joined["rows_without_image_file_examples"])
        print(f"warning: {terminal_text(note)}", file=sys.stderr)
    for note in run.get("storage_notes", []):
        print(f"warning: {terminal_text(note)}", file=sys.stderr)
    change = run["psnr_vs_input_db"]
    if change["mean"] is not None:
        print(f"change: purified against input, PSNR mean {change['mean']} dB, lowest {change['min']} dB "
              "(per image: column psnr_vs_input_db)")
    shrunk = run["downscaled"]
    if shrunk["images"]:
        print(_downscaled_warning(shrunk, summary["model"]["canvas_size"]), file=sys.stderr)
    if run.get("unpurified_image_columns"):
        print(unpurified_warning(run["unpurified_image_columns"]), file=sys.stderr)
    if run.get("columns_differing_in_case"):
        print(case_twins_warning(run["columns_differing_in_case"]), file=sys.stderr)
    retried = run.get("rejects_retried") or {}
    if retried.get("earlier_rejects"):
        print(_retried_line(retried))
    if run.get("stale_rejects_removed"):  # else an output's rejects fell (8 to 2, say) with no word of why
        print(f"removed {_count(run['stale_rejects_removed'], 'earlier reject')} that this run's reading made untrue "
              "(sidecar or metadata files read with their images now, containers read to their end: _summary.json "
              "this_run.stale_rejects_removed)")
    refreshed = run.get("refreshed") or {}
    if refreshed.get("inputs"):
        kept = refreshed.get("rows_kept", 0)
        print(f"refreshed {refreshed['inputs']:,} input(s) changed in place (--refresh-changed): "
              f"{refreshed.get('rows_replaced', 0):,} old row(s) replaced by new ones"
              + (f", {kept:,} kept (their tar/Parquet/zip file, read again, gave no new row of them)" if kept else ""))
    _print_changed_inputs(summary.get("changed_inputs") or {})
    totals = summary["output_totals"]
    # after a resume or an --incremental run, this run's counts are not the data set's: say what the output holds
    # and where the rows are: the images are Parquet rows, and a reject's reason is only in rejects/
    where = ", ".join((["the purified images in data/"] if totals["purified"] else [])
                      + (["each reject with its reason in rejects/"] if totals["rejected"] else []))
    print(f"output: {_uri_shown(config.output)} holds {totals['purified']:,} purified and {totals['rejected']:,} rejected "
          f"in all (status {summary['status']}; summary in _summary.json" + (f"; {where}" if where else "") + ")")


def _print_changed_inputs(changed: dict[str, Any], dry_run: bool = False) -> None:
    """The warning on inputs changed since their rows were written, the note on those gone and, in a dry run, the one
    on those --refresh-changed would purify again (a run says what it did: `_print_run_summary`), on stderr."""
    notes = (refreshed_note(changed), compared_note(changed)) if dry_run else ()
    for line in (changed_warning(changed, dry_run), gone_note(changed), *notes):
        if line is not None:
            print(terminal_text(line), file=sys.stderr)


def _downscaled_warning(shrunk: dict[str, Any], canvas: int) -> str:
    return (f"warning: {shrunk['images']:,} image(s) were larger than the model's {canvas} px canvas and were shrunk to "
            f"fit it (up to {shrunk['max_factor']}x) before purification: they come back at their own size but with "
            f"only the canvas's detail (per image: column downscale_factor). Purify them with a prior made for their "
            "size (--checkpoint) to keep their detail.")


def _retried_line(retried: dict[str, Any]) -> str:
    """What became of the earlier rejects a --retry-rejects run read again; those it did not find are what is left."""
    whole = retried.get("containers_now_read_whole", 0)
    renamed = retried.get("lookalikes_renamed", 0)
    joined = retried.get("metadata_joined", 0)
    gone = (retried["earlier_rejects"] - retried["purified_now"] - retried["rejected_again"] - whole
            - retried.get("superseded", 0) - renamed - joined)
    return (f"retried {_count(retried['earlier_rejects'], 'earlier reject')}: {retried['purified_now']:,} purified now, "
            f"{retried['rejected_again']:,} rejected again"
            + (" (rejects/ has today's reason)" if retried["rejected_again"] else "")
            + (f", {_count(whole, 'tar/Parquet/zip file')} read to {'its' if whole == 1 else 'their'} end now"
               if whole else "")
            + (f", {retried['superseded']:,} an older version's rejects of a tar shard's keys, now read otherwise "
               "(numbered names keyed apart, macOS metadata skipped)" if retried.get("superseded") else "")
            + (f", {_count(renamed, 'tar look-alike reject')} gone (their members no longer share an id)"
               if renamed else "")
            + (f", {_count(joined, 'image-folder metadata file')} in a zip archive joined now" if joined else "")
            + (f", {gone:,} not found in the input (their reject rows are kept)" if gone else ""))


if __name__ == "__main__":  # python -m pipeline.cli: where the zip-purify script is not on PATH (a cluster's image)
    sys.exit(main(prog="python -m pipeline.cli"))
