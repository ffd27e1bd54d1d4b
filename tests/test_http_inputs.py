"""Inputs on a web server (http:// and https://, fsspec's HTTP file system): a shard's URL, or a folder's index page.
Listed URLs came back as 'http://http://host/...', so every read failed and the shard was one reject; a folder's
URL was read as one file (every URL answers 200)."""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.sources import discover, read_unit
from pipeline.storage import storage_path, with_protocol
from tests.jobutil import image_bytes, read_output, rewritten_in_place, small_job_config, tar_bytes, tiny_model_file, zip_bytes


def _shard(n: int) -> bytes:
    return tar_bytes({f"{i:04d}.png": image_bytes(32, 32, i) for i in range(n)} | {"0000.cls": b"3"})


def test_a_listed_web_address_keeps_its_one_protocol() -> None:
    fs, path = storage_path("https://example.com/data/s.tar", {})
    assert path == "https://example.com/data/s.tar"
    assert with_protocol(fs, path) == "https://example.com/data/s.tar"


def test_a_shard_given_by_its_url_is_read_whole(web) -> None:
    folder, url = web
    (folder / "s.tar").write_bytes(_shard(3))
    units = discover(url + "s.tar", {})
    assert [(u.kind, u.paths) for u in units] == [("tar", (url + "s.tar",))]
    records = [r for r in read_unit(units[0], {}) if r.get("kind") == "image"]
    assert sorted(r["id"] for r in records) == ["s.tar/0000", "s.tar/0001", "s.tar/0002"]
    assert all(r["source"].startswith(url + "s.tar:") for r in records)


def test_a_folder_url_lists_the_files_its_index_page_links(web) -> None:
    folder, url = web
    (folder / "s.tar").write_bytes(_shard(2))
    (folder / "a.png").write_bytes(image_bytes(32, 32, 7))
    units = discover(url, {})
    assert sorted((u.kind, u.paths) for u in units) == [("files", (url + "a.png",)), ("tar", (url + "s.tar",))]


def test_a_web_folder_given_without_its_slash_is_refused_naming_the_address_to_give(web) -> None:
    """The server redirects 'sub' to 'sub/' and sends the index page: it was read as one image, a reject ('not a
    recognised image format'), and the folder's files were left out of a run that ended complete."""
    from pipeline.sources import input_location

    folder, url = web
    (folder / "sub").mkdir()
    (folder / "sub" / "a.png").write_bytes(image_bytes(8, 8, 0))
    for ask in (discover, input_location):
        with pytest.raises(ValueError, match=re.escape("give it with the trailing '/'")):
            ask(url + "sub", {})
    assert [u.paths for u in discover(url + "sub/", {})] == [(url + "sub/a.png",)]
    assert [u.paths for u in discover(url + "sub/a.png", {})] == [(url + "sub/a.png",)]


def test_a_servers_address_without_a_path_is_its_root_folder_given_without_its_slash(web) -> None:
    """`--input http://host:port` (no path at all): the server sends its root's index page without a redirect, which
    was read as one image, a reject, and the run over it ended complete with none of the folder's files read."""
    from pipeline.sources import input_location

    folder, url = web
    (folder / "a.png").write_bytes(image_bytes(8, 8, 0))
    for ask in (discover, input_location):
        with pytest.raises(ValueError, match=re.escape(f"give {url} to read the files its index page links")):
            ask(url.rstrip("/"), {})
    assert [u.paths for u in discover(url, {})] == [(url + "a.png",)]


def test_containers_from_a_server_that_sends_no_length_are_read(tmp_path: Path) -> None:
    """A server that sends no Content-Length (a dynamic one, or one compressing on the fly): storage gives no size, and
    each tar, zip and Parquet file was one '#unreadable' reject, "TypeError: '<=' not supported between ... 'NoneType'
    and 'int'", its images unread."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.webutil import QuietHandler, serving

    class NoLength(QuietHandler):
        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() != "content-length":
                super().send_header(keyword, value)

    (tmp_path / "s.tar").write_bytes(_shard(2))
    (tmp_path / "z.zip").write_bytes(zip_bytes({"k.png": image_bytes(8, 8, 3)}))
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 4)]}), tmp_path / "t.parquet")
    with serving(tmp_path, NoLength) as url:
        records = [r for unit in discover(url, {}) for r in read_unit(unit, {}) if r["kind"] != "count"]
    assert sorted((r["kind"], r["id"]) for r in records) == [
        ("image", "s.tar/0000"), ("image", "s.tar/0001"), ("image", "t.parquet#0"), ("image", "z.zip/k.png")]
    assert next(r for r in records if r["id"] == "z.zip/k.png")["data"] == image_bytes(8, 8, 3)


def _no_length_handler():
    from tests.webutil import QuietHandler

    class NoLength(QuietHandler):
        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() != "content-length":
                super().send_header(keyword, value)

    return NoLength


def _large_containers(folder: Path) -> dict[str, bytes]:
    """A zip archive and a Parquet file of three images each (stored, one row group per row), each over 4 KiB: the
    images read from them, by id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = {f"k{i}.png": image_bytes(64, 64, i) for i in range(3)}
    (folder / "z.zip").write_bytes(zip_bytes(images, compression=zipfile.ZIP_STORED))
    pq.write_table(pa.table({"image": list(images.values())}), folder / "t.parquet", row_group_size=1,
                   compression="none")
    assert min((folder / "z.zip").stat().st_size, (folder / "t.parquet").stat().st_size) > 4096
    return {f"z.zip/{name}": data for name, data in images.items()} | {
        f"t.parquet#{i}": data for i, data in enumerate(images.values())}


