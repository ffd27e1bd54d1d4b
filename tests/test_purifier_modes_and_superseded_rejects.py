"""Review 3 of Dec 3 (5108b14..251d645): three things today's changes left wrong.

1. Purifier.eps put the caller's model back with model.train(): a part the caller keeps in eval (a frozen encoder
   while fine-tuning) came back training, with its dropout on. And it looked at the model's own flag only: a model
   in eval with one block left training sampled with that block's dropout on, so the same call gave other pixels.
2. purify_tensor of an input that requires grad (a model's output) recorded every step's guidance in an autograd
   graph: only the model's calls ran without autograd.
3. A tar shard's superseded ids (the one reject an older version gave 'cat' for cat.0.jpg, cat.1.jpg, ...) were
   found by key, not by id: a latin-1 'café.0.png' (split from key 'caf\\udce9') beside a member literally named
   'caf\\xe9.png' named that member's own id as superseded, and the end-of-run check then removed its reject.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import Purifier, ZipSettings, build_unet
from pipeline.model import UNetConfig
from pipeline.output import deduplicate_output
from pipeline.sources import discover, read_unit, reject_record
from pipeline.stages import _rejects_table
from tests.jobutil import image_bytes, tar_bytes


@pytest.fixture(scope="module")
def dropout_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8",
                                  num_res_blocks=1, dropout=0.5))
    with torch.no_grad():  # a built UNet's last conv of each block is zero: dropout before it would change nothing
        for q in model.parameters():
            q.add_(torch.randn_like(q) * 0.05)
    return model


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


# --- 1. the caller's modes, module by module ---

def test_a_part_kept_in_eval_while_training_stays_in_eval(dropout_model: torch.nn.Module) -> None:
    model = dropout_model
    purifier = Purifier(model, ZipSettings(steps=2, pool=2))
    model.train()
    model.input_blocks.eval()  # e.g. a frozen encoder while the rest is fine-tuned
    before = {name: m.training for name, m in model.named_modules()}
    purifier([_rgb()])
    assert {name: m.training for name, m in model.named_modules()} == before  # was: input_blocks training again
    model.eval()


def test_a_block_left_training_in_an_eval_model_samples_without_dropout(dropout_model: torch.nn.Module) -> None:
    model = dropout_model
    purifier = Purifier(model, ZipSettings(steps=2, pool=2))
    model.eval()
    reference = purifier([_rgb()])[0]
    model.output_blocks.train()
    # was: the model's own flag was False, so nothing was switched and output_blocks' dropout ran (other pixels)
    assert np.array_equal(purifier([_rgb()])[0], reference)
    assert model.output_blocks.training and not model.training  # and the caller's modes are as they were
    model.eval()


def test_modes_come_back_when_the_model_fails(dropout_model: torch.nn.Module) -> None:
    model = dropout_model
    purifier = Purifier(model, ZipSettings(steps=2, pool=2))
    model.train()
    model.middle_block.eval()

    def fail(*_: object) -> None:
        raise RuntimeError("out of memory (simulated)")

    hook = model.out.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            purifier([_rgb()])
    finally:
        hook.remove()
    assert model.training and not model.middle_block.training and model.input_blocks.training
    model.eval()


# --- 2. no autograd graph through the sampler ---

def test_an_input_that_requires_grad_records_no_graph(dropout_model: torch.nn.Module) -> None:
    purifier = Purifier(dropout_model.eval(), ZipSettings(steps=3, pool=2))
    weight = torch.ones(1, requires_grad=True)
    x = torch.zeros(1, 3, 16, 16) * weight  # a model's output: it requires grad
    y = purifier.purify_tensor(x, seed=1)
    assert not y.requires_grad and y.grad_fn is None  # was: AddBackward0, a graph over every step
    assert torch.equal(y, purifier.purify_tensor(x.detach(), seed=1))  # the same pixels


# --- 3. superseded ids of a tar shard, by id ---

def _latin1_tar(members: dict[str, bytes]) -> bytes:
    return tar_bytes(members, encoding="latin-1")


def test_a_record_of_the_shard_is_never_its_superseded_id(tmp_path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "s.tar").write_bytes(_latin1_tar({"café.0.png": image_bytes(8, 8, 1), "caf\\xe9.png": b"not an image"}))
    (unit,) = discover(str(root))
    *records, count = list(read_unit(unit))
    assert sorted(r["id"] for r in records) == ["s.tar/caf\\xe9", "s.tar/caf\\xe9.0"]
    # was: ['s.tar/caf\\xe9'], the id of the member literally named 'caf\\xe9.png'
    superseded = count["container"].get("superseded", [])
    assert superseded == []
    # what the job then did with it: the member's decode reject, written this run, removed as out of date
    out = tmp_path / "out"
    (out / "rejects").mkdir(parents=True)
    pq.write_table(_rejects_table([reject_record("s.tar/caf\\xe9", "s.tar", "cannot decode", "decode")]),
                   out / "rejects" / "part-a.parquet")
    rows = deduplicate_output(str(out), {}, written=["rejects/part-a.parquet"], resolved=set(superseded))
    assert rows.rejected == 1 and pq.read_table(out / "rejects").column("id").to_pylist() == ["s.tar/caf\\xe9"]


def test_a_numbered_older_reject_is_still_superseded(tmp_path) -> None:
    # what the list is for: 'cat' (an older version's one reject for cat.0.png, cat.1.png) with no key 'cat' now
    root = tmp_path / "in"
    root.mkdir()
    (root / "s.tar").write_bytes(_latin1_tar({"cat.0.png": image_bytes(8, 8, 1), "cat.1.png": image_bytes(8, 8, 2),
                                              "café.0.png": image_bytes(8, 8, 3)}))
    (unit,) = discover(str(root))
    count = list(read_unit(unit))[-1]
    assert count["container"]["superseded"] == ["s.tar/caf\\xe9", "s.tar/cat"]
