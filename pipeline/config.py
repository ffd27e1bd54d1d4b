"""A job's configuration: `JobConfig`, every option of a run with its default, checked before any work."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from pipeline.decode import DecodePolicy
from pipeline.errors import JobError
from pipeline.placement import placement_problem
from pipeline.presets import ASSETS, shipped_prior_path
from pipeline.redaction import redact, redact_uri, storage_value_shown
from pipeline.settings import PRECISIONS, ZipSettings, device_problem, is_whole_number, recipe_values
from pipeline.sources import IN_MEMORY_BYTES, MAX_IMAGE_BYTES, PARTITIONINGS
from pipeline.storage import (
    is_url_chain,
    options_for,
    scheme_case_problem,
    store_entry_problems,
    with_url_options,
    with_web_store_scoped,
)

DEFAULT_INPUT = str(ASSETS / "sample")


DEFAULT_PRIOR_NAME = "cifar10"


DEFAULT_PRIOR = shipped_prior_path(DEFAULT_PRIOR_NAME)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class JobConfig:
    """Everything a run depends on. Field docs are the CLI's --help texts."""

    input: str = DEFAULT_INPUT
    output: str = "./purified"
    checkpoint: str | None = None
    prior: str | None = None
    preset: str | None = None
    flags: dict[str, Any] | None = None
    checkpoint_sha256: str | None = None
    steps: int = 20
    pool: int = 4
    lam: float = 0.0
    eta: float = 1.0
    sampler: str = "ddim"
    operators: str = "pool"
    blend_k: float | None = None
    clip_denoised: bool = True
    resample: int = 1
    # None: 1 (from pure noise), or for a prior trained only up to some timestep (train_prior.py --max-timestep) the
    # largest start in its range (`settings`)
    start: float | None = None
    # None: the noise schedule the checkpoint records (train_prior.py --schedule), else linear (`settings`)
    schedule: str | None = None
    large_images: str = "fit"
    seed: int = 0
    canvas_size: int | None = None
    batch_size: int | None = None
    tile_batch: int = 256
    write_batch: int = 512
    files_per_unit: int = 256
    in_memory_mb: int = IN_MEMORY_BYTES // 2**20
    actors: int = 0
    gpus_per_actor: float | None = None
    # None: DEFAULT_CPUS_PER_ACTOR, or what a local Ray started in this process has left beside one of the pipeline's
    # tasks where it has fewer CPUs than both (`pipeline.placement.fitted_actor_cpus`); a number is the user's, kept
    cpus_per_actor: float | None = None
    cpus_per_task: float = 0.25
    torch_threads: int | None = None
    device: str | None = None
    precision: str = "fp32"
    labels_from_folders: bool = False
    # an image folder's metadata.csv / metadata.jsonl joined to its images' rows (sources.folder_metadata)
    join_metadata: bool = True
    image_column: str | None = None
    partitioning: str = "none"
    max_pixels: int = 64_000_000
    max_image_mb: int = MAX_IMAGE_BYTES // 2**20
    alpha: str = "white"
    exif_transpose: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)
    incremental: bool = False
    retry_rejects: bool = False
    refresh_changed: bool = False
    input_moved: bool = False
    overwrite: bool = False
    ray_address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # The input's and output's own connection details (hdfs://namenode:8020/...) join the storage options, which
        # travel to every file system the run makes; URIs naming two servers are one of check()'s problems. No other
        # attribute is kept: JobConfig(**config.__dict__) must make the same config.
        for f in fields(self):
            # numpy's scalars (a grid of settings, a value read from an array) are numbers to a user, as ZipSettings
            # takes them: JobConfig(tile_batch=np.int64(64)) was refused as "must be a whole number ..., got
            # np.int64(64)", and one that passed would have made the summary unwritable as JSON
            value = getattr(self, f.name)
            if isinstance(value, np.integer | np.floating | np.bool_):
                setattr(self, f.name, value.item())
        for name in ("input", "output", "checkpoint"):  # a pathlib.Path is a path: kept as the text the CLI gives
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.storage_options is None:  # no options, as export_images and Purifier.from_checkpoint take it
            self.storage_options = {}
        if isinstance(self.storage_options, dict):
            self.storage_options = with_url_options(self._uris(), self.storage_options)[0]
            # a web folder read into s3:// (or another remote store): the options given are that store's
            self.storage_options = with_web_store_scoped(list(self._uris().values()), self.storage_options)

    def _uris(self) -> dict[str, str]:
        return {f"--{name}": getattr(self, name) for name in ("input", "output")
                if isinstance(getattr(self, name), str) and getattr(self, name)}

    def checkpoint_storage_options(self, uri: str | None = None) -> dict[str, Any]:
        """The storage options to read the checkpoint (`uri`, else --checkpoint) with: the run's, unless they are for
        the data's store and the checkpoint is on another (a presigned https:// URL beside s3:// data)."""
        uri = self.checkpoint if uri is None else uri
        if not isinstance(uri, str) or not isinstance(self.storage_options, dict):
            return self.storage_options
        return options_for(uri, list(self._uris().values()), self.storage_options)

    @classmethod
    def from_recipe(cls, name: str, **fields: Any) -> JobConfig:
        """A config with a named sampler recipe (`pipeline.settings.RECIPES`); `fields` win over the recipe's values."""
        return cls(**{**recipe_values(name), **fields})

    def check(self) -> None:
        """Refuse option values a run cannot use, naming the option: a bad value must stop the run (and the dry
        run) before any work, not drop images or crash an actor later. The sampler's own options are checked by
        ZipSettings, the decoding ones by DecodePolicy."""
        problems = [*self._count_problems(), *self._switch_problems(), *self._location_problems(),
                    *self._model_problems(), *self._device_problems()]
        for make in (self.settings, self.decode_policy):
            try:
                make()
            except (TypeError, ValueError) as err:
                problems.append(_with_flag(str(err)))
        if problems:
            raise JobError("; ".join(problems))

    def _count_problems(self) -> list[str]:
        """Sizes, counts and resources: whole numbers and fractions in their ranges."""
        problems = []
        for name in ("tile_batch", "write_batch", "files_per_unit", "max_image_mb"):
            if not (is_whole_number(getattr(self, name)) and getattr(self, name) >= 1):
                problems.append(f"{_flag(name)} must be a whole number of at least 1, got {getattr(self, name)!r}")
        for name in ("batch_size", "canvas_size", "torch_threads"):
            v = getattr(self, name)
            if v is not None and not (is_whole_number(v) and v >= 1):
                problems.append(f"{_flag(name)} must be a whole number of at least 1, got {v!r}")
        for name in ("in_memory_mb", "actors"):
            if not (is_whole_number(getattr(self, name)) and getattr(self, name) >= 0):
                problems.append(f"{_flag(name)} must be a whole number of 0 or more, got {getattr(self, name)!r}")
        for name in ("cpus_per_actor", "cpus_per_task"):
            if name == "cpus_per_actor" and self.cpus_per_actor is None:  # the default, sized where the run starts Ray
                continue
            if not (_is_number(getattr(self, name)) and getattr(self, name) > 0):
                problems.append(f"{_flag(name)} must be a number above 0, got {getattr(self, name)!r}")
            elif getattr(self, name) < 1e-4:
                # Ray refuses it only as the pipeline's tasks and actors start: the run had taken the output then
                problems.append(f"{_flag(name)} must be 0.0001 or more (Ray's smallest fraction of a CPU), got "
                                f"{getattr(self, name)!r}")
        if self.gpus_per_actor is not None and not (_is_number(self.gpus_per_actor) and self.gpus_per_actor >= 0):
            problems.append(f"--gpus-per-actor must be a number of 0 or more, got {self.gpus_per_actor!r}")
        elif self.gpus_per_actor is not None and self.gpus_per_actor > 1:
            # The purifier runs on one device: an actor's second GPU would be held and never used.
            problems.append(f"--gpus-per-actor must be at most 1 (each actor runs its model on one GPU), got "
                            f"{self.gpus_per_actor!r}; use --actors for more GPUs")
        elif self.gpus_per_actor is not None and 0 < self.gpus_per_actor < 1e-4:
            problems.append(f"--gpus-per-actor must be 0 or at least 0.0001 (Ray's smallest fraction), got "
                            f"{self.gpus_per_actor!r}")
        return problems

    def _switch_problems(self) -> list[str]:
        """The true/false options, the pairs of them that contradict each other, and --partitioning's choice.
        --clip-denoised is ZipSettings' (checked there, named by `_with_flag`): checked here too, one bad value was
        said twice."""
        problems = [f"{_flag(name)} must be true or false, got {getattr(self, name)!r}"
                    for name in ("labels_from_folders", "join_metadata", "incremental", "retry_rejects", "refresh_changed",
                                 "input_moved", "overwrite", "progress", "exif_transpose")
                    if not isinstance(getattr(self, name), bool)]
        if self.partitioning not in PARTITIONINGS:
            problems.append(f"--partitioning must be one of {', '.join(PARTITIONINGS)}, got {self.partitioning!r}")
        if self.incremental is True and self.overwrite is True:
            # one adds to a finished output, the other deletes it first: which one was meant is the user's to say
            problems.append("--incremental and --overwrite contradict each other: --incremental adds new inputs to a "
                            "finished output, --overwrite deletes it first; give one")
        if self.retry_rejects is True and self.overwrite is True:
            problems.append("--retry-rejects and --overwrite contradict each other: --retry-rejects reads an output's "
                            "rejects again, --overwrite deletes them first; give one")
        if self.refresh_changed is True and self.overwrite is True:
            problems.append("--refresh-changed and --overwrite contradict each other: --refresh-changed purifies again "
                            "only the inputs changed in place since their rows were written, --overwrite deletes the "
                            "output and purifies every input; give one")
        if self.refresh_changed is True and self.input_moved is True:
            problems.append("--refresh-changed cannot be given with --input-moved: --input-moved starts the output's "
                            "record of its inputs' stamps again, so no change can be told; run with --input-moved "
                            "first, then --refresh-changed finds the inputs changed after that run")
        return problems

    def _location_problems(self) -> list[str]:
        """The input, the output and the storage options that reach them."""
        problems = []
        for name in ("input", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.append(f"{_flag(name)} must be a path or URI, got {getattr(self, name)!r}")
            elif is_url_chain(getattr(self, name)):
                # the URI without its password: the CLI prints a refused config as it is
                problems.append(f"{_flag(name)} must be the storage's own URI (s3://..., a path), got the fsspec URL "
                                f"chain {redact_uri(getattr(self, name))!r}; storage settings go in --storage-option")
            elif name == "output" and self.output.lower().startswith(("http://", "https://")):
                # fsspec's HTTP file system reads only: without this, the run stopped on a missing "bucket"
                problems.append(f"--output must be storage the job can write (a path, s3://, ...), got the web address "
                                f"{redact_uri(self.output)!r}: HTTP(S) is read-only here")
            elif (wrong_case := scheme_case_problem(getattr(self, name))) is not None:
                problems.append(f"{_flag(name)}: {wrong_case}")
        if not isinstance(self.storage_options, dict):
            problems.append(f"storage_options must be a mapping of fsspec options, got "
                            f"{storage_value_shown(self.storage_options)}")
        else:
            problems.extend(store_entry_problems(self.storage_options))
        problems.extend(with_url_options(self._uris(), {})[1])  # from the URIs alone: the options now hold one of them
        return problems

    def _model_problems(self) -> list[str]:
        """What names the model: text options, a sha256, flags."""
        problems = [f"{_flag(name)} must be text, got {getattr(self, name)!r}"
                    for name in ("checkpoint", "prior", "preset", "image_column", "ray_address")
                    if getattr(self, name) is not None and not isinstance(getattr(self, name), str)]
        # An empty one (`--checkpoint "$CKPT"` with the variable unset) was taken as not given: the run went on with
        # the shipped cifar10 prior, or with the image column it found itself, without a word; an empty --ray-address
        # went to RAY_ADDRESS's cluster, or a local Ray. (RAY_ADDRESS="" in the environment is Ray's own: Ray, and so
        # the job, take it as unset.)
        problems += [f"{_flag(name)} is empty; {what}, or leave it out ({default})"
                     for name, what, default in (("checkpoint", "give a path or URI", "the shipped prior"),
                                                 ("prior", "name a shipped prior", DEFAULT_PRIOR_NAME),
                                                 ("image_column", "name the column", "the column is found"),
                                                 ("ray_address", "give the cluster's host:port or ray:// address",
                                                  "RAY_ADDRESS, else a local Ray"))
                     if getattr(self, name) == ""]
        if self.checkpoint_sha256 is not None and not (
                isinstance(self.checkpoint_sha256, str) and len(self.checkpoint_sha256) == 64
                and all(c in "0123456789abcdefABCDEF" for c in self.checkpoint_sha256)):
            problems.append(f"--checkpoint-sha256 must be 64 hexadecimal digits, got {self.checkpoint_sha256!r}")
        if self.flags is not None and not isinstance(self.flags, dict):
            problems.append(f"--flags must be a JSON object of create_model flags, got {self.flags!r}")
        return problems

    def _device_problems(self) -> list[str]:
        """The precision, and whether the device and the actors' GPUs can run it."""
        problems = []
        # a str first: a list or dict (unhashable) raised TypeError from `in`, not the JobError plan_job promises
        known = isinstance(self.precision, str) and self.precision in PRECISIONS
        if not known:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        reduced = known and self.precision != "fp32"
        if self.device is not None:
            # not checked against this machine's GPUs: the purifier actors run on the cluster's
            problem = device_problem(self.device, on_this_machine=False)
            if problem:
                problems.append(problem)
            elif self.device == "cpu" and reduced:
                problems.append(f"--precision {self.precision} needs a CUDA device; use fp32 with --device cpu")
            elif self.gpus_per_actor is None or (_is_number(self.gpus_per_actor) and 0 <= self.gpus_per_actor <= 1):
                problem = placement_problem(self.device, self.gpus_per_actor)
                if problem:
                    problems.append(problem)
        elif self.gpus_per_actor == 0 and reduced:
            # --gpus-per-actor 0 puts the actors on CPUs, whatever the cluster holds: known now, so the dry run says so
            problems.append(f"--precision {self.precision} needs CUDA, but --gpus-per-actor 0 runs the actors on the "
                            "CPU; use --precision fp32, or give the actors a GPU")
        return problems

    def decode_policy(self) -> DecodePolicy:
        return DecodePolicy(max_pixels=self.max_pixels, alpha=self.alpha, exif_transpose=self.exif_transpose)

    def settings(self, checkpoint_meta: dict[str, Any] | None = None) -> ZipSettings:
        """The sampler's settings for the prior whose meta is `checkpoint_meta` (`ZipSettings.for_prior`): the noise
        schedule is the one given, else the one the prior records, else linear, and the start the one given, else the
        largest the prior's trained timesteps allow (1 for a prior trained on all), so a prior of train_prior.py
        --schedule cosine --max-timestep 299 samples as it was trained without a flag (the job passes the meta; a
        schedule or start given against it is refused by the plan)."""
        return ZipSettings(steps=self.steps, pool=self.pool, lam=self.lam, eta=self.eta, sampler=self.sampler,
                           operators=self.operators, blend_k=self.blend_k, clip_denoised=self.clip_denoised,
                           resample=self.resample, start=self.start, schedule=self.schedule,
                           large_images=self.large_images, seed=self.seed).for_prior(checkpoint_meta)

    def public(self) -> dict[str, Any]:
        """The configuration with storage secrets, and credentials in its URIs (a presigned checkpoint URL's
        signature), redacted (for logs and the summary)."""
        d = asdict(self)
        d["storage_options"] = redact(self.storage_options)
        for name in ("input", "output", "checkpoint"):
            d[name] = redact_uri(d[name])
        return d


# How ZipSettings' and DecodePolicy's messages (Python names, for the API) begin, and the job's flag for each.
_MESSAGE_FLAGS = {
    "steps ": "--steps", "seed ": "--seed", "clip_denoised ": "--clip-denoised", "unknown noise schedule": "--schedule",
    "large_images ": "--large-images", "blend_k ": "--blend-k", "eta ": "--eta", "lam ": "--lam",
    "resample ": "--resample", "start ": "--start", "unknown sampler": "--sampler", "pool factor": "--pool",
    "unknown operator": "--operators", "at least one operator": "--operators", "operators must be": "--operators",
    "max_pixels ": "--max-pixels",
    "alpha ": "--alpha", "exif_transpose ": "--exif-transpose",
}


# The API's words in those messages that the job's user writes otherwise: no blend is None to Python, and off on the
# command line (--blend-k off) and in a --config file (blend_k: off).
_MESSAGE_WORDS = {"blend_k ": ("(or None for the hard switch)", "(or off for the hard switch)")}


def _with_flag(message: str) -> str:
    """A settings error as the CLI's user needs it: prefixed with the flag it is about, in the words the user writes."""
    flag = next((f for start, f in _MESSAGE_FLAGS.items() if message.startswith(start)), None)
    for start, (api, user) in _MESSAGE_WORDS.items():
        if message.startswith(start):
            message = message.replace(api, user)
    return f"{flag}: {message}" if flag else message