def test_zip_and_parquet_files_over_in_memory_mb_from_a_server_that_sends_no_length_are_read_from_a_local_copy(
        tmp_path: Path, monkeypatch) -> None:
    """Both need seeking, which a stream of unknown length does not give: each such file over --in-memory-mb was one
    '#unreadable' reject ('Cannot seek streaming HTTP file'). It is copied, a chunk at a time, to a file in the local
    temporary folder, read from there while the reader runs, and deleted once it is done."""
    import tempfile

    from pipeline.sources import file_bytes
    from tests.webutil import serving

    site, spool = tmp_path / "site", tmp_path / "spool"
    site.mkdir()
    spool.mkdir()
    expected = _large_containers(site)
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    monkeypatch.setattr(file_bytes, "SPOOL_CHUNK_BYTES", 1000, raising=False)  # several chunks, as a large file's are
    read: dict[str, bytes] = {}
    with serving(site, _no_length_handler()) as url:
        for unit in discover(url, {}):
            assert unit.sizes == (None,)
            records = read_unit(unit, {}, in_memory_bytes=4096)
            first = next(records)
            copies = list(spool.iterdir())  # the copy lies there while its file is read
            assert len(copies) == 1 and copies[0].name.startswith(file_bytes.SPOOL_PREFIX)
            assert copies[0].read_bytes() == (site / unit.paths[0].rsplit("/", 1)[1]).read_bytes()
            for r in [first, *records]:
                assert r["kind"] in ("image", "count"), r
                if r["kind"] == "image":
                    read[r["id"]] = r["data"]
            assert not list(spool.iterdir())  # deleted once the file is read
        # a reader stopped early (a task cancelled) deletes its copy too
        (unit,) = discover(url + "z.zip", {})
        records = read_unit(unit, {}, in_memory_bytes=4096)
        next(records)
        assert len(list(spool.iterdir())) == 1
        records.close()
        assert not list(spool.iterdir())
    assert read == expected


def _counting_no_length_handler(sent: list[tuple[str, int, bool]]):
    """A server that sends no Content-Length and notes each body it sends in `sent`: (path, bytes sent, whether all of
    it was). Its send buffer is small, so a download the client drops after the headers (fsspec asks a file's size
    with a GET where HEAD gives none) is cut off early instead of landing whole in the kernel's buffers."""
    import socket
    import threading

    lock = threading.Lock()

    class CountingNoLength(_no_length_handler()):
        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)

        def copyfile(self, source, outputfile) -> None:
            n, whole = 0, False
            try:
                while chunk := source.read(32768):
                    outputfile.write(chunk)
                    n += len(chunk)
                whole = True
            except OSError:  # the client closed the connection
                pass
            with lock:
                sent.append((self.path, n, whole))

    return CountingNoLength


