"""Object storage end to end: every source format read from s3:// and the output written to s3://,
against a real moto server process (Ray workers are other processes; in-process mocks cannot reach them)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.checkpoint import load_checkpoint
from pipeline.config import JobConfig
from pipeline.job import run_job
from tests.jobutil import decoded_size, image_bytes, read_output, tar_bytes, tiny_model_file

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def s3():
    from tests.s3util import start_moto_server

    server, port = start_moto_server()
    options = {"key": "testing-key", "secret": "testing-secret-value",
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}
    import boto3
    import s3fs

    client = boto3.client("s3", aws_access_key_id=options["key"], aws_secret_access_key=options["secret"],
                          **options["client_kwargs"])
    for bucket in ("zip-in", "zip-out"):
        client.create_bucket(Bucket=bucket)
    fs = s3fs.S3FileSystem(**options)
    yield fs, options
    server.stop()


def test_every_source_format_from_s3_to_s3_under_an_output_prefix_with_glob_characters(s3, tmp_path) -> None:
    """Every source format read from S3 and written to S3. The output prefix holds '[...]': fsspec's generic mv and rm
    (which s3fs uses) expand it as a pattern, and every job whose output prefix held one (a run named 'run[1]') stopped
    with 'cannot write to output ...: FileNotFoundError' before any work."""
    fs, options = s3
    fs.pipe("zip-in/ds/files/cat/a.png", image_bytes(32, 32, 1))
    fs.pipe("zip-in/ds/files/dog/b.jpg", image_bytes(40, 24, 2, "JPEG"))
    fs.pipe("zip-in/ds/files/dog/broken.png", b"\x89PNG\r\n\x1a\n-cut")
    fs.pipe("zip-in/ds/shards/s-0.tar.gz", _gzip(tar_bytes({"k/0.png": image_bytes(32, 32, 3), "k/0.cls": b"7"})))
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": [{"bytes": image_bytes(8, 16, 4), "path": "p.png"}], "label": [5]}), buf)
    fs.pipe("zip-in/ds/tables/t.parquet", buf.getvalue())
    model_path = tiny_model_file(tmp_path)
    with open(model_path, "rb") as f:
        fs.pipe("zip-in/models/tiny.pt", f.read())

    cfg = JobConfig(input="s3://zip-in/ds", output="s3://zip-out/run[1]", checkpoint="s3://zip-in/models/tiny.pt",
                    steps=2, pool=4, progress=False, storage_options=options)
    summary = run_job(cfg)
    assert summary["status"] == "complete" and summary["this_run"]["read"] == 5
    data, rejects = read_output("s3://zip-out/run[1]", options)
    assert sorted(data["id"]) == ["files/cat/a.png", "files/dog/b.jpg", "shards/s-0.tar.gz/k/0", "tables/t.parquet#0"]
    assert list(rejects["id"]) == ["files/dog/broken.png"]
    sizes = {r["id"]: decoded_size(r["image"]) for _, r in data.iterrows()}
    assert sizes["files/dog/b.jpg"] == (40, 24) and sizes["tables/t.parquet#0"] == (8, 16)
    assert data.set_index("id").loc["shards/s-0.tar.gz/k/0", "label"] == 7
    # Credentials never reach the summary.
    fs.invalidate_cache()
    text = fs.cat_file("zip-out/run[1]/_summary.json").decode()  # cat_file: no glob
    assert "testing-secret-value" not in text and "testing-key" not in text
    assert json.loads(text)["status"] == "complete"
    left = [p for p in fs.find("zip-out/run[1]") if p.rsplit("/", 1)[-1].startswith(".")]
    assert left == [], f"temporary files left behind: {left}"


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def test_large_shards_stream_from_s3(s3) -> None:
    """Shards over the in-memory limit are read from S3 piece by piece (a tar twice, Parquet by row group)."""
    from pipeline.sources import discover, read_unit

    fs, options = s3
    members = {f"k/{i}.png": image_bytes(16, 16, i) for i in range(6)} | {"k/0.cls": b"4"}
    fs.pipe("zip-in/big/s.tar", tar_bytes(members))
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": [image_bytes(8, 8, i) for i in range(5)], "n": list(range(5))}), buf,
                   row_group_size=2)
    fs.pipe("zip-in/big/t.parquet", buf.getvalue())
    tar_unit, parquet_unit = discover("s3://zip-in/big", options)
    tar_records = list(read_unit(tar_unit, options, in_memory_bytes=0))
    by_id = {r["id"]: r for r in tar_records[:-1]}
    assert sorted(by_id) == [f"s.tar/k/{i}" for i in range(6)]  # k/0 comes out last: its label is the last member
    assert by_id["s.tar/k/0"]["meta"] == {"label": 4} and by_id["s.tar/k/5"]["data"] == image_bytes(16, 16, 5)
    parquet_records = list(read_unit(parquet_unit, options, in_memory_bytes=0))
    assert [r["meta"]["n"] for r in parquet_records[:-1]] == list(range(5))
    assert parquet_records[4]["data"] == image_bytes(8, 8, 4) and parquet_records[-1]["n"] == 5


def test_a_large_shard_replaced_on_s3_between_its_passes_is_rejected_as_changed(s3, monkeypatch) -> None:
    """The ETag of the object the second pass opens is compared with the first's: a new upload between them (tar pads
    both to 10240 bytes, so only the ETag tells) makes every key a reject saying so, not a corrupt member."""
    from pipeline.sources import discover, read_unit, tar_shards

    fs, options = s3
    fs.pipe("zip-in/changing/s.tar", tar_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(3)}))
    index = tar_shards.index_tar

    def index_then_reupload(open_stream, **options):
        found = index(open_stream, **options)
        fs.pipe("zip-in/changing/s.tar", tar_bytes({f"{i}.png": image_bytes(8, 8, 10 + i) for i in range(3)}))
        return found

    monkeypatch.setattr(tar_shards, "index_tar", index_then_reupload)
    [unit] = discover("s3://zip-in/changing", options)
    records = [r for r in read_unit(unit, options, in_memory_bytes=0) if r.get("kind") in ("image", "reject")]
    assert sorted((r["kind"], r["id"]) for r in records) == [
        ("reject", "s.tar#unreadable"), ("reject", "s.tar/0"), ("reject", "s.tar/1"), ("reject", "s.tar/2")]
    reasons = [r["error"] for r in records]
    assert all("s.tar was replaced while this run read it (its ETag changed" in reason for reason in reasons), reasons


def test_a_large_zip_is_read_from_s3_through_ranges(s3) -> None:
    """A zip archive over the in-memory limit is read through its directory, a member at a time, never whole."""
    import zipfile

    from pipeline.sources import discover, read_unit

    fs, options = s3
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i in range(4):
            archive.writestr(f"cat/{i}.png", image_bytes(16, 16, i))
    fs.pipe("zip-in/zipped/d.zip", buf.getvalue())
    (unit,) = discover("s3://zip-in/zipped", options)
    assert unit.kind == "zip" and '"ETag"' in unit.stamps[0]
    records = list(read_unit(unit, options, labels_from_folders=True, in_memory_bytes=0))
    assert [(r["id"], r["meta"]["label"]) for r in records[:-1]] == [(f"d.zip/cat/{i}.png", "cat") for i in range(4)]
    assert records[2]["data"] == image_bytes(16, 16, 2) and records[-1]["container"]["records"] == 4


def test_a_missing_output_bucket_stops_the_dry_run_and_client_kwargs_add_to_the_endpoint(s3, tmp_path, capsys) -> None:
    from pipeline.cli import main

    fs, options = s3
    fs.pipe("zip-in/dry/0.png", image_bytes(32, 32, 0))
    endpoint = options["client_kwargs"]["endpoint_url"]
    base = ["--input", "s3://zip-in/dry", "--s3-endpoint", endpoint, "--storage-option", f"key={options['key']}",
            "--storage-option", f"secret={options['secret']}", "--storage-option",
            'client_kwargs={"region_name": "us-east-1"}', "--checkpoint", tiny_model_file(tmp_path), "--dry-run"]
    # the client_kwargs option adds the region to --s3-endpoint's endpoint: the dry run reaches moto and plans
    assert main([*base, "--output", "s3://zip-out/dry"]) == 0
    assert "1 image file to read" in capsys.readouterr().out
    assert main([*base, "--output", "s3://no-such-bucket/out"]) == 2
    assert "the bucket of output s3://no-such-bucket/out (no-such-bucket) does not exist" in capsys.readouterr().err


def test_folder_markers_are_not_inputs(s3) -> None:
    """Zero-byte keys ending in '/' (S3 console 'Create folder', Hadoop tools) were listed as image files: each one a
    reject ('sub', 0 bytes) that a local copy of the same data does not have."""
    from pipeline.sources import discover, read_unit

    fs, options = s3
    for key in ("markers/", "markers/empty/", "markers/sub/", "markers-2/x.png", "markers.txt"):
        fs.pipe(f"zip-in/{key}", b"")
    fs.pipe("zip-in/markers/sub/a b#c::d.png", image_bytes(8, 8, 0))
    (unit,) = discover("s3://zip-in/markers", options)  # the sibling prefix markers-2/ and markers.txt are not in it
    records = list(read_unit(unit, options))
    assert [(r["kind"], r["id"]) for r in records[:-1]] == [("image", "sub/a b#c::d.png")]
    assert records[0]["data"] == image_bytes(8, 8, 0)
    assert discover("s3://zip-in/markers/empty", options) == []


def test_an_object_named_as_the_input_folder_does_not_hide_the_folders_objects(s3) -> None:
    """An object 'twin' beside keys 'twin/...' (a folder marker written without its '/'): the input 's3://b/twin/' was
    read as that one object, an empty-file reject, and the folder's images left out unseen, the run called complete."""
    from pipeline.sources import discover, input_location, read_unit

    fs, options = s3
    fs.pipe("zip-in/twin", b"")
    for name in ("a.png", "sub/b.png"):
        fs.pipe(f"zip-in/twin/{name}", image_bytes(8, 8, 0))
    (unit,) = discover("s3://zip-in/twin/", options)  # the folder, as the '/' says
    assert [r["id"] for r in read_unit(unit, options) if r["kind"] == "image"] == ["a.png", "sub/b.png"]
    assert input_location("s3://zip-in/twin/", options) == "s3://zip-in/twin"
    with pytest.raises(ValueError, match="both an object and a folder"):  # which one is meant: neither is left out unsaid
        discover("s3://zip-in/twin", options)
    (unit,) = discover("s3://zip-in/twin/a.png", options)  # an object with nothing under it is one file
    assert unit.paths == ("s3://zip-in/twin/a.png",) and input_location("s3://zip-in/twin/a.png", options) == \
        "s3://zip-in/twin"


