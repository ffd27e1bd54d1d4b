"""Object storage end to end: every source format read from s3:// and the output written to s3://,
against a real moto server process (Ray workers are other processes; in-process mocks cannot reach them)."""

from __future__ import annotations

import io
import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import JobConfig, run_job
from tests.jobutil import decoded_size, image_bytes, read_output, tar_bytes, tiny_model_file

pytestmark = pytest.mark.usefixtures("ray_local")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
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


def test_every_source_format_from_s3_to_s3(s3, tmp_path) -> None:
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

    cfg = JobConfig(input="s3://zip-in/ds", output="s3://zip-out/run1", checkpoint="s3://zip-in/models/tiny.pt",
                    steps=2, pool=4, progress=False, storage_options=options)
    summary = run_job(cfg)
    assert summary["this_run"]["read"] == 5
    data, rejects = read_output("s3://zip-out/run1", options)
    assert sorted(data["id"]) == ["files/cat/a.png", "files/dog/b.jpg", "shards/s-0.tar.gz/k/0", "tables/t.parquet#0"]
    assert list(rejects["id"]) == ["files/dog/broken.png"]
    sizes = {r["id"]: decoded_size(r["image"]) for _, r in data.iterrows()}
    assert sizes["files/dog/b.jpg"] == (40, 24) and sizes["tables/t.parquet#0"] == (8, 16)
    assert data.set_index("id").loc["shards/s-0.tar.gz/k/0", "label"] == 7
    # Credentials never reach the summary.
    text = fs.cat("zip-out/run1/_summary.json").decode()
    assert "testing-secret-value" not in text and "testing-key" not in text
    assert json.loads(text)["status"] == "complete"


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


def test_incremental_runs_on_s3_see_the_files_they_wrote(s3, tmp_path) -> None:
    """The scheduled use: a finished output on S3, new inputs, --incremental. The end-of-run check must list the files
    this run wrote (s3fs caches listings in the filesystem object planning used)."""
    fs, options = s3
    for i in range(3):
        fs.pipe(f"zip-in/inc/{i}.png", image_bytes(32, 32, i))
    fs.pipe("zip-in/inc/broken.png", b"not an image")
    model_path = tiny_model_file(tmp_path)
    cfg = JobConfig(input="s3://zip-in/inc", output="s3://zip-out/inc", checkpoint=model_path, steps=2, pool=4,
                    progress=False, storage_options=options)
    assert run_job(cfg)["status"] == "complete"
    # A new input from another writer (not through this process's s3fs, whose cached listing would learn of it):
    # a scheduler calling run_job in one long-lived process must still see it.
    import boto3

    client = boto3.client("s3", aws_access_key_id=options["key"], aws_secret_access_key=options["secret"],
                          **options["client_kwargs"])
    client.put_object(Bucket="zip-in", Key="inc/3.png", Body=image_bytes(32, 32, 3))
    summary = run_job(JobConfig(**{**cfg.__dict__, "incremental": True}))
    assert summary["status"] == "complete" and summary["this_run"]["purified"] == 1
    assert summary["output_totals"] == {"purified": 4, "rejected": 1,
                                        "before_this_run": {"purified": 3, "rejected": 1}}
    data, _ = read_output("s3://zip-out/inc", options)
    assert sorted(data["id"]) == ["0.png", "1.png", "2.png", "3.png"]


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
    assert "1 image files to read" in capsys.readouterr().out
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


def test_an_output_prefix_with_glob_characters_is_written_on_s3(s3, tmp_path) -> None:
    """fsspec's generic mv and rm (which s3fs uses) expand '[...]' as a pattern: every job whose output prefix held
    one (a run named 'run[1]') stopped with 'cannot write to output ...: FileNotFoundError' before any work."""
    fs, options = s3
    for i in range(2):
        fs.pipe(f"zip-in/glob/{i}.png", image_bytes(32, 32, i))
    cfg = JobConfig(input="s3://zip-in/glob", output="s3://zip-out/run[1]", checkpoint=tiny_model_file(tmp_path),
                    steps=2, pool=4, progress=False, storage_options=options)
    assert run_job(cfg)["status"] == "complete"
    data, rejects = read_output("s3://zip-out/run[1]", options)
    assert sorted(data["id"]) == ["0.png", "1.png"] and rejects.empty
    fs.invalidate_cache()
    left = [p for p in fs.find("zip-out/run[1]") if p.rsplit("/", 1)[-1].startswith(".")]
    assert left == [], f"temporary files left behind: {left}"


