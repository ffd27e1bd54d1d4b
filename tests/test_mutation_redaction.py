"""A mutation audit of pipeline/redaction.py, pipeline/entry.py and pipeline/cli_common.py: each test kills hand-made
mutants that the earlier tests let through (named in each test). A credential (a presigned URL's signature, a password
or token in a URI, a secret storage option) must never reach a printed line, an error or a written file; the URIs and
messages around it stay as typed. Tests marked BUG guard fixes made with them (a misspelt flag's error line that
printed the secret in its value; a proxy URL's password in a storage option written to _job.json); they fail on the
code before. All run in seconds, without Ray (a few in a small Python process of their own)."""

from __future__ import annotations

import pytest

from pipeline.redaction import redact_uri, redact_uri_secrets

# --- pipeline/redaction.py: redact_uri ---


@pytest.mark.parametrize("uri", [
    "https://h:65535/a@b",  # the highest port (mutant: 65535 not a port, the path's '@' taken for a password's end)
    "HTTPS://h:8443/a@b",  # a scheme in capitals takes a port as well (mutant: the scheme compared as typed)
])
def test_a_port_at_the_edges_is_a_port_and_the_uri_is_kept_as_typed(uri: str) -> None:
    assert redact_uri(uri) == uri
    assert redact_uri_secrets(f"cannot read {uri}", uri) == f"cannot read {uri}"


def test_a_user_alone_is_hidden_as_a_token_whatever_it_holds() -> None:
    # 'https://TOKEN@github.com/...' (a personal access token as the user): the whole user part goes (mutant: a user
    # without ':' shown), up to the host's '@' even where the user holds one (mutant: cut at the first '@')
    assert redact_uri("https://ghp_TOKENVALUE1234@github.com/o/r/m.pt") == "https://***@github.com/o/r/m.pt"
    assert redact_uri("ftp://me@example.com@host/x") == "ftp://***@host/x"


def test_every_query_value_of_a_plain_http_url_is_hidden_too() -> None:
    # not https alone (mutant): a CloudFront or SAS URL served over http is a credential just the same
    assert redact_uri("http://h.example/m.pt?Expires=1767225600&Policy=eyJTdGF0") == \
        "http://h.example/m.pt?Expires=***&Policy=***"


def test_a_credential_query_key_written_escaped_is_still_one() -> None:
    # 'X-Amz-%53ignature' is X-Amz-Signature to the server, a letter escaped as URIs allow (mutant: the key compared
    # undecoded)
    assert redact_uri("s3://b/m.pt?X-Amz-%53ignature=LONG-SECRET-VALUE") == "s3://b/m.pt?X-Amz-%53ignature=***"


# --- pipeline/redaction.py: redact_uri_secrets ---


def test_a_short_query_value_in_the_uri_quoted_whole_is_hidden() -> None:
    # values under 8 characters are not hidden where they stand alone (a common word); in the URI quoted whole they
    # go (mutant: the URI itself not replaced)
    uri = "https://h.example/m.pt?sig=abc123&se=2026"
    assert redact_uri_secrets(f"cannot read {uri}: 403", uri) == \
        "cannot read https://h.example/m.pt?sig=***&se=***: 403"


def test_a_short_query_value_standing_alone_leaves_the_message_intact() -> None:
    # 'v=1': '1' is no credential, and replacing it everywhere would turn counts into '***' (mutant: no length floor)
    uri = "https://h.example/m.pt?v=1"
    assert redact_uri_secrets(f"read 1 file of 1 from {uri}", uri) == "read 1 file of 1 from https://h.example/m.pt?v=***"


def test_a_short_escaped_password_quoted_decoded_with_its_user_is_hidden() -> None:
    # 'pa%24s' is 'pa$s' once decoded, as a client's login error quotes it (mutant: only the typed form hidden)
    uri = "ftp://u:pa%24s@h/x"
    assert redact_uri_secrets("login u:pa$s@h failed", uri) == "login u:***@h failed"