def test_an_object_that_may_be_read_but_not_listed_beside_is_one_file(s3, monkeypatch) -> None:
    """A key readable without ListBucket (a policy granting GetObject on it alone): the look for keys under its name is
    refused, and the object is read as the one file it was before that look."""
    import s3fs

    from pipeline.sources import discover

    fs, options = s3
    fs.pipe("zip-in/granted/a.png", image_bytes(8, 8, 0))

    def refused(self, method, *args, **kwargs):
        raise PermissionError(f"{method}: Access Denied")

    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", refused)
    assert [u.paths for u in discover("s3://zip-in/granted/a.png", options)] == [("s3://zip-in/granted/a.png",)]


def test_a_bucket_that_cannot_be_read_is_not_called_missing(monkeypatch) -> None:
    """discover asked fs.exists, which s3fs answers False for a bucket on any error: a revoked key read 'input
    s3://bucket does not exist', sending the user to look for a bucket that is there."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from pipeline.sources import listing

    class Denied(MemoryFileSystem):
        def exists(self, path, **kwargs):  # as s3fs does for a bucket: any error reads as absent
            return False

        def info(self, path, **kwargs):
            raise PermissionError("Forbidden: InvalidAccessKeyId")

    monkeypatch.setattr(listing, "storage_path", lambda uri, options: (Denied(), "bucket"))
    with pytest.raises(PermissionError, match="InvalidAccessKeyId"):
        listing.discover("s3://bucket")
    monkeypatch.setattr(listing, "storage_path", lambda uri, options: (fsspec.filesystem("memory"), "/no-such"))
    with pytest.raises(FileNotFoundError, match="input s3://bucket does not exist"):
        listing.discover("s3://bucket")


def test_incremental_runs_on_s3_see_new_objects_skip_unchanged_shards_unread_and_reread_a_replaced_one(
        s3, tmp_path, monkeypatch) -> None:
    """The scheduled use, on S3: a finished output, new objects from another writer, --incremental runs in one
    long-lived process. Each run sees the new objects, and its end-of-run check lists the files this run wrote (s3fs
    caches listings in the filesystem object planning used). The record of containers read whole (pipeline.ledger),
    where a shard's version is its ETag: untouched shards are not downloaded again, and one re-uploaded with other
    content, same size, is."""
    fs, options = s3
    client = _client(options)
    objects_fetched = _count_object_reads(monkeypatch, "zip-in/ledger/")

    def put(name: str, body: bytes) -> None:  # by another writer, not through this process's s3fs (whose cached
        client.put_object(Bucket="zip-in", Key=f"ledger/{name}", Body=body)  # listing would learn of it)

    def shard(name: str, keys: range, seed: int = 0) -> None:
        put(name, tar_bytes({f"{k}.png": image_bytes(8, 8, seed + k) for k in keys}))

    shard("s-0.tar", range(2))
    shard("s-1.tar", range(2))
    put("broken.png", b"not an image")
    cfg = JobConfig(input="s3://zip-in/ledger", output="s3://zip-out/ledger", checkpoint=tiny_model_file(tmp_path),
                    steps=1, pool=4, progress=False, write_batch=8, canvas_size=32, storage_options=options)
    first = run_job(cfg)
    assert first["status"] == "complete" and objects_fetched() == {"s-0.tar", "s-1.tar", "broken.png"}

    shard("s-2.tar", range(2))
    put("3.png", image_bytes(8, 8, 3))
    incremental = JobConfig(**{**cfg.__dict__, "incremental": True})
    summary = run_job(incremental)
    second = summary["this_run"]
    assert summary["status"] == "complete"
    assert objects_fetched() == {"s-2.tar", "3.png"}  # the two shards the first run read whole are not downloaded
    assert first["this_run"]["containers_recorded"] == 2 and second["containers_skipped_unread"] == 2
    assert (second["read"], second["purified"]) == (3, 3)  # s-2.tar's keys and 3.png only
    assert summary["output_totals"] == {"purified": 7, "rejected": 1,
                                        "before_this_run": {"purified": 4, "rejected": 1}}
    data, _ = read_output("s3://zip-out/ledger", options)
    assert sorted(data["id"]) == ["3.png", *(f"s-{s}.tar/{k}" for s in range(3) for k in range(2))]

    # s-0.tar replaced by a version with other pixels and one more key: tar pads to 10240 bytes, so only the ETag
    # tells the listings apart. It is read again (its new key purified); s-1 and s-2 still are not.
    before = fs.info("zip-in/ledger/s-0.tar")
    shard("s-0.tar", range(3), seed=100)
    fs.invalidate_cache()
    after = fs.info("zip-in/ledger/s-0.tar")
    assert after["size"] == before["size"] and after["ETag"] != before["ETag"]
    third = run_job(incremental)["this_run"]
    assert objects_fetched() == {"s-0.tar"} and third["containers_skipped_unread"] == 2
    assert (third["read"], third["purified"]) == (1, 1)
    data, _ = read_output("s3://zip-out/ledger", options)
    assert sorted(data["id"]) == sorted(["3.png", *(f"s-{s}.tar/{k}" for s in range(3) for k in range(2)), "s-0.tar/2"])


# --- --retry-rejects (11e67fc) and tar shards of Kaggle-style names (9d48a82) on S3 ---

def _client(options: dict):
    import boto3

    return boto3.client("s3", aws_access_key_id=options["key"], aws_secret_access_key=options["secret"],
                        **options["client_kwargs"])


def _count_object_reads(monkeypatch, prefix: str):
    """A function giving the names of the objects under `prefix` that the job fetched since it was last called (the
    server runs in this process and answers the Ray workers' GetObject requests)."""
    from moto.s3.responses import S3Response

    fetched: list[str] = []
    get_object = S3Response.get_object

    def counted(self):
        fetched.append(f"{self.bucket_name}/{self.parse_key_name()}")
        return get_object(self)

    monkeypatch.setattr(S3Response, "get_object", counted)

    def names() -> set[str]:
        got = {key[len(prefix):] for key in fetched if key.startswith(prefix)}
        fetched.clear()
        return got

    return names


def _read_fresh(out: str, options: dict):
    """read_output through the job's own s3fs object, its listing cache dropped first: the test must see what is on
    S3, not what this process listed before."""
    from pipeline.storage import storage_path

    fs, _ = storage_path(out, options)
    fs.invalidate_cache()
    return read_output(out, options)


def _summary(fs, out: str) -> dict:
    fs.invalidate_cache()
    return json.loads(fs.cat(f"{out}/_summary.json"))


def test_retry_rejects_on_s3_reads_replaced_objects_again_and_leaves_one_row_per_input(s3, tmp_path,
                                                                                       monkeypatch) -> None:
    """The use --retry-rejects is for: damaged objects replaced in the bucket by another writer, then one run. On S3 a
    shard's version is its ETag: a replaced one is read again; one unchanged but with a reject among its ids must be
    read again too (not skipped unread by the record of containers read whole); one unchanged and all purified is
    not downloaded. A deleted object's reject row stays."""
    fs, options = s3
    client = _client(options)
    names = _count_object_reads(monkeypatch, "zip-in/retry/")

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket="zip-in", Key=f"retry/{key}", Body=body)

    put("loose.png", b"junk")
    put("gone.png", b"also junk")
    put("s.tar", tar_bytes({"0.png": image_bytes(8, 8, 10), "1.png": b"not an image"}))
    put("u.tar", tar_bytes({"0.png": image_bytes(8, 8, 20), "1.png": b"still not an image"}))  # never replaced
    put("v.tar", tar_bytes({"0.png": image_bytes(8, 8, 30)}))  # never replaced, all good
    cfg = JobConfig(input="s3://zip-in/retry", output="s3://zip-out/retry", checkpoint=tiny_model_file(tmp_path),
                    steps=1, pool=4, progress=False, write_batch=8, canvas_size=32, storage_options=options)
    first = run_job(cfg)
    assert first["status"] == "complete" and first["this_run"]["containers_recorded"] == 3
    _, rejects = _read_fresh(cfg.output, options)
    before = dict(zip(rejects["id"], rejects["error"], strict=True))
    assert set(before) == {"loose.png", "gone.png", "s.tar/1", "u.tar/1"}
    names()

    # Both damaged objects replaced with good ones (s.tar: same size, tar pads to 10240 bytes; only the ETag differs),
    # gone.png deleted.
    put("loose.png", image_bytes(8, 8, 1))
    put("s.tar", tar_bytes({"0.png": image_bytes(8, 8, 10), "1.png": image_bytes(8, 8, 11)}))
    client.delete_object(Bucket="zip-in", Key="retry/gone.png")
    summary = run_job(JobConfig(**{**cfg.__dict__, "retry_rejects": True}))
    run = summary["this_run"]
    assert summary["status"] == "complete"
    assert names() == {"loose.png", "s.tar", "u.tar"}  # v.tar is not downloaded
    assert run["containers_skipped_unread"] == 1
    assert (run["read"], run["purified"], run["rejected"]) == (3, 2, 1)  # s.tar/0 and u.tar/0 skipped, done before
    assert run["rejects_retried"] == {"earlier_rejects": 4, "purified_now": 2, "rejected_again": 1,
                                      "containers_now_read_whole": 0, "superseded": 0,
                                      "lookalikes_renamed": 0, "metadata_joined": 0}  # gone.png: 4 - 2 - 1, kept
    assert summary["output_totals"] == {"purified": 5, "rejected": 2,
                                        "before_this_run": {"purified": 3, "rejected": 4}}
    assert _summary(fs, "zip-out/retry")["this_run"]["rejects_retried"] == run["rejects_retried"]

    data, rejects = _read_fresh(cfg.output, options)
    assert data["id"].is_unique and rejects["id"].is_unique and not set(data["id"]) & set(rejects["id"])
    assert sorted(data["id"]) == ["loose.png", "s.tar/0", "s.tar/1", "u.tar/0", "v.tar/0"]
    after = dict(zip(rejects["id"], rejects["error"], strict=True))
    assert set(after) == {"gone.png", "u.tar/1"} and after["gone.png"] == before["gone.png"]
    assert decoded_size(data.set_index("id").loc["s.tar/1", "image"]) == (8, 8)