def test_a_bucket_that_cannot_be_read_is_not_called_missing(monkeypatch) -> None:
    """discover asked fs.exists, which s3fs answers False for a bucket on any error: a revoked key read 'input
    s3://bucket does not exist', sending the user to look for a bucket that is there."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from pipeline import sources

    class Denied(MemoryFileSystem):
        def exists(self, path, **kwargs):  # as s3fs does for a bucket: any error reads as absent
            return False

        def info(self, path, **kwargs):
            raise PermissionError("Forbidden: InvalidAccessKeyId")

    monkeypatch.setattr(sources, "storage_path", lambda uri, options: (Denied(), "bucket"))
    with pytest.raises(PermissionError, match="InvalidAccessKeyId"):
        sources.discover("s3://bucket")
    monkeypatch.setattr(sources, "storage_path", lambda uri, options: (fsspec.filesystem("memory"), "/no-such"))
    with pytest.raises(FileNotFoundError, match="input s3://bucket does not exist"):
        sources.discover("s3://bucket")


def test_incremental_runs_on_s3_skip_unchanged_shards_unread_and_reread_a_replaced_one(s3, tmp_path,
                                                                                      monkeypatch) -> None:
    """The record of containers read whole (pipeline.ledger) on S3, where a shard's version is its ETag: untouched
    shards are not downloaded again, and one re-uploaded with other content, same size, is."""
    import boto3
    from moto.s3.responses import S3Response

    fs, options = s3
    client = boto3.client("s3", aws_access_key_id=options["key"], aws_secret_access_key=options["secret"],
                          **options["client_kwargs"])
    # The server runs in this process: count the GetObject requests the job's workers send it, by key.
    fetched: list[str] = []
    get_object = S3Response.get_object

    def counted(self):
        fetched.append(f"{self.bucket_name}/{self.parse_key_name()}")
        return get_object(self)

    monkeypatch.setattr(S3Response, "get_object", counted)

    def shards_fetched() -> set[str]:
        got = {key.rsplit("/", 1)[-1] for key in fetched if key.startswith("zip-in/ledger/")}
        fetched.clear()
        return got

    def shard(name: str, keys: range, seed: int = 0) -> None:  # written by another writer, as in the scheduled use
        body = tar_bytes({f"{k}.png": image_bytes(8, 8, seed + k) for k in keys})
        client.put_object(Bucket="zip-in", Key=f"ledger/{name}", Body=body)

    shard("s-0.tar", range(2))
    shard("s-1.tar", range(2))
    cfg = JobConfig(input="s3://zip-in/ledger", output="s3://zip-out/ledger", checkpoint=tiny_model_file(tmp_path),
                    steps=1, pool=4, progress=False, write_batch=8, canvas_size=32, storage_options=options)
    first = run_job(cfg)
    assert first["status"] == "complete" and shards_fetched() == {"s-0.tar", "s-1.tar"}

    shard("s-2.tar", range(2))
    incremental = JobConfig(**{**cfg.__dict__, "incremental": True})
    second = run_job(incremental)["this_run"]
    assert shards_fetched() == {"s-2.tar"}  # the two shards the first run read whole are not downloaded
    assert first["this_run"]["containers_recorded"] == 2 and second["containers_skipped_unread"] == 2
    assert (second["read"], second["purified"]) == (2, 2)  # s-2.tar's keys only
    data, _ = read_output("s3://zip-out/ledger", options)
    assert sorted(data["id"]) == [f"s-{s}.tar/{k}" for s in range(3) for k in range(2)]

    # s-0.tar replaced by a version with other pixels and one more key: tar pads to 10240 bytes, so only the ETag
    # tells the listings apart. It is read again (its new key purified); s-1 and s-2 still are not.
    before = fs.info("zip-in/ledger/s-0.tar")
    shard("s-0.tar", range(3), seed=100)
    fs.invalidate_cache()
    after = fs.info("zip-in/ledger/s-0.tar")
    assert after["size"] == before["size"] and after["ETag"] != before["ETag"]
    third = run_job(incremental)["this_run"]
    assert shards_fetched() == {"s-0.tar"} and third["containers_skipped_unread"] == 2
    assert (third["read"], third["purified"]) == (1, 1)
    data, _ = read_output("s3://zip-out/ledger", options)
    assert sorted(data["id"]) == sorted([f"s-{s}.tar/{k}" for s in range(3) for k in range(2)] + ["s-0.tar/2"])