def test_a_token_as_the_user_is_hidden_where_a_message_quotes_it_alone() -> None:
    # mutant: only a password collected as a secret, a token standing for the user not
    uri = "https://ghp_TOKENVALUE1234@github.com/o/r/m.pt"
    assert redact_uri_secrets("bad credentials ghp_TOKENVALUE1234 for github.com", uri) == \
        "bad credentials *** for github.com"


def test_the_part_of_a_password_after_an_at_sign_is_hidden_where_a_parser_took_it_for_the_host() -> None:
    # a parser that ends the password at its first '@' names the rest as the host: 'ss-word@host' (mutant: the
    # password not cut at '@' into the pieces a parser makes of it)
    uri = "ftp://user:pa@ss-word@host/x"
    assert redact_uri_secrets("cannot resolve host ss-word@host", uri) == "cannot resolve host ***@host"


def test_a_password_ending_in_a_slash_does_not_hide_every_at_sign_of_the_message() -> None:
    # its last piece is empty: '@' alone is no credential (mutant: every '@' became '***@')
    uri = "ftp://user:longsecret/@host/x"
    assert redact_uri_secrets(f"cannot read {uri} (as user me@example.com)", uri) == \
        "cannot read ftp://user:***@host/x (as user me@example.com)"


def test_secrets_that_begin_one_another_are_hidden_whole_in_any_order_of_the_set() -> None:
    # replaced longest first: a shorter one first leaves the longer one's tail. With eight values, each the start of
    # the next, a mutant that replaces them in the set's order (random per process) passes only 1 time in 40,320.
    values = ["abcdefgh" + "123456789"[:n] for n in range(1, 9)]
    uri = "s3://b/m.pt?" + "&".join(f"token{i}={v}" for i, v in enumerate(values))
    assert redact_uri_secrets(" ".join(reversed(values)), uri) == " ".join(["***"] * len(values))


# --- pipeline/entry.py ---


def test_the_last_short_write_before_the_end_comes_through() -> None:
    # the report's closing newline sits in the pipe's buffer when the process ends past its teardown (mutant: the
    # streams not flushed first)
    from tests.test_entry_exit import _ended

    assert _ended("3").stdout == "report " * 20000 + "\n"


def test_a_stdout_whose_reader_went_away_still_ends_with_the_tools_status() -> None:
    # `zip-purify --dry-run | head -1`: the flush at the end meets the closed pipe; the status is the tool's, not a
    # traceback's 1 (mutant: only ValueError caught there)
    import subprocess
    import sys

    from tests.test_entry_exit import ROOT

    program = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
               "from pipeline.entry import exit_without_teardown\n"
               "class Closed:\n"
               "    def write(self, text): return len(text)\n"
               "    def flush(self): raise BrokenPipeError(32, 'Broken pipe')\n"
               "sys.stdout = Closed()\n"
               "exit_without_teardown(3)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (3, "")


def test_a_module_whose_name_only_begins_with_ray_prints_to_stdout() -> None:
    # a user's 'raytrace' or 'rayleigh' module is not Ray's (mutant: any module name starting 'ray')
    import io

    from pipeline.entry import RayLinesToStderr

    out, err = io.StringIO(), io.StringIO()
    routed = RayLinesToStderr(out, err)
    own = {"__name__": "raytrace.render", "routed": routed}
    # a write of its own, not print: once Ray's tqdm_ray has replaced builtins.print (in a process that showed Ray's
    # own bars), print's caller is Ray's safe_print, whoever called it
    exec("def report(line):\n    routed.write(line + '\\n')\n", own)
    own["report"]("rendered 6 images")
    assert (out.getvalue(), err.getvalue()) == ("rendered 6 images\n", "")


def test_a_flush_of_the_tools_stdout_flushes_what_ray_wrote_to_stderr_too() -> None:
    # Ray's lines buffered on a block-buffered stderr (a file) reach it when the tool flushes stdout (mutant: only
    # stdout flushed)
    import io

    from pipeline.entry import RayLinesToStderr

    raw = io.BytesIO()
    err = io.TextIOWrapper(raw, encoding="utf-8")
    routed = RayLinesToStderr(io.StringIO(), err)
    rays = {"__name__": "ray._private.worker", "routed": routed}
    exec("def print_worker_logs(line):\n    print(line, file=routed)\n", rays)
    rays["print_worker_logs"]("(raylet) A worker died")
    routed.flush()
    assert raw.getvalue() == b"(raylet) A worker died\n"


