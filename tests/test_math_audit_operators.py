"""The operators as explicit matrices: A⁺ is the Moore–Penrose pseudo-inverse, A⁺A an orthogonal projection."""

from __future__ import annotations

import pytest
import torch

from pipeline.operators import AvgPool, Composite, Grayscale, make_operators

SHAPE = (3, 8, 12)  # C, H, W: a non-square image, divisible by 1, 2 and 4


def _matrix(fn, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map, column j = fn(e_j), in float64."""
    n = 1
    for s in shape:
        n *= s
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return fn(basis).reshape(n, -1).T


@pytest.mark.parametrize("op", [AvgPool(1), AvgPool(2), AvgPool(4), Grayscale(), Composite((Grayscale(), AvgPool(2))),
                                Composite((AvgPool(4), Grayscale()))], ids=repr)
def test_pinv_is_the_moore_penrose_inverse(op) -> None:
    a = _matrix(op.forward, SHAPE)
    out_shape = op.forward(torch.zeros(1, *SHAPE, dtype=torch.float64)).shape[1:]
    a_pinv = _matrix(op.pinv, tuple(out_shape))
    assert (a_pinv - torch.linalg.pinv(a)).abs().max().item() < 1e-12
    p = a_pinv @ a
    eye = torch.eye(a.shape[1], dtype=torch.float64)
    assert (a @ p - a).abs().max().item() < 1e-12  # A A⁺ A = A
    assert (p @ p - p).abs().max().item() < 1e-12  # A⁺A idempotent
    assert (p - p.T).abs().max().item() < 1e-12  # ... and symmetric: an orthogonal projection
    q = eye - p  # I − A⁺A, the null-space projection
    assert (q @ q - q).abs().max().item() < 1e-12 and (a @ q).abs().max().item() < 1e-12


def test_gray_is_the_equal_weight_mean_and_its_pinv_replicates() -> None:
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    g = Grayscale().forward(x)
    assert torch.allclose(g, (x[:, 0:1] + x[:, 1:2] + x[:, 2:3]) / 3, atol=1e-15)
    back = Grayscale().pinv(g)
    assert all(torch.equal(back[:, c : c + 1], g) for c in range(3))


def test_pool_and_gray_commute_so_both_composites_agree() -> None:
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    ab, ba = make_operators("gray+pool", 4)[0], Composite((AvgPool(4), Grayscale()))
    assert torch.allclose(ab.pinv(ab.forward(x)), ba.pinv(ba.forward(x)), atol=1e-15)


@pytest.mark.parametrize("h,w", [(30, 32), (32, 30), (33, 33)])
def test_non_divisible_sizes_are_refused_not_floored(h: int, w: int) -> None:
    with pytest.raises(ValueError, match="not divisible"):
        AvgPool(4).forward(torch.zeros(1, 3, h, w))
    with pytest.raises(ValueError, match="not divisible"):
        make_operators("gray+pool", 4)[0].check_shape(h, w)
