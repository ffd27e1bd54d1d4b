"""Stores whose credentials may read objects but not list them (S3's s3:GetObject without s3:ListBucket, Google Cloud
Storage's storage.objects.get without storage.objects.list) answer a look at a key that is not there with 403, not
404. The job looks for optional files beside its inputs (a TFDS features.json beside TFRecord files, a
dataset_info.json): each such look was refused, and a refusal was an error. Where a refusal rightly stops the job (its
output, which it lists; a checkpoint; an input; the export's output and destination), it said 'Forbidden' alone."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit
from pipeline.sources.tfrecord_count import count_records
from pipeline.sources.tfrecord_files import features_json_notes
from tests.jobutil import image_bytes, read_output
from tests.s3util import moto_s3_without_list
from tests.test_tfrecord_inputs import example, shard

TOKENS_AS_LIST = json.dumps({"featuresDict": {"features": {"tokens": {
    "sequence": {"feature": {"tensor": {"shape": {}, "dtype": "int64"}}, "length": "-1"}}}}}).encode()


def _records(n: int) -> bytes:
    return shard([example(image=image_bytes(16, 16, i), tokens=[i]) for i in range(n)])


@pytest.fixture
def s3_without_list():
    """S3 whose bucket 'granted' the job may read and write keys of but not list; 'listed' it may also list."""
    with moto_s3_without_list("granted", "listed", unlisted=("granted",)) as (client, options, gate):
        yield client, options, gate


@pytest.mark.usefixtures("ray_local")
def test_one_tfrecord_key_granted_without_listbucket_is_purified_and_the_unknown_features_json_said(
        s3_without_list, model, tmp_path, capsys) -> None:
    """The look for features.json beside the one key given got 403 (there being none): the file was one reject,
    'unreadable TFRecord file: PermissionError: Forbidden', none of its records purified."""
    client, options, _ = s3_without_list
    client.put_object(Bucket="granted", Key="tf/s.tfrecord", Body=_records(3))
    args = ["--input", "s3://granted/tf/s.tfrecord", "--checkpoint", model, "--steps", "1", "--canvas-size", "32",
            "--no-progress", "--storage-option", f"key={options['key']}", "--storage-option",
            f"secret={options['secret']}", "--s3-endpoint", options["client_kwargs"]["endpoint_url"]]
    # the dry run says it before any work
    assert cli.main([*args, "--output", str(tmp_path / "dry"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "warning: s3://granted/tf/features.json was taken as absent" in printed and "s3:ListBucket" in printed
    assert cli.main([*args, "--output", str(tmp_path / "out")]) == 0
    assert "warning: s3://granted/tf/features.json was taken as absent" in capsys.readouterr().err
    data, rejects = read_output(str(tmp_path / "out"))
    assert sorted(data["id"]) == [f"s.tfrecord#{i}" for i in range(3)] and rejects.empty
    assert sorted(data["tokens"]) == [0, 1, 2]  # typed by their values, as without a features.json
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    (note,) = summary["this_run"]["storage_notes"]
    assert note.startswith("s3://granted/tf/features.json was taken as absent") and "s3:ListBucket" in note


def test_a_features_json_that_is_there_but_refused_makes_each_file_a_reject_naming_it(s3_without_list) -> None:
    """Where the folder may be listed, a refused features.json is known to be there: taking it as absent would type its
    files' columns otherwise than TFDS declares, so each file is a reject that says what to grant (and the planning
    notes it); a folder without one, listed, is no note at all."""
    client, options, gate = s3_without_list
    client.put_object(Bucket="listed", Key="tfds/features.json", Body=TOKENS_AS_LIST)
    client.put_object(Bucket="listed", Key="tfds/s.tfrecord", Body=_records(2))
    client.put_object(Bucket="listed", Key="plain/s.tfrecord", Body=_records(2))
    gate.refused.add(("listed", "tfds/features.json"))
    (unit,) = discover("s3://listed/tfds/s.tfrecord", options)
    out = [r for r in read_unit(unit, options) if r["kind"] != "count"]
    assert [r["id"] for r in out] == ["s.tfrecord#unreadable"]
    assert "s3://listed/tfds/features.json is there but these credentials may not read it" in out[0]["error"]
    (note,) = features_json_notes(["s3://listed/tfds/s.tfrecord", "s3://listed/plain/s.tfrecord"], options)
    assert note.startswith("s3://listed/tfds/features.json is there but these credentials may not read it")
    gate.refused.clear()  # granted now: read as TFDS declares it
    metas = [r["meta"] for r in read_unit(unit, options) if r["kind"] == "image"]
    assert [m["tokens"] for m in metas] == [[0], [1]]
    assert features_json_notes(["s3://listed/tfds/s.tfrecord", "s3://listed/plain/s.tfrecord"], options) == []


def test_an_output_that_may_not_be_listed_stops_the_run_saying_what_to_grant(s3_without_list, model, tmp_path) -> None:
    """A first run's look for its _job.json was refused (the record is not there yet): the run stopped with 'cannot
    use output ...: PermissionError: Forbidden' alone. It must stop (its part files cannot be listed, nor a missing
    lease told from a refused one), saying what the credentials lack."""
    client, options, _ = s3_without_list
    client.put_object(Bucket="granted", Key="in/a.png", Body=image_bytes(16, 16, 1))
    config = JobConfig(input="s3://granted/in/a.png", output="s3://granted/out", checkpoint=model, steps=1,
                       progress=False, canvas_size=32, storage_options=options)
    with pytest.raises(JobError, match=r"cannot use output s3://granted/out: PermissionError: Forbidden \(the job "
                                       r"lists its output .* need s3:ListBucket on the output"):
        plan_job(config, dry_run=True)
    # one under a folder named data/ is first looked for inside another output's data/ (a _job.json above it)
    with pytest.raises(JobError, match=r"cannot use output s3://granted/data/clean: PermissionError: Forbidden \(the "
                                       r"job lists its output .* need s3:ListBucket on the output"):
        plan_job(replace(config, output="s3://granted/data/clean"), dry_run=True)


def test_an_export_from_or_into_a_bucket_that_may_not_be_listed_says_what_to_grant(s3_without_list, tmp_path,
                                                                                 capsys) -> None:
    """zip-purify-export said 'error: Forbidden' alone: its look at the output (or the destination) was refused."""
    from pipeline import export_cli
    from tests.test_export import image, make_output

    _, options, gate = s3_without_list
    make_output("s3://listed/out", [image("a.jpg", 1)], storage_options=options)
    make_output(str(tmp_path / "out"), [image("a.jpg", 1)])
    gate.buckets.add("listed")  # the output is there, but may no longer be listed
    storage = ["--storage-option", f"key={options['key']}", "--storage-option", f"secret={options['secret']}",
               "--s3-endpoint", options["client_kwargs"]["endpoint_url"], "--no-progress"]
    assert export_cli.main(["--output", "s3://listed/out", "--to", str(tmp_path / "images"), *storage]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output s3://listed/out cannot be read: PermissionError: Forbidden (the export "
                          "lists its part files") and "need s3:ListBucket on it" in err
    assert export_cli.main(["--output", str(tmp_path / "out"), "--to", "s3://granted/images", *storage]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --to s3://granted/images cannot be read: PermissionError: Forbidden (the export "
                          "looks at what it holds") and "need s3:ListBucket on it" in err


def test_a_checkpoint_refused_on_a_bucket_that_may_not_be_listed_may_be_a_mistyped_key(s3_without_list, model,
                                                                                     tmp_path) -> None:
    """A checkpoint key that is not there is refused (403) to credentials without ListBucket, as one they may not read
    is: the error said 'PermissionError: Forbidden' alone, sending the user after a permission for a typo."""
    client, options, _ = s3_without_list
    client.put_object(Bucket="granted", Key="in/a.png", Body=image_bytes(16, 16, 1))
    with open(model, "rb") as f:
        client.put_object(Bucket="granted", Key="models/prior.pt", Body=f.read())
    config = JobConfig(input="s3://granted/in/a.png", output=str(tmp_path / "out"), checkpoint="s3://granted/models/prior.pt",
                       steps=1, progress=False, canvas_size=32, storage_options=options)
    assert plan_job(config, dry_run=True).units  # one granted is read
    with pytest.raises(JobError, match=r"cannot read checkpoint s3://granted/models/prior-typo.pt: PermissionError: "
                                       r"Forbidden \(the store refuses a file that is not there too, where these "
                                       r"credentials lack s3:ListBucket: check the path"):
        plan_job(replace(config, checkpoint="s3://granted/models/prior-typo.pt"), dry_run=True)


def test_an_input_refused_on_a_bucket_that_may_not_be_listed_says_what_that_means(s3_without_list, model, tmp_path,
                                                                                capsys) -> None:
    """Without ListBucket a folder given as the input is refused, and so is a key that is not there (a typo): both
    said 'cannot list input ...: PermissionError: Forbidden' alone."""
    client, options, _ = s3_without_list
    client.put_object(Bucket="granted", Key="in/a.png", Body=image_bytes(16, 16, 1))
    storage = ["--storage-option", f"key={options['key']}", "--storage-option", f"secret={options['secret']}",
               "--s3-endpoint", options["client_kwargs"]["endpoint_url"]]
    for given in ("s3://granted/in/", "s3://granted/in/typo.png"):
        assert cli.main(["--input", given, "--output", str(tmp_path / "out"), "--checkpoint", model, "--dry-run",
                         *storage]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot list input {given}: PermissionError: Forbidden (without s3:ListBucket the "
                              "store refuses a folder given as the input, and a file that is not there too: give one "
                              "file these credentials may read by its exact path")


class _GetWithoutListGcs(MemoryFileSystem):
    """A store that answers as gcsfs does to storage.objects.get without storage.objects.list: a look at a missing
    object, and any listing, raise OSError('Forbidden: ...') (gcsfs raises no PermissionError for HTTP 403)."""

    protocol = ("gsdenied", "gs")  # one of Google Cloud Storage's names

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("gsdenied://"))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path in self.store:
            return {"name": path, "size": self.store[path].size, "type": "file"}
        raise OSError(f"Forbidden: https://storage.googleapis.com/storage/v1/b/{path}\n"
                      "reader@project.iam.gserviceaccount.com does not have storage.objects.list access")

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        raise OSError("Forbidden: reader@project.iam.gserviceaccount.com does not have storage.objects.list access")


@pytest.fixture
def gcs_without_list():
    fsspec.register_implementation("gsdenied", _GetWithoutListGcs, clobber=True)
    fs, root = _GetWithoutListGcs(), f"denied-{os.getpid()}"
    yield fs, root
    for key in [k for k in fs.store if k.startswith(f"/{root}/")]:
        del fs.store[key]


def test_on_gcs_a_tfrecord_object_read_without_list_access_is_read_and_counted(gcs_without_list) -> None:
    """gcsfs says a refusal as OSError('Forbidden: ...'): the TFRecord file was a reject for its features.json, and
    the count of its records (for the progress and the dry run) was given up for its dataset_info.json."""
    fs, root = gcs_without_list
    fs.pipe(f"/{root}/tf/s.tfrecord", _records(2))
    (unit,) = discover(f"gsdenied://{root}/tf/s.tfrecord", {})
    assert [r["id"] for r in read_unit(unit, {}) if r["kind"] == "image"] == ["s.tfrecord#0", "s.tfrecord#1"]
    assert count_records([unit], {}) == {unit.paths[0]: 2}
    (note,) = features_json_notes(unit.paths, {})
    assert note.startswith(f"gsdenied:///{root}/tf/features.json was taken as absent") and \
        "grant storage.objects.list" in note


def test_on_a_local_disk_a_refused_features_json_is_there_and_never_taken_as_absent(tmp_path, monkeypatch) -> None:
    """A local disk says a missing file is not there (ENOENT) whatever its folder's permissions, so a refusal of
    features.json (mode 000 in a folder whose names may not be listed, mode 711) means it is there: it was taken as
    absent, as on a bucket that may not be listed, and the files beside it typed otherwise than TFDS declares."""
    from fsspec.implementations.local import LocalFileSystem

    folder = tmp_path / "tf"
    folder.mkdir()
    (folder / "features.json").write_bytes(TOKENS_AS_LIST)
    (folder / "s.tfrecord").write_bytes(_records(2))
    refused = (str(folder / "features.json"), str(folder))  # as a user other than root meets them (root reads all)
    cat_file, ls = LocalFileSystem.cat_file, LocalFileSystem.ls

    def refuse_cat(self, path, *args, **kwargs):
        if self._strip_protocol(path) in refused:
            raise PermissionError(13, "Permission denied", path)
        return cat_file(self, path, *args, **kwargs)

    def refuse_ls(self, path, *args, **kwargs):
        if self._strip_protocol(path).rstrip("/") in refused:
            raise PermissionError(13, "Permission denied", path)
        return ls(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "cat_file", refuse_cat)
    monkeypatch.setattr(LocalFileSystem, "ls", refuse_ls)
    (unit,) = discover(str(folder / "s.tfrecord"), {})
    out = [r for r in read_unit(unit, {}) if r["kind"] != "count"]
    assert [r["id"] for r in out] == ["s.tfrecord#unreadable"]
    assert f"{folder / 'features.json'} is there but the user the job runs as may not read it" in out[0]["error"]
    (note,) = features_json_notes(unit.paths, {})
    assert "is there but" in note and "taken as absent" not in note


def test_over_sftp_a_refused_features_json_names_the_servers_user_not_the_one_the_job_runs_as(
        tmp_path, monkeypatch) -> None:
    """On SFTP (FTP, HDFS) the server's user the job logs in as reads the file, not the user the job runs as on this
    machine: the reject told the user to look at the wrong one's permissions."""
    import importlib

    from fsspec.implementations.local import LocalFileSystem

    from tests.test_one_connection_stores import OneConnection

    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "sftp", OneConnection)
    OneConnection.clear_instance_cache()
    folder = tmp_path / "tf"
    folder.mkdir()
    (folder / "features.json").write_bytes(TOKENS_AS_LIST)
    (folder / "s.tfrecord").write_bytes(_records(2))
    cat_file = LocalFileSystem.cat_file

    def refuse_cat(self, path, *args, **kwargs):
        if self._strip_protocol(path) == str(folder / "features.json"):
            raise PermissionError(13, "Permission denied", path)  # paramiko's answer to SSH_FX_PERMISSION_DENIED
        return cat_file(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "cat_file", refuse_cat)
    (unit,) = discover(f"sftp://{folder}/s.tfrecord", {})
    out = [r for r in read_unit(unit, {}) if r["kind"] != "count"]
    assert [r["id"] for r in out] == ["s.tfrecord#unreadable"]
    assert "features.json is there but the user the job logs in to the server as may not read it" in out[0]["error"]
    OneConnection.clear_instance_cache()