def test_a_tar_shard_over_in_memory_mb_from_a_server_that_sends_no_length_is_downloaded_once(
        tmp_path: Path, monkeypatch) -> None:
    """Such a shard was streamed from the server twice, once for its headers and once for its members (and its first
    --in-memory-mb a third time, to find it too large to hold): on a slow link, twice the download. It is copied once
    to a local file, as a zip or Parquet file of unknown size is, both passes read that copy, and the copy is deleted
    once the shard is read, also when the shard is damaged or its reading stops early. Its ids, records and rejects
    are those of a shard read from a disk."""
    import tempfile

    from pipeline.sources import file_bytes
    from tests.webutil import serving

    site, spool = tmp_path / "site", tmp_path / "spool"
    site.mkdir()
    spool.mkdir()
    images = {f"{i:04d}.png": image_bytes(128, 128, i) for i in range(40)}  # ~2 MB, none of it compressible
    whole = tar_bytes(images | {"0000.cls": b"3"})
    (site / "s.tar").write_bytes(whole)
    cut = whole[: len(whole) * 3 // 4]  # ends inside a member
    (site / "cut.tar").write_bytes(cut)
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    monkeypatch.setattr(file_bytes, "SPOOL_CHUNK_BYTES", 65536)
    sent: list[tuple[str, int, bool]] = []
    with serving(site, _counting_no_length_handler(sent)) as url:
        units = {u.paths[0].rsplit("/", 1)[1]: u for u in discover(url, {})}
        assert units["s.tar"].sizes == (None,) and units["s.tar"].stamps != (None,)  # Last-Modified: --incremental
        sent.clear()
        records = read_unit(units["s.tar"], {}, in_memory_bytes=256 * 1024)
        first = next(records)
        assert len(list(spool.iterdir())) == 1  # the copy lies there while the shard is read
        read = [first, *records]
        assert not list(spool.iterdir())
        shard_sends = [(n, done) for path, n, done in sent if path == "/s.tar"]
        assert [n for n, done in shard_sends if done] == [len(whole)]  # downloaded whole once
        assert sum(n for n, _ in shard_sends) < 1.5 * len(whole)  # the rest: the size asks' first few KiB

        from_disk = list(read_unit(discover(str(site / "s.tar"), {})[0], {}))
        assert [(r["kind"], r.get("id"), r.get("data"), r.get("meta")) for r in read if r["kind"] != "count"] == [
            (r["kind"], r.get("id"), r.get("data"), r.get("meta")) for r in from_disk if r["kind"] != "count"]

        damaged = [r for r in read_unit(units["cut.tar"], {}, in_memory_bytes=256 * 1024) if r["kind"] == "reject"]
        assert not list(spool.iterdir())
        assert damaged[-1]["id"] == "cut.tar#unreadable" and len(damaged) == 2  # the member cut short, and the shard
        records = read_unit(units["s.tar"], {}, in_memory_bytes=256 * 1024)
        next(records)
        records.close()  # a read task cancelled
        assert not list(spool.iterdir())
        rewritten_in_place(site / "s.tar", cut)  # replaced: --incremental reads it again
        assert discover(url + "s.tar", {})[0].stamps not in (units["s.tar"].stamps, (None,))


def _tar_site_with_its_own_temporary_folder(tmp_path: Path, monkeypatch) -> tuple[Path, Path, dict[str, bytes]]:
    """A site folder holding s.tar (8 images, also returned) and the temporary folder local copies go to (Python's
    tempfile pointed there), both under tmp_path."""
    import tempfile

    site, spool = tmp_path / "site", tmp_path / "spool"
    site.mkdir()
    spool.mkdir()
    images = {f"{i:04d}.png": image_bytes(64, 64, i) for i in range(8)}
    (site / "s.tar").write_bytes(tar_bytes(images))
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    return site, spool, images


def test_a_tar_shard_of_unknown_size_whose_local_copy_cannot_be_written_is_streamed_instead(
        tmp_path: Path, monkeypatch) -> None:
    """A tar shard needs no seeking: where its copy cannot be written (a full disk), it is read as before the copy
    was made, streamed twice, rather than made a reject as a zip or Parquet file then is; the half-written copy is
    gone."""

    from pipeline.sources import file_bytes
    from tests.webutil import serving

    site, spool, images = _tar_site_with_its_own_temporary_folder(tmp_path, monkeypatch)
    monkeypatch.setattr(file_bytes, "SPOOL_CHUNK_BYTES", 1000)
    real_write = os.write
    refused = []

    def full_disk(handle: int, data) -> int:
        if os.readlink(f"/proc/self/fd/{handle}").startswith(str(spool)):
            refused.append(handle)
            raise OSError(28, "No space left on device")
        return real_write(handle, data)

    monkeypatch.setattr(os, "write", full_disk)
    with serving(site, _no_length_handler()) as url:
        (unit,) = discover(url + "s.tar", {})
        records = [r for r in read_unit(unit, {}, in_memory_bytes=4096) if r["kind"] != "count"]
    assert refused and not list(spool.iterdir())
    assert {r["id"]: r["data"] for r in records if r["kind"] == "image"} == {
        f"s.tar/{name[:-4]}": data for name, data in images.items()}
    assert all(r["kind"] == "image" for r in records)


def test_copies_left_by_dead_read_tasks_are_deleted_when_a_new_copy_is_made_and_live_ones_kept(
        tmp_path: Path, monkeypatch) -> None:
    """A read task killed mid-read (SIGKILL, out of memory) never deleted its copy: such leftovers stayed in the
    temporary folder forever, and enough of them turned later copies into full-disk rejects. A copy's name says which
    process of which host made it; a new copy deletes those of this host's processes that no longer exist, and keeps
    a live process's (a reader may reopen its copy by name), another host's, and files named otherwise."""
    import socket
    import subprocess
    import tempfile

    from pipeline.sources import file_bytes
    from tests.webutil import serving

    site, spool = tmp_path / "site", tmp_path / "spool"
    site.mkdir()
    spool.mkdir()
    expected = _large_containers(site)
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    child = subprocess.Popen(["true"])
    child.wait()  # its process id is now no process's
    host = file_bytes._host()
    assert host and host.partition("_")[0] in socket.gethostname()
    dead = spool / f"{file_bytes.SPOOL_PREFIX}{child.pid}@{host}.ab12cd_x"
    live = spool / f"{file_bytes.SPOOL_PREFIX}{os.getpid()}@{host}.ef34gh56"
    elsewhere = spool / f"{file_bytes.SPOOL_PREFIX}{child.pid}@other-host.example.ij78kl90"
    # a container of this host name with its own process ids (host networking, a shared folder): its ids are not ours
    other_ids = spool / f"{file_bytes.SPOOL_PREFIX}{child.pid}@{host.partition('_')[0]}_1.mn12op34"
    unrelated = spool / f"{file_bytes.SPOOL_PREFIX}notes.txt"
    for leftover in (dead, live, elsewhere, other_ids, unrelated):
        leftover.write_bytes(b"x" * 5000)
    with serving(site, _no_length_handler()) as url:
        (unit,) = discover(url + "z.zip", {})
        records = read_unit(unit, {}, in_memory_bytes=4096)
        first = next(records)
        (copy,) = set(spool.iterdir()) - {live, elsewhere, other_ids, unrelated}  # the dead process's copy is gone
        assert copy.name.startswith(f"{file_bytes.SPOOL_PREFIX}{os.getpid()}@{host}.")
        rest = list(records)
    assert {r["id"]: r["data"] for r in [first, *rest] if r["kind"] == "image"} == {
        k: v for k, v in expected.items() if k.startswith("z.zip/")}
    assert set(spool.iterdir()) == {live, elsewhere, other_ids, unrelated}  # its own copy deleted once read, others kept


def test_a_local_copy_that_cannot_be_written_is_the_files_reject_and_is_deleted(tmp_path: Path, monkeypatch) -> None:
    """A full disk while copying a file of unknown size: the file's '#unreadable' reject says where it was copying
    and what to do, and the half-written copy is gone."""
    import tempfile

    from pipeline.sources import file_bytes
    from tests.webutil import serving

    site = tmp_path / "site"
    site.mkdir()
    spool = Path(tempfile.mkdtemp(prefix="sp", dir="/tmp"))  # short, as /tmp is: the whole reason kept, folder too
    _large_containers(site)
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    monkeypatch.setattr(file_bytes, "SPOOL_CHUNK_BYTES", 1000)
    written = []
    real_write = os.write

    def full_disk(handle: int, data) -> int:  # in the spool folder the first chunk lands, then the disk is full
        if not os.readlink(f"/proc/self/fd/{handle}").startswith(str(spool)):
            return real_write(handle, data)
        if written:
            raise OSError(28, "No space left on device")
        written.append(bytes(data))
        return real_write(handle, data)

    monkeypatch.setattr(os, "write", full_disk)
    try:
        with serving(site, _no_length_handler()) as url:
            (unit,) = discover(url + "z.zip", {})
            records = list(read_unit(unit, {}, in_memory_bytes=4096))
        assert [(r["kind"], r.get("id")) for r in records[:1]] == [("reject", "z.zip#unreadable")]
        # TMPDIR is read where the copy is made: on a Ray cluster a worker's, not the shell the job was started from
        assert records[0]["error"] == (
            "unreadable zip file: SpoolFailed: no size on storage and over --in-memory-mb, so copied to read it: "
            "writing the copy failed (No space left on device); set TMPDIR to a larger disk on the workers "
            f"(runtime_env env_vars or the nodes' environment), or free space in {spool}")
        assert written and not list(spool.iterdir())
    finally:
        monkeypatch.undo()
        shutil.rmtree(spool, ignore_errors=True)


def test_a_presigned_shard_url_is_read_as_a_shard_and_its_signature_is_written_nowhere(web, tmp_path: Path) -> None:
    """A presigned URL of a shard ('s.tar?X-Amz-Signature=...') was read as one image file, a reject ('it is a tar
    archive'), with the signature and credential in its id and source, so in the output's rows."""
    from pipeline.ledger import ContainerRead, read_ledger, write_ledger

    folder, url = web
    (folder / "s.tar").write_bytes(_shard(2))
    (folder / "a.png").write_bytes(image_bytes(8, 8, 1))
    query = "X-Amz-Credential=AKIDSECRETKEY%2F20261205&X-Amz-Date=20261205T000000Z&X-Amz-Signature=SIGSECRET123"
    records = [r for given in (f"{url}s.tar?{query}", f"{url}a.png?sv=2024&sig=SIGSECRET123")
               for unit in discover(given, {}) for r in read_unit(unit, {}) if r["kind"] != "count"]
    assert sorted((r["kind"], r["id"]) for r in records) == [
        ("image", "a.png"), ("image", "s.tar/0000"), ("image", "s.tar/0001")]
    assert not [r for r in records if "SECRET" in r["id"] or "SECRET" in r["source"]]
    assert f"{url}s.tar?X-Amz-Credential=***&X-Amz-Date=20261205T000000Z&X-Amz-Signature=***:0000.png" in {
        r["source"] for r in records}
    # the record of containers read whole leaves the presigned one out (it is read again, its done ids skipped)
    signed = f"{url}s.tar?{query}"
    write_ledger(str(tmp_path / "out"), {}, {signed: ContainerRead(signed, 10, "{}", 2, "0" * 64),
                                           url + "t.tar": ContainerRead(url + "t.tar", 10, "{}", 2, "0" * 64)})
    assert "SECRET" not in (tmp_path / "out" / "_containers" / "containers.json").read_text()
    assert list(read_ledger(str(tmp_path / "out"), {})) == [url + "t.tar"]


def test_the_job_purifies_a_web_folder_names_each_source_and_incremental_runs_skip_an_unchanged_shard_unread(
        web, tmp_path: Path) -> None:
    """The job purifies a web folder, each row's source its URL. The next --incremental run skips the unchanged shard
    unread, and one after it reads again a shard replaced by one of the same size."""
    folder, url = web
    shard = folder / "s.tar"
    shard.write_bytes(_shard(2))
    (folder / "a.png").write_bytes(image_bytes(32, 32, 7))
    out = tmp_path / "out"
    cfg = JobConfig(input=url, output=str(out), checkpoint=tiny_model_file(tmp_path), steps=2, canvas_size=32,
                    progress=False)
    summary = run_job(cfg)
    assert summary["status"] == "complete" and summary["this_run"]["purified"] == 3
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == ["a.png", "s.tar/0000", "s.tar/0001"] and rejects.empty
    assert dict(zip(data["id"], data["source"], strict=True))["a.png"] == url + "a.png"
    incremental = JobConfig(**{**cfg.__dict__, "incremental": True})
    again = run_job(incremental)["this_run"]
    assert (again["containers_skipped_unread"], again["read"]) == (1, 0)

    # Same size, other bytes, a later Last-Modified: the server's header is all that tells it changed.
    shard.write_bytes(_shard(2)[::-1])
    later = shard.stat().st_mtime + 5
    os.utime(shard, (later, later))
    changed = run_job(incremental)["this_run"]
    assert changed["containers_skipped_unread"] == 0  # read again: its garbage is now a reject
    _, rejects = read_output(str(out))
    assert list(rejects["id"]) == ["s.tar#unreadable"]


def test_a_web_folder_gives_its_shards_sizes_and_version_stamps(web) -> None:
    """The index page lists no sizes or versions: each shard is asked once (HEAD), an image file is not."""
    folder, url = web
    (folder / "s.tar").write_bytes(_shard(2))
    (folder / "a.png").write_bytes(image_bytes(32, 32, 7))
    units = {u.kind: u for u in discover(url, {})}
    assert units["tar"].sizes == ((folder / "s.tar").stat().st_size,)
    assert "Last-Modified" in json.loads(units["tar"].stamps[0])
    assert units["files"].sizes == (None,)


@pytest.mark.parametrize("output", ["http://127.0.0.1:1/out", "HTTPS://example.com/out"])
def test_a_web_address_as_output_is_refused_before_any_work(output: str) -> None:
    with pytest.raises(JobError, match="--output must be storage the job can write .* HTTP\\(S\\) is read-only"):
        JobConfig(output=output).check()


def _index(folder: Path, *links: str, text: str = "") -> None:
    """`folder`'s index page (http.server serves index.html for it): an <a> tag for each link, then `text`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text("<html>" + "".join(f"<a href={link}>x</a>" for link in links) + text + "</html>")


def test_a_web_folders_links_are_resolved_against_the_folder(web) -> None:
    """A link's query stays, its fragment goes; an absolute link (same server) and a percent-encoded name are kept as
    given; a sort link (Apache's '?C=N;O=D') is the folder itself."""
    folder, url = web
    _index(folder / "data", '"q.png?v=1"', '"f.png#top"', f'"{url}data/abs.png"', '"/data/rooted.png"',
           '"a%20b.png"', '"?C=N;O=D"', "'single.png'", '"sub/"')
    _index(folder / "data" / "sub", '"in.png"', '"../up.png"', '"./"')
    units = discover(url + "data/", {})
    assert sorted(p for u in units for p in u.paths) == [url + f"data/{name}" for name in (
        "a%20b.png", "abs.png", "f.png", "q.png?v=1", "rooted.png", "single.png", "sub/in.png", "up.png")]


def test_a_web_folders_links_are_the_href_of_its_a_tags_as_html_reads_them(web) -> None:
    """Entities are unescaped (nginx writes 'a&b.png' as 'a&amp;b.png'), an href may be unquoted, upper case or have
    spaces around it; a URL only written in the page's text is not a link, nor a mailto: link."""
    folder, url = web
    _index(folder / "data", '"a&amp;b.png"', "unquoted.png", '" spaced.png "', '"mailto:x@example.com"',
           text=f'<A HREF="upper.png">x</A><p>{url}data/text.png</p>')
    units = discover(url + "data/", {})
    assert sorted(p for u in units for p in u.paths) == [url + f"data/{name}" for name in (
        "a&b.png", "spaced.png", "unquoted.png", "upper.png")]


def test_a_subfolders_absolute_link_back_into_the_folder_is_kept(web) -> None:
    """As a relative one ('../x.png') is: each file once, whichever page links it."""
    folder, url = web
    _index(folder / "data", '"sub/"', '"x.png"')
    _index(folder / "data" / "sub", f'"{url}data/x.png"', '"/data/y.png"', '"../x.png"')
    units = discover(url + "data/", {})
    assert sorted(p for u in units for p in u.paths) == [url + "data/x.png", url + "data/y.png"]


def test_a_web_folders_index_pages_are_asked_with_the_storage_options(tmp_path: Path) -> None:
    """Headers given for the server (an Authorization) go with every index page's request (this server asks for it on
    GET only, so that without it the folder is found, then not listed)."""
    from tests.webutil import QuietHandler, serving

    class Private(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            if self.headers.get("Authorization") != "Bearer t":
                self.send_error(403)
            else:
                super().do_GET()

    _index(tmp_path / "data" / "sub", '"in.png"')
    _index(tmp_path / "data", '"sub/"', '"a.png"')
    with serving(tmp_path, Private) as url:
        units = discover(url + "data/", {"headers": {"Authorization": "Bearer t"}})
        assert sorted(p for u in units for p in u.paths) == [url + "data/a.png", url + "data/sub/in.png"]
        with pytest.raises(Exception, match="403"):
            discover(url + "data/", {})


def test_a_web_folders_ids_labels_and_partitions_are_its_names_not_their_url_escapes(web) -> None:
    """An index page links 'road signs/stop sign.png' as 'road%20signs/stop%20sign.png' (python's http.server, nginx
    and Apache escape spaces, '=' and non-ASCII): the ids, --labels-from-folders labels and Hive partition values were
    the escaped text ('road%20signs', 'caf%C3%A9.png', no partition at all since '=' came as '%3D'), unlike the same
    files on a disk or an object store, and exported files got those names."""
    folder, url = web
    (folder / "road signs").mkdir()
    (folder / "road signs" / "stop sign.png").write_bytes(image_bytes(32, 32, 1))
    (folder / "café.png").write_bytes(image_bytes(32, 32, 2))
    (folder / "day=2026-01-01").mkdir()
    (folder / "day=2026-01-01" / "my shard.tar").write_bytes(_shard(1))
    units = discover(url, {})
    records = [r for u in units for r in read_unit(u, {}, labels_from_folders=True, partitioning="hive")
               if r.get("kind") == "image"]
    by_id = {r["id"]: r for r in records}
    assert sorted(by_id) == ["café.png", "day=2026-01-01/my shard.tar/0000", "road signs/stop sign.png"]
    assert by_id["road signs/stop sign.png"]["meta"]["label"] == "road signs"
    assert by_id["day=2026-01-01/my shard.tar/0000"]["meta"]["day"] == "2026-01-01"
    assert by_id["café.png"]["source"] == url + "caf%C3%A9.png"  # the source stays the address it was read from


def test_a_web_file_linked_in_two_spellings_is_one_input(web) -> None:
    """'%61.png', 'sub/%2E%2E/a.png' and 'a.png' are one name, so one id: listed twice, the file would give its id
    twice."""
    folder, url = web
    (folder / "data").mkdir()
    (folder / "data" / "a.png").write_bytes(image_bytes(32, 32, 3))
    _index(folder / "data", '"a.png"', '"%61.png"', '"b%20c.png"', '"b c.png"', '"sub/%2E%2E/a.png"')
    units = discover(url + "data/", {})
    assert sorted(p for u in units for p in u.paths) == [url + "data/a.png", url + "data/b%20c.png"]


@pytest.mark.parametrize("links", [('"a%3Fb.png"', '"a?b.png"'), ('"a?b.png"', '"a%3Fb.png"')])
def test_two_web_files_that_give_one_id_are_refused_naming_both(web, links: tuple[str, str]) -> None:
    """'a%3Fb.png' is the file 'a?b.png'; 'a?b.png' is the file 'a' asked with the query 'b.png': two files, one id
    once decoded. The second link was taken for a second spelling of the first and left out unsaid."""
    folder, url = web
    (folder / "data").mkdir()
    (folder / "data" / "a?b.png").write_bytes(image_bytes(32, 32, 1))
    (folder / "data" / "a").write_bytes(image_bytes(32, 32, 2))
    _index(folder / "data", *links, '"q.png?v=1"', '"q.png?v%3D1"')  # one query in two spellings: one file
    first, second = (re.escape(url + "data/" + link.strip('"')) for link in links)
    with pytest.raises(ValueError, match=rf"1 pair\(s\) of links give one id: {first} and {second}; rename one"):
        discover(url + "data/", {})


def test_a_tar_shard_of_unknown_size_is_streamed_where_no_local_copy_can_be_made(tmp_path: Path, monkeypatch) -> None:
    """The temporary folder is gone (removed since the worker found it) or cannot be written: the copy could not even
    be made, and the whole shard was one '#unreadable' reject (FileNotFoundError), its images unread, where before
    such a shard was copied it was streamed twice. It is streamed, as on a full disk; a zip or Parquet file, which
    cannot be streamed, is a reject that says what to do."""
    import tempfile

    from tests.webutil import serving

    site = tmp_path / "site"
    site.mkdir()
    images = {f"{i:04d}.png": image_bytes(64, 64, i) for i in range(8)}
    (site / "s.tar").write_bytes(tar_bytes(images))
    (site / "z.zip").write_bytes(zip_bytes(images, compression=zipfile.ZIP_STORED))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "removed"))
    with serving(site, _no_length_handler()) as url:
        (shard,) = discover(url + "s.tar", {})
        records = [r for r in read_unit(shard, {}, in_memory_bytes=4096) if r["kind"] != "count"]
        (archive,) = discover(url + "z.zip", {})
        (reject,) = [r for r in read_unit(archive, {}, in_memory_bytes=4096) if r["kind"] != "count"]
    assert {r["id"]: r.get("data") for r in records} == {f"s.tar/{name[:-4]}": data for name, data in images.items()}
    assert reject["id"] == "z.zip#unreadable" and "set TMPDIR on the workers to a folder they can write" in \
        reject["error"], reject


def test_a_local_copy_whose_download_fails_as_it_is_closed_is_deleted(tmp_path: Path, monkeypatch) -> None:
    """The copy was handed to the reading's stack only once the download was closed: an error there (a connection
    reset, retried as a transient error) left the whole copy in the temporary folder for as long as the worker
    lived, beside the copy the retry made."""

    import fsspec.implementations.http as http

    from tests.webutil import serving

    site, spool, images = _tar_site_with_its_own_temporary_folder(tmp_path, monkeypatch)
    real_close, resets = http.HTTPStreamFile.close, []

    def close(self) -> None:
        real_close(self)
        if not resets:
            resets.append(self.url)
            raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(http.HTTPStreamFile, "close", close)
    with serving(site, _no_length_handler()) as url:
        (unit,) = discover(url + "s.tar", {})
        records = [r for r in read_unit(unit, {}, in_memory_bytes=4096) if r["kind"] != "count"]
    assert resets and not list(spool.iterdir())
    assert {r["id"]: r.get("data") for r in records} == {f"s.tar/{name[:-4]}": data for name, data in images.items()}


def test_a_password_in_a_web_folders_url_is_written_nowhere_in_the_output(web, tmp_path: Path, capfd) -> None:
    """A web folder read as 'http://user:password@host/shards/' lists its files with the password in their URLs: every
    row's and reject's `source` kept it in plain text, and a file that could not be read kept it in its error too
    ('could not read file: FileNotFoundError: http://alice:s3cretpw@...'), in the output's Parquet for anyone who
    reads it. Now it is '***' there as in the job's own records; a second, incremental run adds nothing of it."""
    folder, url = web
    (folder / "s.tar").write_bytes(_shard(2))
    (folder / "a.png").write_bytes(image_bytes(32, 32, 7))
    (folder / "bad.png").write_bytes(b"not an image")
    _index(folder, "s.tar", "a.png", "bad.png", "gone.png")  # gone.png: linked, not there (a 404 when read)
    given = url.replace("http://", "http://alice:s3cretpw@")
    out = tmp_path / "out"
    for incremental in (False, True):
        summary = run_job(JobConfig(input=given, output=str(out), checkpoint=tiny_model_file(tmp_path), steps=2,
                                    canvas_size=32, progress=False, incremental=incremental))
        assert summary["status"] == "complete"
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == ["a.png", "s.tar/0000", "s.tar/0001"]
    assert sorted(rejects["id"]) == ["bad.png", "gone.png"]
    shown = url.replace("http://", "http://alice:***@")
    assert set(data["source"]) == {shown + "a.png", shown + "s.tar:0000.png", shown + "s.tar:0001.png"}
    assert set(rejects["source"]) == {shown + "bad.png", shown + "gone.png"}
    assert shown + "gone.png" in dict(zip(rejects["id"], rejects["error"], strict=True))["gone.png"]
    leaks = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and b"s3cretpw" in p.read_bytes()]
    assert leaks == []
    printed = capfd.readouterr()
    assert "s3cretpw" not in printed.out + printed.err



