"""The commands that README and the pages it links (docs/job.md, api.md, guarantees.md, results.md, benchmarks.md)
show are taken by the code as it is now: every flag, subcommand and setting in them passes the script's own parser and
the checks it makes before any work (jobs/evaluate.py's and train_prior.py's parse_args, the job's config,
bench/sampler_settings.py's settings). Nothing is run. A flag renamed or removed since, or a combination refused
since (an --eta beside --sampler ddpm, a --resample where no step is guided), would otherwise surface only when a
reader pastes the command that a published figure came from."""

from __future__ import annotations

import argparse
import functools
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.jobutil import load_job_script

ROOT = Path(__file__).resolve().parent.parent
# page -> the sections read (None: the whole page)
PAGES = {"docs/results.md": None, "docs/benchmarks.md": None, "README.md": None, "docs/job.md": None,
         "docs/guarantees.md": None, "docs/api.md": None}
COMMAND = re.compile(r"python (?P<script>(?:jobs|bench)/\w+\.py)(?P<args>(?:\s|$).*)", re.S)


def _sections(text: str, keep: tuple[str, ...] | None) -> str:
    if keep is None:
        return text
    lines, kept = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            kept = line.strip() in keep
        if kept:
            lines.append(line)
    return "\n".join(lines)


def documented_commands(text: str) -> list[str]:
    """`script args` of every `python jobs/X.py ...` / `python bench/X.py ...` in the text's bash blocks (one a line,
    backslash continuations joined, a trailing # comment dropped) and in its inline code (which may wrap lines)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if not line.lstrip().startswith("#"):
                line = re.split(r"\s#\s", line)[0]
            found += [m.group(0) for m in COMMAND.finditer(line)]
    for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        found += [m.group(0) for m in COMMAND.finditer(" ".join(span.split()))]
    return [" ".join(c.split()).rstrip(");,")[len("python "):] for c in found]


def variants(command: str) -> list[list[str]]:
    """The argv of a documented command as shown, with its [optional parts] left out and each put in ('[--seed 1 or
    2]' as '--seed 1'); a '...' placeholder value becomes a folder name, and a '...' that is no flag's value ('python
    jobs/export.py ...': the arguments shown before) is left out."""
    bracket = re.compile(r"\[([^\]]*)\]")
    forms = {bracket.sub("", command), bracket.sub(lambda m: re.sub(r" or \S+", "", m.group(1)), command)}
    argvs = []
    for form in sorted(forms):
        tokens = shlex.split(form)
        argvs.append([("OUT" if tokens[i - 1].startswith("--") else None) if token == "..." else token
                      for i, token in enumerate(tokens)])
    return [[token for token in argv if token is not None] for argv in argvs]


@functools.cache
def script_module(script: str):
    folder, name = script.split("/")
    return load_job_script(name, f"documented_{folder}_{Path(name).stem}", folder=folder)


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__()
        self.namespace = namespace


def parse_problem(script: str, argv: list[str], monkeypatch, capsys) -> str | None:
    """Why `python script argv` would stop before doing anything, or None: its parser's error or its first check's."""
    try:
        if script in ("jobs/evaluate.py", "jobs/train_prior.py"):  # parse_args makes every option check
            script_module(script).parse_args(argv)
            return None
        if script == "jobs/purify.py":
            from pipeline.cli import config_from_args

            config_from_args(argv)
            return None
        module = script_module(script)
        parse = argparse.ArgumentParser.parse_args

        def parse_then_stop(self, args=None, namespace=None):
            raise _Parsed(parse(self, args, namespace))

        with monkeypatch.context() as patched:
            patched.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
            patched.setattr(sys, "argv", [script, *argv])
            try:
                module.main()
            except _Parsed as parsed:
                args = parsed.namespace
            else:
                return "main() returned without parsing its arguments"
        if script == "bench/sampler_settings.py":
            for setting in args.settings:
                module.parse_setting(setting)
        if script == "bench/scale_bench.py":
            unknown = [f for f in args.only.split(",") if f and f not in module.FUNCTIONS]
            if unknown:
                return f"--only: unknown function(s) {unknown}"
        if script == "bench/evaluation_time.py" and args.evaluate_args:
            return parse_problem("jobs/evaluate.py", args.evaluate_args, monkeypatch, capsys)
        return None
    except SystemExit as stop:  # --help: exit status 0, nothing wrong
        return None if stop.code == 0 else f"{stop.code} {capsys.readouterr().err.strip()}"
    except Exception as err:  # a config error of the job, say
        return f"{type(err).__name__}: {err}"


def _all_documented() -> list[tuple[str, str]]:
    found = []
    for page, keep in PAGES.items():
        text = _sections((ROOT / page).read_text(encoding="utf-8"), keep)
        found += [(page, command) for command in dict.fromkeys(documented_commands(text))]
    return found


DOCUMENTED = _all_documented()


def test_the_pages_commands_are_found() -> None:
    scripts = {command.split()[0] for _, command in DOCUMENTED}
    assert len(DOCUMENTED) >= 50, DOCUMENTED
    assert {"jobs/evaluate.py", "jobs/target_table.py", "jobs/train_prior.py", "bench/sampler_settings.py",
            "bench/job_bench.py", "bench/scale_bench.py", "bench/purifier_bench.py"} <= scripts
    text = "```bash\npython jobs/evaluate.py --pool 2 \\\n    --out r   # k = 2\n```\nand `python bench/x.py\n--a 1`."
    assert documented_commands(text) == ["jobs/evaluate.py --pool 2 --out r", "bench/x.py --a 1"]
    assert variants("jobs/evaluate.py [--sampler-seed 1 or 2] --out ...") == [
        ["jobs/evaluate.py", "--out", "OUT"], ["jobs/evaluate.py", "--sampler-seed", "1", "--out", "OUT"]]


@pytest.mark.parametrize(("script", "argv"), [
    ("jobs/evaluate.py", ["--datasets", "cifar10", "--no-such-flag"]),
    ("jobs/evaluate.py", ["--sampler", "ddpm", "--start", "0"]),
    ("bench/sampler_settings.py", ["--images", "500", "x=dict(sampler='ddpm', eta=0.0)"]),
    ("bench/sampler_settings.py", ["x=dict(start=0.3, lam=0.5, resample=4)"]),
    ("bench/purifier_bench.py", ["--sizes", "32", "--no-such-flag"]),
    ("bench/scale_bench.py", ["--only", "no-such-function"]),
    ("jobs/purify.py", ["--sampler", "ddpm", "--eta", "0"]),
])
def test_a_command_the_code_no_longer_takes_is_caught(script, argv, monkeypatch, capsys) -> None:
    assert parse_problem(script, argv, monkeypatch, capsys)


@pytest.mark.parametrize(("page", "command"), DOCUMENTED, ids=[f"{p}: {c[:90]}" for p, c in DOCUMENTED])
def test_a_documented_command_is_taken_by_the_code(page: str, command: str, monkeypatch, capsys) -> None:
    argvs = variants(command)
    if all(len(argv) == 1 for argv in argvs):  # the script named in a sentence ('also `python jobs/export.py`' or
        assert (ROOT / argvs[0][0]).is_file(), f"{page}: {command}"  # '`python jobs/export.py ...`'): not run
        return
    for argv in argvs:
        assert parse_problem(argv[0], argv[1:], monkeypatch, capsys) is None, f"{page}: python {' '.join(argv)}"
