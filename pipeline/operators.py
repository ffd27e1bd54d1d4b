"""Linear degradation operators A with a pseudo-inverse A⁺ (A A⁺ A = A).

ZIP destroys a trigger with A and lets the diffusion prior regenerate what A removed.
Each operator is a small immutable object with `forward` (A) and `pinv` (A⁺); `project`
is A⁺A, the orthogonal projection onto the range the observation keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


class LinearOperator(Protocol):
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def pinv(self, y: torch.Tensor) -> torch.Tensor: ...

    def check_shape(self, height: int, width: int) -> None: ...


def project(op: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    """A⁺A x: the part of x the observation keeps (the naive purification)."""
    return op.pinv(op.forward(x))


@dataclass(frozen=True)
class AvgPool:
    """Average pooling by `factor`; A⁺ is nearest upsampling (each mean copied back to its block)."""

    factor: int

    def __post_init__(self) -> None:
        # bool is an int in Python: True would be factor 1, A = I, and "purification" would return the input as it
        # was (a YAML `pool: true` did exactly that).
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"pool factor must be a positive integer, got {self.factor!r}")

    def check_shape(self, height: int, width: int) -> None:
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the pool factor {self.factor}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_shape(*x.shape[-2:])
        return x if self.factor == 1 else F.avg_pool2d(x, self.factor)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.factor == 1 else y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)


@dataclass(frozen=True)
class Grayscale:
    """Mean over RGB channels; A⁺ replicates the gray value to the 3 channels.

    An equal-weight mean (not luma weights) keeps A⁺ = replicate an exact pseudo-inverse.
    """

    def check_shape(self, height: int, width: int) -> None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] != 3:
            raise ValueError(f"grayscale operator expects 3 channels, got {x.shape[-3]}")
        return x.mean(dim=-3, keepdim=True)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y.expand(*y.shape[:-3], 3, *y.shape[-2:]).contiguous()


@dataclass(frozen=True)
class Composite:
    """Grayscale then pooling: both degradations at once (A⁺ = the inverses in reverse order)."""

    ops: tuple[LinearOperator, ...]

    def check_shape(self, height: int, width: int) -> None:
        for op in self.ops:
            op.check_shape(height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op.forward(x)
        return x

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        for op in reversed(self.ops):
            y = op.pinv(y)
        return y


# What a refused name is told: every name make_operators takes, as --operators is written (names lowercase, joined by
# commas), not as the table's Python list, which showed the alias pool+gray and no comma.
OPERATOR_NAMES_HELP = ("the operators are pool, gray and gray+pool (gray, then pool, as one operator; pool+gray is the "
                       "same), in lowercase, comma-separated to average their guidance: pool (the paper) or gray,pool "
                       "(the authors' code)")


def make_operators(names: str | list[str], pool: int) -> list[LinearOperator]:
    """Operators from names: "pool", "gray", "pool+gray" (one list entry each).

    The sampler guides with each operator and averages the results (the authors' code uses
    ["gray", "pool"]; the paper uses ["pool"]).
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    table = {"pool": lambda: AvgPool(pool), "gray": Grayscale, "gray+pool": lambda: Composite((Grayscale(), AvgPool(pool)))}
    table["pool+gray"] = table["gray+pool"]
    ops = []
    for name in names:
        if name not in table:
            raise ValueError(f"unknown operator {name!r}; {OPERATOR_NAMES_HELP}")
        ops.append(table[name]())
    if not ops:
        # "" or "," (a templated flag left empty): say which names it takes, as for an unknown one
        raise ValueError(f"at least one operator is needed; {OPERATOR_NAMES_HELP}")
    return ops