def _redirecting_to_signed(path: str) -> type:
    """A web server that redirects `path` to a presigned address (its key id AKIAEXAMPLEKEY, its signature SECRETSIG)
    that gives the file's size but refuses its bytes, as one whose signature has expired."""
    from tests.webutil import QuietHandler

    class RedirectsToSigned(QuietHandler):
        def do_GET(self) -> None:
            if self.path.startswith(path):
                self.send_response(302)
                self.send_header("Location", f"/signed{path}?X-Amz-Credential=AKIAEXAMPLEKEY&X-Amz-Signature=SECRETSIG")
                self.end_headers()
            elif self.path.startswith("/signed/"):
                self.send_response(200 if self.command == "HEAD" else 403)
                self.send_header("Content-Length", "100" if self.command == "HEAD" else "0")
                self.end_headers()
            else:
                super().do_GET()

        do_HEAD = do_GET

    return RedirectsToSigned

def test_a_reject_s_reason_keeps_no_credentials_of_a_signed_address_the_server_redirected_to(tmp_path: Path) -> None:
    """A web server redirects an image to a presigned address (S3's, a CDN's) that refuses it: the reject's reason,
    stored in the output data set's rejects table, quoted that address whole, its X-Amz-Credential and signature
    included, though no URI the job was given held them."""
    from tests.webutil import serving

    site = tmp_path / "site"
    site.mkdir()
    (site / "a.png").write_bytes(image_bytes(32, 32, 1))
    (site / "b.png").write_bytes(image_bytes(32, 32, 2))
    out = tmp_path / "out"
    with serving(site, _redirecting_to_signed("/b.png")) as url:
        summary = run_job(small_job_config(tmp_path, tiny_model_file(tmp_path), input=url, output=str(out)))
    data, rejects = read_output(str(out))
    assert list(data["id"]) == ["a.png"] and list(rejects["id"]) == ["b.png"], summary
    reason = rejects["error"].iloc[0]
    assert "403" in reason and "X-Amz-Signature=***" in reason, reason
    assert "SECRETSIG" not in reason and "AKIAEXAMPLEKEY" not in reason
    assert "SECRETSIG" not in json.dumps(summary)


def test_a_checkpoint_refused_at_a_signed_address_it_was_redirected_to_is_said_without_its_credentials(
        tmp_path: Path, capsys) -> None:
    """`--checkpoint https://host/prior.pt`, redirected to a presigned address whose signature has expired: the error
    line printed the address whole, key id and signature (stderr ends up in CI logs and schedulers' histories)."""
    from pipeline import cli
    from tests.webutil import serving

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(32, 32, 1))
    with serving(tmp_path, _redirecting_to_signed("/prior.pt")) as url:
        code = cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                         "--checkpoint", url + "prior.pt", "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot read checkpoint" in err and "X-Amz-Signature=***" in err, err
    assert "SECRETSIG" not in err and "AKIAEXAMPLEKEY" not in err
