"""What the command-line tools share: argparse with a one-line error, the storage flags (--s3-endpoint, --anon,
--storage-option) and how they fold into fsspec storage options, and the advice after an S3 error that found no
credentials.

Imports nothing heavy: `zip-purify-export` uses it without loading torch or Ray (`pipeline.cli` loads both)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import shlex
import sys
import typing
from collections.abc import Iterator
from typing import Any

from pipeline.redaction import redact_uri, storage_item_shown, storage_value_shown
from pipeline.storage import own_entry


def script_prog(script: str) -> str:
    """How a jobs/ script names itself in its usage and error lines ("run ... --help for the options"): as the user ran
    it, `python jobs/train_prior.py`, quoted as a shell needs it, so that the hint runs as printed (a checkout's
    scripts are not on PATH nor executable: a bare `train_prior.py --help` runs nothing). `script`: the script's own
    `__file__`; imported rather than run (a test calling its `main`), its bare file name."""
    ran = sys.argv[0] if sys.argv else ""
    try:
        is_run = bool(ran) and os.path.samefile(ran, script)
    except OSError:
        is_run = False
    return f"python {shlex.quote(ran)}" if is_run else os.path.basename(script)


class Parser(argparse.ArgumentParser):
    """argparse with a short error: one `error:` line (with the nearest option for a misspelt one) and a pointer to
    --help, instead of the full usage of some fifty options above it. `POSITIONAL_HINT`: what to say of a word given
    where the tool takes none (its inputs are named options); `WORD_HINTS`: what to say of particular such words."""

    POSITIONAL_HINT = "the options are named: see --help"
    WORD_HINTS: typing.ClassVar[dict[str, str]] = {}

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        self._refuse_split_pair(words)
        return super().parse_known_args(words, namespace)

    def _refuse_split_pair(self, words: list[str]) -> None:
        """A KEY=VALUE option typed as two words (`--storage-option secret hunter2`) stops here, before argparse's
        "unrecognized arguments" would print the second word, likely the secret, in clear; so does one whose value the
        shell split at a space (`--storage-option password=correct horse`, unquoted), whose next word is the rest of
        the value, and a second pair typed without its own flag. Neither tool takes a word that is no option, so
        nothing valid is refused."""
        pair_flags = {o for a in self._actions if a.metavar == "KEY=VALUE" for o in a.option_strings}
        for i, word in enumerate(words[:-1]):
            if word == "--":
                return
            flag, eq, value = word.partition("=")
            if flag not in pair_flags:
                continue
            if not eq:
                if i + 2 >= len(words):
                    continue
                value, after = words[i + 1], words[i + 2]
            else:
                after = words[i + 1]
            if value.startswith("-") or after.startswith("-"):
                continue
            key = storage_item_shown(value)
            if "=" not in value:
                self.error(f"{flag} takes KEY=VALUE as one word, got {key} and then a separate word (not shown: it "
                           f"may be the value); write {key[1:-1]}=VALUE")
            if "=" in after:  # a second pair typed without its own flag
                self.error(f"{flag} takes one KEY=VALUE, and {storage_item_shown(after)} after {key} has no {flag} "
                           f"of its own: give each pair its own ({flag} {key[1:-1]} {flag} "
                           f"{storage_item_shown(after)[1:-1]})")
            self.error(f"{flag} {key} is followed by a word that is no option (not shown: it may be the rest of the "
                       f"value, split off at a space); quote a value that holds spaces: {flag} "
                       f"'{key[1:-1].removesuffix('***')}VALUE WITH SPACES'")

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments:"):
            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            hints = []
            words = message.partition(":")[2].split()
            message = f"unrecognized arguments: {' '.join(map(_word_shown, words))}"
            for before, arg in zip(["-"] + words, words, strict=False):
                close = difflib.get_close_matches(arg.partition("=")[0], known, n=1, cutoff=0.6)
                if arg.startswith("-") and close:
                    hints.append(f"{_word_shown(arg)}: did you mean {close[0]}?")
                elif not arg.startswith("-") and not before.startswith("--"):  # not the value of an unknown flag
                    hints.append(self.WORD_HINTS.get(arg, self.POSITIONAL_HINT))
            if hints:
                message += " (" + "; ".join(dict.fromkeys(hints)) + ")"
        self.exit(2, f"{self.prog}: error: {message}\n(run {self.prog} --help for the options)\n")


def _word_shown(word: str) -> str:
    """An unrecognized command-line word as the error line quotes it, without a credential it may hold (a misspelt
    flag's value: `--storage-options secret=...`, `--chekpoint https://...?X-Amz-Signature=...`): a KEY=VALUE's value
    as '***', a URI's password and signed query as `redact_uri` shows them, '--flag=VALUE' so for its VALUE."""
    if word.startswith("-") and "=" in word:
        flag, _, value = word.partition("=")
        return f"{flag}={_word_shown(value)}"
    key, sep, value = word.partition("=")
    if sep and value and "://" not in key and "::" not in key:
        return f"{key}=***"
    return redact_uri(word)


@contextlib.contextmanager
def reader_may_go_away() -> Iterator[None]:
    """Around the lines a tool prints once its work is done: a reader of stdout that went away (`| head -1`; each line
    a write of its own with PYTHONUNBUFFERED=1, as containers set it) ends the printing, not the exit status. The run,
    the dry run's checks or the export are done and recorded by then; a closed pipe was a dry run's "error: [Errno 32]
    Broken pipe" (exit status 2, "could not start"), and after a run or an export a traceback (exit status 1). What is
    left for stdout then goes nowhere, so that the flush at exit does not fail again."""
    try:
        yield
        sys.stdout.flush()  # a buffered stdout meets the closed pipe here, not in the interpreter's flush at exit
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no file descriptor (a stand-in stdout): nothing to quiet
            pass


def add_storage_options(p: argparse.ArgumentParser) -> None:
    """How the tool reaches object storage: --s3-endpoint, --anon, --storage-option (see `storage_options`)."""
    st = p.add_argument_group("storage")
    st.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (MinIO, moto, ...; default: AWS's S3)")
    st.add_argument("--anon", action="store_true", default=None, help="anonymous S3 access")
    st.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra fsspec option, repeatable (e.g. key=..., secret=...; values may be JSON; "
                         "true/false, yes/no, on/off in any case are booleans; default: none)")


class ConfigError(ValueError):
    """A --config file or a command-line value that cannot make a JobConfig; the message names it."""


_WORD_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def storage_options(base: Any, endpoint: Any, anon: Any, items: Any, where: str) -> dict[str, Any]:
    """fsspec storage options from a mapping (`base`: a --config file's storage_options) and the storage flags'
    values: --s3-endpoint, --anon, the --storage-option KEY=VALUE items. `where`: how to name their origin in an
    error (' in job.yaml', or '' for the command line). Raises ConfigError for a malformed one."""
    if not isinstance(base, dict):
        raise ConfigError(f"storage_options{where} must be a mapping of fsspec options, got {storage_value_shown(base)}")
    so = dict(base)
    # `--s3-endpoint "$S3_ENDPOINT"` with the variable unset: the run went to AWS's S3, not MinIO's (a blank one, as
    # from `S3_ENDPOINT=" "` or a YAML line of spaces in quotes, reached botocore as an endpoint named by spaces)
    if isinstance(endpoint, str) and not endpoint.strip():
        raise ConfigError(f"{'s3_endpoint' if where else '--s3-endpoint'}{where} is empty; give the endpoint's URL "
                          "(http://host:9000), or leave it out for AWS's")
    if endpoint:
        so["client_kwargs"] = {**(so.get("client_kwargs") or {}), "endpoint_url": endpoint}
    if anon:
        so["anon"] = True
    for item in [items] if isinstance(items, str) else items or []:  # a file's storage_option: one KEY=VALUE
        key, sep, raw = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"storage option{where} expects KEY=VALUE, got {storage_item_shown(item)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            if raw.lstrip().startswith(("{", "[")):  # meant as a mapping or list: as text it failed late, in fsspec
                raise ConfigError(f"storage option {key}{where}: its value is not valid JSON ({err.msg} at character "
                                  f"{err.pos}); write a mapping as {key}='{{\"name\": \"value\"}}'") from None
            # Python's or YAML's spelling of a boolean: as text, s3fs would read anon=False as true (a non-empty
            # string) and sign nothing, dropping the credentials
            value = _WORD_BOOLS.get(raw.lower(), raw)
        # a mapping (client_kwargs={"region_name": ...}) adds to what --s3-endpoint or the file set, not replaces it
        so[key] = {**so[key], **value} if isinstance(value, dict) and isinstance(so.get(key), dict) else value
    # --s3-endpoint and --anon are S3's: they move into the S3 store's own entry when the options give it one
    # (`pipeline.storage.scoped_options`: a store with an entry gets that entry alone), where its own values win
    s3_scope = own_entry("s3://", so)
    if s3_scope and (endpoint or anon):
        own = dict(so[s3_scope])
        shared_client = dict(so.get("client_kwargs") or {})
        if endpoint and shared_client.get("endpoint_url") == endpoint:
            own["client_kwargs"] = {"endpoint_url": shared_client.pop("endpoint_url"), **(own.get("client_kwargs") or {})}
            if shared_client:
                so["client_kwargs"] = shared_client
            else:
                so.pop("client_kwargs")
        if anon and so.get("anon") is True:
            own.setdefault("anon", so.pop("anon"))
        so[s3_scope] = own
    return so


# said by the job and the export alike: "zip-purify", not "the job", which the export is not
NO_CREDENTIALS_ADVICE = ("; zip-purify reads S3 credentials where AWS's tools do (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "AWS_PROFILE, ~/.aws/credentials, an instance or pod role), or from --storage-option key=... "
                         "--storage-option secret=...; --anon reads a public bucket")


def credentials_advice(err: BaseException) -> str:
    """Where credentials come from, after an error that S3 found none (botocore's NoCredentialsError, said only as
    "Unable to locate credentials"), else nothing."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if type(cause).__name__ == "NoCredentialsError":
            return NO_CREDENTIALS_ADVICE
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return ""