# --- pipeline/cli_common.py: Parser ---


def _flag_error(argv: list[str], capsys: pytest.CaptureFixture[str], tool: str = "zip-purify") -> list[str]:
    from pipeline import cli, export_cli
    from tests.test_cli_options import _errors

    with pytest.raises(SystemExit) as exit_:
        (cli.main if tool == "zip-purify" else export_cli.main)(argv)
    assert exit_.value.code == 2
    return _errors(capsys)


def test_a_misspelt_flag_given_with_its_value_after_an_equals_sign_gets_its_suggestion(capsys) -> None:
    # '--stpes=20': the name before '=' is compared (mutant: the whole word, which matches no flag)
    err = _flag_error(["--stpes=20", "--dry-run"], capsys)
    assert "--stpes=20: did you mean --steps?" in err[0], err


def test_each_hint_is_said_once(capsys) -> None:
    # two words given without their flags: one hint, not the same one twice (mutant: hints not deduplicated)
    err = _flag_error(["data/in", "data/out"], capsys)
    assert err[0].count("--input IN --output OUT") == 1, err


@pytest.mark.parametrize("argv, secret", [
    # the config file's key is storage_options: '--storage-options secret=...' is an easy slip
    (["--storage-options", "secret=hunter2secretvalue"], "hunter2secretvalue"),
    (["--storage-optoin=key=AKIAEXAMPLEKEY123"], "AKIAEXAMPLEKEY123"),
    (["--chekpoint", "https://h.example/m.pt?X-Amz-Signature=abcdef0123456789"], "abcdef0123456789"),
    (["--chekpoint=ftp://user:hunter2secretvalue@h.example/m.pt"], "hunter2secretvalue"),
])
def test_a_misspelt_flags_value_is_not_printed_with_its_credential(argv: list[str], secret: str, capsys) -> None:
    """BUG: the error line quoted the unrecognized words as typed, a misspelt --storage-option's secret key or a
    misspelt --checkpoint's presigned signature with them, on stderr (and so in CI logs)."""
    for tool in ("zip-purify", "zip-purify-export"):
        err = _flag_error(["--output", "o", "--to", "d", *argv] if tool != "zip-purify" else [*argv, "--dry-run"],
                          capsys, tool)
        assert secret not in "\n".join(err), err
        assert "unrecognized arguments: " in err[0] and "did you mean" in err[0] and "***" in err[0], err


@pytest.mark.parametrize("argv", [
    ["--storage-option", "secret", "hunter2secretvalue"],
    ["--storage-option=secret", "hunter2secretvalue"],
    ["--storage-option", "key=AKIAEXAMPLE", "--storage-option", "secret", "hunter2secretvalue"],
])
def test_a_storage_option_typed_as_two_words_is_refused_without_printing_the_second(argv: list[str], capsys) -> None:
    """BUG: `--storage-option secret hunter2...` (a space for the '='): argparse took 'secret' as the option's value and
    printed the next word, the secret itself, as an unrecognized argument. Now the error names the option and the
    key, says how to write the pair, and leaves the value out; both tools."""
    for tool in ("zip-purify", "zip-purify-export"):
        err = _flag_error(["--output", "o", "--to", "d", *argv] if tool != "zip-purify" else [*argv, "--dry-run"],
                          capsys, tool)
        assert "hunter2secretvalue" not in "\n".join(err), err
        assert "--storage-option takes KEY=VALUE as one word, got 'secret'" in err[0], err
        assert "write secret=VALUE" in err[0], err