def test_incremental_runs_on_s3_drop_unreadable_of_a_reuploaded_shard_and_skip_a_shard_of_dotted_names(
        s3, tmp_path, monkeypatch) -> None:
    """Two runs, two checks. A shard cut short by an interrupted upload is '#unreadable'; the whole shard uploaded over
    it (a new ETag and size, by another writer) is read to its end by the next --incremental run, which removes that
    reject. A shard of Kaggle-style names (cat.0.jpg, cat.1.jpg) gives one image per name, and the next
    --incremental run does not download it. The checkpoint is a presigned 'https://...?X-Amz-Signature=...' URL beside
    the S3 storage options: those options went to fsspec's HTTP file system too, and the run stopped with a traceback
    ("ClientSession.__init__() got an unexpected keyword argument 'endpoint_url'"), or, with key/secret alone, with
    'checkpoint not found'."""
    fs, options = s3
    client = _client(options)
    names = _count_object_reads(monkeypatch, "zip-in/inc2/")
    whole = tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(3)})
    client.put_object(Bucket="zip-in", Key="inc2/t.tar", Body=whole[:1700])  # cut inside its second member
    cats = {f"cat.{i}.jpg": image_bytes(8, 8, 40 + i, "JPEG") for i in range(3)}
    client.put_object(Bucket="zip-in", Key="inc2/cats.tar", Body=tar_bytes({**cats, "cat.1.cls": b"3"}))
    with open(tiny_model_file(tmp_path), "rb") as f:
        fs.pipe("zip-in/models/presigned.pt", f.read())
    url = client.generate_presigned_url("get_object", ExpiresIn=3600,
                                        Params={"Bucket": "zip-in", "Key": "models/presigned.pt"})
    assert url.startswith("http://") and "Signature=" in url
    cfg = JobConfig(input="s3://zip-in/inc2", output="s3://zip-out/inc2", checkpoint=url,
                    steps=1, pool=4, progress=False, write_batch=8, canvas_size=32, storage_options=options)
    first = run_job(cfg)  # the driver checks the checkpoint, the actors load it: both through the URL alone
    assert first["status"] == "complete" and first["this_run"]["containers_recorded"] == 1  # cats.tar
    assert first["this_run"]["purified"] == 4 and "Signature=***" in first["model"]["checkpoint"]
    key_only = {"key": options["key"], "secret": options["secret"]}  # what a run on AWS itself passes
    assert load_checkpoint(url, storage_options=JobConfig(input="s3://zip-in/inc2", output="s3://zip-out/x",
                                                          checkpoint=url, storage_options=key_only)
                           .checkpoint_storage_options(), verify_only=True).sha256 == first["model"]["sha256"]
    data, rejects = _read_fresh(cfg.output, options)
    assert sorted(data["id"]) == ["cats.tar/cat.0", "cats.tar/cat.1", "cats.tar/cat.2", "t.tar/0"]
    assert data.set_index("id").loc["cats.tar/cat.1", "label"] == 3
    assert sorted(rejects["id"]) == ["t.tar#unreadable", "t.tar/1"]
    names()

    client.put_object(Bucket="zip-in", Key="inc2/t.tar", Body=whole)  # the full shard arrives
    summary = run_job(JobConfig(**{**cfg.__dict__, "incremental": True}))
    run = summary["this_run"]
    assert summary["status"] == "complete" and run["stale_rejects_removed"] == 1
    assert names() == {"t.tar"} and run["containers_skipped_unread"] == 1
    assert (run["read"], run["purified"], run["rejected"]) == (1, 1, 0)  # t.tar/2; t.tar/0 and t.tar/1 are done
    assert _summary(fs, "zip-out/inc2")["this_run"]["stale_rejects_removed"] == 1
    data, rejects = _read_fresh(cfg.output, options)
    assert sorted(data["id"]) == ["cats.tar/cat.0", "cats.tar/cat.1", "cats.tar/cat.2", "t.tar/0", "t.tar/2"]
    # the key the shard broke off in stays a reject until --retry-rejects reads it again
    assert list(rejects["id"]) == ["t.tar/1"]
    assert summary["output_totals"] == {"purified": 5, "rejected": 1,
                                        "before_this_run": {"purified": 4, "rejected": 2}}


