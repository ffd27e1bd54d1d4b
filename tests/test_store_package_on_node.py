"""A node without the input's or output's store package (adlfs for abfs://, gcsfs for gs://) stops the run.

The driver lists the input with its own packages; a read task on a node without the store's package turned every
input into a reject ("could not read file: ImportError: Install adlfs ...") and the run was called complete."""

from __future__ import annotations

import pytest
from fsspec.registry import known_implementations

from pipeline.errors import NotOnThisNodeError
from pipeline.stages import check_checkpoint_seen, read_stage, write_stage

MISSING = "zipmissingstore"


@pytest.fixture()
def store_without_its_package(monkeypatch) -> str:
    """A protocol fsspec knows, whose package this process lacks, as on a node where it was never installed."""
    monkeypatch.setitem(known_implementations, MISSING,
                        {"class": "zip_no_such_package.FileSystem", "err": "Install zip-no-such-package to read it"})
    return MISSING


def _unit_batch(root: str) -> dict:
    return {"kind": ["files"], "paths": [[f"{root}/a.png", f"{root}/b.png"]], "root": [root]}


def test_a_read_task_on_a_node_without_the_inputs_store_package_stops_the_run(store_without_its_package) -> None:
    root = f"{store_without_its_package}://u:s3cr3t@host/in"
    with pytest.raises(NotOnThisNodeError) as raised:
        list(read_stage(_unit_batch(root), {}, False, None, frozenset()))
    said = str(raised.value)
    assert said.startswith(f"--input {MISSING}://u:***@host/in needs a package that node ")
    assert "where a read task ran, lacks (ImportError: Install zip-no-such-package to read it): install it on every " \
           "node, as on the driver" in said
    assert "s3cr3t" not in said


def test_a_write_task_on_a_node_without_the_outputs_store_package_stops_before_writing(store_without_its_package) -> None:
    batch = {"kind": ["count"], "n": [0], "skipped": [0]}
    with pytest.raises(NotOnThisNodeError, match=rf"^--output {MISSING}://bucket/out needs a package .* write task"):
        write_stage(batch, f"{MISSING}://bucket/out", {})


def test_a_purifier_actor_on_a_node_without_the_checkpoints_store_package_names_it(store_without_its_package) -> None:
    with pytest.raises(NotOnThisNodeError, match=rf"^--checkpoint {MISSING}://models/p.pt needs a package .* purifier "
                                                 r"actor ran, lacks \(ImportError: Install zip-no-such-package"):
        check_checkpoint_seen(f"{MISSING}://models/p.pt")
    check_checkpoint_seen("s3://models/p.pt")  # s3fs is here: nothing said


def test_local_and_installed_stores_are_read_as_before(tmp_path) -> None:
    from tests.jobutil import image_bytes

    (tmp_path / "a.png").write_bytes(image_bytes(8, 8, 0))
    (tmp_path / "b.png").write_bytes(b"no image")
    batch = {"kind": ["files"], "paths": [[str(tmp_path / "a.png"), str(tmp_path / "b.png")]], "root": [str(tmp_path)]}
    records = [r for b in read_stage(batch, {}, False, None, frozenset()) for r in zip(*b.values(), strict=True)]
    assert len(records) == 3  # two images (one will be a decode reject) and the count