@pytest.mark.parametrize("argv", [
    ["--storage-option", "password=correct", "horse2battery"],
    ["--storage-option=password=correct", "horse2battery"],
    ["--storage-option", "anon=false", "--storage-option", "password=correct", "horse2battery", "staple"],
])
def test_a_storage_option_value_split_at_a_space_is_refused_without_printing_its_rest(argv: list[str], capsys) -> None:
    """BUG: `--storage-option password=correct horse battery` (a value with spaces, unquoted): argparse printed
    'horse battery', the rest of the password, as unrecognized arguments. Now the error names the option and the key
    and says to quote the value; both tools."""
    for tool in ("zip-purify", "zip-purify-export"):
        err = _flag_error(["--output", "o", "--to", "d", *argv] if tool != "zip-purify" else [*argv, "--dry-run"],
                          capsys, tool)
        assert "horse2battery" not in "\n".join(err) and "correct" not in "\n".join(err), err
        assert "--storage-option 'password=***' is followed by a word that is no option" in err[0], err
        assert "quote a value that holds spaces: --storage-option 'password=VALUE WITH SPACES'" in err[0], err


def test_a_second_pair_without_its_own_flag_is_named_with_its_value_hidden(capsys) -> None:
    """'--storage-option key=AKIA secret=hunter2': argparse's message hid the value but blamed a positional word ("the
    input and output are named: --input IN --output OUT"); the error now says to give each pair its own flag."""
    err = _flag_error(["--storage-option", "key=AKIAEXAMPLE", "secret=hunter2secretvalue", "--dry-run"], capsys)
    assert err[0] == ("zip-purify: error: --storage-option takes one KEY=VALUE, and 'secret=***' after 'key=***' has no "
                      "--storage-option of its own: give each pair its own (--storage-option key=*** --storage-option "
                      "secret=***)"), err
    assert "hunter2secretvalue" not in "\n".join(err) and "AKIAEXAMPLE" not in "\n".join(err)


def test_a_storage_option_followed_by_a_flag_still_gets_the_options_own_error(capsys) -> None:
    # '--storage-option secret --dry-run': no word after it to hide; the storage option's own check names it
    from pipeline import cli

    assert cli.main(["--storage-option", "secret", "--dry-run"]) == 2
    assert "storage option expects KEY=VALUE, got 'secret'" in capsys.readouterr().err


# --- pipeline/redaction.py: redact (storage options as _job.json and _summary.json record them) ---


def test_a_password_in_a_storage_options_url_is_not_written_down(tmp_path) -> None:
    """BUG: a proxy's URL (s3fs's config_kwargs={"proxies": {"https": "http://user:password@proxy:3128"}}) was recorded
    in _job.json and _summary.json with its password, its key naming no secret."""
    import json

    from pipeline.config import JobConfig
    from pipeline.redaction import redact

    options = {"config_kwargs": {"proxies": {"https": "http://user:hunter2proxy@proxy.example:3128"}},
               "client_kwargs": {"endpoint_url": "http://minio:9000"},
               "profiles": [{"name": "a", "token": "s3cr3t-token-1"}], "anon": False, "retries": 3}
    shown = redact(options)
    assert shown["config_kwargs"]["proxies"]["https"] == "http://user:***@proxy.example:3128"
    assert shown["profiles"] == [{"name": "a", "token": "***"}]
    assert shown["client_kwargs"] == options["client_kwargs"] and (shown["anon"], shown["retries"]) == (False, 3)
    config = JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), storage_options=options)
    assert "hunter2proxy" not in json.dumps(config.public()) and "s3cr3t" not in json.dumps(config.public())


# --- pipeline/cli_common.py: storage_options ---


def _options(*items: str, base: dict | None = None, endpoint: str | None = None, anon: bool | None = None) -> dict:
    from pipeline.cli_common import storage_options

    return storage_options(base or {}, endpoint, anon, list(items), "")