def test_an_object_under_a_shards_id_is_refused_on_s3_before_any_work(s3, tmp_path, capsys) -> None:
    """An object store can hold an object 'x.tar' and objects under the prefix 'x.tar/': the object
    'x.tar/cat.0.jpg' would have the id of the shard's member cat.0.jpg ('x.tar/cat.0'), and one of the two would be
    lost from the output."""
    from pipeline.cli import main
    from pipeline.errors import JobError

    fs, options = s3
    fs.pipe("zip-in/collide/x.tar", tar_bytes({"cat.0.jpg": image_bytes(8, 8, 0, "JPEG")}))
    fs.pipe("zip-in/collide/x.tar/cat.0.jpg", image_bytes(8, 8, 1, "JPEG"))
    fs.pipe("zip-in/collide/y.png", image_bytes(8, 8, 2))
    model = tiny_model_file(tmp_path)
    cfg = JobConfig(input="s3://zip-in/collide", output="s3://zip-out/collide", checkpoint=model, steps=1, pool=4,
                    progress=False, canvas_size=32, storage_options=options)
    with pytest.raises(JobError, match=r"s3://zip-in/collide/x\.tar/cat\.0\.jpg \(beside s3://zip-in/collide/x\.tar\)"):
        run_job(cfg)
    endpoint = options["client_kwargs"]["endpoint_url"]
    assert main(["--input", "s3://zip-in/collide", "--output", "s3://zip-out/collide", "--s3-endpoint", endpoint,
                 "--storage-option", f"key={options['key']}", "--storage-option", f"secret={options['secret']}",
                 "--storage-option", 'client_kwargs={"region_name": "us-east-1"}', "--checkpoint", model,
                 "--steps", "1", "--canvas-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "s3://zip-in/collide/x.tar/cat.0.jpg (beside s3://zip-in/collide/x.tar); rename them" in err
    fs.invalidate_cache()
    assert not fs.exists("zip-out/collide")  # nothing written, not even the lease


def test_a_refresh_of_objects_replaced_on_s3_stopped_before_its_end_is_finished_by_the_next_run(s3, tmp_path,
                                                                                                 monkeypatch) -> None:
    """--refresh-changed on S3 (an input's version: its ETag): the journal is written, read back and removed on the
    store, and the next plain run keeps the stopped run's new rows, each id once, the journal gone."""
    import hashlib

    import pipeline.job as job_module

    fs, options = s3
    client = _client(options)

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket="zip-in", Key=f"refresh/{key}", Body=body)

    put("0.png", image_bytes(8, 8, 1))
    put("1.png", image_bytes(8, 8, 2))
    cfg = JobConfig(input="s3://zip-in/refresh", output="s3://zip-out/refresh", checkpoint=tiny_model_file(tmp_path),
                    steps=1, pool=4, progress=False, write_batch=8, canvas_size=32, storage_options=options)
    assert run_job(cfg)["status"] == "complete"
    new0 = image_bytes(8, 8, 3)
    put("0.png", new0)
    put("1.png", b"broken now")

    def stop(*args, **kwargs):
        raise RuntimeError("stopped at deduplicate_output")

    with monkeypatch.context() as patched:
        patched.setattr(job_module, "deduplicate_output", stop)
        with pytest.raises(RuntimeError):
            run_job(JobConfig(**{**cfg.__dict__, "refresh_changed": True}))
    fs.invalidate_cache()
    assert fs.exists("zip-out/refresh/_refresh/journal.json")
    resumed = run_job(cfg)
    assert resumed["status"] == "complete"
    assert (resumed["this_run"]["read"], resumed["changed_inputs"]["examples"]) == (0, [])
    assert resumed["output_totals"] == {"purified": 1, "rejected": 1, "before_this_run": {"purified": 1, "rejected": 1}}
    data, rejects = _read_fresh(cfg.output, options)
    assert list(data["id"]) == ["0.png"] and list(rejects["id"]) == ["1.png"]
    assert data["source_sha256"][0] == hashlib.sha256(new0).hexdigest()
    fs.invalidate_cache()
    assert not fs.exists("zip-out/refresh/_refresh/journal.json")
