"""The Python API as a notebook calls it (review of Dec 3): grayscale images in, grey images of the same shape out (as
the job purifies a grayscale file); errors that name the argument and a fix that works, for devices, settings, batch
arrays and tensors and wide PIL modes; numpy scalars in settings; a model being trained stays trainable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import Purifier, ZipSettings, build_unet, shipped_prior
from pipeline.model import UNetConfig

Image = pytest.importorskip("PIL.Image")


def _gray(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _rgb(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grayscale_comes_back_grey_in_the_shape_it_came_in(purifier: Purifier) -> None:
    """H x W, H x W x 1, PIL mode L and N x H x W x 1 are purified as the job purifies a grey file (the grey value in
    all three channels) and come back as that RGB result converted as PIL's convert("L") converts it."""
    g, other = _gray(seed=1), _rgb(seed=2)
    kept = g.copy()
    as_rgb = purifier([np.dstack([g] * 3), other], seed=4)
    expected = np.asarray(Image.fromarray(as_rgb[0]).convert("L"))
    for form, shape in ((g, (8, 8)), (g[..., None], (8, 8, 1)), (Image.fromarray(g), (8, 8))):
        out = purifier([form, other], seed=4)
        assert out[0].shape == shape and out[0].dtype == np.uint8
        assert np.array_equal(out[0].reshape(8, 8), expected)
        assert np.array_equal(out[1], as_rgb[1])  # the colour image beside it is purified as before
    batch = purifier(np.stack([g[..., None], g[..., None]]), seed=4)
    assert [b.shape for b in batch] == [(8, 8, 1), (8, 8, 1)]
    assert np.array_equal(g, kept)  # the caller's array is not written to
    wide = purifier([_gray(5, 13, seed=3)[:, ::-1]])[0]  # odd sizes, a non-contiguous view
    assert wide.shape == (5, 13)


def test_grey_result_keeps_the_inputs_pooled_means() -> None:
    """With the shipped prior (λ = 0: guided every step) the grey result's 4x4 block means are the input's, within
    rounding, as the RGB result's are: the grey conversion's weights sum to one."""
    p = Purifier.from_checkpoint(shipped_prior("cifar10"), device="cpu", steps=2, pool=4)
    g = _gray(32, 32, seed=5)
    out = p([g])[0]
    assert out.shape == (32, 32)

    def pooled(a: np.ndarray) -> np.ndarray:
        return a.astype(float).reshape(8, 4, 8, 4).mean(axis=(1, 3))

    assert np.abs(pooled(out) - pooled(g)).max() <= 1.0
    assert np.abs(out.astype(int) - g).mean() > 1  # and it was purified, not passed through


def test_a_3d_array_names_both_readings_and_a_tensor_batch_gets_a_working_conversion(purifier: Purifier) -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8\); for one image, pass \[image\]; for N grayscale images, "
                                         r"pass list\(images\)"):
        purifier(np.stack([_gray(), _gray()]))
    with pytest.raises(ValueError) as err:
        purifier(np.zeros((1, 1, 8, 8, 3), np.uint8))
    assert "(1, 1, 8, 8, 3)" in str(err.value) and "[image]" not in str(err.value)
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(TypeError, match="torch tensor of shape") as err:
        purifier(images)
    hint = str(err.value).rpartition(": ")[2]
    converted = eval(hint, {"images": images, "torch": torch})  # the message's own fix works as written
    assert [o.shape for o in purifier(converted)] == [(8, 8, 3), (8, 8, 3)]


@pytest.mark.parametrize(("mode_array", "words"), [
    (np.array([[0, 1000, 30000, 65535]] * 4, np.uint16), ["16-bit", "mode I;16", "clip", "/ 257"]),
    (np.array([[0.0, 0.25, 0.5, 1.0]] * 4, np.float32), ["float", "mode F", "clip", "0-255"]),
])
def test_wide_pil_modes_are_not_told_to_convert_rgb(purifier: Purifier, mode_array: np.ndarray, words: list[str]) -> None:
    """PIL's convert('RGB') clips 16-bit and float pixels at 255 (30000 -> 255, 0.5 -> 0): that advice gave garbage."""
    image = Image.fromarray(mode_array)
    with pytest.raises(ValueError) as err:
        purifier([image])
    message = str(err.value)
    assert "convert('RGB')" not in message.partition("would")[2]
    for word in words:
        assert word in message, (word, message)
    if image.mode.startswith("I;16"):
        fixed = Image.fromarray((np.asarray(image) / 257).round().astype(np.uint8))  # the hint, as written
        assert np.asarray(fixed).tolist()[0] == [0, 4, 117, 255]
        assert purifier([fixed])[0].shape == (4, 4)