@pytest.mark.parametrize("item, said", [
    ("=AKIAEXAMPLE", "expects KEY=VALUE, got '=***'"),  # no name (mutant: an option named '' passed on)
    ('client_kwargs=["region_name", "eu"', "its value is not valid JSON"),  # a list cut short (mutant: taken as text)
])
def test_a_storage_option_without_a_name_or_with_a_broken_list_is_refused(item: str, said: str) -> None:
    import re

    from pipeline.cli_common import ConfigError

    with pytest.raises(ConfigError, match=re.escape(said)):
        _options(item)


@pytest.mark.parametrize("word, value", [("False", False), ("OFF", False), ("off", False), ("Yes", True)])
def test_a_boolean_word_in_any_case_is_a_boolean(word: str, value: bool) -> None:
    # as text, s3fs reads anon='False' as true and signs nothing (mutants: the case kept, 'off' not a word for false)
    assert _options(f"anon={word}") == {"anon": value}


def test_the_flags_move_into_the_s3_entry_without_undoing_what_the_options_say() -> None:
    # --s3-endpoint and --anon go into the S3 store's own entry; the other client options stay shared (mutant: the
    # shared client_kwargs dropped with the endpoint), and the entry's own endpoint and anon win (mutants: the flag's)
    base = {"client_kwargs": {"region_name": "eu"}, "s3": {"key": "k"}}
    assert _options(base=base, endpoint="http://minio:9000") == {
        "client_kwargs": {"region_name": "eu"}, "s3": {"key": "k", "client_kwargs": {"endpoint_url": "http://minio:9000"}}}
    own = {"s3": {"anon": False, "client_kwargs": {"endpoint_url": "http://own:9000"}}}
    assert _options(base=own, endpoint="http://minio:9000", anon=True) == own
    # --anon alone moves as well (mutant: only with --s3-endpoint, so the S3 store, given its entry alone, signed)
    assert _options(base={"s3": {"key": "k"}}, anon=True) == {"s3": {"key": "k", "anon": True}}


@pytest.mark.parametrize("size", [10, 200_000])
def test_a_closed_pipe_after_the_work_is_done_leaves_the_status_alone(size: int) -> None:
    # `zip-purify ... | head -0`: the reader is gone before the last lines are printed. A short line is still in the
    # buffer at the end of the block (mutant: not flushed there, so it met the closed pipe at exit: "Exception
    # ignored ... BrokenPipeError", status 120); a long one fails inside it, and what is left must go nowhere
    # (mutant: stdout not pointed at /dev/null, the same failure at exit).
    import subprocess
    import sys

    from tests.test_entry_exit import ROOT

    program = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
               "from pipeline.cli_common import reader_may_go_away\n"
               "sys.stdin.read()  # the reader has gone once stdin closes\n"
               f"with reader_may_go_away():\n    print('x' * {size})\n")
    proc = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    proc.stdin.close()
    err = proc.stderr.read().decode()
    assert (proc.wait(timeout=120), err) == (0, "")


def test_a_no_credentials_error_met_while_handling_another_still_gets_the_advice() -> None:
    # botocore's NoCredentialsError, raised inside an except block of a storage layer, is the context of the error
    # the job sees, not its cause (mutant: only __cause__ followed)
    from pipeline.cli_common import NO_CREDENTIALS_ADVICE, credentials_advice

    class NoCredentialsError(Exception):
        pass

    try:
        try:
            raise NoCredentialsError("Unable to locate credentials")
        except NoCredentialsError:
            raise OSError("cannot list s3://bucket/in")  # noqa: B904 - the implicit context, as a library leaves it
    except OSError as err:
        assert err.__cause__ is None and isinstance(err.__context__, NoCredentialsError)
        assert credentials_advice(err) == NO_CREDENTIALS_ADVICE
    assert credentials_advice(OSError("cannot list s3://bucket/in")) == ""


def test_a_script_called_from_a_program_names_itself_by_its_file_name() -> None:
    # a test or notebook calling jobs/train_prior.py's main: its errors say 'train_prior.py: error: ...', not the
    # checkout's full path (mutant: the path as given)
    from pipeline.cli_common import script_prog
    from tests.test_entry_exit import ROOT

    assert script_prog(str(ROOT / "jobs" / "train_prior.py")) == "train_prior.py"
