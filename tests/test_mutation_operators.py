"""Mutation-audit gaps in operator names: an empty list of operators is refused (the sampler would average over
none), and blanks around or between comma-separated names are ignored."""

from __future__ import annotations

import pytest

from pipeline.operators import AvgPool, Composite, Grayscale, make_operators


@pytest.mark.parametrize("names", ["", " , ", [], ","])
def test_no_operator_is_refused(names) -> None:
    with pytest.raises(ValueError, match="at least one operator"):
        make_operators(names, 4)


def test_blanks_and_a_trailing_comma_in_operator_names_are_ignored() -> None:
    assert make_operators("pool,", 4) == [AvgPool(4)]
    assert make_operators(" gray , pool ", 2) == [Grayscale(), AvgPool(2)]
    assert make_operators("pool+gray", 2) == [Composite((Grayscale(), AvgPool(2)))]