def test_device_errors_name_the_argument_and_the_fix(model_16: torch.nn.Module) -> None:
    settings = ZipSettings(steps=1, pool=2)
    with pytest.raises(ValueError, match=r"device must be 'cpu', 'cuda' or 'cuda:N'.*got 'gpu'"):
        Purifier(model_16, settings, device="gpu")
    with pytest.raises(TypeError, match="device must be text"):
        Purifier(model_16, settings, device=0)  # torch would read 0 as cuda:0
    with pytest.raises(ValueError, match="got 'gpu'"):  # refused before a (possibly remote, large) checkpoint loads
        Purifier.from_checkpoint("/nonexistent/prior.pt", device="gpu")
    assert Purifier(model_16, settings, device=torch.device("cpu")).device == torch.device("cpu")
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:1", torch.device("cuda")):
            with pytest.raises(ValueError, match=r"no CUDA device is available here \(use device='cpu'\)"):
                Purifier(model_16, settings, device=device)


def test_settings_of_the_wrong_type_or_name_are_named(model_16: torch.nn.Module) -> None:
    with pytest.raises(TypeError, match="settings must be a ZipSettings.*got dict"):
        Purifier(model_16, {"steps": 1, "pool": 2})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="settings must be a ZipSettings.*got dict"):
        Purifier.from_checkpoint(shipped_prior("cifar10"), device="cpu", settings={"steps": 2})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unknown setting\(s\) 'stepz'; ZipSettings has steps, pool"):
        Purifier.from_checkpoint(shipped_prior("cifar10"), device="cpu", stepz=2)


def test_numpy_scalars_in_settings_become_python_numbers() -> None:
    settings = ZipSettings(eta=np.float32(0.5), lam=np.float64(0.25), start=np.float32(0.5), blend_k=np.float32(10))
    assert ZipSettings(blend_k=np.int64(10)).blend_k == 10
    values = settings.to_dict()
    assert (values["eta"], values["lam"], values["start"], values["blend_k"]) == (0.5, 0.25, 0.5, 10.0)
    assert all(type(values[k]) is float for k in ("eta", "lam", "start", "blend_k"))
    json.dumps(values)  # np.float32 was not JSON-serializable


def test_a_model_being_trained_stays_trainable_and_samples_without_dropout() -> None:
    """Purifier(model) used to freeze the caller's model (requires_grad off: its optimizer then updated nothing) and
    leave it in eval mode; sampling still runs in eval mode, so dropout does not make the results random."""
    torch.manual_seed(0)
    model = build_unet(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8",
                                  num_res_blocks=1, dropout=0.5))
    model.train()
    p = Purifier(model, ZipSettings(steps=2, pool=2))
    assert model.training and all(q.requires_grad for q in model.parameters())
    first = p([_rgb(16, 16)])[0]
    assert model.training and all(q.requires_grad for q in model.parameters())
    assert np.array_equal(first, p([_rgb(16, 16)])[0])
    model.eval()
    assert np.array_equal(first, p([_rgb(16, 16)])[0])
    model.train()
    loss = model(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long)).square().mean()
    loss.backward()  # still trains
    assert all(q.grad is not None for q in model.parameters() if q.requires_grad)


@pytest.fixture(scope="module")
def model_16() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8",
                                 num_res_blocks=1))


def test_a_lam_that_guides_no_step_is_refused(purifier: Purifier) -> None:
    """λ above the first timestep / T from pure noise guided nothing: with the shipped prior, lam=1 and lam=0.96
    (20 steps, first t = 950) gave the same image for an input and its negative. A late start begins from the input."""
    for settings, largest in ((dict(lam=1.0), "0.95"), (dict(lam=0.96), "0.95"), (dict(steps=2, lam=0.6), "0.5"),
                              (dict(steps=1, lam=0.01), "0")):
        with pytest.raises(ValueError, match=rf"guides none of the .*does not depend on the input image; use lam <= "
                                             rf"{largest}$"):
            ZipSettings(**settings)
    assert ZipSettings(lam=0.95).lam == 0.95 and ZipSettings(lam=1.0, start=0.3).lam == 1.0
    p = Purifier(purifier.model, ZipSettings(steps=2, pool=2, lam=0.5))  # t = 500 is guided: the input matters
    image = _rgb(16, 16, seed=9)
    assert not np.array_equal(p([image])[0], p([255 - image])[0])


def test_an_object_array_of_images_is_a_list_and_a_batch_inside_a_list_is_named(purifier: Purifier) -> None:
    images = [_rgb(8, 8, seed=1), _gray(5, 9, seed=2)]
    column = np.empty(2, dtype=object)  # what pandas' .values gives for a column of images
    column[:] = images
    assert [o.shape for o in purifier(column)] == [(8, 8, 3), (5, 9)]
    with pytest.raises(ValueError, match=r"got \(2, 8, 8, 3\): a batch as one item\? pass the N x H x W x 3 array"):
        purifier([np.stack([_rgb(), _rgb()])])


def test_numpy_integers_are_canvas_and_batch_sizes(model_16: torch.nn.Module) -> None:
    # refused as "canvas_size must be a positive integer (or None for the default), got np.int64(32)", where the
    # settings and a call's seed take numpy's integers
    purifier = Purifier(model_16, ZipSettings(steps=1), canvas_size=np.int64(32), batch_size=np.int32(2))
    assert (purifier.canvas_size, purifier.batch_size) == (32, 2) and type(purifier.canvas_size) is int
    assert [c.shape for c in purifier([_rgb(), _rgb(seed=1)])] == [(8, 8, 3), (8, 8, 3)]
