"""What counting tar shards' keys before a run (`pipeline.sources.tar_count`) costs where it cannot succeed: a web
server that ignores Range sent every shard whole (each ranged request answered with the whole file, read to its end)
before the count gave up, for every http:// WebDataset run; and one shard that cannot be counted (damaged) leaves
the total unknown, yet the walk went on over every other shard."""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path

from pipeline.sources.read_budget import MAX_READS, ReadBudget
from pipeline.sources.tar_count import count_keys
from pipeline.sources.units import ReadUnit
from tests.jobutil import dry_run_input_line, image_bytes, tar_bytes
from tests.test_tar_counts import others_after_the_first_gives_up
from tests.webutil import QuietHandler, serving

SHARD_MIB = 48


def _sending_counted(sent: list[int]) -> type[QuietHandler]:
    class Counting(QuietHandler):  # like http.server, it ignores Range: every GET is answered with the whole file
        def setup(self) -> None:
            super().setup()
            # what is written ahead of the client's reading (kernel buffers) stays small beside the shard
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2**16)

        def copyfile(self, source, outputfile) -> None:
            try:
                while chunk := source.read(65536):
                    outputfile.write(chunk)
                    sent.append(len(chunk))
            except OSError:  # the client closed the connection: it has what it wanted
                pass

    return Counting


def test_a_web_server_ignoring_range_is_not_sent_whole_shards_by_the_dry_runs_count(tmp_path: Path, model,
                                                                                     capsys) -> None:
    site = tmp_path / "site"
    site.mkdir()
    large = b"\0" * (SHARD_MIB * 2**20)  # a member past the first block: its next header is read at an offset
    shard = tar_bytes({"0000.png": image_bytes(8, 8, 0), "0001.png": large, "0002.png": image_bytes(8, 8, 2)})
    (site / "s.tar").write_bytes(shard)
    sent: list[int] = []
    with serving(site, _sending_counted(sent)) as url:
        line = dry_run_input_line(tmp_path, model, capsys, input_uri=url + "s.tar")
    assert "images counted when read: s.tar: its storage does not serve byte ranges)" in line, line
    # what the server got out before the client hung up (the sockets' buffers), not the shard's 48 MiB
    assert sum(sent) < len(shard) / 3, sum(sent)


def test_the_walk_stops_at_the_first_shard_that_cannot_be_counted(tmp_path: Path, monkeypatch) -> None:
    units = []
    for i in range(200):
        path = tmp_path / f"s{i:03d}.tar"
        data = tar_bytes({f"{k:04d}.png": image_bytes(8, 8, k) for k in range(3)} | {"big.png": b"\0" * 2**17})
        path.write_bytes(data[:-1500] if i == 0 else data)  # the first is cut short: the total is unknown
        units.append(ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,)))
    given_up = others_after_the_first_gives_up(monkeypatch, "s000.tar")
    budget = ReadBudget()
    counted = count_keys(units, {}, {}, join_metadata=False, budget=budget)
    assert counted.left is None and counted.why.startswith("s000.tar: it is damaged"), counted
    # every plain shard takes 2 reads (its large member's): 398 when all were walked; those begun once the first gave
    # up take none
    assert given_up.is_set() and MAX_READS - budget.left < 100, MAX_READS - budget.left


class _Ranged(QuietHandler):
    """A web server that serves byte ranges (206 and Content-Range), as nginx and S3's web endpoints do."""

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        data, (start, end) = path.read_bytes(), map(int, match.groups())
        part = data[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{start + len(part) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        return io.BytesIO(part)


def test_shards_on_a_web_server_that_serves_ranges_are_counted(tmp_path: Path, model, capsys) -> None:
    site = tmp_path / "site"
    site.mkdir()
    members = {f"{k:04d}.png": image_bytes(8, 8, k) for k in range(5)} | {"0000.cls": b"1", "big.png": b"\0" * 2**17}
    (site / "s.tar").write_bytes(tar_bytes(members))  # a member past the first block: a ranged read at an offset
    with serving(site, _Ranged) as url:
        line = dry_run_input_line(tmp_path, model, capsys, input_uri=url + "s.tar")
    assert "; 6 images to read), " in line, line
