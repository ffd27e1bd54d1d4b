"""Mutation audit of the export's writes (`pipeline.export.write_file`): a file system built on fsspec's local one for
another store (a local folder as sftp://, as the one-connection tests stand one in) is written through its own calls,
not as the local disk: written around it, the one-connection test saw none of the export's writes, and passed with
8 of them at once through one connection."""

from __future__ import annotations

import importlib
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from pipeline.export import export_images
from tests.test_export import image, make_output


class _SeenWrites(LocalFileSystem):
    """A local folder as sftp://, recording each file it is asked to open for writing."""

    protocol = ("sftp", "ssh")
    root_marker = "/"
    written: list[str] = []

    @classmethod
    def _strip_protocol(cls, path):  # noqa: ANN001 - fsspec's signature
        path = path[len("sftp://"):] if isinstance(path, str) and path.startswith("sftp://") else path
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001 - fsspec's signature
        if "w" in mode:
            type(self).written.append(path)
        return super()._open(path, mode=mode, **kwargs)


def test_the_export_writes_through_a_store_built_on_the_local_file_system(tmp_path: Path, monkeypatch) -> None:
    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "sftp", _SeenWrites)
    _SeenWrites.clear_instance_cache()
    _SeenWrites.written = []
    out, to = tmp_path / "out", tmp_path / "exported"
    make_output(str(out), [image(f"{i:03d}.png", i) for i in range(6)], per_file=3)
    report = export_images(f"sftp://{out}", f"sftp://{to}", workers=2)
    assert report.ok and report.written == 6
    assert sorted(p.name for p in to.iterdir()) == [*(f"{i:03d}.png" for i in range(6)), "manifest.csv"]
    # each image went through the store's own calls (its temporary name, renamed into place)
    images = [Path(p).name for p in _SeenWrites.written if Path(p).name.endswith(".png.tmp")]
    assert len(images) == 6, _SeenWrites.written
    _SeenWrites.clear_instance_cache()
