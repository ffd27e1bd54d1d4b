"""A A⁺ A = A for every operator, to float precision (the property ZIP's guidance relies on)."""

from __future__ import annotations

import pytest
import torch

from pipeline.operators import AvgPool, Composite, Grayscale, make_operators, project


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


OPERATORS = [AvgPool(1), AvgPool(2), AvgPool(4), AvgPool(8), Grayscale(), Composite((Grayscale(), AvgPool(4)))]


@pytest.mark.parametrize("op", OPERATORS, ids=repr)
@pytest.mark.parametrize("seed", range(5))
def test_pseudo_inverse_property(op, seed: int) -> None:
    x = _random((2, 3, 32, 64), seed)
    a = op.forward(x)
    assert torch.allclose(op.forward(op.pinv(a)), a, atol=1e-12)
    # A⁺A is a projection: applying it twice changes nothing.
    assert torch.allclose(project(op, project(op, x)), project(op, x), atol=1e-12)
    # ... and an orthogonal one: the residual is orthogonal to the range.
    r = x - project(op, x)
    assert abs(float((r * project(op, _random(x.shape, seed + 100))).sum())) < 1e-9


def test_pool_pinv_is_nearest_upsampling() -> None:
    y = torch.tensor([[[[1.0, 2.0]]]])
    assert AvgPool(2).pinv(y).tolist() == [[[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]]]


def test_bad_sizes_and_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="30x32 is not divisible by the pool factor 4"):
        AvgPool(4).forward(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="positive integer"):
        AvgPool(0)
    with pytest.raises(ValueError, match="3 channels"):
        Grayscale().forward(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="unknown operator 'blur'"):
        make_operators("blur", 2)
    assert [type(o).__name__ for o in make_operators("gray,pool", 2)] == ["Grayscale", "AvgPool"]


@pytest.mark.parametrize("flag", [True, False])
def test_a_boolean_pool_factor_is_refused(flag: bool) -> None:
    """`pool: true` in a YAML config was taken as factor 1 (bool is an int): A = I, and the job wrote every image back
    unchanged (PSNR inf) in a run marked complete. It is a clear error now."""
    from pipeline.settings import ZipSettings

    with pytest.raises(ValueError, match=f"pool factor must be a positive integer, got {flag}"):
        AvgPool(flag)
    with pytest.raises(ValueError, match="pool factor"):
        ZipSettings(pool=flag)
    with pytest.raises(ValueError, match="pool factor"):
        make_operators("gray+pool", flag)
