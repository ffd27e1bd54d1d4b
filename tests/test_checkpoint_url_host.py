"""A checkpoint on a server named in its URL (ftp://host/prior.pt, webhdfs://nn:9870/m.pt) is read from that server.

BUG (fixed here): `read_bytes` made the file system from the storage options it was given alone, and only the purify
job merged a URL's host into its options (for --input and --output only). Every other reader lost the server:
`pipeline.load_checkpoint("webhdfs://nn:9870/m.pt")` and `Purifier.from_checkpoint`, `train_prior.py --init-from
ftp://host/prior.pt`, evaluate.py's prior (its preflight and its zip defenses), and the job's own --checkpoint beside
local data, all stopped with "cannot read checkpoint ...: TypeError: ... missing 1 required positional argument:
'host'". The URL's connection options now join the options the caller gave, the caller's winning, each store's own
entry respected. Tested with the in-memory file system of tests/test_url_connection_options.py, which needs its host.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import fsspec
import pytest
import torch

from pipeline import Purifier, load_checkpoint, storage
from pipeline.checkpoint import CheckpointError, save_bundle
from pipeline.config import JobConfig
from pipeline.evaluation import runner
from pipeline.evaluation.preflight import checked_prior
from pipeline.model import UNetConfig, build_unet
from pipeline.storage import with_own_url_options
from pipeline.training_options import load_initial
from tests.jobutil import TINY_FLAGS, TRAIN_TINY_ARGS, train_prior_on_noise
from tests.netutil import refused_port
from tests.test_url_connection_options import ServerMemoryFS

ROOT = "/checkpoint-url-host-test"  # a folder of our own in fsspec's per-process memory store
URI = f"servermem://files.example:2121{ROOT}/prior.pt"


@pytest.fixture
def prior_on_server(tmp_path: Path) -> tuple[str, str]:
    """URI and sha256 of a tiny prior on a server that only a file system made with its host can reach."""
    fsspec.register_implementation("servermem", ServerMemoryFS, clobber=True)
    fs = ServerMemoryFS(host="files.example")
    torch.manual_seed(0)
    local = tmp_path / "prior.pt"
    sha = save_bundle(local, build_unet(UNetConfig.from_flags(TINY_FLAGS)), meta={"schedule": "cosine"},
                      dtype=torch.float32)
    fs.pipe(f"{ROOT}/prior.pt", local.read_bytes())
    yield URI, sha
    fs.rm(ROOT, recursive=True)


def test_the_fake_server_needs_its_host() -> None:
    # what the old read_bytes did: a file system from the options alone, here none
    fsspec.register_implementation("servermem", ServerMemoryFS, clobber=True)
    with pytest.raises(TypeError, match="host"):
        fsspec.filesystem("servermem")


def test_the_api_loads_a_checkpoint_from_the_server_in_its_url(prior_on_server) -> None:
    uri, sha = prior_on_server
    loaded = load_checkpoint(uri)
    assert loaded.sha256 == sha and loaded.uri == uri and loaded.meta == {"schedule": "cosine"}
    assert load_checkpoint(uri, storage_options={}, verify_only=True).sha256 == sha
    purifier = Purifier.from_checkpoint(uri, device="cpu", steps=2, pool=2, schedule="cosine")
    assert purifier.checkpoint.sha256 == sha


def test_scoped_options_still_reach_the_checkpoints_store(prior_on_server) -> None:
    uri, sha = prior_on_server
    # the run's options scoped per store, the server's entry given (and empty) or not given
    for options in ({"s3": {"anon": True}, "servermem": {}}, {"s3": {"anon": True}}, {"s3": {"anon": True}, "x": 1}):
        assert load_checkpoint(uri, storage_options=options, verify_only=True).sha256 == sha, options


def test_the_callers_options_win_over_the_urls_and_stay_in_their_scope() -> None:
    fsspec.register_implementation("servermem", ServerMemoryFS, clobber=True)
    assert with_own_url_options(URI, {}) == {"host": "files.example", "port": 2121}
    assert with_own_url_options(URI, {"host": "gateway", "user": "etl"}) == {
        "host": "gateway", "user": "etl", "port": 2121}
    scoped = {"s3": {"anon": True}, "servermem": {"host": "gateway"}}
    assert with_own_url_options(URI, scoped) == {"s3": {"anon": True},
                                                          "servermem": {"host": "gateway", "port": 2121}}
    assert scoped == {"s3": {"anon": True}, "servermem": {"host": "gateway"}}  # the caller's dict is not changed
    # local paths and S3 are read with the options as given (the same dict)
    for uri in ("/models/prior.pt", "s3://bucket/prior.pt", "memory://ckpt/prior.pt"):
        options: dict[str, Any] = {"anon": True}
        assert with_own_url_options(uri, options) is options, uri


def test_a_server_that_refuses_is_still_a_clear_checkpoint_error(prior_on_server) -> None:
    uri, _ = prior_on_server
    missing = uri.replace("prior.pt", "missing.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {missing}$"):
        load_checkpoint(missing)


def test_the_jobs_checkpoint_on_a_server_beside_local_data_is_read(prior_on_server, tmp_path: Path) -> None:
    uri, sha = prior_on_server
    config = JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=uri)
    options = config.checkpoint_storage_options()
    assert load_checkpoint(uri, storage_options=options, verify_only=True).sha256 == sha


class HostMemoryFS(ServerMemoryFS):
    """Servers of one store that each hold their own files: one in-memory store per host."""

    protocol = "hostmem"
    stores: dict[str, dict] = {}

    def __init__(self, host: str, port: int | None = None, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self.store = self.stores.setdefault(host, {})
        self.pseudo_dirs = [""]


def test_the_jobs_checkpoint_on_another_server_of_the_datas_store_is_read_from_its_own(tmp_path: Path) -> None:
    # BUG (fixed here): the data's server, which the job merges into its options, won over the checkpoint's own URL:
    # --input ftp://a:2121/in --checkpoint ftp://b/prior.pt read the checkpoint from a:2121 ("checkpoint not found")
    fsspec.register_implementation("hostmem", HostMemoryFS, clobber=True)
    HostMemoryFS.stores.clear()
    local = tmp_path / "prior.pt"
    sha = save_bundle(local, build_unet(UNetConfig.from_flags(TINY_FLAGS)), dtype=torch.float32)
    HostMemoryFS(host="models.example").pipe("/priors/prior.pt", local.read_bytes())
    uri = "hostmem://models.example/priors/prior.pt"
    for output in (str(tmp_path / "out"), "s3://bucket/out"):  # the data's options shared, or in the store's entry
        config = JobConfig(input="hostmem://data.example:2121/in", output=output, checkpoint=uri,
                           storage_options={"timeout": 5})
        options = config.checkpoint_storage_options()
        assert load_checkpoint(uri, storage_options=options, verify_only=True).sha256 == sha, output
        assert "data.example" not in str(options) and "timeout" in str(options)
    # the data's own server, or a host the user gave, is still the one the checkpoint is read from
    same = JobConfig(input="hostmem://models.example/in", output=str(tmp_path / "out"), checkpoint=uri)
    assert same.checkpoint_storage_options() == {"host": "models.example"}
    given = JobConfig(input="hostmem://data.example/in", output=str(tmp_path / "out"), checkpoint=uri,
                      storage_options={"host": "gateway.example"})
    assert given.checkpoint_storage_options() == {"host": "gateway.example"}
    HostMemoryFS.stores.clear()


def test_train_prior_init_from_a_server_url(prior_on_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uri, sha = prior_on_server
    config, weights, note, meta = load_initial(uri, 0.0)
    assert config.num_channels == 32 and meta == {"schedule": "cosine"} and note == f"{uri} (sha256 {sha[:12]})"
    train_prior: ModuleType = train_prior_on_noise(monkeypatch, "train_prior_init_from_server")
    out = tmp_path / "ft"
    assert train_prior.cli(["--max-steps", "1", "--out", str(out), "--init-from", uri, *TRAIN_TINY_ARGS]) == 0
    assert uri in load_checkpoint(str(out / "prior.pt")).meta["initialised_from"]


def test_evaluations_preflight_reads_a_prior_on_a_server(prior_on_server, tmp_path: Path) -> None:
    uri, sha = prior_on_server
    config = runner.EvalConfig("cifar10", attacks=["badnet"], defenses=["none", "zip"], checkpoint=uri, subset=10,
                               out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert checked_prior(config, config.defenses)[:2] == (sha, "cosine")


def test_an_init_from_server_that_does_not_answer_is_named_without_its_password(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # before, the server was never asked (a TypeError for the missing host); now its refusal is the error, and the
    # URI it quotes twice (the flag's and the checkpoint's) keeps the password hidden, as --export's refusal does
    monkeypatch.setattr(storage, "backoff", lambda attempt, *a, **k: None)  # refused on each try: no waits between
    train_prior: ModuleType = train_prior_on_noise(monkeypatch, "train_prior_init_from_down")
    with refused_port() as port:  # a port nothing listens on
        uri = f"ftp://etl:pa55word-secret@127.0.0.1:{port}/priors/prior.pt"
        assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "run"), "--init-from", uri,
                                *TRAIN_TINY_ARGS]) == 2
    err = capsys.readouterr().err
    shown = f"ftp://etl:***@127.0.0.1:{port}/priors/prior.pt"
    assert f"error: --init-from {shown}: cannot read checkpoint {shown}: RetriesExhausted" in err, err
    assert "ConnectionRefusedError" in err
    assert "pa55word" not in err and "Traceback" not in err


@pytest.mark.parametrize(("data", "checkpoint", "read_with"), [
    # another port of the data's host: another server
    ("webhdfs://nn:9870/in", "webhdfs://nn:50070/m.pt", {"host": "nn", "port": 50070}),
    ("ftp://a:2121/in", "ftp://a:2122/prior.pt", {"host": "a", "port": 2122}),
    # another account on it: the data's user and password were sent for the checkpoint's
    ("ftp://alice:pw1@a/in", "ftp://bob:pw2@a/prior.pt", {"host": "a", "username": "bob", "password": "pw2"}),
    ("ftp://alice:pw1@a/in", "ftp://bob@a/prior.pt", {"host": "a", "username": "bob"}),
    # what the checkpoint's URL leaves out is still its data's server's (as before)
    ("ftp://alice:pw@a:2121/in", "ftp://a/prior.pt", {"host": "a", "port": 2121, "username": "alice", "password": "pw"}),
    ("ftp://a/in", "ftp://a:2121/prior.pt", {"host": "a", "port": 2121}),
])
def test_the_checkpoints_own_port_and_user_win_over_its_datas_server(tmp_path: Path, data: str, checkpoint: str,
                                                                     read_with: dict) -> None:
    # BUG (fixed here): only another host set the data's URL options aside; a checkpoint on another port of the data's
    # host, or under another user, was read from the data's port, or with the data's credentials
    config = JobConfig(input=data, output=str(tmp_path / "out"), checkpoint=checkpoint)
    assert with_own_url_options(checkpoint, config.checkpoint_storage_options()) == read_with


def test_a_checkpoint_in_a_local_folder_whose_name_holds_two_colons_is_read(tmp_path: Path, monkeypatch) -> None:
    # BUG (fixed here): any '::' made the name an fsspec URL chain, so runs::v2/prior.pt (a folder train_prior.py --out
    # writes) was "checkpoint not found"; a chain is still read as one
    folder = tmp_path / "runs::v2"
    folder.mkdir()
    sha = save_bundle(folder / "prior.pt", build_unet(UNetConfig.from_flags(TINY_FLAGS)), dtype=torch.float32)
    assert load_checkpoint(str(folder / "prior.pt"), verify_only=True).sha256 == sha
    monkeypatch.chdir(tmp_path)
    assert load_checkpoint("runs::v2/prior.pt", verify_only=True).sha256 == sha
    (tmp_path / "plain.pt").write_bytes((folder / "prior.pt").read_bytes())
    assert load_checkpoint(f"simplecache::file://{tmp_path}/plain.pt", verify_only=True).sha256 == sha