def test_a_refused_features_json_reject_keeps_the_fix_under_a_long_path(tmp_path, monkeypatch) -> None:
    """The reject named the file twice, the OS error's own copy of the path inside the reason, so that at a data set's
    usual depth (/srv/datasets/tensorflow_datasets/NAME/CONFIG/VERSION/) the reason was cut before what to do ('grant
    read access to…')."""
    from fsspec.implementations.local import LocalFileSystem

    folder = tmp_path / "tfds" / "imagenette" / "1.0.0"
    folder.mkdir(parents=True)
    (folder / "features.json").write_bytes(TOKENS_AS_LIST)
    (folder / "s.tfrecord").write_bytes(_records(2))
    cat_file = LocalFileSystem.cat_file

    def refuse_cat(self, path, *args, **kwargs):
        if self._strip_protocol(path) == str(folder / "features.json"):
            raise PermissionError(13, "Permission denied", path)  # as open() says it: the path again
        return cat_file(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "cat_file", refuse_cat)
    (unit,) = discover(str(folder / "s.tfrecord"), {})
    (reject,) = [r for r in read_unit(unit, {}) if r["kind"] != "count"]
    assert reject["error"].endswith("(PermissionError: [Errno 13] Permission denied): grant read access to it, or move "
                                    "it away"), reject["error"]
    assert reject["error"].count("features.json") == 1
